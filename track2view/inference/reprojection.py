"""Track preparation for inference: track the source video, reproject its world tracks into the target cameras.

At inference only the source video exists (paper, Sec. 3.3): a 3D tracker gives the source cameras and
world-space point tracks; projecting those points through the user's target cameras gives the target
tracks, so the pair is one-to-one by construction. Everything here is resolution-free (normalized uv).

    tracking (TrackingResult: c2w [T,4,4], intrinsics [T,3,3], points_world [T,N,3], visible [T,N])
      + target_c2w [T,4,4]  ->  PairedTracks [2, T, N]  ->  at_latent_stride  ->  [2, F, N]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from track2view.cameras import project
from track2view.data.latents import CenterCrop
from track2view.trackers.queries import DEFAULT_NUM_QUERIES, video_queries
from track2view.tracks import SOURCE, PairedTracks

class NoValidTracksError(ValueError):
    """No track lands inside the target view: the trajectory looks away from (or behind) the tracked scene."""


def track_video(frames: np.ndarray, tracker: str = "spatialtracker_v2", num_queries: int = DEFAULT_NUM_QUERIES,
                frame_sources=None, query_frames: str = "first_last", **tracker_kwargs):
    """Run a tracker backend (`track2view.trackers`) on the source frames [T, H, W, 3] uint8 at their own
    resolution with `video_queries` (on the `query_frames` scheme's frames) -> TrackingResult. `frame_sources`
    [(video path, frame index)] per frame (the oracle needs them to find the synthetic scene's ground truth)."""
    from track2view.trackers import get_tracker

    t, h, w = frames.shape[:3]
    queries = video_queries(t, num_queries, h, w, query_frames=query_frames)
    return get_tracker(tracker, **tracker_kwargs).track(frames, queries, frame_sources)


def median_depth(tracking) -> float:
    """Median camera-space depth of the visible source observations (the scene's depth scale)."""
    c2w = np.asarray(tracking.c2w, dtype=np.float64)
    pts = np.asarray(tracking.points_world, dtype=np.float64)
    _, depth = project(pts, c2w, np.asarray(tracking.intrinsics, dtype=np.float64))
    ok = np.asarray(tracking.visible, dtype=bool) & (depth > 0) & np.isfinite(depth)
    if not ok.any():
        raise NoValidTracksError("the tracker found no visible point in front of the source camera")
    return float(np.median(depth[ok]))


def reproject(tracking, target_c2w: np.ndarray, target_intrinsics: np.ndarray | None = None,
              num_frames: int | None = None, image_size: tuple[int, int] | None = None) -> PairedTracks:
    """Paired tracks [2, T, N] at full frame rate from a TrackingResult and target cameras.

    Source view: the world points projected through the tracker's source cameras, valid where the tracker
    sees them, in front of the camera and inside the frame. Target view: projected through `target_c2w`
    [T, 4, 4] with `target_intrinsics` [T, 3, 3] (default: the source's), valid where depth > 0 and inside
    the frame (occlusion in the target view is unknown and left to the model). `num_frames` keeps the first
    T frames of a longer tracking; `image_size` (H, W) re-targets the intrinsics to a resized + cropped video.
    """
    c2w = np.asarray(tracking.c2w, dtype=np.float64)
    k_src = np.asarray(tracking.intrinsics, dtype=np.float64)
    pts = np.asarray(tracking.points_world, dtype=np.float64)
    visible = np.asarray(tracking.visible, dtype=bool)
    t_total = len(c2w)
    num_frames = t_total if num_frames is None else num_frames
    if num_frames > t_total:
        raise ValueError(f"the tracks cover {t_total} frames but {num_frames} are needed; track the whole clip "
                         f"or lower --num-frames")
    c2w, k_src, pts, visible = c2w[:num_frames], k_src[:num_frames], pts[:num_frames], visible[:num_frames]
    target_c2w = np.asarray(target_c2w, dtype=np.float64)
    if target_c2w.shape != (num_frames, 4, 4):
        raise ValueError(f"target cameras must be [{num_frames}, 4, 4], got {list(target_c2w.shape)}")
    k_tgt = k_src if target_intrinsics is None else np.broadcast_to(
        np.asarray(target_intrinsics, dtype=np.float64), (num_frames, 3, 3))
    if image_size is not None:
        # the frames are resized to cover and centre-cropped to the model's size: re-target the cameras
        crop = CenterCrop(tuple(int(s) for s in np.asarray(tracking.image_size).tolist()), tuple(image_size))
        k_src = crop.apply_intrinsics(k_src).astype(np.float64)
        k_tgt = crop.apply_intrinsics(k_tgt).astype(np.float64)
    uv_s, d_s = project(pts, c2w, k_src)
    uv_t, d_t = project(pts, target_c2w, k_tgt)
    uv = torch.as_tensor(np.stack([uv_s, uv_t]), dtype=torch.float32)
    depth = torch.as_tensor(np.stack([d_s, d_t]), dtype=torch.float32)
    seen = torch.as_tensor(np.stack([visible, np.ones_like(visible)]))
    return PairedTracks.from_projections(uv, depth, seen)


@dataclass
class PreparedTracks:
    """What the pipeline and the visualizations need for one trajectory."""

    name: str
    full: PairedTracks  # [2, T, N], every frame (for overlays)
    latent: PairedTracks  # [2, F, N], frames 0, stride, 2*stride, ... (for the model)
    target_c2w: np.ndarray  # [T, 4, 4]


def prepare_tracks(tracking, trajectory, num_frames: int, image_size: tuple[int, int] | None = None,
                   stride: int = 4, num_tracks: int | None = None, target_intrinsics: np.ndarray | None = None,
                   seed: int = 0) -> PreparedTracks:
    """Reproject a TrackingResult through a `trajectories.Trajectory` and subsample to the latent stride.

    Raises NoValidTracksError when no track is valid in the target view (naming the trajectory).
    `num_tracks` pads (with invalid tracks) or keeps a random subset (seeded by `seed`, in the original order,
    as the training loader does) to get the model's track count: keeping the first ones would drop every
    last-frame query (`query_points` puts the frame-0 half first).
    """
    if len(tracking.c2w) < num_frames:
        raise ValueError(f"the tracks cover {len(tracking.c2w)} frames but {num_frames} are needed; track the "
                         f"whole clip or lower --num-frames")
    source_c2w = np.asarray(tracking.c2w, dtype=np.float64)[:num_frames]
    target_c2w = trajectory.target_c2w(source_c2w)
    full = reproject(tracking, target_c2w, target_intrinsics, num_frames, image_size)
    if num_tracks is not None and num_tracks < full.num_tracks:  # the same subset for every trajectory
        full = full.subsample_tracks(num_tracks, generator=torch.Generator().manual_seed(seed))
    if not full.valid[SOURCE].any():
        raise NoValidTracksError("no tracked point is visible in the source video; check the tracks file or "
                                 "try another tracker")
    latent = full.at_latent_stride(stride)
    if not latent.valid[1 - SOURCE].any():
        raise NoValidTracksError(f"no track is valid in the target view of trajectory {trajectory.name!r} "
                                 f"(every point is behind the camera or outside the frame); use a smaller "
                                 f"--amount or another trajectory")
    if num_tracks is not None:
        full, latent = full.pad_tracks(num_tracks), latent.pad_tracks(num_tracks)
    return PreparedTracks(trajectory.name, full.validate(), latent.validate(), target_c2w)
