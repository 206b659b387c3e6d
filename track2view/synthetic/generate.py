"""Generate many scenes in parallel, and the command line: N synthetic scenes in MultiCamVideo's layout
under <out>/<split>/.

    python -m track2view.synthetic --out DIR --scenes N --cameras K --size 96 --frames 81 --seed 0 --workers 2

Scene i is a deterministic function of (seed, i) and the options; complete scenes are skipped, so an
interrupted run resumes. Every file is written atomically; `scene.json` is written last.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from functools import partial
from pathlib import Path

from track2view.synthetic.scene import DEFAULT_LENSES, random_scene
from track2view.synthetic.write import is_complete, load_ground_truth, scene_dir, write_metadata, write_scene


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
             split: str = "train", supersample: int = 1, crf: int = 18, verbose: bool = False) -> Path:
    """Write scenes 0..scenes-1 under out/split and its metadata.csv; return out/split."""
    if scenes < 1 or cameras < 2 or frames < 2:
        raise ValueError(f"need scenes >= 1, cameras >= 2 and frames >= 2; got {scenes}, {cameras}, {frames}")
    if height % 2 or (width or height) % 2 or min(height, width or height) < 8:
        raise ValueError(f"image size {height}x{width or height}: height and width must be even and >= 8 "
                         f"(H.264 yuv420p needs even sizes)")
    root = Path(out) / split
    kwargs = dict(seed=seed, num_cameras=cameras, height=height, width=width or height, num_frames=frames,
                  fps=fps, lenses=tuple(lenses))
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m track2view.synthetic", description=__doc__,
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
    a = p.parse_args(argv)
    root = generate(a.out, a.scenes, a.cameras, a.size, a.width, a.frames, a.fps, a.seed, a.workers,
                    [s for s in a.lenses.split(",") if s], a.split, a.supersample, a.crf, verbose=True)
    print(root)


if __name__ == "__main__":
    main()
