"""Camera conventions: MultiCamVideo's Unreal JSON, OpenCV poses, lens intrinsics, projection.

Conventions (see also `track2view/tracks.py`):
* Poses are camera-to-world `c2w` [..., 4, 4] with OpenCV camera axes (x right, y down, z forward), in metres.
* Intrinsics are NORMALIZED: row 0 of the pixel K divided by W, row 1 by H, so `uv = K_n @ (x/z, y/z, 1)`
  lands in [0, 1]^2 over the image with 0 the left/top edge (the pixel centre of column j is (j + 0.5) / W).
* MultiCamVideo stores Unreal Engine row-vector camera-to-world matrices: rows 0-2 are the camera's forward
  (X), right (Y) and up (Z) axes in world coordinates, row 3 is the location in centimetres. The world
  frame is Unreal's (x forward, y right, z up; left-handed) and stays so after conversion: absolute OpenCV
  rotation blocks then have determinant -1, relative poses between two cameras are proper rotations.
  Use relative poses (`relative_to`).

Every function takes numpy arrays or torch tensors (and returns the same kind), with any leading batch axes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

SENSOR_WIDTH_MM = 23.76  # MultiCamVideo's (square) sensor
CM_PER_M = 100.0

# Unreal axes (forward, right, up) -> OpenCV camera axes (right, down, forward):
# OpenCV x = Unreal right, OpenCV y = -Unreal up, OpenCV z = Unreal forward.
_UNREAL_TO_OPENCV_AXES = np.array([[0.0, 0.0, 1.0],
                                   [1.0, 0.0, 0.0],
                                   [0.0, -1.0, 0.0]])  # columns: OpenCV x, y, z expressed in (fwd, right, up)

_ROW = re.compile(r"\[([^\[\]]*)\]")


def _xp(x):
    """numpy or torch, whichever holds x."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


# ---- Unreal <-> OpenCV ------------------------------------------------------------------------------
def parse_unreal_matrix(text: str) -> np.ndarray:
    """Parse one MultiCamVideo matrix string, e.g. "[1 0 0 0] [-0 1 0 0] [0 -0 1 0] [3390 1380 240 1] ".

    Rows may carry 3 or 4 values (a 3-value row gets 0, or 1 for the location row, as its 4th value).
    Returns the Unreal row-vector matrix [4, 4] float64 exactly as written (not transposed).
    """
    rows = _ROW.findall(text)
    if len(rows) != 4:
        raise ValueError(f"an Unreal camera matrix needs 4 bracketed rows like '[1 0 0 0] [0 1 0 0] [0 0 1 0] "
                         f"[x y z 1]', got {len(rows)} in {text!r}")
    out = np.zeros((4, 4))
    for i, row in enumerate(rows):
        try:
            values = [float(v) for v in row.replace(",", " ").split()]
        except ValueError as e:
            raise ValueError(f"row {i} of camera matrix {text!r} is not numeric: {e}") from None
        if len(values) not in (3, 4):
            raise ValueError(f"row {i} of camera matrix {text!r} has {len(values)} values; expected 3 or 4")
        out[i, :3] = values[:3]
        out[i, 3] = values[3] if len(values) == 4 else float(i == 3)
    return out


def format_unreal_matrix(matrix) -> str:
    """Inverse of `parse_unreal_matrix`: "[a b c d] [..] [..] [..] " with 9 significant digits."""
    m = np.asarray(matrix, dtype=np.float64)
    return "".join("[" + " ".join(format(v, ".9g") for v in row) + "] " for row in m)


def unreal_to_opencv(unreal):
    """Unreal row-vector c2w [..., 4, 4] (cm) -> OpenCV column-vector c2w [..., 4, 4] (m), same world frame."""
    xp = _xp(unreal)
    m = unreal.swapaxes(-1, -2)  # column-vector form: columns = forward, right, up, location
    axes = xp.asarray(_UNREAL_TO_OPENCV_AXES) if xp is np else xp.as_tensor(_UNREAL_TO_OPENCV_AXES, dtype=m.dtype,
                                                                              device=m.device)
    out = m * 1.0  # copy, float
    out[..., :3, :3] = m[..., :3, :3] @ axes
    out[..., :3, 3] = m[..., :3, 3] / CM_PER_M
    return out


def opencv_to_unreal(c2w):
    """Inverse of `unreal_to_opencv`: OpenCV c2w [..., 4, 4] (m) -> Unreal row-vector matrix (cm)."""
    xp = _xp(c2w)
    axes = xp.asarray(_UNREAL_TO_OPENCV_AXES) if xp is np else xp.as_tensor(_UNREAL_TO_OPENCV_AXES, dtype=c2w.dtype,
                                                                              device=c2w.device)
    m = c2w * 1.0
    m[..., :3, :3] = c2w[..., :3, :3] @ axes.swapaxes(-1, -2)  # axes is orthogonal: inverse = transpose
    m[..., :3, 3] = c2w[..., :3, 3] * CM_PER_M
    return m.swapaxes(-1, -2)


# ---- MultiCamVideo extrinsics files -----------------------------------------------------------------
def _frame_index(key: str) -> int:
    m = re.fullmatch(r"frame(\d+)", key)
    if not m:
        raise ValueError(f"unexpected key {key!r} in camera_extrinsics.json; expected frame0, frame1, ...")
    return int(m.group(1))


def read_unreal_extrinsics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read `camera_extrinsics.json` -> {camera name: Unreal row-vector matrices [T, 4, 4] (cm)}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"camera file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} must map frame0, frame1, ... to {{camXX: matrix string}}")
    frames = sorted(data, key=_frame_index)
    if [_frame_index(k) for k in frames] != list(range(len(frames))):
        raise ValueError(f"{path}: frame keys must run frame0..frame{len(frames) - 1} without gaps")
    cams = sorted(data[frames[0]])
    out = {c: np.zeros((len(frames), 4, 4)) for c in cams}
    for t, key in enumerate(frames):
        if sorted(data[key]) != cams:
            raise ValueError(f"{path}: {key} lists cameras {sorted(data[key])}, frame0 lists {cams}")
        for c in cams:
            try:
                out[c][t] = parse_unreal_matrix(data[key][c])
            except ValueError as e:
                raise ValueError(f"{path}: {key}/{c}: {e}") from None
    return out


def read_multicam_cameras(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read `camera_extrinsics.json` -> {camera name: OpenCV c2w [T, 4, 4] float64, metres, world frame}."""
    return {c: unreal_to_opencv(m) for c, m in read_unreal_extrinsics(path).items()}


def write_multicam_cameras(path: str | os.PathLike, c2w_by_camera: dict[str, np.ndarray]) -> Path:
    """Write OpenCV c2w [T, 4, 4] (metres) per camera as MultiCamVideo's Unreal JSON, atomically."""
    from track2view.io import write_json

    lengths = {len(v) for v in c2w_by_camera.values()}
    if len(lengths) != 1:
        raise ValueError(f"all cameras need the same number of frames, got {sorted(lengths)}")
    unreal = {c: opencv_to_unreal(np.asarray(v, dtype=np.float64)) for c, v in c2w_by_camera.items()}
    data = {f"frame{t}": {c: format_unreal_matrix(unreal[c][t]) for c in sorted(unreal)}
            for t in range(lengths.pop())}
    return write_json(path, data)


# ---- intrinsics ---------------------------------------------------------------------------------------
def focal_from_lens(lens: str) -> float:
    """Focal length in mm from a MultiCamVideo lens folder name, e.g. 'f24_aperture5' -> 24.0."""
    m = re.match(r"f(\d+(?:\.\d+)?)(?:_|$)", Path(lens).name)
    if not m:
        raise ValueError(f"cannot read a focal length from lens folder {lens!r}; expected a name like "
                         f"'f24_aperture5' (f<focal mm>_aperture<f-number>)")
    return float(m.group(1))


def lens_name(focal_mm: float, aperture: float) -> str:
    """'f24_aperture5' from (24, 5); 'f35_aperture2.4' from (35, 2.4)."""
    return f"f{focal_mm:g}_aperture{aperture:g}"


def intrinsics_from_focal(focal_mm: float, height: int, width: int, sensor_width_mm: float = SENSOR_WIDTH_MM
                          ) -> np.ndarray:
    """Normalized K [3, 3]: fx = focal/sensor * W pixels, square pixels, principal point at the centre."""
    fx_px = focal_mm / sensor_width_mm * width
    return np.array([[fx_px / width, 0.0, 0.5],
                     [0.0, fx_px / height, 0.5],
                     [0.0, 0.0, 1.0]])


def intrinsics_from_lens(lens: str, height: int, width: int) -> np.ndarray:
    """Normalized K [3, 3] of a MultiCamVideo lens folder ('f24_aperture5') at an image size."""
    return intrinsics_from_focal(focal_from_lens(lens), height, width)


def normalize_intrinsics(K_px, height: int, width: int):
    """Pixel K (centre of pixel j at j + 0.5) -> normalized K: row 0 / W, row 1 / H."""
    xp = _xp(K_px)
    scale = xp.asarray([1.0 / width, 1.0 / height, 1.0]) if xp is np else xp.tensor(
        [1.0 / width, 1.0 / height, 1.0], dtype=K_px.dtype, device=K_px.device)
    return K_px * scale[:, None]


def denormalize_intrinsics(K_n, height: int, width: int):
    """Normalized K -> pixel K (centre of pixel j at j + 0.5)."""
    xp = _xp(K_n)
    scale = xp.asarray([float(width), float(height), 1.0]) if xp is np else xp.tensor(
        [float(width), float(height), 1.0], dtype=K_n.dtype, device=K_n.device)
    return K_n * scale[:, None]


# ---- poses ----------------------------------------------------------------------------------------------
def invert_rigid(c2w):
    """Inverse of rigid transforms [..., 4, 4] (rotation block orthogonal, det +-1)."""
    R, t = c2w[..., :3, :3], c2w[..., :3, 3:]
    out = c2w * 0.0
    Rt = R.swapaxes(-1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -(Rt @ t)
    out[..., 3, 3] = 1.0
    return out


def relative_to(c2w, reference_c2w):
    """Express poses [..., 4, 4] in the frame of `reference_c2w` [4, 4] (e.g. the source camera at frame 0).

    Returns inv(reference) @ c2w: the reference itself becomes the identity.
    """
    return invert_rigid(reference_c2w) @ c2w


def transform_points(points, transform):
    """Apply a 4x4 transform [..., 4, 4] to points [..., N, 3]."""
    return points @ transform[..., :3, :3].swapaxes(-1, -2) + transform[..., None, :3, 3]


# ---- projection -----------------------------------------------------------------------------------------
def project(points_world, c2w, intrinsics):
    """World points [..., N, 3] -> (uv [..., N, 2] normalized, depth [..., N] camera z).

    c2w [..., 4, 4] (OpenCV), intrinsics [..., 3, 3] normalized. Points at depth <= 0 get finite but
    meaningless uv: test `depth > 0` (and uv inside [0, 1]^2) for validity.
    """
    xp = _xp(points_world)
    cam = transform_points(points_world, invert_rigid(c2w))
    depth = cam[..., 2]
    tiny = 1e-12
    safe = xp.where(xp.abs(depth) < tiny, xp.full_like(depth, tiny), depth)
    xy1 = xp.stack([cam[..., 0] / safe, cam[..., 1] / safe, xp.ones_like(depth)], -1)
    uv = (xy1 @ intrinsics.swapaxes(-1, -2))[..., :2]
    return uv, depth


def unproject(uv, depth, c2w, intrinsics):
    """Inverse of `project`: uv [..., N, 2] normalized and depth [..., N] (camera z) -> world points [..., N, 3]."""
    xp = _xp(uv)
    ones = xp.ones_like(uv[..., :1])
    uv1 = xp.concatenate([uv, ones], -1)
    rays = uv1 @ xp.linalg.inv(intrinsics).swapaxes(-1, -2)  # (x/z, y/z, 1)
    return transform_points(rays * depth[..., None], c2w)
