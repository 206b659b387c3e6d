"""Camera poses of a video by COLMAP's global mapper (GLOMAP), through pycolmap 4.x, at known intrinsics.

Protocol (CamI2V's GLOMAP evaluation, read from its code): SIFT features with one PINHOLE camera for all
frames at the known intrinsics; sequential matching (each frame with its `overlap` successors, guided);
the global mapper with the intrinsics held fixed. Poses come back as camera-to-world [T, 4, 4] (OpenCV axes,
as COLMAP's), relative to frame 0, at the reconstruction's arbitrary scale. A reconstruction that does not
register every frame is a failure (`PoseFailure`), reported by the caller, never dropped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

SEQUENTIAL_OVERLAP = 10


class PoseFailure(RuntimeError):
    """The global mapper did not reconstruct every frame; the message says what it got."""


def pixel_intrinsics(intrinsics: np.ndarray, height: int, width: int) -> tuple[float, float, float, float]:
    """Normalized K [3, 3] -> (fx, fy, cx, cy) in pixels (COLMAP: pixel centres at +0.5, as ours)."""
    k = np.asarray(intrinsics, dtype=np.float64)
    return k[0, 0] * width, k[1, 1] * height, k[0, 2] * width, k[1, 2] * height


def _write_frames(frames: np.ndarray, folder: Path) -> list[str]:
    from PIL import Image

    names = [f"{t:06d}.png" for t in range(len(frames))]
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(folder / name)
    return names


def _options(num_threads: int):
    import pycolmap

    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = 0
    ba = options.mapper.bundle_adjustment
    ba.refine_focal_length = ba.refine_principal_point = ba.refine_extra_params = False
    return options


def estimate_poses(frames: np.ndarray, intrinsics: np.ndarray, num_threads: int = -1) -> np.ndarray:
    """frames [T, H, W, 3] uint8, normalized K [3, 3] -> c2w [T, 4, 4] relative to frame 0 (raises PoseFailure)."""
    import pycolmap

    pycolmap.logging.minloglevel = 2  # errors only: COLMAP's per-step log would bury the progress bar
    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="t2v-glomap-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        names = _write_frames(frames, tmp / "images")
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(f"{v:.6f}" for v in pixel_intrinsics(intrinsics, height, width))
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = num_threads
        database = tmp / "database.db"
        pycolmap.extract_features(database, tmp / "images", image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        matching = pycolmap.FeatureMatchingOptions()
        matching.guided_matching, matching.num_threads = True, num_threads
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = SEQUENTIAL_OVERLAP
        pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                  device=pycolmap.Device.cpu)
        (tmp / "sparse").mkdir()
        models = pycolmap.global_mapping(database, tmp / "images", tmp / "sparse", _options(num_threads))
    return _poses(models, names)


def _poses(models: dict, names: list[str]) -> np.ndarray:
    if not models:
        raise PoseFailure("the global mapper reconstructed nothing (too few matches)")
    best = max(models.values(), key=lambda r: r.num_reg_images())
    by_name = {image.name: image for image in best.images.values() if image.has_pose}
    if len(by_name) < len(names):
        raise PoseFailure(f"the global mapper registered {len(by_name)} of {len(names)} frames")
    c2w = np.stack([_c2w(by_name[n].cam_from_world()) for n in names])
    return np.linalg.inv(c2w[0]) @ c2w


def _c2w(cam_from_world) -> np.ndarray:
    w2c = np.eye(4)
    w2c[:3] = cam_from_world.matrix()
    return np.linalg.inv(w2c)
