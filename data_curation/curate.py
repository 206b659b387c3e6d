"""Stage 1 curation: MultiCamVideo-layout scenes -> paired-track WebDataset shards (paper section 3.3).

    python -m data_curation.curate --root DIR/train --out SHARDS_DIR --tracker oracle --pairs-per-scene 2 \\
        --seed 0 --num-tracks 1152 --workers 2 --samples-per-shard 64

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
index. Each shard is written to a temporary name and renamed; finished shards are skipped on a re-run.
`curate.json` (the settings, written before the first shard) makes a resumed run refuse other settings;
`manifest.json` (written at the end) lists the counts, the shards and every rejected pair with its reason.
Bad input (missing --root, unknown tracker or tracker option, other settings in --out) prints one line
`error: ...` and exits with 2; T2V_TRACEBACK=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import json
import multiprocessing as mp
import os
import re
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from track2view import cameras as cam
from track2view.data import schema
from track2view.errors import report_bad_input
from track2view.io import VideoError, atomic_path, read_video, write_json
from track2view.trackers.queries import query_points
from track2view.tracks import PairedTracks

MANIFEST = "manifest.json"
SETTINGS = "curate.json"
SHARD_PATTERN = "shard-{:06d}.tar"


class Rejected(Exception):
    """A camera pair that cannot be curated; the message is the reason written to the manifest."""


@dataclass
class CurateConfig:
    tracker: str = "oracle"
    tracker_options: dict = field(default_factory=dict)
    pairs_per_scene: int = 2
    seed: int = 0
    num_tracks: int = 1152
    query_sampling: str = "grid"       # "grid" (jittered grid) or "random"
    samples_per_shard: int = 64
    num_frames: int | None = None      # expected frames per video; None: the extrinsics file's frame count
    first_frame_tolerance: float = 6.0  # max mean |A[0] - B[0]| in 0..255 levels
    min_valid_tracks: int = 64         # tracks valid in both views at least once


@dataclass(frozen=True)
class Pair:
    lens: str
    scene: str
    scene_dir: str
    source: str  # camera names, e.g. cam01
    target: str

    @property
    def key(self) -> str:
        """`<lens>-<scene>-<A>-<B>` with dots replaced (webdataset splits keys at dots)."""
        return f"{self.lens}-{self.scene}-{self.source}-{self.target}".replace(".", "_")

    def video(self, camera: str) -> Path:
        return Path(self.scene_dir) / "videos" / f"{camera}.mp4"


# ---- planning ----------------------------------------------------------------------------------------
def _natural(s: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def find_scenes(root: str | os.PathLike) -> list[tuple[str, str, Path, list[str]]]:
    """(lens, scene name, scene dir, camera names) of every `<root>/<lens>/scene*/videos/*.mp4` scene, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a directory; expected MultiCamVideo's train/ folder "
                                f"(<root>/<lens>/scene<N>/videos/camXX.mp4)")
    scenes = []
    for scene_dir in sorted(root.glob("*/scene*/"), key=lambda p: (p.parent.name, _natural(p.name))):
        videos = sorted((p.stem for p in (scene_dir / "videos").glob("*.mp4")), key=_natural)
        if videos:
            scenes.append((scene_dir.parent.name, scene_dir.name, scene_dir, videos))
    return scenes


def choose_pairs(cameras: list[str], count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """`count` distinct ordered (source, target) pairs of different cameras (all of them if fewer exist)."""
    pairs = [(a, b) for a in cameras for b in cameras if a != b]
    pick = rng.permutation(len(pairs))[:count]
    return [pairs[i] for i in pick]


def _stable_seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def plan_pairs(root: str | os.PathLike, pairs_per_scene: int, seed: int) -> list[Pair]:
    """Every pair to curate, in a deterministic order (scene order, then the scene's seeded choice)."""
    out = []
    for lens, scene, scene_dir, cams in find_scenes(root):
        rng = np.random.default_rng([seed, _stable_seed(lens, scene)])
        out += [Pair(lens, scene, str(scene_dir), a, b) for a, b in choose_pairs(cams, pairs_per_scene, rng)]
    return out


# ---- one pair -----------------------------------------------------------------------------------------
def read_captions(root: str | os.PathLike) -> dict[str, str]:
    """{file_name relative to root: caption} from `<root>/metadata.csv` (or its parent's), else {}."""
    root = Path(root)
    for path in (root / "metadata.csv", root.parent / "metadata.csv"):
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"file_name", "text"} <= set(reader.fieldnames):
                    raise ValueError(f"{path} must have the columns file_name,text; got {reader.fieldnames}")
                return {row["file_name"]: row["text"] or "" for row in reader}
    return {}


def _load_video(path: Path, num_frames: int) -> np.ndarray:
    try:
        frames, _ = read_video(path)
    except VideoError as e:
        raise Rejected(f"unreadable video: {e}") from None
    if len(frames) != num_frames:
        raise Rejected(f"wrong frame count: {path.name} has {len(frames)} frames, expected {num_frames}")
    return frames


def split_concatenated(result, num_frames: int):
    """Tracking result of the 2T sequence [reversed A, B] -> (A's result in A's time order, B's result)."""
    T = num_frames
    if result.num_frames != 2 * T:
        raise ValueError(f"expected a {2 * T}-frame tracking result, got {result.num_frames}")
    return result.frames(np.arange(T - 1, -1, -1)), result.frames(np.arange(T, 2 * T))


def curate_pair(pair: Pair, tracker, config: CurateConfig, captions: dict[str, str], root: Path) -> dict:
    """Curate one pair into a raw webdataset sample {"__key__", member: bytes}; raise Rejected with a reason."""
    try:
        cams_by_name = cam.read_multicam_cameras(Path(pair.scene_dir) / "cameras" / "camera_extrinsics.json")
    except (OSError, ValueError) as e:
        raise Rejected(f"unreadable cameras: {e}") from None
    for c in (pair.source, pair.target):
        if c not in cams_by_name:
            raise Rejected(f"camera {c} is missing from camera_extrinsics.json")
    T = config.num_frames or len(cams_by_name[pair.source])
    src_path, tgt_path = pair.video(pair.source), pair.video(pair.target)
    a, b = _load_video(src_path, T), _load_video(tgt_path, T)
    if a.shape != b.shape:
        raise Rejected(f"video sizes differ: {a.shape[1:3]} vs {b.shape[1:3]}")
    for c in (pair.source, pair.target):
        if len(cams_by_name[c]) < T:
            raise Rejected(f"camera_extrinsics.json has {len(cams_by_name[c])} frames for {c}, need {T}")
    diff = np.abs(a[0].astype(np.float32) - b[0].astype(np.float32)).mean()
    if diff > config.first_frame_tolerance:
        raise Rejected(f"first frames differ: mean absolute difference {diff:.2f} > {config.first_frame_tolerance} "
                       f"(the cameras must start at the same pose)")
    H, W = a.shape[1:3]

    # track the seamless 2T-frame sequence [A reversed, B]
    rng = np.random.default_rng([config.seed, _stable_seed(pair.key)])
    queries = query_points(config.num_tracks, (0, T - 1), rng, H, W, config.query_sampling)
    sources = [(str(src_path), T - 1 - i) for i in range(T)] + [(str(tgt_path), i) for i in range(T)]
    result = tracker.track(np.concatenate([a[::-1], b]), queries, sources)
    src, tgt = split_concatenated(result, T)

    # paired tracks: project the world points through each view's cameras (from the tracker); the target view's
    # validity is geometric only (no tgt.visible), as at inference, where there is no target video to track
    (uv_s, d_s), (uv_t, d_t) = src.project(), tgt.project()
    tracks = PairedTracks.from_projections(np.stack([uv_s, uv_t]), np.stack([d_s, d_t]),
                                           np.stack([src.visible, np.ones_like(tgt.visible)])).validate()
    valid = tracks.valid.numpy()
    both = int((valid[0].any(0) & valid[1].any(0)).sum())
    if both < config.min_valid_tracks:
        raise Rejected(f"too few valid tracks: {both} seen in both views < {config.min_valid_tracks}")

    # cameras of the dataset (metres, OpenCV), relative to the source camera at frame 0
    c2w = np.stack([cams_by_name[pair.source][:T], cams_by_name[pair.target][:T]])
    c2w = cam.relative_to(c2w, c2w[0, 0])
    K = np.broadcast_to(cam.intrinsics_from_lens(pair.lens, H, W), (2, T, 3, 3))
    caption = captions.get(src_path.relative_to(root).as_posix(), "")
    meta = {"scene": pair.scene, "lens": pair.lens, "cameras": [pair.source, pair.target],
            "fps": _fps(src_path), "num_frames": T, "height": H, "width": W, "tracker": config.tracker,
            "metric": src.metric, "query_frames": [0, T - 1], "seed": config.seed,
            "counts": {"tracks": int(config.num_tracks), "valid_both": both,
                       "valid_source": int(valid[0].any(0).sum()), "valid_target": int(valid[1].any(0).sum())},
            "first_frame_difference": round(float(diff), 4)}
    return {
        "__key__": pair.key,
        schema.SOURCE_VIDEO: src_path.read_bytes(),
        schema.TARGET_VIDEO: tgt_path.read_bytes(),
        schema.TRACKS: schema.encode_npz(tracks.to_numpy()),
        schema.CAMERAS: schema.encode_npz({"c2w": c2w.astype(np.float32), "intrinsics": K.astype(np.float32)}),
        schema.TRACKING: schema.encode_npz(src.relative_to(src.c2w[0]).to_arrays()),
        schema.META: schema.encode_json(meta),
        schema.CAPTION: caption.encode("utf-8"),
    }


def _fps(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate or c.streams.video[0].guessed_rate
    return float(rate) if rate else 0.0


# ---- shards -----------------------------------------------------------------------------------------
def shard_paths(out: Path, index: int) -> tuple[Path, Path]:
    tar = out / SHARD_PATTERN.format(index)
    return tar, tar.with_suffix(".json")


def is_shard_done(out: Path, index: int) -> bool:
    tar, info = shard_paths(out, index)
    return tar.is_file() and info.is_file()


def write_shard(index: int, pairs: list[Pair], out: str | os.PathLike, root: str | os.PathLike,
                config: CurateConfig) -> dict:
    """Curate `pairs` into shard `index` (atomic: temp name, then rename); returns its summary."""
    import webdataset as wds

    out, root = Path(out), Path(root)
    tar, info_path = shard_paths(out, index)
    tracker = make_tracker(config)
    captions = read_captions(root)
    samples, rejected = [], []
    with atomic_path(tar) as tmp:
        with wds.TarWriter(str(tmp), encoder=False, mtime=0.0) as sink:  # fixed mtime: byte-identical shards
            for pair in pairs:
                try:
                    sample = curate_pair(pair, tracker, config, captions, root)
                except Rejected as e:
                    rejected.append({"key": pair.key, "scene": f"{pair.lens}/{pair.scene}", "source": pair.source,
                                     "target": pair.target, "reason": str(e)})
                    continue
                sink.write(sample)
                samples.append(pair.key)
        info = {"shard": tar.name, "index": index, "samples": samples, "rejected": rejected}
        write_json(info_path, info)  # the summary lands first; the shard's rename marks it done
    return info


def make_tracker(config: CurateConfig):
    """The configured tracker; ValueError naming the problem for an unknown name or option."""
    from track2view.trackers import get_tracker

    try:
        return get_tracker(config.tracker, **config.tracker_options)
    except TypeError as e:  # an option the backend's constructor does not take
        raise ValueError(f"tracker {config.tracker!r} does not take the options {config.tracker_options}: {e}") from e


def _write_shard_job(args):
    return write_shard(*args)


def curate(root: str | os.PathLike, out: str | os.PathLike, config: CurateConfig, workers: int = 1,
           verbose: bool = False) -> dict:
    """Curate every planned pair under `root` into shards in `out`; returns (and writes) the manifest."""
    root, out = Path(root), Path(out)
    if config.samples_per_shard < 1 or config.num_tracks < 2 or config.pairs_per_scene < 1:
        raise ValueError("need --samples-per-shard >= 1, --num-tracks >= 2 and --pairs-per-scene >= 1")
    pairs = plan_pairs(root, config.pairs_per_scene, config.seed)
    if not pairs:
        raise FileNotFoundError(f"no scenes with videos under {root} (expected <root>/<lens>/scene<N>/videos/*.mp4)")
    plan_hash = hashlib.sha256("\n".join(p.key for p in pairs).encode()).hexdigest()[:16]
    settings = {**asdict(config), "root": str(root.resolve()), "plan": plan_hash}
    # written before the first shard (not only in the manifest at the end), so that a run killed mid-way and
    # resumed with other settings is refused instead of mixing shards
    settings_path, manifest_path = out / SETTINGS, out / MANIFEST
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings.keys() | previous.keys() if previous.get(k) != settings.get(k))
            raise ValueError(f"{out} holds shards curated with other settings (differing: {changed}); shards are "
                             f"resumed only with identical settings. Use another --out or delete {out}")
    make_tracker(config)  # fail on an unknown tracker or option before anything is written
    S = config.samples_per_shard
    jobs = [(k, pairs[k * S:(k + 1) * S], str(out), str(root), config) for k in range((len(pairs) + S - 1) // S)]
    todo = [j for j in jobs if not is_shard_done(out, j[0])]
    start = time.perf_counter()
    write_json(settings_path, settings)
    if workers > 1 and len(todo) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            # by module name, so that spawned workers can import it when this file runs as __main__
            job_fn = importlib.import_module("data_curation.curate")._write_shard_job
            for info in pool.imap_unordered(job_fn, todo):
                if verbose:
                    print(f"{info['shard']}: {len(info['samples'])} samples, {len(info['rejected'])} rejected",
                          flush=True)
    else:
        for job in todo:
            info = write_shard(*job)
            if verbose:
                print(f"{info['shard']}: {len(info['samples'])} samples, {len(info['rejected'])} rejected", flush=True)

    infos = [json.loads(shard_paths(out, k)[1].read_text()) for k, *_ in jobs]
    manifest = {
        "config": settings,
        "counts": {"scenes": len({(p.lens, p.scene) for p in pairs}), "pairs": len(pairs),
                   "accepted": sum(len(i["samples"]) for i in infos),
                   "rejected": sum(len(i["rejected"]) for i in infos), "shards": len(infos),
                   "shards_written_now": len(todo)},
        "shards": [{"name": i["shard"], "samples": len(i["samples"]), "keys": i["samples"]} for i in infos],
        "rejected": [r for i in infos for r in i["rejected"]],
    }
    write_json(manifest_path, manifest)
    if verbose:
        c = manifest["counts"]
        print(f"{c['accepted']} samples in {c['shards']} shards ({c['shards_written_now']} written now), "
              f"{c['rejected']} pairs rejected, {time.perf_counter() - start:.1f} s -> {manifest_path}", flush=True)
    return manifest


def main(argv=None) -> int:
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
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--num-frames", type=int, default=None,
                   help="expected frames per video (default: the cameras file's frame count)")
    p.add_argument("--first-frame-tolerance", type=float, default=6.0, help="max mean |A[0]-B[0]| in 0..255 levels")
    p.add_argument("--min-valid-tracks", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    from track2view.trackers import parse_tracker_options

    try:
        config = CurateConfig(tracker=a.tracker, tracker_options=parse_tracker_options(a.tracker_option),
                              pairs_per_scene=a.pairs_per_scene, seed=a.seed, num_tracks=a.num_tracks,
                              query_sampling=a.query_sampling, samples_per_shard=a.samples_per_shard,
                              num_frames=a.num_frames, first_frame_tolerance=a.first_frame_tolerance,
                              min_valid_tracks=a.min_valid_tracks)
        curate(a.root, a.out, config, workers=a.workers, verbose=True)
    except (ValueError, OSError) as e:  # bad input: one line, not a traceback
        return report_bad_input(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
