"""Procedural scene specification: a textured room, rigid objects, K camera trajectories.

A scene is a plain JSON-serializable dict (the ground truth the oracle tracker reads back):
    room      {"min": [3], "max": [3], "textures": [6 texture dicts]}   faces: x-, x+, y-, y+, z- (ground), z+
    objects   [{"kind": "sphere"|"box", "size": [3] (sphere: radius, radius, radius; box: half extents),
                "texture": {...}, "position": [3], "velocity": [3] m/s, "yaw": rad, "yaw_rate": rad/s,
                "bob": [amplitude m, frequency Hz], "name": str}]
    light     {"direction": [3] (from the light, world), "ambient": float}
    cameras   {"names": [K], "start": {"position": [3], "yaw": rad, "pitch": rad}, "trajectories": [K dicts]}
    name (scene<N>), lens, focal_mm, height, width, num_frames, fps, seed, index, caption
World frame: Unreal's axes in metres (x forward, y right, z up), so the written Unreal JSON is a unit change.
Cameras: OpenCV c2w (x right, y down, z forward) built by `look_c2w`; every camera starts at the same pose.
"""

from __future__ import annotations

import math

import numpy as np

from track2view.cameras import intrinsics_from_focal

SPEC_VERSION = 1
ROOM_FACES = ("wall x-min", "wall x-max", "wall y-min", "wall y-max", "ground", "ceiling")
NUM_ROOM_FACES = len(ROOM_FACES)  # object ids: 0..5 room faces, 6 + i object i, -1 nothing
DEFAULT_LENSES = ("f18_aperture10", "f24_aperture5", "f35_aperture2.4", "f50_aperture2.4")
TRAJECTORY_KINDS = ("pan", "tilt", "dolly", "truck", "pedestal", "arc", "pan_truck", "arc_dolly")

PALETTE = {
    "red": (0.80, 0.15, 0.12), "orange": (0.92, 0.50, 0.10), "yellow": (0.90, 0.80, 0.20),
    "green": (0.20, 0.65, 0.25), "teal": (0.10, 0.55, 0.55), "blue": (0.15, 0.30, 0.80),
    "purple": (0.50, 0.25, 0.70), "pink": (0.90, 0.50, 0.65), "brown": (0.50, 0.32, 0.18),
    "white": (0.88, 0.88, 0.85), "gray": (0.50, 0.50, 0.52), "black": (0.12, 0.12, 0.14),
}


# ---- poses ------------------------------------------------------------------------------------------
def look_c2w(position, yaw: float, pitch: float) -> np.ndarray:
    """OpenCV c2w [4, 4] of a camera at `position` looking along (yaw about +z, pitch up), no roll.

    World axes are Unreal's (x forward, y right, z up): forward = (cos p cos y, cos p sin y, sin p),
    right = up x forward, down = right x forward (numpy cross products; the world is left-handed).
    """
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.cross([0.0, 0.0, 1.0], forward)
    right /= np.linalg.norm(right)
    down = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w


def rotation_z(angle) -> np.ndarray:
    """Rotations about the world up axis, angle [...] -> [..., 3, 3]."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def object_poses(obj: dict, frames, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Rigid pose of an object at integer frames [F]: (rotation [F, 3, 3] local->world, position [F, 3])."""
    s = np.asarray(frames, dtype=np.float64) / fps
    pos = np.asarray(obj["position"]) + s[:, None] * np.asarray(obj["velocity"])
    amp, freq = obj.get("bob", (0.0, 0.0))
    pos[:, 2] += amp * np.abs(np.sin(math.pi * freq * s))
    return rotation_z(obj["yaw"] + obj["yaw_rate"] * s), pos


def camera_trajectory(start: dict, traj: dict, num_frames: int) -> np.ndarray:
    """c2w [T, 4, 4] of one camera: the shared start pose moved at constant speed by a trajectory dict."""
    p0 = np.asarray(start["position"], dtype=np.float64)
    yaw0, pitch0 = start["yaw"], start["pitch"]
    fwd0 = look_c2w(p0, yaw0, 0.0)[:3, 2]
    right0 = look_c2w(p0, yaw0, 0.0)[:3, 0]
    out = np.empty((num_frames, 4, 4))
    for f in range(num_frames):
        s = f / max(num_frames - 1, 1)
        pos, yaw, pitch = p0.copy(), yaw0, pitch0
        pos += fwd0 * traj.get("dolly", 0.0) * s + right0 * traj.get("truck", 0.0) * s
        pos[2] += traj.get("pedestal", 0.0) * s
        yaw += traj.get("pan", 0.0) * s
        pitch += traj.get("tilt", 0.0) * s
        if traj.get("arc", 0.0):  # orbit about the point `radius` ahead, keep looking at it
            a, r = traj["arc"] * s, traj["radius"]
            pivot = p0 + fwd0 * r
            offset = pos - pivot
            pos = pivot + rotation_z(a) @ offset
            yaw += a
        out[f] = look_c2w(pos, yaw, pitch)
    return out


def scene_cameras(spec: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(camera names [K], c2w [K, T, 4, 4] float64 OpenCV metres world, normalized intrinsics [3, 3])."""
    cams = spec["cameras"]
    c2w = np.stack([camera_trajectory(cams["start"], t, spec["num_frames"]) for t in cams["trajectories"]])
    return list(cams["names"]), c2w, intrinsics_from_focal(spec["focal_mm"], spec["height"], spec["width"])


# ---- random scenes ----------------------------------------------------------------------------------
def _texture(rng: np.random.Generator, color_name: str, scale_range=(1.0, 3.0)) -> dict:
    second = rng.choice([n for n in PALETTE if n != color_name])
    mix = rng.uniform(0.25, 0.6)
    c2 = (1 - mix) * np.asarray(PALETTE[color_name]) + mix * np.asarray(PALETTE[second])
    return {"color": list(PALETTE[color_name]), "color2": [float(v) for v in c2], "color_name": color_name,
            "checker": float(rng.uniform(*scale_range)),
            "waves": rng.normal(0.0, 4.0, size=(2, 3)).round(4).tolist(),
            "phases": rng.uniform(0, 2 * math.pi, size=2).round(4).tolist()}


def _trajectory(rng: np.random.Generator, kind: str) -> dict:
    sign = lambda: float(rng.choice([-1.0, 1.0]))  # noqa: E731
    deg = math.radians
    t = {"kind": kind}
    if kind in ("pan", "pan_truck"):
        t["pan"] = sign() * deg(rng.uniform(10, 30))
    if kind == "tilt":
        t["tilt"] = sign() * deg(rng.uniform(5, 12))
    if kind in ("dolly", "arc_dolly"):
        t["dolly"] = sign() * rng.uniform(0.5, 1.5)
    if kind in ("truck", "pan_truck"):
        t["truck"] = sign() * rng.uniform(0.5, 1.5)
    if kind == "pedestal":
        t["pedestal"] = sign() * rng.uniform(0.4, 1.0)
        t["tilt"] = -math.copysign(deg(rng.uniform(4, 10)), t["pedestal"])  # counter-tilt, as ReCamMaster's
    if kind in ("arc", "arc_dolly"):
        t["arc"] = sign() * deg(rng.uniform(15, 35))
        t["radius"] = rng.uniform(3.0, 5.0)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.items()}


def random_scene(seed: int, index: int, *, num_cameras: int = 10, height: int = 96, width: int = 96,
                 num_frames: int = 81, fps: float = 15.0, lens: str | None = None,
                 lenses=DEFAULT_LENSES, min_objects: int = 3, max_objects: int = 6,
                 trajectory_kinds=TRAJECTORY_KINDS) -> dict:
    """A deterministic random scene spec for (seed, index); see the module docstring for its fields.

    The cameras cycle through a random order of `trajectory_kinds` (held-out families for a test split).
    """
    from track2view.cameras import focal_from_lens

    rng = np.random.default_rng([seed, index])
    lens = lens or lenses[index % len(lenses)]
    name = f"scene{index // len(lenses) + 1}" if lens in lenses else f"scene{index + 1}"
    focal = focal_from_lens(lens)
    p0 = rng.uniform([-20, -20, 0], [20, 20, 0]) + [0, 0, rng.uniform(1.2, 1.9)]  # arbitrary world offset
    yaw0 = rng.uniform(-math.pi, math.pi)
    pitch0 = -math.radians(rng.uniform(4, 14))

    room_color, floor_color = rng.choice(list(PALETTE), size=2, replace=False)
    heading = rotation_z(yaw0)

    def to_world(local_xy, z):  # (ahead, right) of the start camera's heading -> world position
        return (p0[:2] + (heading @ np.array([local_xy[0], local_xy[1], 0.0]))[:2]).tolist() + [z]

    # The room is axis-aligned in the world, its walls 6-10 m from the start camera on every side.
    room_min = [p0[0] - rng.uniform(6, 10), p0[1] - rng.uniform(6, 10), 0.0]
    room_max = [p0[0] + rng.uniform(6, 10), p0[1] + rng.uniform(6, 10), rng.uniform(4, 6)]
    textures = [_texture(rng, str(room_color)) for _ in range(4)]
    textures += [_texture(rng, str(floor_color), (1.5, 2.5)), _texture(rng, "white", (0.5, 1.0))]

    objects = []
    for i in range(int(rng.integers(min_objects, max_objects + 1))):
        kind = str(rng.choice(["sphere", "box"]))
        color = str(rng.choice(list(PALETTE)))
        if kind == "sphere":
            r = rng.uniform(0.3, 0.8)
            size = [r, r, r]
        else:
            size = rng.uniform(0.25, 0.7, size=3).tolist()
        dist, lateral = rng.uniform(3.0, 7.0), rng.uniform(-0.45, 0.45) * rng.uniform(3.0, 7.0)
        pos = to_world((dist, lateral), size[2] + 0.001)
        pos[:2] = np.clip(pos[:2], np.array(room_min[:2]) + 1.0, np.array(room_max[:2]) - 1.0).tolist()
        moving = rng.random() < 0.6
        speed = rng.uniform(0.15, 0.6) if moving else 0.0
        heading_v = rng.uniform(-math.pi, math.pi)
        objects.append({
            "name": f"{color} {kind}", "kind": kind, "size": [float(v) for v in size],
            "texture": _texture(rng, color, (2.0, 5.0)),
            "position": [float(v) for v in pos],
            "velocity": [speed * math.cos(heading_v), speed * math.sin(heading_v), 0.0],
            "yaw": float(rng.uniform(-math.pi, math.pi)),
            "yaw_rate": float(rng.uniform(-1.5, 1.5)) if moving else 0.0,
            "bob": [float(rng.uniform(0.1, 0.4)), float(rng.uniform(0.3, 1.0))] if moving and kind == "sphere"
            and rng.random() < 0.5 else [0.0, 0.0],
        })

    kinds = list(rng.permutation(list(trajectory_kinds)))
    trajectories = [_trajectory(rng, kinds[k % len(kinds)]) for k in range(num_cameras)]
    light = rng.normal(size=3) * [0.5, 0.5, 0.2] + [0.0, 0.0, -1.0]
    spec = {
        "version": SPEC_VERSION, "seed": int(seed), "index": int(index), "name": name, "lens": lens, "focal_mm": focal,
        "height": int(height), "width": int(width), "num_frames": int(num_frames), "fps": float(fps),
        "room": {"min": [float(v) for v in room_min], "max": [float(v) for v in room_max], "textures": textures},
        "objects": objects,
        "light": {"direction": (light / np.linalg.norm(light)).tolist(), "ambient": float(rng.uniform(0.3, 0.45))},
        "cameras": {"names": [f"cam{k + 1:02d}" for k in range(num_cameras)],
                    "start": {"position": [float(v) for v in p0], "yaw": float(yaw0), "pitch": float(pitch0)},
                    "trajectories": trajectories},
    }
    spec["caption"] = caption(spec)
    return spec


def caption(spec: dict) -> str:
    """A one-sentence-per-part description of the scene's content and motion."""
    tex = spec["room"]["textures"]
    parts = [f"A room with {tex[0]['color_name']} patterned walls and a {tex[4]['color_name']} checkered floor."]
    for obj in spec["objects"]:
        moving = any(obj["velocity"]) or obj["yaw_rate"]
        what = "box" if obj["kind"] == "box" else "ball"
        if not moving:
            parts.append(f"A {obj['texture']['color_name']} {what} stands still.")
        elif obj["kind"] == "sphere" and obj["bob"][0] > 0:
            parts.append(f"A {obj['texture']['color_name']} {what} bounces across the floor.")
        elif obj["yaw_rate"] and not any(obj["velocity"][:2]):
            parts.append(f"A {obj['texture']['color_name']} {what} spins in place.")
        else:
            parts.append(f"A {obj['texture']['color_name']} {what} slides and turns on the floor.")
    return " ".join(parts)

