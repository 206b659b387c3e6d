"""Vectorized numpy ray caster for scene specs (`scene.py`): images, depth, object ids, surface points.

Hand-written because the job is tiny and exact: analytic ray-primitive intersections (room box seen from
inside, spheres, oriented boxes) with procedural solid textures in each object's LOCAL frame, so a
surface point keeps its colour while the object moves, and the oracle tracker can re-cast any ray.

Shapes: rays come as [F, P, 3] (F frames, P rays per frame) with `frames` [F] integer frame indices (the
objects' poses); ray directions have camera-space z = 1, so the hit distance t IS the camera depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from track2view.synthetic.scene import NUM_ROOM_FACES, object_poses

EPS = 1e-6


@dataclass
class Hit:
    t: np.ndarray        # [F, P] ray parameter (= camera depth for camera rays); inf where nothing is hit
    object_id: np.ndarray  # [F, P] int: 0..5 room faces, 6 + i object i, -1 nothing
    local: np.ndarray    # [F, P, 3] hit point in the hit object's local frame (room: world - room min)
    normal: np.ndarray   # [F, P, 3] world-space unit normal facing the ray


def camera_rays(c2w: np.ndarray, intrinsics: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through normalized image points uv [F, P, 2] of cameras c2w [F, 4, 4] (normalized K [3, 3] or
    [F, 3, 3]) -> (origins [F, 1, 3] (shared by a frame's rays), directions [F, P, 3] with camera z = 1)."""
    K_inv = np.linalg.inv(intrinsics)
    uv1 = np.concatenate([uv, np.ones_like(uv[..., :1])], -1)
    d_cam = uv1 @ K_inv.swapaxes(-1, -2)  # [F, P, 3] (K [3, 3] or [F, 3, 3])
    dirs = d_cam @ c2w[:, :3, :3].swapaxes(-1, -2)
    return c2w[:, None, :3, 3], dirs


def pixel_centers(height: int, width: int) -> np.ndarray:
    """Normalized uv of every pixel centre, [H * W, 2] in row-major order ((j + 0.5) / W, (i + 0.5) / H)."""
    v, u = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    return np.stack([u.ravel(), v.ravel()], -1)


# The hit tests below work on coordinate-first arrays ([3, F, P]: x, y, z planes): elementwise numpy on
# large planes is several times faster than reductions over a trailing axis of length 3.
def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _rotate_t(R: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R^T v for rotations R [F, 3, 3] and coordinate-first vectors v [3, F, P] -> [3, F, P]."""
    return np.stack([sum(R[:, j, i, None] * v[j] for j in range(3)) for i in range(3)])


def _argmin3(a, b, c):
    """Elementwise (min, argmin) of three arrays."""
    m = np.minimum(np.minimum(a, b), c)
    return m, np.where(a == m, 0, np.where(b == m, 1, 2))


def _sphere_t(o: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    """Nearest positive hit of rays o + t d ([3, F, P]) with a sphere of `radius` at the origin; inf if none."""
    a, b = _dot(d, d), _dot(d, o)
    disc = b * b - a * (_dot(o, o) - radius ** 2)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def _box_t(o: np.ndarray, d: np.ndarray, half) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays [3, F, P] (box frame) with the box [-half, half]: (t [F, P], entry face axis [F, P])."""
    near, far = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / d[k]
            t1, t2 = (-half[k] - o[k]) * inv, (half[k] - o[k]) * inv
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
    neg_in, face = _argmin3(-near[0], -near[1], -near[2])
    t_in, t_out = -neg_in, np.minimum(np.minimum(far[0], far[1]), far[2])
    return np.where((t_in <= t_out) & (t_in > EPS), t_in, np.inf), face


def _cast_planes(spec: dict, o: np.ndarray, d: np.ndarray, frames: np.ndarray):
    """Nearest hits of coordinate-first rays o [3, F, 1 or P], d [3, F, P] at frames [F].

    Returns (t [F, P], object id [F, P], local [3, F, P], normal [3, F, P]) in d's dtype.
    """
    dtype = d.dtype  # float32 renders faster; float64 for exact ground truth
    room_lo, room_hi = np.asarray(spec["room"]["min"], dtype), np.asarray(spec["room"]["max"], dtype)
    # room, seen from inside: the exit distance along each axis; the nearest is the wall hit
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axis = [np.where(d[k] != 0, (np.where(d[k] > 0, room_hi[k], room_lo[k]) - o[k]) / d[k], np.inf)
                  for k in range(3)]
    t_room, axis = _argmin3(*t_axis)
    toward_max = np.choose(axis, list(d)) > 0
    t_all = [np.where(t_room > EPS, t_room, np.inf)]

    # objects: hit distances first, local points and normals only for the rays each object wins
    poses, faces = [], {}
    for i, obj in enumerate(spec["objects"]):
        R, pos = (x.astype(dtype) for x in object_poses(obj, frames, spec["fps"]))  # [F, 3, 3], [F, 3]
        poses.append((R, pos))
        oc = o - pos.T[:, :, None]
        if obj["kind"] == "sphere":
            t_all.append(_sphere_t(oc, d, obj["size"][0]))
        elif obj["kind"] == "box":
            t, faces[i] = _box_t(_rotate_t(R, oc), _rotate_t(R, d), obj["size"])
            t_all.append(t)
        else:
            raise ValueError(f"unknown object kind {obj['kind']!r} in scene spec; expected sphere or box")
    t_all = np.stack(t_all)
    winner = np.argmin(t_all, 0)  # 0: room, 1 + i: object i
    t = np.take_along_axis(t_all, winner[None], 0)[0]
    t_finite = np.where(np.isfinite(t), t, 0.0).astype(dtype)

    # room hits: local frame = world - room min, snapped onto the wall plane so textures are exact
    plane = np.where(toward_max, room_hi[axis], room_lo[axis])
    local = np.stack([np.where(axis == k, plane, o[k] + t_finite * d[k]) - room_lo[k] for k in range(3)])
    sign = np.where(toward_max, -1.0, 1.0).astype(dtype)
    normal = np.stack([np.where(axis == k, sign, 0.0).astype(dtype) for k in range(3)])
    object_id = np.where(np.isfinite(t), 2 * axis + toward_max, -1)

    frame_of_ray = np.broadcast_to(np.arange(len(frames))[:, None], t.shape)
    for i, obj in enumerate(spec["objects"]):
        m = winner == i + 1
        if not m.any():
            continue
        R, pos = poses[i][0][frame_of_ray[m]], poses[i][1][frame_of_ray[m]]  # [M, 3, 3], [M, 3]
        o_m = np.broadcast_to(o, d.shape)[:, m].T  # [M, 3]
        d_m = d[:, m].T
        p_l = np.einsum("mji,mj->mi", R, o_m + t[m][:, None] * d_m - pos)  # R^T (hit - p)
        if obj["kind"] == "sphere":
            n_l = p_l / obj["size"][0]
        else:
            face = faces[i][m]
            rows = np.arange(len(face))
            d_l = np.einsum("mji,mj->mi", R, d_m)
            face_sign = np.where(d_l[rows, face] > 0, -1.0, 1.0)
            p_l[rows, face] = face_sign * np.asarray(obj["size"])[face]  # snap onto the face
            n_l = np.zeros_like(p_l)
            n_l[rows, face] = face_sign
        local[:, m] = p_l.T
        normal[:, m] = np.einsum("mij,mj->mi", R, n_l).T
        object_id[m] = NUM_ROOM_FACES + i
    return t, object_id, local, normal


def cast(spec: dict, origins: np.ndarray, dirs: np.ndarray, frames) -> Hit:
    """Nearest hit of rays (origins [F, P or 1, 3], dirs [F, P, 3]) at integer frames [F], in dirs' dtype."""
    frames = np.asarray(frames)
    dirs = np.asarray(dirs)
    if frames.shape != dirs.shape[:1]:
        raise ValueError(f"need one frame index per ray batch: frames {frames.shape}, rays {dirs.shape}")
    o = np.ascontiguousarray(np.moveaxis(np.asarray(origins, dtype=dirs.dtype), -1, 0))
    t, object_id, local, normal = _cast_planes(spec, o, np.ascontiguousarray(np.moveaxis(dirs, -1, 0)), frames)
    return Hit(t=t, object_id=object_id, local=np.moveaxis(local, 0, -1), normal=np.moveaxis(normal, 0, -1))


def texture_color(local: np.ndarray, tex: dict) -> np.ndarray:
    """Procedural solid texture at local points [..., 3] -> RGB [..., 3] in [0, 1]: checker of two colours
    modulated by two plane waves."""
    return np.moveaxis(_texture_planes(np.moveaxis(local, -1, 0), tex), 0, -1)


def _texture_planes(local: np.ndarray, tex: dict) -> np.ndarray:
    """`texture_color` on coordinate-first points [3, ...] -> RGB [3, ...]."""
    s = tex["checker"]
    checker = (np.floor(local[0] * s) + np.floor(local[1] * s) + np.floor(local[2] * s)) % 2
    (a0, a1, a2), (b0, b1, b2) = tex["waves"]
    w = np.sin(local[0] * a0 + local[1] * a1 + local[2] * a2 + tex["phases"][0]) * \
        np.sin(local[0] * b0 + local[1] * b1 + local[2] * b2 + tex["phases"][1])
    gain = 0.78 + 0.22 * w
    return np.stack([((1 - checker) * c1 + checker * c2) * gain for c1, c2 in zip(tex["color"], tex["color2"])])


def shade(spec: dict, object_id: np.ndarray, local: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """RGB [3, F, P] in [0, 1] of coordinate-first hits (ids [F, P], local and normal [3, F, P]):
    textured albedo times Lambert + ambient light."""
    textures = list(spec["room"]["textures"]) + [o["texture"] for o in spec["objects"]]
    rgb = np.zeros(local.shape, local.dtype)
    for oid, tex in enumerate(textures):
        m = object_id == oid
        if m.any():
            rgb[:, m] = _texture_planes(local[:, m], tex)
    light = spec["light"]
    lx, ly, lz = light["direction"]
    lambert = np.clip(-(normal[0] * lx + normal[1] * ly + normal[2] * lz), 0.0, 1.0)
    return rgb * (light["ambient"] + (1 - light["ambient"]) * lambert)


def render(spec: dict, c2w: np.ndarray, intrinsics: np.ndarray, frames=None, supersample: int = 1,
           rays_per_chunk: int = 1 << 16, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Render one camera: c2w [T, 4, 4] at frames [T] (default 0..T-1) -> (RGB uint8 [T, H, W, 3],
    depth float32 [T, H, W]; the depth is of the pixel centres, not supersampled).

    Rays are float32 by default (fast; the image is cosmetic); the oracle re-casts in float64. Frames are
    cast in chunks of about `rays_per_chunk` rays (cache-friendly, bounded memory at any resolution).
    """
    H, W = spec["height"], spec["width"]
    frames = np.arange(len(c2w)) if frames is None else np.asarray(frames)
    if len(frames) != len(c2w):
        raise ValueError(f"render needs one camera pose per frame: {len(c2w)} poses, {len(frames)} frames")
    s = int(supersample)
    uv = pixel_centers(H * s, W * s)
    d_cam = (np.concatenate([uv, np.ones_like(uv[:, :1])], 1) @ np.linalg.inv(intrinsics).T).T  # [3, P]
    chunk = max(1, rays_per_chunk // len(uv))
    images, depths = [], []
    for start in range(0, len(frames), chunk):
        sl = slice(start, start + chunk)
        R = c2w[sl, :3, :3]
        n = len(R)
        d = np.stack([sum(R[:, i, j, None] * d_cam[j] for j in range(3)) for i in range(3)]).astype(dtype)
        o = np.ascontiguousarray(c2w[sl, :3, 3].T[:, :, None], dtype=dtype)  # [3, F, 1]
        t, object_id, local, normal = _cast_planes(spec, o, d, frames[sl])
        rgb = shade(spec, object_id, local, normal)  # [3, F, P]
        rgb = rgb.reshape(3, n, H, s, W, s).mean((3, 5)).transpose(1, 2, 3, 0)  # box filter = area antialiasing
        images.append(np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8))
        depth = t.reshape(n, H * s, W * s)
        depths.append(depth[:, s // 2::s, s // 2::s] if s % 2 else depth[:, ::s, ::s])
    return np.concatenate(images), np.concatenate(depths).astype(np.float32)


def world_points(spec: dict, object_id: np.ndarray, local: np.ndarray, frames) -> np.ndarray:
    """World positions [T, N, 3] at frames [T] of surface points given by (object id [N], local point [N, 3]).

    Room points (id < 6) are static; object points follow their object's rigid motion.
    """
    frames = np.asarray(frames)
    object_id, local = np.asarray(object_id), np.asarray(local, dtype=np.float64)
    out = np.broadcast_to(local + np.asarray(spec["room"]["min"]), (len(frames), *local.shape)).copy()
    for i, obj in enumerate(spec["objects"]):
        m = object_id == NUM_ROOM_FACES + i
        if m.any():
            R, pos = object_poses(obj, frames, spec["fps"])
            out[:, m] = local[m] @ R.swapaxes(-1, -2) + pos[:, None]
    out[:, object_id < 0] = np.nan
    return out


def visible(spec: dict, points_world: np.ndarray, object_id: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray,
            frames, rel_tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whether surface points [T, N, 3] (of objects [N]) are seen by cameras c2w [T, 4, 4] at frames [T].

    A point is visible when it is in front of the camera, inside the image, and the ray through its
    projection hits the same object at the same depth (nothing occludes it).
    Returns (visible [T, N] bool, uv [T, N, 2], depth [T, N]).
    """
    from track2view.cameras import project

    K = intrinsics if np.ndim(intrinsics) == 3 else np.broadcast_to(intrinsics, (len(c2w), 3, 3))
    uv, depth = project(points_world, c2w, K)
    inside = ((uv >= 0) & (uv <= 1)).all(-1) & (depth > EPS) & np.isfinite(depth)
    o, d = camera_rays(c2w, K, np.where(inside[..., None], uv, 0.5))
    hit = cast(spec, o, d, frames)
    same = (hit.object_id == np.asarray(object_id)[None]) & (np.abs(hit.t - depth) <= rel_tol * np.abs(depth) + 1e-6)
    return inside & same, uv, depth
