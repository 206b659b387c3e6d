"""Write scenes in MultiCamVideo's layout, plus the ground truth the oracle tracker reads.

    <root>/<lens>/scene<N>/videos/cam01.mp4 ...          H.264, `fps` frames per second
    <root>/<lens>/scene<N>/cameras/camera_extrinsics.json  Unreal row-vector c2w, centimetres
    <root>/<lens>/scene<N>/ground_truth/cameras.npz       c2w [K, T, 4, 4] float64 (OpenCV, metres, world),
                                                          intrinsics [3, 3] (normalized), names [K]
    <root>/<lens>/scene<N>/ground_truth/scene.json        the scene spec (written last: marks the scene complete)
    <root>/metadata.csv                                   file_name,text (path relative to <root>)
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from track2view.cameras import write_multicam_cameras
from track2view.io import atomic_path, remove_stale_temps, write_json, write_video
from track2view.synthetic.render import render
from track2view.synthetic.scene import scene_cameras

GROUND_TRUTH_DIR = "ground_truth"
SPEC_FILE = "scene.json"
CAMERAS_FILE = "cameras.npz"


def scene_dir(root: str | os.PathLike, spec: dict) -> Path:
    return Path(root) / spec["lens"] / spec["name"]


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / GROUND_TRUTH_DIR / SPEC_FILE).is_file()


def write_scene(root: str | os.PathLike, spec: dict, supersample: int = 2, crf: int = 18) -> Path:
    """Render every camera of `spec` and write the scene directory (see the module docstring); first remove the
    temporaries a killed writer of this scene left (one process writes a scene)."""
    out = scene_dir(root, spec)
    for sub in ("videos", "cameras", GROUND_TRUTH_DIR):
        remove_stale_temps(out / sub)
    names, c2w, K = scene_cameras(spec)
    for name, cam in zip(names, c2w):
        frames, _ = render(spec, cam, K, supersample=supersample)
        write_video(out / "videos" / f"{name}.mp4", frames, fps=spec["fps"], crf=crf)
    write_multicam_cameras(out / "cameras" / "camera_extrinsics.json", dict(zip(names, c2w)))
    with atomic_path(out / GROUND_TRUTH_DIR / CAMERAS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, c2w=c2w, intrinsics=K, names=np.asarray(names))
    write_json(out / GROUND_TRUTH_DIR / SPEC_FILE, spec)
    return out


def load_ground_truth(path: str | os.PathLike) -> tuple[dict, list[str], np.ndarray, np.ndarray]:
    """(spec, camera names [K], c2w [K, T, 4, 4], normalized intrinsics [3, 3]) of a written scene directory."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} has no synthetic ground truth ({GROUND_TRUTH_DIR}/{SPEC_FILE}); the oracle "
                                f"tracker only works on scenes written by `python -m track2view.synthetic`")
    spec = json.loads((path / GROUND_TRUTH_DIR / SPEC_FILE).read_text())
    with np.load(path / GROUND_TRUTH_DIR / CAMERAS_FILE, allow_pickle=False) as f:
        return spec, [str(n) for n in f["names"]], f["c2w"], f["intrinsics"]


def write_metadata(root: str | os.PathLike) -> Path:
    """Write `<root>/metadata.csv` (file_name,text) for every complete scene under root, sorted."""
    root = Path(root)
    rows = []
    for spec_file in sorted(root.glob(f"*/scene*/{GROUND_TRUTH_DIR}/{SPEC_FILE}")):
        spec = json.loads(spec_file.read_text())
        scene = spec_file.parent.parent
        for name in spec["cameras"]["names"]:
            rows.append((f"{scene.relative_to(root).as_posix()}/videos/{name}.mp4", spec["caption"]))
    with atomic_path(root / "metadata.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "text"])
            writer.writerows(rows)
    return root / "metadata.csv"
