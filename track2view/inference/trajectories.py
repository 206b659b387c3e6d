"""Target camera trajectories: named presets and custom pose files.

Conventions
-----------
* Cameras are OpenCV (x right, y down, z forward); poses are 4x4 camera-to-world (c2w) matrices.
* A preset is a *relative motion* `M_t` [T, 4, 4]: the target camera expressed in the coordinates of the
  source camera *of the same frame*. The target camera at frame t is

      target_c2w[t] = source_c2w[t] @ M_t

  so the source video's own camera motion is preserved and the user's motion is added on top of it (a
  "pan right" on a handheld clip stays handheld). `static` is the exception that removes the source
  motion: a tripod at the source camera's frame-0 pose.
* `aim` (translations): the camera also turns to keep the pivot centred, as ReCamMaster's translate up/down
  (1 m at a 4 m pivot = 14 degrees of counter-tilt). Without it translations keep the source's orientation.
* Mode `gradual`: M_0 = identity and the motion grows at constant speed to the full amount at the last
  frame (ReCamMaster's presets). Mode `direct`: the full motion from the first frame (a new viewpoint
  that then follows the source camera).
* Amounts: degrees for rotations (pan, tilt, arc), metres for translations (dolly, translate). The arc
  pivot lies on the optical axis at the scene's median track depth. With a monocular (relative-scale)
  tracker a "metre" is `median_depth / REFERENCE_DEPTH_M` scene units, i.e. the scene is taken to be
  REFERENCE_DEPTH_M (4 m, ReCamMaster's orbit distance) deep; with a metric tracker metres are metres.
* Custom pose files hold per-frame 4x4 poses of the target camera relative to the source camera at
  frame 0 (the convention of `cameras.npz` in the shards), OpenCV axes, translation in metres (same
  scale rule as above, or `"units": "scene"`):

      JSON: {"convention": "opencv", "pose": "c2w" | "w2c", "units": "metres" | "scene",
             "poses": [[[r00, r01, r02, tx], ...4 rows], ...T matrices]}
      npz:  key `c2w` or `w2c` [T, 4, 4] (optional 0-d string array `units`)

  `target_c2w[t] = source_c2w[0] @ P_t` (P as c2w). Such a trajectory replaces the source camera motion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_DEPTH_M = 4.0
MODES = ("gradual", "direct")


@dataclass(frozen=True)
class Preset:
    kind: str  # "rotate" | "translate" | "arc" | "static"
    axis: tuple[float, float, float]  # rotation axis (rotate, arc) or translation direction, camera coords
    default_amount: float
    unit: str  # "deg" | "m" | ""
    help: str


# Rotation signs follow OpenCV axes: +angle about y turns the view right, +angle about x turns it up.
PRESETS: dict[str, Preset] = {
    "pan_left": Preset("rotate", (0, 1, 0), -20.0, "deg", "yaw left about the camera centre"),
    "pan_right": Preset("rotate", (0, 1, 0), 20.0, "deg", "yaw right about the camera centre"),
    "tilt_up": Preset("rotate", (1, 0, 0), 10.0, "deg", "pitch up about the camera centre"),
    "tilt_down": Preset("rotate", (1, 0, 0), -10.0, "deg", "pitch down about the camera centre"),
    "roll_clockwise": Preset("rotate", (0, 0, 1), 15.0, "deg", "roll about the optical axis"),
    "roll_counterclockwise": Preset("rotate", (0, 0, 1), -15.0, "deg", "roll about the optical axis"),
    "dolly_in": Preset("translate", (0, 0, 1), 2.0, "m", "move forward along the optical axis"),
    "dolly_out": Preset("translate", (0, 0, -1), 2.0, "m", "move backward along the optical axis"),
    "translate_left": Preset("translate", (-1, 0, 0), 1.0, "m", "truck left"),
    "translate_right": Preset("translate", (1, 0, 0), 1.0, "m", "truck right"),
    "translate_up": Preset("translate", (0, -1, 0), 1.0, "m", "pedestal up"),
    "translate_down": Preset("translate", (0, 1, 0), 1.0, "m", "pedestal down"),
    "arc_left": Preset("arc", (0, 1, 0), 30.0, "deg", "orbit left about the pivot at the scene's depth"),
    "arc_right": Preset("arc", (0, 1, 0), -30.0, "deg", "orbit right about the pivot at the scene's depth"),
    "arc_up": Preset("arc", (1, 0, 0), -20.0, "deg", "orbit up (look down) about the pivot"),
    "arc_down": Preset("arc", (1, 0, 0), 20.0, "deg", "orbit down (look up) about the pivot"),
    "static": Preset("static", (0, 0, 0), 0.0, "", "locked-off camera at the source's frame-0 pose"),
}
# Other tools' words for the same motions (Gen3C zoom_in/zoom_out, TrajectoryCrafter-style orbits).
ALIASES = {"zoom_in": "dolly_in", "zoom_out": "dolly_out", "orbit_left": "arc_left", "orbit_right": "arc_right",
           "orbit_up": "arc_up", "orbit_down": "arc_down", "truck_left": "translate_left",
           "truck_right": "translate_right", "pedestal_up": "translate_up", "pedestal_down": "translate_down"}


class TrajectoryError(ValueError):
    """A trajectory that cannot be built (unknown name, bad amount, malformed pose file)."""


def preset_names() -> list[str]:
    return sorted(PRESETS)


def resolve_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise TrajectoryError(f"unknown trajectory {name!r}; valid: {', '.join(preset_names())} "
                              f"(aliases: {', '.join(sorted(ALIASES))}), or a pose file via --poses")
    return key


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation by `degrees` about `axis` (Rodrigues; a dozen lines, so no scipy dependency)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    th = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(th) * k + (1 - math.cos(th)) * (k @ k)


def rotation_angle(r: np.ndarray) -> float:
    """Angle in degrees of a 3x3 rotation."""
    return math.degrees(math.acos(float(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def rigid(r: np.ndarray, t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def aim_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rotation (smallest turn from the identity) whose optical axis z points from `position` at `target`."""
    z, d = np.array([0.0, 0.0, 1.0]), (target - position) / np.linalg.norm(target - position)
    axis = np.cross(z, d)
    if np.linalg.norm(axis) < 1e-12:
        return np.eye(3) if d[2] > 0 else rotation([0, 1, 0], 180.0)
    return rotation(axis, math.degrees(math.atan2(np.linalg.norm(axis), float(d @ z))))


def preset_motion(name: str, num_frames: int, amount: float | None = None, mode: str = "gradual",
                  pivot_depth: float = REFERENCE_DEPTH_M, units_per_metre: float = 1.0, aim: bool = False
                  ) -> np.ndarray:
    """Relative motion M_t [T, 4, 4] float64 of a named preset (see the module docstring).

    amount: degrees or metres (default: the preset's ReCamMaster-like amount; its sign is the preset's
    direction, so a negative amount reverses it). pivot_depth: arc pivot distance in scene units.
    units_per_metre: scene units per metre (1 for metric tracks). aim: translations turn the camera to keep
    the pivot centred (ReCamMaster's translate up/down: 1 m at a 4 m pivot is a 14 degree counter-tilt).
    """
    preset = PRESETS[resolve_name(name)]
    if mode not in MODES:
        raise TrajectoryError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if num_frames < 1:
        raise TrajectoryError(f"num_frames must be >= 1, got {num_frames}")
    if amount is not None and not math.isfinite(amount):
        raise TrajectoryError(f"trajectory amount must be a finite number, got {amount}")
    if not (math.isfinite(pivot_depth) and pivot_depth > 0 and math.isfinite(units_per_metre)
            and units_per_metre > 0):
        raise TrajectoryError(f"scene scale must be positive and finite (pivot_depth={pivot_depth}, "
                              f"units_per_metre={units_per_metre})")
    # The preset's default amount carries the direction; a user amount is a magnitude in that direction.
    sign = math.copysign(1.0, preset.default_amount) if preset.default_amount else 1.0
    full = preset.default_amount if amount is None else sign * amount
    if mode == "gradual":
        fractions = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.ones(1)
    else:
        fractions = np.ones(num_frames)
    axis = np.asarray(preset.axis, dtype=np.float64)
    motions = []
    for f in fractions:
        if preset.kind == "rotate":
            m = rigid(rotation(axis, f * full), np.zeros(3))
        elif preset.kind == "translate":
            t = axis * f * full * units_per_metre
            r = aim_at(t, np.array([0.0, 0.0, pivot_depth])) if aim else np.eye(3)
            m = rigid(r, t)
        elif preset.kind == "arc":
            # Orbit about the pivot p = (0, 0, d): rotate the camera by R about p, keeping p in view.
            r, p = rotation(axis, f * full), np.array([0.0, 0.0, pivot_depth])
            m = rigid(r, p - r @ p)
        else:  # static: handled by `target_cameras`, the motion itself is the identity
            m = np.eye(4)
        motions.append(m)
    return np.stack(motions)


@dataclass
class Trajectory:
    """A resolved target trajectory. `motion` [T, 4, 4]; `relative_to` is "source" (target = source_c2w[t]
    @ M_t, presets) or "source_frame0" (target = source_c2w[0] @ M_t, custom poses and `static`)."""

    name: str
    motion: np.ndarray
    relative_to: str = "source"
    in_metres: bool = False  # translations still in metres (a pose file), to be scaled by `in_scene_units`

    def in_scene_units(self, units_per_metre: float) -> "Trajectory":
        """The trajectory with metre translations converted to scene units (presets are built in them)."""
        if not self.in_metres:
            return self
        motion = self.motion.copy()
        motion[:, :3, 3] *= units_per_metre
        return Trajectory(self.name, motion, self.relative_to)

    def target_c2w(self, source_c2w: np.ndarray) -> np.ndarray:
        """Target camera-to-world [T, 4, 4] from the source camera-to-world [T, 4, 4]."""
        source_c2w = np.asarray(source_c2w, dtype=np.float64)
        if source_c2w.shape != self.motion.shape:
            raise TrajectoryError(f"trajectory {self.name!r} has {len(self.motion)} poses but the source has "
                                  f"{len(source_c2w)} frames")
        anchor = source_c2w if self.relative_to == "source" else source_c2w[:1]
        return anchor @ self.motion


def make_trajectory(name: str, num_frames: int, amount: float | None = None, mode: str = "gradual",
                    pivot_depth: float = REFERENCE_DEPTH_M, units_per_metre: float = 1.0, aim: bool = False
                    ) -> Trajectory:
    """A named preset as a Trajectory (arguments as `preset_motion`)."""
    key = resolve_name(name)
    motion = preset_motion(key, num_frames, amount, mode, pivot_depth, units_per_metre, aim)
    return Trajectory(key, motion, "source_frame0" if key == "static" else "source")


def scene_scale(median_depth: float, metric: bool) -> tuple[float, float]:
    """(pivot_depth, units_per_metre) for a scene whose median track depth is `median_depth` scene units."""
    if not (math.isfinite(median_depth) and median_depth > 0):
        raise TrajectoryError(f"the scene's median track depth must be positive, got {median_depth}")
    return median_depth, 1.0 if metric else median_depth / REFERENCE_DEPTH_M


def load_poses(path: str | Path, num_frames: int, units_per_metre: float | None = None) -> Trajectory:
    """Read a custom trajectory (JSON or npz, see the module docstring) as a Trajectory relative to the
    source camera at frame 0. A file with exactly one pose is held for all frames (a static viewpoint).

    Metre translations are scaled by `units_per_metre`; when it is not known yet (None), they stay in metres
    and `Trajectory.in_scene_units` converts them once the scene's scale is known."""
    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"pose file not found: {path}")
    units, kind = "metres", None
    try:
        if path.suffix.lower() == ".json":
            spec = json.loads(path.read_text())
            if isinstance(spec, list):
                spec = {"poses": spec}
            if not isinstance(spec, dict) or "poses" not in spec:
                raise TrajectoryError(f"{path}: expected a JSON object with a 'poses' list of 4x4 matrices")
            if str(spec.get("convention", "opencv")).lower() != "opencv":
                raise TrajectoryError(f"{path}: only OpenCV poses (x right, y down, z forward) are supported, "
                                      f"got convention {spec['convention']!r}")
            kind = str(spec.get("pose", "c2w")).lower()
            units = str(spec.get("units", units)).lower()
            poses = np.asarray(spec["poses"], dtype=np.float64)
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as f:
                keys = [k for k in ("c2w", "w2c") if k in f.files]
                if len(keys) != 1:
                    raise TrajectoryError(f"{path}: expected exactly one of the arrays 'c2w' or 'w2c', "
                                          f"found {sorted(f.files)}")
                kind, poses = keys[0], np.asarray(f[keys[0]], dtype=np.float64)
                if "units" in f.files:
                    units = str(f["units"]).lower()
        else:
            raise TrajectoryError(f"{path}: pose files must be .json or .npz")
    except TrajectoryError:
        raise
    except (ValueError, TypeError, OSError) as e:
        raise TrajectoryError(f"cannot read pose file {path}: {e}") from e
    if kind not in ("c2w", "w2c"):
        raise TrajectoryError(f"{path}: 'pose' must be 'c2w' or 'w2c', got {kind!r}")
    if units not in ("metres", "meters", "m", "scene"):
        raise TrajectoryError(f"{path}: 'units' must be 'metres' or 'scene', got {units!r}")
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise TrajectoryError(f"{path}: poses must have shape [T, 4, 4], got {list(poses.shape)}")
    if not np.isfinite(poses).all():
        raise TrajectoryError(f"{path}: poses contain non-finite values (NaN or inf)")
    if len(poses) == 1:
        poses = np.repeat(poses, num_frames, axis=0)
    if len(poses) < num_frames:
        raise TrajectoryError(f"{path}: {len(poses)} poses for a {num_frames}-frame clip; give one pose per "
                              f"frame (or a single pose for a static viewpoint)")
    poses = poses[:num_frames]
    if not np.allclose(poses[:, 3], [0, 0, 0, 1], atol=1e-6):
        raise TrajectoryError(f"{path}: the last row of every pose must be [0, 0, 0, 1]")
    r = poses[:, :3, :3]
    orthonormal = np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-4)
    if not (orthonormal and np.allclose(np.linalg.det(r), 1, atol=1e-4)):
        raise TrajectoryError(f"{path}: the 3x3 blocks must be proper rotations (orthonormal, determinant +1)")
    c2w = np.linalg.inv(poses) if kind == "w2c" else poses.copy()
    trajectory = Trajectory(path.stem, c2w, "source_frame0", in_metres=units != "scene")
    return trajectory if units_per_metre is None else trajectory.in_scene_units(units_per_metre)


def save_poses(path: str | Path, c2w: np.ndarray, units: str = "metres") -> Path:
    """Write per-frame c2w poses (relative to the source camera at frame 0) as a JSON pose file, atomically."""
    from track2view.io import write_json

    c2w = np.asarray(c2w, dtype=np.float64)
    spec = {"convention": "opencv", "pose": "c2w", "units": units, "poses": c2w.tolist()}
    return write_json(path, spec, indent=None)
