"""The files a re-render writes (rerender.py): the video per trajectory and the extras a request asks for.

    OUT.mp4 (one trajectory) or OUT_<name>.mp4 (several)   the re-rendered frames
    ..._side_by_side.mp4, ..._overlay.mp4                    source | target, and the tracks drawn on both views
    ..._tracks.npz                                           the paired tracks and cameras (infer.py --save-tracks)

Every file is written atomically (a failed run leaves no partial file).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from track2view.inference.rerender import RerenderRequest, View


def output_paths(out: Path, names: list[str]) -> list[Path]:
    """One path per trajectory: `out` itself for one, out_<name><suffix> (unique) for several."""
    if len(names) == 1:
        return [out]
    paths, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        tag = name if names.count(name) == 1 else f"{name}_{seen[name]}"
        paths.append(out.with_name(f"{out.stem}_{tag}{out.suffix}"))
    return paths


def extra_path(path: Path, kind: str, suffix: str | None = None) -> Path:
    return path.with_name(f"{path.stem}_{kind}{suffix or path.suffix}")


def write_outputs(path: Path, r: RerenderRequest, view: View, source_frames: np.ndarray, generated: np.ndarray,
                  fps: float) -> list[Path]:
    """The re-rendered video and the extras the request asks for; returns the paths written."""
    from track2view.io import write_video

    frames = (generated * 255).round().clip(0, 255).astype(np.uint8)
    written = [write_video(path, frames, fps=fps)]
    if r.save_tracks:
        written.append(save_tracks(extra_path(path, "tracks", ".npz"), view))
    if r.side_by_side:
        from track2view.inference.visualize import side_by_side

        written.append(write_video(extra_path(path, "side_by_side"), side_by_side(source_frames, frames), fps=fps))
    if r.overlay:
        from track2view.inference.visualize import track_overlay

        written.append(write_video(extra_path(path, "overlay"), track_overlay(source_frames, frames, view.prepared.full),
                                   fps=fps))
    return written


def save_tracks(path: Path, view: View) -> Path:
    """The paired tracks (uv [2,T,N,2], depth [2,T,N], valid [2,T,N]) and cameras (source_c2w, target_c2w
    [T,4,4], tracker world frame) of one view, atomically."""
    from track2view.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **view.prepared.full.to_numpy(), target_c2w=view.prepared.target_c2w.astype(np.float32),
                     source_c2w=view.source_c2w.astype(np.float32))
    return path
