"""RealCam-Vid's metadata (`RealCam-Vid_test.npz`): an object array of dicts, read with the restricted unpickler.

Per clip (facts from the RealCam-Vid project, ../shared/reference/datasets.md):
    video_path           str, relative to the dataset root; names the source dataset (RealEstate10K, DL3DV-10K,
                         MiraData9K): there is no separate source field
    short_caption        str (<= 77 CLIP tokens)      long_caption  str (the reference loader's prompt)
    camera_intrinsics    [4] or [T, 4]: fx, fy, cx, cy normalized by width / height
    camera_extrinsics    [T, 4, 4] world-to-camera, OpenCV axes, relative scale
    align_factor         float: c2w = inv(w2c); c2w[:, :3, 3] *= align_factor gives metres
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from track2view.eval.errors import EvalInputError
from track2view.eval.safe_npz import load_npz_restricted

REQUIRED_FIELDS = ("video_path", "camera_intrinsics", "camera_extrinsics")
SOURCES = {"realestate": "RealEstate10K", "dl3dv": "DL3DV-10K", "miradata": "MiraData9K"}
DYNAMIC_SOURCES = ("MiraData9K",)  # RealEstate10K and DL3DV-10K film static scenes


@dataclass
class RealCamClip:
    """One clip of RealCam-Vid's metadata. `intrinsics` [3, 3] normalized (frame 0); `w2c` [T, 4, 4] float64."""

    index: int
    video_path: str
    source: str
    short_caption: str
    long_caption: str
    intrinsics: np.ndarray
    w2c: np.ndarray
    align_factor: float

    @property
    def num_frames(self) -> int:
        return len(self.w2c)

    @property
    def split(self) -> str:
        return "dynamic" if self.source in DYNAMIC_SOURCES else "static"

    def c2w_metres(self) -> np.ndarray:
        """Camera-to-world [T, 4, 4], translations in metres (RealCam-Vid's align_factor applied)."""
        c2w = np.linalg.inv(self.w2c)
        c2w[:, :3, 3] *= self.align_factor
        return c2w


def source_of(video_path: str) -> str:
    """The source dataset named by a RealCam-Vid video path ('unknown' when none is)."""
    lowered = video_path.lower()
    return next((name for key, name in SOURCES.items() if key in lowered), "unknown")


def normalized_intrinsics(values, where: str) -> np.ndarray:
    """[fx, fy, cx, cy] (or [T, 4]: frame 0 is used) normalized by W / H -> normalized K [3, 3]."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 2 and v.shape[0] >= 1:
        v = v[0]
    if v.shape != (4,) or not np.isfinite(v).all() or v[0] <= 0 or v[1] <= 0:
        raise EvalInputError(f"{where}: camera_intrinsics must be [fx, fy, cx, cy] (positive focal lengths, "
                             f"normalized by width/height), got shape {list(np.shape(values))}")
    fx, fy, cx, cy = v
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _clip(index: int, record, path: Path) -> RealCamClip:
    where = f"{path} clip {index}"
    if not isinstance(record, dict):
        raise EvalInputError(f"{where} is a {type(record).__name__}, expected a dict of RealCam-Vid fields")
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise EvalInputError(f"{where} lacks {', '.join(missing)}; is this RealCam-Vid's metadata?")
    w2c = np.asarray(record["camera_extrinsics"], dtype=np.float64)
    if w2c.ndim != 3 or w2c.shape[1:] != (4, 4) or not np.isfinite(w2c).all():
        raise EvalInputError(f"{where}: camera_extrinsics must be finite [T, 4, 4], got {list(w2c.shape)}")
    return RealCamClip(index=index, video_path=str(record["video_path"]), source=source_of(str(record["video_path"])),
                       short_caption=str(record.get("short_caption", "")),
                       long_caption=str(record.get("long_caption", "")),
                       intrinsics=normalized_intrinsics(record["camera_intrinsics"], where), w2c=w2c,
                       align_factor=float(record.get("align_factor", 1.0)))


def read_realcam(path: str | Path) -> list[RealCamClip]:
    """Every clip of a RealCam-Vid metadata file (`RealCam-Vid_test.npz`), validated."""
    path = Path(path)
    arrays = load_npz_restricted(path)
    if len(arrays) != 1:
        raise EvalInputError(f"{path} holds arrays {sorted(arrays)}; RealCam-Vid's metadata holds one (arr_0)")
    (records,) = arrays.values()
    if records.dtype != object or records.ndim != 1:
        raise EvalInputError(f"{path}: expected a 1-d object array of dicts, got {records.dtype} {list(records.shape)}")
    return [_clip(i, r, path) for i, r in enumerate(records)]


# ---- the paper's selection --------------------------------------------------------------------------------------
PAPER_SELECTION = {"static": ("RealEstate10K", 200), "dynamic": ("MiraData9K", 200)}  # Track2View section 4.1


def realcam_manifest(clips: list[RealCamClip], root: str, num_frames: int = 81, seed: int = 0,
                     selection: dict[str, tuple[str, int]] | None = None, prompt_field: str = "long_caption"):
    """The seeded selection (default: the paper's 200 static RealEstate10K + 200 dynamic MiraData clips with at
    least `num_frames` frames), each with the next of ReCamMaster's ten trajectories (cycled per split)."""
    from track2view.eval.benchmarks.presets import preset_trajectory
    from track2view.eval.manifest import Manifest, ManifestClip

    if prompt_field not in ("long_caption", "short_caption"):
        raise EvalInputError(f"prompt field must be long_caption or short_caption, got {prompt_field!r}")
    rng = np.random.default_rng(seed)
    entries = []
    for split, (source, count) in (selection or PAPER_SELECTION).items():
        candidates = [c for c in clips if c.source == source and c.num_frames >= num_frames]
        if len(candidates) < count:
            raise EvalInputError(f"{split}: {count} {source} clips of >= {num_frames} frames asked, the metadata "
                                 f"has {len(candidates)}")
        chosen = sorted(rng.choice(len(candidates), size=count, replace=False))
        for position, i in enumerate(chosen):
            clip = candidates[i]
            record, target_c2w = preset_trajectory(position, num_frames)
            entries.append(ManifestClip(key=f"{source}-{clip.index:05d}", split=split, source_video=clip.video_path,
                                        prompt=getattr(clip, prompt_field), clip_text=clip.short_caption,
                                        intrinsics=clip.intrinsics, target_c2w=target_c2w, trajectory=record))
    return Manifest("realcam-vid", str(root), num_frames, seed, entries)
