"""SpatialTrackerV2 adapter (RGB video mode): the paper's tracker behind the `PointTracker` interface.

SpatialTrackerV2 is not pip-installable and its weights live on a model hub these machines cannot reach:
clone https://github.com/henry123-boy/SpaTrackerV2, install its requirements in their own environment
(torch 2.4, pycolmap 3.10/3.11 with pyceres 2.4, kornia 0.8, xformers, decord; they clash with pycolmap 4
used by pose evaluation, so keep them apart), download `Yuxihenry/SpatialTrackerV2_Front` and
`Yuxihenry/SpatialTrackerV2-Offline`, then

    get_tracker("spatialtracker_v2", repo_dir="/path/SpaTrackerV2",
                front_weights="/path/SpatialTrackerV2_Front", tracker_weights="/path/SpatialTrackerV2-Offline")

Coordinates: the front end resizes the video to width 518 and a height rounded to a multiple of 14,
center-cropped to at most 518 (`ProcessedGeometry`). Its pixel coordinates put pixel centres at
integers, ours at +0.5 (track2view/tracks.py). Its `track3d_pred` is camera-frame xyz: world = R @ xyz + t.
The conversion helpers below are pure numpy and tested without the model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from track2view.trackers.base import FrameSources, PointTracker, TrackingResult

FRONT_MODULE = "models.SpaTrackV2.models.vggt4track.models.vggt_moe"
PREDICTOR_MODULE = "models.SpaTrackV2.models.predictor"
PREPROCESS_MODULE = "models.SpaTrackV2.models.vggt4track.utils.load_fn"
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


def queries_to_tracker(queries: np.ndarray, g: ProcessedGeometry) -> np.ndarray:
    """Our queries [Q, 3] (t, u, v normalized) -> theirs [Q, 3] (t, x, y processed pixels, centre at integer)."""
    xy = normalized_to_processed(queries[:, 1:], g)
    return np.concatenate([queries[:, :1], xy], 1).astype(np.float32)


class SpatialTrackerV2(PointTracker):
    """Options: repo_dir (a clone of SpaTrackerV2), front_weights / tracker_weights (local model
    directories), device, track_num (their `vo_points`, default 756), iters_track, visibility_threshold,
    dtype (autocast), metric (whether to mark its depth as metres; default False: relative scale)."""

    name = "spatialtracker_v2"

    def __init__(self, repo_dir: str | None = None, front_weights: str | None = None,
                 tracker_weights: str | None = None, device: str = "cuda", track_num: int = 756,
                 iters_track: int = 4, visibility_threshold: float = 0.5, dtype: str = "bfloat16",
                 metric: bool = False):
        self.repo_dir, self.front_weights, self.tracker_weights = repo_dir, front_weights, tracker_weights
        self.device, self.track_num, self.iters_track = device, track_num, iters_track
        self.visibility_threshold, self.dtype, self.metric = visibility_threshold, dtype, metric
        self._models = None

    # ---- loading --------------------------------------------------------------------------------
    def _check_paths(self):
        if not self.repo_dir:
            raise RuntimeError("spatialtracker_v2 needs repo_dir=<a clone of https://github.com/henry123-boy/"
                               "SpaTrackerV2> (it is not pip-installable); see "
                               "track2view/trackers/spatialtracker_v2.py")
        repo = Path(self.repo_dir)
        if not (repo / "models" / "SpaTrackV2").is_dir():
            raise FileNotFoundError(f"{repo} is not a SpaTrackerV2 clone: models/SpaTrackV2 is missing. Clone "
                                    f"https://github.com/henry123-boy/SpaTrackerV2 and pass its root as repo_dir")
        for opt, hub in (("front_weights", "Yuxihenry/SpatialTrackerV2_Front"),
                         ("tracker_weights", "Yuxihenry/SpatialTrackerV2-Offline")):
            path = getattr(self, opt)
            if not path or not Path(path).is_dir():
                raise FileNotFoundError(f"spatialtracker_v2 needs {opt}=<local directory of {hub}> (these machines "
                                        f"cannot download it); got {path!r}. Download it elsewhere "
                                        f"(`huggingface-cli download {hub} --local-dir DIR`) and copy it here")

    def load(self):
        """Import the clone's modules (lazily, via sys.path) and load both models; returns self."""
        if self._models is not None:
            return self
        self._check_paths()
        import importlib

        repo = str(Path(self.repo_dir).resolve())
        if repo not in sys.path:
            sys.path.insert(0, repo)
        try:
            front_cls = importlib.import_module(FRONT_MODULE).VGGT4Track
            predictor_cls = importlib.import_module(PREDICTOR_MODULE).Predictor
            preprocess = importlib.import_module(PREPROCESS_MODULE).preprocess_image
        except ImportError as e:
            raise ImportError(f"cannot import SpatialTrackerV2 from {repo}: missing package {e.name!r} ({e}). "
                              f"Install the clone's requirements.txt in this environment (torch 2.4, pycolmap "
                              f"3.10/3.11, pyceres 2.4, kornia 0.8, xformers, ...)") from e
        front = front_cls.from_pretrained(self.front_weights).eval().to(self.device)
        predictor = predictor_cls.from_pretrained(self.tracker_weights)
        predictor.spatrack.track_num = self.track_num
        predictor = predictor.eval().to(self.device)
        self._models = (front, predictor, preprocess)
        return self

    # ---- tracking -------------------------------------------------------------------------------
    def track(self, video: np.ndarray, queries: np.ndarray, frame_sources: FrameSources | None = None
              ) -> TrackingResult:
        video, queries = self.check_inputs(video, queries, frame_sources)
        self.load()
        import torch

        front, predictor, preprocess = self._models
        T, H, W = video.shape[:3]
        g = ProcessedGeometry.for_size(H, W)
        frames = torch.from_numpy(video).permute(0, 3, 1, 2).float()  # [T, 3, H, W] in 0..255, as their demo
        frames = preprocess(frames)[None]  # [1, T, 3, h, w]
        if tuple(frames.shape[-2:]) != (g.height, g.width):
            raise RuntimeError(f"SpatialTrackerV2 preprocessed {H}x{W} to {tuple(frames.shape[-2:])}, expected "
                               f"{(g.height, g.width)}; update ProcessedGeometry to its preprocess_image")
        dtype = getattr(torch, self.dtype)
        with torch.no_grad(), torch.autocast(device_type=self.device.split(":")[0], dtype=dtype):
            pred = front(frames.to(self.device) / 255)
            extrs = pred["poses_pred"].squeeze(0).float().cpu().numpy()
            intrs = pred["intrs"].squeeze(0).float().cpu().numpy()
            depth = pred["points_map"][..., 2].squeeze(0).float().cpu().numpy()
            unc_metric = pred["unc_metric"].squeeze(0).float().cpu().numpy() > 0.5
            (c2w, K, _point_map, _conf_depth, track3d, _track2d, vis, _conf, _video) = predictor.forward(
                frames.squeeze(0), depth=depth, intrs=intrs, extrs=extrs,
                queries=queries_to_tracker(queries, g), fps=1, full_point=False, iters_track=self.iters_track,
                query_no_BA=True, fixed_cam=False, stage=1, unc_metric=unc_metric, support_frame=T - 1,
                replace_ratio=0.2)
        c2w = c2w.float().cpu().numpy()
        points = camera_to_world(track3d[..., :3].float().cpu().numpy(), c2w)
        visible = vis[..., 0].float().cpu().numpy() > self.visibility_threshold
        return TrackingResult(c2w=c2w, intrinsics=processed_intrinsics_to_normalized(K.float().cpu().numpy(), g),
                              points_world=points, visible=visible,
                              metric=self.metric, image_size=(H, W))
