"""Generate many scenes in parallel, and the command line: N synthetic scenes in MultiCamVideo's layout
under <out>/<split>/.

    python -m track2view.synthetic --out DIR --scenes N --cameras K --size 96 --frames 81 --seed 0 --workers 2

Scene i is a deterministic function of (seed, i) and the options; complete scenes are skipped, so an
interrupted run resumes (the temporaries a killed run left are removed first). Every file is written
atomically; `scene.json` is written last. Every value is checked before any work: a bad one prints one line
`python -m track2view.synthetic: error: ...` and exits with 2 (T2V_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import re
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from track2view.cameras import focal_from_lens
from track2view.errors import report_bad_input
from track2view.io import remove_stale_temps
from track2view.synthetic.scene import DEFAULT_LENSES, TRAJECTORY_KINDS, random_scene
from track2view.synthetic.write import is_complete, load_ground_truth, scene_dir, write_metadata, write_scene

PROG = "python -m track2view.synthetic"
MAX_CAMERAS = 99  # camera names are cam01..cam99 (MultiCamVideo's two-digit numbering)
MAX_RAYS_PER_FRAME = 1 << 22  # height x width x supersample^2: one frame's rays are cast at once (~280 B each)
MAX_PIXELS_PER_VIDEO = 1 << 29  # height x width x frames: a camera's video is held in memory (7 B a pixel)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one plain path component (no '/', no '..')


def check_settings(scenes: int, cameras: int, height: int, width: int, frames: int, fps: float, seed: int,
                   workers: int, lenses, split: str, supersample: int, crf: int,
                   trajectory_kinds=TRAJECTORY_KINDS) -> None:
    """Raise ValueError naming the first setting out of range (nothing has been written then)."""
    checks = [(scenes >= 1, f"--scenes {scenes} must be >= 1"),
              (2 <= cameras <= MAX_CAMERAS, f"--cameras {cameras} must be in [2, {MAX_CAMERAS}] (a pair is 2 "
                                            f"cameras; names are cam01..cam{MAX_CAMERAS})"),
              (frames >= 2, f"--frames {frames} must be >= 2"),
              (height % 2 == 0 and width % 2 == 0 and min(height, width) >= 8,
               f"image size {height}x{width}: height and width must be even and >= 8 (H.264 yuv420p needs even "
               f"sizes)"),
              (math.isfinite(fps) and fps > 0, f"--fps {fps} must be a finite number > 0 (it times the motion)"),
              (seed >= 0, f"--seed {seed} must be >= 0"),
              (workers >= 1, f"--workers {workers} must be >= 1"),
              (supersample >= 1, f"--supersample {supersample} must be >= 1 (rays per pixel side)"),
              (0 <= crf <= 51, f"--crf {crf} must be in [0, 51] (H.264)"),
              (height * width * supersample ** 2 <= MAX_RAYS_PER_FRAME,
               f"{height}x{width} with --supersample {supersample} casts {height * width * supersample ** 2} rays per "
               f"frame, above {MAX_RAYS_PER_FRAME} (about 1.2 GB of working memory); lower the size or supersample"),
              (height * width * frames <= MAX_PIXELS_PER_VIDEO,
               f"{height}x{width}x{frames} is {height * width * frames} pixels per video, above "
               f"{MAX_PIXELS_PER_VIDEO} (a video is held in memory, 7 bytes a pixel); lower the size or frames"),
              (_NAME.fullmatch(split) is not None, f"--split {split!r} must be one plain folder name (letters, digits, "
                                                   f"'_', '-', '.'), e.g. train: the scenes go to OUT/<split>"),
              (len(lenses) > 0, "--lenses is empty; give lens folder names such as f24_aperture5")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    unknown = sorted(set(trajectory_kinds) - set(TRAJECTORY_KINDS))
    if unknown or not trajectory_kinds:
        raise ValueError(f"--trajectory-kinds {','.join(trajectory_kinds)}: give one or more of "
                         f"{','.join(TRAJECTORY_KINDS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    for lens in lenses:
        if _NAME.fullmatch(lens) is None:
            raise ValueError(f"--lenses: {lens!r} must be one plain folder name such as f24_aperture5")
        focal_from_lens(lens)  # ValueError naming the lens when it holds no focal length


def check_writable(root: Path) -> None:
    """Create `root` and prove a file can be written there (OSError with the reason otherwise)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise OSError(f"cannot write scenes to {root}: {e.strerror or e}") from e


def _make_scene(index: int, root: Path, scene_kwargs: dict, supersample: int, crf: int) -> tuple[int, str, float]:
    spec = random_scene(index=index, **scene_kwargs)
    path = scene_dir(root, spec)
    if is_complete(path):
        if load_ground_truth(path)[0] != json.loads(json.dumps(spec)):
            raise ValueError(f"{path} holds a scene made with other settings (seed, size, frames, cameras, ...); "
                             f"use another --out or delete it")
        return index, str(path), 0.0
    start = time.perf_counter()
    write_scene(root, spec, supersample=supersample, crf=crf)
    return index, str(path), time.perf_counter() - start


def generate(out: str | Path, scenes: int, cameras: int = 10, height: int = 96, width: int | None = None,
             frames: int = 81, fps: float = 15.0, seed: int = 0, workers: int = 1, lenses=DEFAULT_LENSES,
             split: str = "train", supersample: int = 1, crf: int = 18, verbose: bool = False,
             trajectory_kinds=TRAJECTORY_KINDS) -> Path:
    """Write scenes 0..scenes-1 under out/split and its metadata.csv; return out/split."""
    width = height if width is None else width
    trajectory_kinds = tuple(trajectory_kinds)
    check_settings(scenes, cameras, height, width, frames, fps, seed, workers, tuple(lenses), split, supersample, crf,
                   trajectory_kinds)
    root = Path(out) / split
    check_writable(root)
    remove_stale_temps(root, ["metadata.csv"], min_age_s=60)
    kwargs = dict(seed=seed, num_cameras=cameras, height=height, width=width, num_frames=frames,
                  fps=fps, lenses=tuple(lenses), trajectory_kinds=trajectory_kinds)
    job = partial(_make_scene, root=root, scene_kwargs=kwargs, supersample=supersample, crf=crf)
    start = time.perf_counter()
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = list(pool.imap_unordered(job, range(scenes)))
    else:
        results = [job(i) for i in range(scenes)]
    write_metadata(root)
    if verbose:
        made = [r for r in results if r[2] > 0]
        print(f"{len(made)} scenes written, {len(results) - len(made)} already complete, "
              f"{time.perf_counter() - start:.1f} s wall, "
              f"{sum(r[2] for r in made) / max(len(made), 1):.2f} s per scene per worker", flush=True)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory; scenes go to OUT/<split>/<lens>/scene<N>")
    p.add_argument("--scenes", type=int, required=True)
    p.add_argument("--cameras", type=int, default=10)
    p.add_argument("--size", type=int, default=96, help="image height (and width unless --width)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--lenses", default=",".join(DEFAULT_LENSES), help="comma-separated lens folder names")
    p.add_argument("--split", default="train")
    p.add_argument("--supersample", type=int, default=1, help="rays per pixel side (antialiasing), 1 = fastest")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (lower = better)")
    p.add_argument("--trajectory-kinds", default=",".join(TRAJECTORY_KINDS),
                   help="comma-separated camera motion families the cameras draw from (default: all; hold some out "
                        "of a train split to test on them)")
    a = p.parse_args(argv)
    try:
        root = generate(a.out, a.scenes, a.cameras, a.size, a.width, a.frames, a.fps, a.seed, a.workers,
                        [s for s in a.lenses.split(",") if s], a.split, a.supersample, a.crf, verbose=True,
                        trajectory_kinds=[k for k in a.trajectory_kinds.split(",") if k])
    except (ValueError, OSError) as e:
        return report_bad_input(e, prog=PROG)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
