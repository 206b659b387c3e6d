"""Curation shards: writing one (atomically, with its summary), and merging all summaries into the manifest.

Shard k is `shard-<k>.tar` plus `shard-<k>.json` (its summary: keys written, pairs rejected with reasons,
seconds). The summary lands first and the shard's rename marks it done, so a done shard always has its
summary. `merge_manifest` checks the summaries against the plan (every planned pair in exactly one shard,
either written or rejected; no shard outside the plan) before it writes `manifest.json`.
"""

from __future__ import annotations

import json
import os
import re
import time
from functools import lru_cache
from pathlib import Path

from data_curation.curate_pair import Rejected, curate_pair, read_captions
from data_curation.curate_plan import CurateConfig, Pair, ShardJob
from track2view.io import atomic_path, write_json

MANIFEST = "manifest.json"


def shard_paths(out: Path, index: int) -> tuple[Path, Path]:
    tar = Path(out) / ShardJob(index, ()).name
    return tar, tar.with_suffix(".json")


def is_shard_done(out: Path, index: int) -> bool:
    tar, info = shard_paths(out, index)
    return tar.is_file() and info.is_file()


@lru_cache(maxsize=4)
def _cached_tracker(name: str, options_json: str):
    from track2view.trackers import get_tracker

    return get_tracker(name, **json.loads(options_json))


def make_tracker(config: CurateConfig):
    """The configured tracker, one per process (a GPU tracker loads its models once per rank, not per shard);
    ValueError naming the problem for an unknown name or option."""
    try:
        return _cached_tracker(config.tracker, json.dumps(config.tracker_options, sort_keys=True))
    except TypeError as e:  # an option the backend's constructor does not take
        raise ValueError(f"tracker {config.tracker!r} does not take the options {config.tracker_options}: {e}") from e


def _rejection(pair: Pair, reason: str) -> dict:
    return {"key": pair.key, "scene": f"{pair.lens}/{pair.scene}", "source": pair.source, "target": pair.target,
            "reason": reason}


def write_shard(job: ShardJob, out: str | os.PathLike, root: str | os.PathLike, config: CurateConfig,
                plan: str) -> dict:
    """Curate the job's pairs into its shard (atomic: temp name, then rename); returns its summary."""
    import webdataset as wds

    start = time.perf_counter()
    out, root = Path(out), Path(root)
    tar, info_path = shard_paths(out, job.index)
    tracker = make_tracker(config)
    loaded_before = getattr(tracker, "load_seconds", None)
    captions = read_captions(root)
    samples, rejected = [], []
    with atomic_path(tar) as tmp:
        with wds.TarWriter(str(tmp), encoder=False, mtime=0.0) as sink:  # fixed mtime: byte-identical shards
            for pair in job.pairs:
                try:
                    sample = curate_pair(pair, tracker, config, captions, root)
                except Rejected as e:
                    rejected.append(_rejection(pair, str(e)))
                    continue
                sink.write(sample)
                samples.append(pair.key)
        load = getattr(tracker, "load_seconds", None)
        info = {"shard": tar.name, "index": job.index, "plan": plan, "samples": samples, "rejected": rejected,
                "pairs": len(job.pairs), "seconds": round(time.perf_counter() - start, 3),
                "load_seconds": round(load, 3) if load is not None and loaded_before is None else 0.0}
        write_json(info_path, info)  # the summary lands first; the shard's rename marks it done
    return info


def write_shard_job(args):
    """`write_shard(*args)`, for a process pool."""
    return write_shard(*args)


def progress_line(info: dict, rank: int, world_size: int, done: int, total: int) -> str:
    """One line per finished shard: counts, time and this shard's throughput."""
    work = max(info["seconds"] - info["load_seconds"], 1e-9)
    load = f", model load {info['load_seconds']:.1f} s" if info["load_seconds"] else ""
    return (f"[rank {rank}/{world_size}] {info['shard']}: {len(info['samples'])} samples, {len(info['rejected'])} "
            f"rejected, {info['seconds']:.1f} s{load} ({3600 * info['pairs'] / work:.0f} pairs/h); "
            f"{done}/{total} shards of this rank")


def throughput(infos: list[dict]) -> dict:
    """Pairs per hour of one worker, over shards' curation time without the one-off model load."""
    pairs = sum(i.get("pairs", len(i["samples"]) + len(i["rejected"])) for i in infos)
    seconds = sum(i.get("seconds", 0.0) - i.get("load_seconds", 0.0) for i in infos)
    return {"pairs": pairs, "seconds": round(seconds, 3),
            "pairs_per_hour_per_worker": round(3600 * pairs / seconds, 1) if seconds > 0 else None}


def collect(out: Path, jobs: list[ShardJob], plan: str) -> tuple[list[dict], list[str]]:
    """(summaries of the done shards, in index order; names of the shards not done yet). ValueError if a
    summary disagrees with the plan: a pair missing or duplicated, a key outside its shard, another plan, or a
    shard file outside the plan."""
    problems, infos, missing = [], [], []
    for job in jobs:
        if not is_shard_done(out, job.index):
            missing.append(job.name)
            continue
        info = json.loads(shard_paths(out, job.index)[1].read_text())
        keys = info["samples"] + [r["key"] for r in info["rejected"]]
        if info.get("plan") != plan or info.get("index") != job.index:
            problems.append(f"{job.name} was written for another plan or index")
        elif sorted(keys) != sorted(job.keys):
            lost, extra = set(job.keys) - set(keys), set(keys) - set(job.keys)
            dups = len(keys) - len(set(keys))
            problems.append(f"{job.name}: {len(lost)} planned pairs missing, {len(extra)} not planned there, "
                            f"{dups} duplicated")
        infos.append(info)
    planned = {job.name for job in jobs}
    stray = sorted(p.name for p in Path(out).glob("shard-*.tar") if re.fullmatch(r"shard-\d{6}\.tar", p.name)
                   and p.name not in planned)
    if stray:
        problems.append(f"shards outside the plan: {stray[:5]}{' ...' if len(stray) > 5 else ''}")
    if problems:
        raise ValueError(f"{out} does not match the curation plan: " + "; ".join(problems))
    return infos, missing


def merge_manifest(out: Path, jobs: list[ShardJob], pairs: list[Pair], settings: dict) -> dict | None:
    """Write (and return) `manifest.json` once every planned shard is done and consistent; None while shards
    are missing. ValueError on an inconsistency (see `collect`)."""
    infos, missing = collect(out, jobs, settings["plan"])
    if missing:
        return None
    manifest = {
        "config": settings,
        "counts": {"scenes": len({(p.lens, p.scene) for p in pairs}), "pairs": len(pairs),
                   "accepted": sum(len(i["samples"]) for i in infos),
                   "rejected": sum(len(i["rejected"]) for i in infos), "shards": len(infos)},
        "shards": [{"name": i["shard"], "samples": len(i["samples"]), "keys": i["samples"]} for i in infos],
        "rejected": [r for i in infos for r in i["rejected"]],
        "throughput": throughput(infos),
    }
    write_json(Path(out) / MANIFEST, manifest)
    return manifest

