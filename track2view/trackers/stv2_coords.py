"""SpatialTrackerV2's coordinate frames <-> ours (pure numpy, tested without the model).

Its front end (`preprocess_image`, crop mode) resizes a video to width 518 and a height rounded to a multiple
of 14, then centre-crops the height to at most 518: 832x480 becomes 518x294 (`ProcessedGeometry`). Every 2D
output and intrinsic matrix it returns is in that processed frame, with pixel centres at integers (its
sampling uses align_corners=True); ours are at +0.5 (track2view/tracks.py). Its `track3d_pred` is camera-frame
xyz: world = R @ xyz + t with its camera-to-world poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATCH = 14
TARGET_WIDTH = 518


@dataclass(frozen=True)
class ProcessedGeometry:
    """How the front end's `preprocess_image` maps an H x W video: resize to (resized_height, width),
    then keep rows [crop_top, crop_top + height)."""

    source_height: int
    source_width: int
    width: int
    resized_height: int
    crop_top: int
    height: int

    @classmethod
    def for_size(cls, height: int, width: int, target_width: int = TARGET_WIDTH) -> "ProcessedGeometry":
        resized = int(round(height * (target_width / width) / PATCH)) * PATCH
        crop_top = max(resized - target_width, 0) // 2
        return cls(height, width, target_width, resized, crop_top, min(resized, target_width))


def normalized_to_processed(uv: np.ndarray, g: ProcessedGeometry) -> np.ndarray:
    """Normalized uv [..., 2] -> the tracker's pixel xy (centre of pixel j at j) in the processed frame."""
    uv = np.asarray(uv, dtype=np.float64)
    x = uv[..., 0] * g.width - 0.5
    y = uv[..., 1] * g.resized_height - g.crop_top - 0.5
    return np.stack([x, y], -1)


def processed_to_normalized(xy: np.ndarray, g: ProcessedGeometry) -> np.ndarray:
    """The tracker's pixel xy [..., 2] (centre of pixel j at j, processed frame) -> normalized uv."""
    xy = np.asarray(xy, dtype=np.float64)
    u = (xy[..., 0] + 0.5) / g.width
    v = (xy[..., 1] + 0.5 + g.crop_top) / g.resized_height
    return np.stack([u, v], -1)


def processed_intrinsics_to_normalized(K: np.ndarray, g: ProcessedGeometry) -> np.ndarray:
    """Pixel K [..., 3, 3] of the processed frame (centre at integer) -> normalized K of the original video.

    x_px = fx X/Z + cx, u = (x_px + 0.5) / W'  =>  fx_n = fx / W', cx_n = (cx + 0.5) / W'
    (and likewise for y with the crop offset and the resized height).
    """
    K = np.asarray(K, dtype=np.float64)
    out = K.copy()
    out[..., 0, 0], out[..., 0, 1] = K[..., 0, 0] / g.width, K[..., 0, 1] / g.width
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) / g.width
    out[..., 1, 1] = K[..., 1, 1] / g.resized_height
    out[..., 1, 2] = (K[..., 1, 2] + 0.5 + g.crop_top) / g.resized_height
    return out


def camera_to_world(points_cam: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Camera-frame points [T, N, 3] and c2w [T, 4, 4] -> world points [T, N, 3] (R @ p + t per frame)."""
    return np.einsum("tij,tnj->tni", c2w[:, :3, :3], points_cam) + c2w[:, None, :3, 3]


def nearest_rigid(c2w: np.ndarray) -> tuple[np.ndarray, float]:
    """c2w [T, 4, 4] with each rotation block replaced by the nearest rotation (SVD), and the largest
    |R R^T - I| entry before (upstream's poses pass through bfloat16 arithmetic under autocast)."""
    c2w = np.array(c2w, dtype=np.float64)
    R = c2w[:, :3, :3]
    deviation = float(np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max()) if len(R) else 0.0
    u, _, vt = np.linalg.svd(R)
    flip = np.sign(np.linalg.det(u @ vt))[:, None]
    c2w[:, :3, :3] = (u * np.concatenate([np.ones((len(R), 2)), flip], 1)[:, None, :]) @ vt
    return c2w, deviation


def queries_to_tracker(queries: np.ndarray, g: ProcessedGeometry) -> np.ndarray:
    """Our queries [Q, 3] (t, u, v normalized) -> theirs [Q, 3] (t, x, y processed pixels, centre at integer)."""
    xy = normalized_to_processed(queries[:, 1:], g)
    return np.concatenate([queries[:, :1], xy], 1).astype(np.float32)
