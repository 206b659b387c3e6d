"""Frames for looking at results: side-by-side videos and point-track overlays.

numpy only (the project must not depend on cv2 or torchvision): dots are drawn as filled discs, tracks
get a fixed colour from their source position so a point has the same colour in both views.
All frames are [T, H, W, 3] uint8; track coordinates are normalized uv (see `track2view/tracks.py`).
"""

from __future__ import annotations

import numpy as np


def resize_nearest(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, H, W, C] -> [T, height, width, C] by nearest-neighbour sampling at pixel centres."""
    t, h, w = frames.shape[:3]
    if (h, w) == (height, width):
        return frames
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    return frames[:, rows][:, :, cols]


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4, gap_value: int = 255) -> np.ndarray:
    """Two videos next to each other: [T, H, 2W + gap, 3]. `right` is resized to `left`'s size; the longer
    video is cut to the shorter one's length."""
    left, right = np.asarray(left), np.asarray(right)
    t = min(len(left), len(right))
    h, w = left.shape[1:3]
    right = resize_nearest(right[:t], h, w)
    spacer = np.full((t, h, gap, 3), gap_value, dtype=np.uint8)
    return np.concatenate([left[:t].astype(np.uint8), spacer, right.astype(np.uint8)], axis=2)


def track_colors(uv0: np.ndarray) -> np.ndarray:
    """A colour per track [N, 3] uint8 from its (u, v) position: hue from u, brightness from v."""
    u = np.clip(np.nan_to_num(uv0[:, 0]), 0, 1)
    v = np.clip(np.nan_to_num(uv0[:, 1]), 0, 1)
    hue = u * 5.0  # HSV -> RGB with saturation 1 (vectorized, a few lines, so no colormap dependency)
    k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None]) % 6
    rgb = 1 - np.clip(np.minimum(k, 4 - k), 0, 1)
    value = 0.55 + 0.45 * (1 - v)
    return (rgb * value[:, None] * 255).astype(np.uint8)


def _disc(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]


def draw_points(frames: np.ndarray, uv: np.ndarray, valid: np.ndarray, colors: np.ndarray, radius: int = 2,
                outline: bool = False) -> np.ndarray:
    """Draw filled discs: frames [T, H, W, 3] uint8, uv [T, N, 2] normalized, valid [T, N] -> a copy.
    `outline` rings each disc in black so that dots stay visible on any background."""
    out = np.array(frames, dtype=np.uint8, copy=True)
    t, h, w = out.shape[:3]
    layers = ([(_disc(radius + 1), None)] if outline else []) + [(_disc(radius), colors)]
    for i in range(min(t, len(uv))):
        ok = np.asarray(valid[i], dtype=bool) & np.isfinite(uv[i]).all(-1)
        x = np.floor(uv[i, ok, 0] * w).astype(int)
        y = np.floor(uv[i, ok, 1] * h).astype(int)
        for offsets, layer_colors in layers:
            c = np.zeros((len(x), 3), np.uint8) if layer_colors is None else layer_colors[ok]
            for dy, dx in offsets:
                yy, xx = y + dy, x + dx
                inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                out[i, yy[inside], xx[inside]] = c[inside]
    return out


def first_valid_uv(uv: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[N, 2]: each track's uv at the first frame where it is valid (0.5, 0.5 if never)."""
    uv, valid = np.asarray(uv), np.asarray(valid, dtype=bool)
    first = np.argmax(valid, axis=0)
    out = uv[first, np.arange(uv.shape[1])]
    out[~valid.any(0)] = 0.5
    return out


def track_overlay(source: np.ndarray, target: np.ndarray, tracks, radius: int | None = None, gap: int = 4,
                  max_tracks: int | None = 256, outline: bool = True) -> np.ndarray:
    """Side-by-side video with the source tracks drawn on the source and the target tracks on the target.

    source, target: [T, H, W, 3] uint8; tracks: PairedTracks [2, T, N] (or a dict with uv [2,T,N,2],
    valid [2,T,N]) at the videos' frame rate. Each track has one colour in both views. At most
    `max_tracks` tracks are drawn (evenly spaced, None: all); radius defaults to ~1/200 of the image size.
    """
    arrays = tracks.to_numpy() if hasattr(tracks, "to_numpy") else tracks
    uv, valid = np.asarray(arrays["uv"]), np.asarray(arrays["valid"], dtype=bool)
    keep = np.flatnonzero(valid.any(axis=(0, 1)))  # tracks valid somewhere (padding never is)
    if max_tracks is not None and len(keep) > max_tracks:
        keep = keep[np.round(np.linspace(0, len(keep) - 1, max_tracks)).astype(int)]
    uv, valid = uv[:, :, keep], valid[:, :, keep]
    colors = track_colors(first_valid_uv(uv[0], valid[0]))
    h, w = source.shape[1:3]
    radius = max(1, round(min(h, w) / 200)) if radius is None else radius
    target = resize_nearest(np.asarray(target), h, w)
    left = draw_points(source, uv[0], valid[0], colors, radius, outline)
    right = draw_points(target, uv[1], valid[1], colors, radius, outline)
    return side_by_side(left, right, gap=gap)
