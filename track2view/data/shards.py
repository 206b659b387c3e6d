"""The shard list, and the index of every sample in it: the loader reads samples by index, not as a stream.

`build_index` walks the headers of every shard once (tars.scan_tar, in threads; no sample data is read) and
keeps, per sample, its shard and the byte extents of the members the batch needs: [S, M, 2] int64, about 80
bytes a sample. Duplicates are dropped here, across shards as within one (the first occurrence in shard order
is kept), and a damaged shard is accounted here: its complete samples stay in the index, the sample it breaks in
and, when the shard's manifest says how many samples it holds, every missing one after it enter the index as
lost samples, which the stream counts `unreadable_shard` when it reaches them (track2view/data/stats.py).
`track2view.data.reader.SampleReader` then reads a sample with one positioned read per member.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from track2view.data.stats import LoaderStats
from track2view.data.tars import ShardScan, check_url, local_path, scan_tar

MANIFEST = "manifest.json"


def resolve_shards(spec: str | list[str], allow_pipe_urls: bool = False) -> list[str]:
    """Shard URLs from a directory (its *.tar), a brace pattern ('data/shard-{000..099}.tar'), a glob
    ('data/*.tar'), a '::'-joined list of those, or a list. Local paths must exist; a `pipe:` URL (a shell
    command) is refused unless allow_pipe_urls; other URLs are passed through. Directories and globs skip
    hidden files: `.shard-000001.tar.tmp123-89abcdef.tar` is the temporary file of a killed writer
    (track2view.io.atomic_path), not a shard."""
    specs = spec if isinstance(spec, (list, tuple)) else str(spec).split("::")
    urls = []
    for s in specs:
        s = str(s)
        check_url(s, allow_pipe_urls)
        if local_path(s) is not None and Path(local_path(s)).is_dir():
            found = sorted(str(p) for p in Path(local_path(s)).glob("*.tar") if not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"shard directory {s} holds no *.tar files; run data_curation.precompute")
            urls += found
        elif local_path(s) is not None and any(c in s for c in "*?["):
            urls += sorted(u for u in glob.glob(local_path(s)) if not Path(u).name.startswith(".")) or [s]
        else:
            urls += wds.shardlists.expand_urls(s)
    missing = [u for u in urls if local_path(u) is not None and not Path(local_path(u)).is_file()]
    if missing or not urls:
        raise FileNotFoundError(f"shards not found: {missing[:5] or spec} (of {len(urls)}); give a directory of "
                                f".tar shards or a brace pattern such as 'shards/shard-{{000000..000009}}.tar'")
    return urls


def manifest_counts(urls: list[str]) -> dict[str, int]:
    """The number of samples each shard should hold, from the manifest.json next to it: precompute's
    (`per_shard: {name: {samples: n}}`) or curation's (`shards: [{name, samples}]`). Unlisted shards are absent."""
    by_dir, out = {}, {}
    for url in urls:
        path = local_path(url)
        if path is None:
            continue
        parent, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
        if parent not in by_dir:
            by_dir[parent] = _read_manifest(Path(parent) / MANIFEST)
        if name in by_dir[parent]:
            out[url] = by_dir[parent][name]
    return out


def _read_manifest(path: Path) -> dict[str, int]:
    try:
        manifest = json.loads(path.read_text())
        if "per_shard" in manifest:
            return {name: int(r["samples"]) for name, r in manifest["per_shard"].items()}
        return {r["name"]: int(r["samples"]) for r in manifest.get("shards", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # absent or not ours: counts unknown
        return {}


@dataclass
class SampleIndex:
    """Every sample of a shard list: shard [S] int32, extents [S, M, 2] int64 (offset, size; size -1: member
    absent) of `members` [M], keys [S], lost [S] bool (in a damaged shard: counted when reached);
    problems: the damaged shards' messages (shard id -> text)."""
    urls: list[str]
    members: tuple[str, ...]
    shard: np.ndarray
    extents: np.ndarray
    keys: list[str]
    lost: np.ndarray
    problems: dict[int, str]

    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        """Changes when the shard list or what the shards hold changes (names, keys)."""
        h = hashlib.sha1()
        for url in self.urls:
            h.update(os.path.basename(url).encode() + b"\0")
        for key in self.keys:
            h.update(key.encode() + b"\0")
        return h.hexdigest()[:16]


def build_index(urls: list[str], members, stats: LoaderStats, allow_pipe_urls: bool = False,
                threads: int = 16) -> SampleIndex:
    """Scan every shard and index its samples (see the module docstring); count `shards`, `damaged_shards` and
    `duplicate_key` in `stats`, with a warning per damaged shard."""
    members, expected = tuple(members), manifest_counts(urls)
    with ThreadPoolExecutor(max(1, min(threads, len(urls)))) as pool:
        scans = list(pool.map(lambda u: scan_tar(u, allow_pipe_urls), urls))
    shard, extents, keys, lost, problems, seen = [], [], [], [], {}, set()
    for s, scan in enumerate(scans):
        fresh = [(k, m) for k, m in scan.samples if k not in seen]
        dropped = scan.duplicates + [k for k, _ in scan.samples if k in seen]
        if dropped:
            stats.count("duplicate_key", len(dropped))
            stats.warn("duplicate_key", f"{scan.url}: {len(dropped)} duplicate samples or members dropped (a key "
                                        f"already in the shards is read once), e.g. {dropped[:3]}")
        seen.update(k for k, _ in fresh)
        n_lost, problem = _losses(scan, expected.get(scan.url))
        if problem:
            problems[s] = problem
            stats.count("damaged_shards")
            stats.warn("damaged_shard", problem)
        else:
            stats.count("shards")
        lost_keys = ([scan.partial] if scan.partial else []) + [f"{os.path.basename(scan.url)}#lost{j}"
                                                               for j in range(n_lost - bool(scan.partial))]
        for key, found in fresh + [(k, None) for k in lost_keys[:n_lost]]:
            shard.append(s)
            keys.append(key)
            lost.append(found is None)
            extents.append([found.get(m, (-1, -1)) if found else (-1, -1) for m in members])
    extents = np.asarray(extents, np.int64).reshape(-1, len(members), 2)
    return SampleIndex(urls, members, np.asarray(shard, np.int32), extents, keys, np.asarray(lost, bool), problems)


def _losses(scan: ShardScan, expected: int | None) -> tuple[int, str | None]:
    """(samples lost to the damage, the damaged shard's message or None)."""
    complete = len(scan.samples)
    if scan.error is None and (expected is None or expected <= complete):
        return 0, None
    if expected is not None:
        n_lost = max(expected - complete, int(scan.partial is not None))
        held = f"its manifest says it holds {expected}: {n_lost} lost"
    else:
        n_lost = int(scan.partial is not None)
        held = (f"how many it held is unknown (no {MANIFEST} next to it lists it): {n_lost} known lost"
                f"{' (the sample it breaks in)' if n_lost else ''}")
    what = scan.error or "it holds fewer samples than its manifest says"
    return n_lost, f"{scan.url}: {what}; it yielded {complete} complete samples, {held}"
