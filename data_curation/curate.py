"""Stage 1 curation: MultiCamVideo-layout scenes -> paired-track WebDataset shards (paper section 3.3).

    python -m data_curation.curate --root DIR/train --out SHARDS_DIR --tracker oracle --pairs-per-scene 2 \\
        --seed 0 --num-tracks 1152 --workers 2 --samples-per-shard 64
    torchrun --nproc-per-node 8 -m data_curation.curate --root ... --out ... --tracker spatialtracker_v2 ...
    python -m data_curation.curate --root ... --out ... --merge      # after all ranks: check and write the manifest

For each chosen camera pair (A, B) of a scene: reverse A's T frames and append B's (both start at the same
image, so the 2T-frame sequence is seamless), query half the points at frame 0 and half at frame T-1 (never
later: at inference only the source video exists), track, split at frame T and re-reverse the first half.
Point n is then one scene point seen in both views: its uv/depth per view come from projecting the tracked
world points through that view's per-frame cameras (from the tracker). Validity is what inference can know
(paper sec. 3.2: positive depth and inside the image): in the source view also the tracker's visibility, in
the target view geometry only, because at inference the target video does not exist and
track2view.inference.reprojection marks a reprojected point valid wherever it lands in frame in front of the camera.
Training on occlusion-aware target validity would teach the model a mask it never gets at inference.

Determinism and resume: the pair list is a function of (root content, pairs per scene, seed), pair i goes to
shard i // samples_per_shard, and everything random is seeded per pair, so a shard is a function of its
index, whichever rank writes it. Each shard is written to a temporary name and renamed; finished shards are
skipped on a re-run. `curate.json` (the settings, written before the first shard) makes a resumed run refuse
other settings.

Ranks (one process per GPU): rank r of W writes shards r, r + W, ... (--rank/--world-size, else torchrun's
RANK/WORLD_SIZE, else SLURM's; curate_plan.resolve_rank). Each prints a line per shard and its throughput.
The rank that finds every shard done (or `--merge`) checks the shards' summaries against the plan (every pair
in exactly one shard, written or rejected) and writes `manifest.json`: the counts, the shards, every rejected
pair with its reason, and the throughput. Bad input (missing --root, unknown tracker or tracker option, other
settings in --out, a merge with shards missing) prints one line `error: ...` and exits with 2;
T2V_TRACEBACK=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from data_curation.curate_pair import Rejected, curate_pair, split_concatenated  # noqa: F401 (the public API)
from data_curation.curate_plan import (CurateConfig, Pair, plan_pairs, plan_shards, resolve_rank,  # noqa: F401
                                       settings_of, shards_of_rank)
from data_curation.curate_shards import (MANIFEST, is_shard_done, make_tracker, merge_manifest, progress_line,
                                         throughput, write_shard)
from track2view.errors import report_bad_input
from track2view.io import write_json
from track2view.trackers.queries import query_points  # noqa: F401 (moved there; kept importable from here)

SETTINGS = "curate.json"


def prepare(root: Path, out: Path, config: CurateConfig):
    """(pairs, shard jobs, settings) of a run; ValueError if `out` holds shards curated with other settings."""
    config.check()
    pairs = plan_pairs(root, config.pairs_per_scene, config.seed)
    if not pairs:
        raise FileNotFoundError(f"no scenes with videos under {root} (expected <root>/<lens>/scene<N>/videos/*.mp4)")
    settings = settings_of(config, root, pairs)
    # written before the first shard (not only in the manifest at the end), so that a run killed mid-way and
    # resumed with other settings is refused instead of mixing shards
    path = out / SETTINGS
    jobs = plan_shards(pairs, config.samples_per_shard)
    if path.is_file() and any(is_shard_done(out, j.index) for j in jobs):  # a run that wrote no shard binds nothing
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings.keys() | previous.keys() if previous.get(k) != settings.get(k))
            raise ValueError(f"{out} holds shards curated with other settings (differing: {changed}); shards are "
                             f"resumed only with identical settings. Use another --out or delete {out}")
    return pairs, jobs, settings


def _run_shards(todo: list, args: tuple, workers: int):
    """Yield the summary of each shard of `todo` as it finishes (in a process pool when workers > 1)."""
    if workers > 1 and len(todo) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            # by module name, so that spawned workers can import it when curate.py runs as __main__
            job_fn = importlib.import_module("data_curation.curate_shards").write_shard_job
            yield from pool.imap_unordered(job_fn, [(job, *args) for job in todo])
    else:
        for job in todo:
            yield write_shard(job, *args)


def curate(root: str | os.PathLike, out: str | os.PathLike, config: CurateConfig, workers: int = 1,
           verbose: bool = False, rank: int = 0, world_size: int = 1) -> dict:
    """Curate this rank's shards of the plan under `root` into `out`; then, if every shard is done, check them
    and write the manifest. Returns the manifest (or {"complete": False, "missing": [...]}) with "run": this
    call's rank, shards and throughput."""
    root, out = Path(root), Path(out)
    pairs, jobs, settings = prepare(root, out, config)
    try:  # fail on an unknown tracker, a missing clone or a bad option before anything is written
        make_tracker(config).check_setup()
    except (RuntimeError, ImportError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"tracker {config.tracker!r}: {first} (tracker options: --tracker-option KEY=VALUE)") from e
    mine = shards_of_rank(jobs, rank, world_size)
    todo = [j for j in mine if not is_shard_done(out, j.index)]
    write_json(out / SETTINGS, settings)
    start, written = time.perf_counter(), []
    for info in _run_shards(todo, (str(out), str(root), config, settings["plan"]), workers):
        written.append(info)
        if verbose:
            print(progress_line(info, rank, world_size, len(mine) - len(todo) + len(written), len(mine)), flush=True)
    run = {"rank": rank, "world_size": world_size, "shards_mine": len(mine), "shards_written_now": len(written),
           "wall_seconds": round(time.perf_counter() - start, 3), **throughput(written)}
    manifest = merge_manifest(out, jobs, pairs, settings)
    result = {"complete": False, "missing": _missing(out, jobs)} if manifest is None else {"complete": True,
                                                                                          **manifest}
    if verbose:
        _report(result, run, out)
    return {**result, "run": run}


def merge(root: str | os.PathLike, out: str | os.PathLike, config: CurateConfig) -> dict:
    """Check every shard against the plan and write the manifest; ValueError if shards are missing."""
    root, out = Path(root), Path(out)
    pairs, jobs, settings = prepare(root, out, config)
    manifest = merge_manifest(out, jobs, pairs, settings)
    if manifest is None:
        missing = _missing(out, jobs)
        raise ValueError(f"cannot merge {out}: {len(missing)} shards are not written yet ({', '.join(missing[:4])}"
                         f"{', ...' if len(missing) > 4 else ''}); shard i belongs to rank i % world size")
    return {"complete": True, **manifest}


def _missing(out: Path, jobs) -> list[str]:
    return [j.name for j in jobs if not is_shard_done(out, j.index)]


def _report(result: dict, run: dict, out: Path) -> None:
    rate = run["pairs_per_hour_per_worker"]
    print(f"[rank {run['rank']}/{run['world_size']}] {run['shards_written_now']} of {run['shards_mine']} shards "
          f"written now, {run['pairs']} pairs in {run['seconds']:.1f} s of curation"
          + (f" ({rate:.0f} pairs/h)" if rate else ""), flush=True)
    if result["complete"]:
        c = result["counts"]
        print(f"{c['accepted']} samples in {c['shards']} shards, {c['rejected']} pairs rejected -> {out / MANIFEST}",
              flush=True)
    else:
        print(f"{len(result['missing'])} shards of other ranks not written yet: the last rank to finish (or "
              f"--merge) writes {out / MANIFEST}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_curation.curate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="MultiCamVideo train/ folder: <root>/<lens>/scene<N>/videos/camXX.mp4")
    p.add_argument("--out", required=True, help="output folder for shard-XXXXXX.tar, their .json and manifest.json")
    p.add_argument("--tracker", default="oracle", help="oracle (synthetic scenes) or spatialtracker_v2")
    p.add_argument("--tracker-option", action="append", default=[], metavar="KEY=VALUE",
                   help="tracker option, e.g. repo_dir=/path/SpaTrackerV2 (repeatable; values are parsed as "
                        "JSON when they can be)")
    p.add_argument("--pairs-per-scene", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-tracks", type=int, default=1152, help="queries per pair, half at frame 0, half at T-1")
    p.add_argument("--query-sampling", choices=("grid", "random"), default="grid")
    p.add_argument("--query-frames", choices=("first_last", "first", "random"), default="first_last",
                   help="source frames of the queries: half on the first and half on the last (paper), all on the "
                        "first, or each on a random frame (the paper's ablation); infer.py --query-frames must match")
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--num-frames", type=int, default=None,
                   help="expected frames per video (default: the cameras file's frame count)")
    p.add_argument("--first-frame-tolerance", type=float, default=6.0, help="max mean |A[0]-B[0]| in 0..255 levels")
    p.add_argument("--min-valid-tracks", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="processes per rank (CPU trackers)")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: RANK, SLURM_PROCID, 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: WORLD_SIZE, SLURM_NTASKS)")
    p.add_argument("--merge", action="store_true", help="only check all shards and write manifest.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from track2view.trackers import parse_tracker_options

    try:
        config = CurateConfig(tracker=a.tracker, tracker_options=parse_tracker_options(a.tracker_option),
                              pairs_per_scene=a.pairs_per_scene, seed=a.seed, num_tracks=a.num_tracks,
                              query_sampling=a.query_sampling,
                              query_frames=a.query_frames, samples_per_shard=a.samples_per_shard,
                              num_frames=a.num_frames, first_frame_tolerance=a.first_frame_tolerance,
                              min_valid_tracks=a.min_valid_tracks)
        if a.merge:
            c = merge(a.root, a.out, config)["counts"]
            print(f"{c['accepted']} samples in {c['shards']} shards, {c['rejected']} pairs rejected -> "
                  f"{Path(a.out) / MANIFEST}", flush=True)
            return 0
        rank, world_size = resolve_rank(a.rank, a.world_size)
        if a.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {a.workers}")
        result = curate(a.root, a.out, config, workers=a.workers, verbose=True, rank=rank, world_size=world_size)
        if result["complete"] and result["counts"]["accepted"] == 0:
            raise ValueError(f"every pair was rejected: 0 samples in {a.out}; the reasons are in "
                             f"{Path(a.out) / MANIFEST} ('rejected')")
    except (ValueError, OSError) as e:  # bad input: one line, not a traceback
        return report_bad_input(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
