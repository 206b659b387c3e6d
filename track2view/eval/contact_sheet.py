"""Contact sheets for looking: one row per clip, `frames_per_clip` evenly spaced times, each as source | generated.

    sheet [rows * (h + label), frames_per_clip * (2 w + gap) , 3] uint8, written as PNG (clips split over pages)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from track2view.io import atomic_path

LABEL_HEIGHT, GAP, CELL_HEIGHT = 14, 4, 120


def _resize(frame: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    width = max(1, round(frame.shape[1] * height / frame.shape[0]))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def clip_row(key: str, source: np.ndarray, generated: np.ndarray, frames_per_clip: int) -> np.ndarray:
    """One labelled row: at each of `frames_per_clip` times, source | generated (both [T, H, W, 3] uint8)."""
    from PIL import Image, ImageDraw

    times = np.linspace(0, len(generated) - 1, frames_per_clip).round().astype(int)
    cells = []
    for t in times:
        pair = [_resize(source[t], CELL_HEIGHT), _resize(generated[t], CELL_HEIGHT)]
        cells.append(np.concatenate([pair[0], np.full((CELL_HEIGHT, 2, 3), 255, np.uint8), pair[1]], axis=1))
        cells.append(np.full((CELL_HEIGHT, GAP * 2, 3), 40, np.uint8))
    body = np.concatenate(cells[:-1], axis=1)
    label = Image.new("RGB", (body.shape[1], LABEL_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(label).text((2, 1), f"{key}   (source | generated at frames {', '.join(map(str, times))})",
                               fill=(255, 255, 255))
    return np.concatenate([np.asarray(label), body], axis=0)


def write_sheet(path: str | Path, rows: list[np.ndarray]) -> Path:
    """Stack rows (padded to the widest) into one PNG, atomically."""
    from PIL import Image

    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, GAP), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(padded, axis=0)).save(tmp, format="PNG")
    return Path(path)
