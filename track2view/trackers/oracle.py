"""The oracle tracker: exact tracks and visibility from a synthetic scene's ground truth.

It needs `frame_sources`: each frame's (video path, frame index) in a scene written by
`python -m track2view.synthetic` (<scene>/videos/camXX.mp4 next to <scene>/ground_truth/). A query
pixel is ray-cast into the scene at its frame to find the surface point (object + local coordinates);
that point is moved rigidly with its object to every frame, and it is visible in a frame when the ray
through its projection hits it first (no occluder, inside the image, in front of the camera). Its confidence
is 1.0 everywhere (ground truth), and its output passes the query identity check by construction.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from track2view.synthetic.render import camera_rays, cast, visible, world_points
from track2view.synthetic.write import load_ground_truth
from track2view.trackers.base import FrameSources, PointTracker, TrackingResult
from track2view.trackers.identity import check_query_identity

FAR = 1e3  # metres: where a query that hits nothing (never in a closed room) is placed, invisible


@lru_cache(maxsize=32)
def _ground_truth(scene_dir: str):
    return load_ground_truth(scene_dir)


class OracleTracker(PointTracker):
    name = "oracle"

    def __init__(self, rel_tol: float = 1e-4):
        self.rel_tol = rel_tol

    def cameras(self, frame_sources: FrameSources) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        """(spec, c2w [T, 4, 4], intrinsics [3, 3], scene frame index [T]) of a sequence of frame sources."""
        scenes = {str(Path(p).parent.parent) for p, _ in frame_sources}
        if len(scenes) != 1:
            raise ValueError(f"the oracle tracks frames of one synthetic scene at a time, got {sorted(scenes)}")
        spec, names, c2w, K = _ground_truth(scenes.pop())
        cams, frames = [], []
        for path, index in frame_sources:
            cam = Path(path).stem
            if cam not in names:
                raise ValueError(f"{path}: camera {cam!r} is not in the scene's ground truth ({names})")
            if not 0 <= int(index) < spec["num_frames"]:
                raise ValueError(f"{path}: frame {index} is outside the scene's {spec['num_frames']} frames")
            cams.append(names.index(cam))
            frames.append(int(index))
        frames = np.asarray(frames)
        return spec, c2w[np.asarray(cams), frames], K, frames

    def track(self, video: np.ndarray, queries: np.ndarray, frame_sources: FrameSources | None = None
              ) -> TrackingResult:
        if frame_sources is None:
            raise ValueError("the oracle tracker needs frame_sources (the video path and frame index of every "
                             "frame) to find the synthetic scene's ground truth")
        video, queries = self.check_inputs(video, queries, frame_sources)
        spec, c2w, K, frames = self.cameras(frame_sources)
        Q = len(queries)
        object_id, local = np.full(Q, -1), np.zeros((Q, 3))
        far_points = np.zeros((Q, 3))
        for t in np.unique(queries[:, 0]).astype(int):  # one ray bundle per query frame
            m = queries[:, 0] == t
            o, d = camera_rays(c2w[t][None], K, queries[m, 1:][None])
            hit = cast(spec, o, d, frames[t][None])
            object_id[m], local[m] = hit.object_id[0], hit.local[0]
            far_points[m] = o[0] + FAR * d[0]
        points = world_points(spec, object_id, local, frames)  # [T, Q, 3]
        seen, _, _ = visible(spec, points, object_id, c2w, K, frames, rel_tol=self.rel_tol)
        missed = object_id < 0
        points[:, missed] = far_points[missed]
        seen[:, missed] = False
        result = TrackingResult(c2w=c2w, intrinsics=np.broadcast_to(K, (len(frames), 3, 3)), points_world=points,
                                visible=seen, metric=True, image_size=video.shape[1:3],
                                confidence=np.ones(seen.shape, np.float32))
        check_query_identity(result.project()[0], queries, video.shape[1:3], tolerance_px=1e-2)
        return result
