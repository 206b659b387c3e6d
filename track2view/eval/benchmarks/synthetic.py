"""Our synthetic scenes as a benchmark: held-out scenes whose true target videos and cameras exist.

Reads a split written by `python -m track2view.synthetic --out DIR --split test` (layout in
track2view/synthetic/write.py). Each scene gives clips source camera -> target camera(s): the source video is
`cam01`, the target the next cameras in order; the true target video and its cameras (relative to the source
camera at frame 0, metres) come from the scene's ground truth. A scene is "dynamic" when an object moves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from track2view.cameras import relative_to
from track2view.eval.errors import EvalInputError
from track2view.synthetic.write import GROUND_TRUTH_DIR, SPEC_FILE, is_complete, load_ground_truth


def scene_dirs(root: str | Path) -> list[Path]:
    """Complete synthetic scene directories under a split root, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"synthetic benchmark root not found: {root}")
    scenes = sorted(p.parent.parent for p in root.glob(f"*/scene*/{GROUND_TRUTH_DIR}/{SPEC_FILE}"))
    scenes = [s for s in scenes if is_complete(s)]
    if not scenes:
        raise EvalInputError(f"{root} holds no synthetic scenes (write them with `python -m track2view.synthetic "
                             f"--out DIR --split test`, and pass DIR/test)")
    return scenes


def is_dynamic(spec: dict) -> bool:
    return any(any(o["velocity"]) or o["yaw_rate"] or o.get("bob", [0.0])[0] for o in spec["objects"])


def synthetic_manifest(root: str | Path, targets_per_scene: int = 1, num_frames: int | None = None,
                       max_scenes: int | None = None):
    """A manifest of every complete scene under `root` (source cam01 -> the next `targets_per_scene` cameras)."""
    from track2view.eval.manifest import Manifest, ManifestClip

    root = Path(root).resolve()
    entries, frames_seen = [], set()
    for scene in scene_dirs(root)[:max_scenes]:
        spec, names, c2w, K = load_ground_truth(scene)
        T = num_frames or spec["num_frames"]
        if spec["num_frames"] < T or len(names) < 2:
            raise EvalInputError(f"{scene}: {spec['num_frames']} frames and {len(names)} cameras; need >= {T} "
                                 f"frames and >= 2 cameras")
        frames_seen.add(T)
        for k in range(1, min(targets_per_scene, len(names) - 1) + 1):
            relative = relative_to(c2w[k][:T], c2w[0][0])
            kind = spec["cameras"]["trajectories"][k].get("kind", "")
            entries.append(ManifestClip(
                key=f"{spec['lens'].replace('.', '_')}-{spec['name']}-{names[0]}-{names[k]}",
                split="dynamic" if is_dynamic(spec) else "static",
                source_video=(scene / "videos" / f"{names[0]}.mp4").relative_to(root).as_posix(),
                target_video=(scene / "videos" / f"{names[k]}.mp4").relative_to(root).as_posix(),
                prompt=spec["caption"], clip_text=spec["caption"], intrinsics=np.asarray(K, np.float64),
                target_c2w=relative, trajectory={"name": f"synthetic_{kind}", "camera": names[k]}))
    if len(frames_seen) != 1:
        raise EvalInputError(f"{root}: scenes have different frame counts {sorted(frames_seen)}; pass num_frames")
    return Manifest("synthetic", str(root), frames_seen.pop(), 0, entries)
