"""SpatialTrackerV2 adapter (RGB video mode): the paper's tracker behind the `PointTracker` interface.

    get_tracker("spatialtracker_v2", repo_dir="/path/SpaTrackerV2",
                front_weights="/models/SpatialTrackerV2_Front", tracker_weights="/models/SpatialTrackerV2-Offline")

It runs the upstream code of a clone (track2view/trackers/stv2_upstream.py: what it relies on; docs/data.md:
the environment and the weights' layout). Per sequence: the front end (`VGGT4Track`) estimates cameras, depth
and its uncertainty on the preprocessed frames; the `Predictor` tracks the queries given those. Choices:

* `full_point=True`: with upstream's default (False) the predictor drops queries whose sampled depth
  uncertainty is low and appends random duplicates (SpaTrack.py, forward, "regular_track"), so output n is no
  longer query n. With True every query is tracked; `check_query_identity` still verifies the output.
* visibility: upstream's `vis_pred` is sigmoid(logit) + 0.2 (so it lies in [0.2, 1.2]); a point is visible
  where vis_pred > `visibility_threshold` (default 0.5, upstream's own: a probability above 0.3).
* confidence: `conf_pred` (a sigmoid, per track and frame) becomes `TrackingResult.confidence`.
* device: upstream hard-codes `.cuda()`, so a CPU device is refused; "cuda" is this process's GPU.
* poses: upstream's camera-to-world matrices come out of bfloat16 arithmetic (on an H200, |R R^T - I| about
  5e-3); each rotation is replaced by the nearest one, and poses further than RIGID_TOLERANCE are refused.
* length: upstream windows sequences longer than its `S_wind` itself; a window longer than its `max_len` is
  refused here with a message naming the limit (its offline demo stops at 80 frames only to bound run time).
"""

from __future__ import annotations

import time

import numpy as np

from track2view.trackers import stv2_upstream as up
from track2view.trackers.base import FrameSources, PointTracker, TrackingResult
from track2view.trackers.identity import TrackerOutputError, check_query_identity
from track2view.trackers.stv2_coords import (PATCH, TARGET_WIDTH, ProcessedGeometry, camera_to_world,  # noqa: F401
                                             nearest_rigid, normalized_to_processed,
                                             processed_intrinsics_to_normalized, processed_to_normalized,
                                             queries_to_tracker)

RIGID_TOLERANCE = 0.05  # largest |R R^T - I| entry of upstream's poses still taken as a (bfloat16-rounded) rotation


class SpatialTrackerV2(PointTracker):
    """Options: repo_dir (a clone of SpaTrackerV2), front_weights / tracker_weights (local model directories) or
    random_weights (build both models untrained: plumbing and speed tests only), device, track_num (their
    `vo_points`, default 756), iters_track, visibility_threshold (on vis_pred, see above),
    identity_tolerance_px (processed-frame pixels), dtype (autocast), metric (whether to mark its depth as
    metres; default False: relative scale)."""

    name = "spatialtracker_v2"

    def __init__(self, repo_dir: str | None = None, front_weights: str | None = None,
                 tracker_weights: str | None = None, device: str = "cuda", track_num: int = 756,
                 iters_track: int = 4, visibility_threshold: float = 0.5, identity_tolerance_px: float = 3.0,
                 dtype: str = "bfloat16", metric: bool = False, random_weights: bool = False):
        self.repo_dir, self.front_weights, self.tracker_weights = repo_dir, front_weights, tracker_weights
        self.device, self.track_num, self.iters_track = device, track_num, iters_track
        self.visibility_threshold, self.identity_tolerance_px = visibility_threshold, identity_tolerance_px
        self.dtype, self.metric, self.random_weights = dtype, metric, bool(random_weights)
        self._models = None
        self.load_seconds = None   # seconds the last load took (None: not loaded)
        self.last_identity = None  # IdentityReport of the last track() call
        self.last_seconds = {}     # {"front": s, "tracker": s} of the last track() call
        self.last_rigidity = None  # largest |R R^T - I| entry of upstream's poses in the last track() call

    # ---- loading --------------------------------------------------------------------------------
    def check_setup(self) -> None:
        """The clone, the weight folders and the device, without importing or building anything."""
        repo = up.check_clone(self.repo_dir)
        if not self.random_weights:
            up.check_weights(self.front_weights, "front_weights", up.FRONT_HUB)
            up.check_weights(self.tracker_weights, "tracker_weights", up.TRACKER_HUB)
        up.resolve_device(self.device, needs_cuda=up.hardcodes_cuda(repo))

    def load(self) -> "SpatialTrackerV2":
        """Check the clone and weights, import the upstream modules and build both models; returns self."""
        if self._models is not None:
            return self
        start = time.perf_counter()
        repo = up.check_clone(self.repo_dir)
        if not self.random_weights:
            up.check_weights(self.front_weights, "front_weights", up.FRONT_HUB)
            up.check_weights(self.tracker_weights, "tracker_weights", up.TRACKER_HUB)
        device = up.resolve_device(self.device, needs_cuda=up.hardcodes_cuda(repo))
        modules = up.import_upstream(repo)
        front, predictor = up.build_models(modules, device, self.track_num, self.front_weights,
                                           self.tracker_weights, self.random_weights)
        self._models = (front, predictor, modules.preprocess, device)
        self.load_seconds = time.perf_counter() - start
        return self

    @property
    def limits(self) -> dict:
        """Upstream's frame limits of the loaded predictor (stv2_upstream.window_limits)."""
        return up.window_limits(self.load()._models[1])

    def _check_length(self, num_frames: int) -> None:
        lim = self.limits
        window = min(num_frames, lim["window"])
        if window > lim["max_len"]:
            raise ValueError(f"spatialtracker_v2 takes at most max_len={lim['max_len']} frames per window (its "
                             f"config); this {num_frames}-frame sequence gives {window}-frame windows "
                             f"(S_wind={lim['window']}). Track shorter clips")

    # ---- tracking -------------------------------------------------------------------------------
    def track(self, video: np.ndarray, queries: np.ndarray, frame_sources: FrameSources | None = None
              ) -> TrackingResult:
        video, queries = self.check_inputs(video, queries, frame_sources)
        self.load()
        T, H, W = video.shape[:3]
        g = ProcessedGeometry.for_size(H, W)
        self._check_length(T)
        theirs = queries_to_tracker(queries, g)
        if theirs[:, 2].min() < -0.5 or theirs[:, 2].max() > g.height - 0.5:
            raise ValueError(f"queries lie in the rows SpatialTrackerV2's front end crops away from this {H}x{W} "
                             f"video (it keeps processed rows {g.crop_top}..{g.crop_top + g.height})")
        start = time.perf_counter()
        out = self._run(video, theirs, g)
        result = self._result(out, queries, g, (H, W))  # reads the outputs back: the GPU work is done
        self.last_seconds["tracker"] = time.perf_counter() - start - self.last_seconds["front"]
        return result

    def _run(self, video: np.ndarray, theirs: np.ndarray, g: ProcessedGeometry) -> tuple:
        """Front end + predictor on video [T, H, W, 3] uint8 -> upstream's 9 outputs (c2w, intrs, point_map,
        conf_depth, track3d [T, N, 6], track2d [T, N, 3], vis [T, N, 1], conf [T, N, 1], video)."""
        import torch

        front, predictor, preprocess, device = self._models
        T = len(video)
        frames = torch.from_numpy(video).to(device).permute(0, 3, 1, 2).float()  # [T, 3, H, W] in 0..255
        frames = preprocess(frames)  # [T, 3, h, w], as their demo: values stay in 0..255
        if tuple(frames.shape[-2:]) != (g.height, g.width):
            raise RuntimeError(f"SpatialTrackerV2 preprocessed {g.source_height}x{g.source_width} to "
                               f"{tuple(frames.shape[-2:])}, expected {(g.height, g.width)}; update "
                               f"ProcessedGeometry (stv2_coords.py) to its preprocess_image")
        autocast = torch.autocast(device_type=device.type, dtype=getattr(torch, self.dtype),
                                  enabled=device.type == "cuda")  # CPU: the stand-in of tests, float32
        with torch.no_grad(), autocast:
            start = time.perf_counter()
            pred = front(frames[None] / 255)
            extrs = pred["poses_pred"].reshape(T, 4, 4).float().cpu().numpy()  # camera-to-world
            intrs = pred["intrs"].reshape(T, 3, 3).float().cpu().numpy()
            depth = pred["points_map"][..., 2].reshape(T, g.height, g.width).float().cpu().numpy()
            unc_metric = pred["unc_metric"].reshape(T, g.height, g.width).float().cpu().numpy() > 0.5
            self.last_seconds = {"front": time.perf_counter() - start}
            intrs = usable_front(extrs, intrs, depth, g.width, repair=self.random_weights)
            return predictor.forward(frames.cpu(), depth=depth, intrs=intrs, extrs=extrs, queries=theirs, fps=1,
                                     full_point=True, iters_track=self.iters_track, query_no_BA=True,
                                     fixed_cam=False, stage=1, unc_metric=unc_metric, support_frame=T - 1,
                                     replace_ratio=0.2)

    def _result(self, out: tuple, queries: np.ndarray, g: ProcessedGeometry, size: tuple[int, int]
                ) -> TrackingResult:
        """Upstream outputs -> TrackingResult, after the query identity check (raises TrackerOutputError)."""
        c2w, K, _point_map, _conf_depth, track3d, track2d, vis, conf = (_numpy(x) for x in out[:8])
        T, Q = c2w.shape[0], len(queries)
        if track2d.shape[:2] != (T, Q) or track3d.shape[:2] != (T, Q):
            raise TrackerOutputError(f"SpatialTrackerV2 returned tracks of shape {track2d.shape[:2]} for {T} frames "
                                     f"and {Q} queries; expected one track per query")
        uv = processed_to_normalized(track2d[..., :2], g)
        self.last_identity = check_query_identity(uv, queries, (g.resized_height, g.width), self.identity_tolerance_px)
        c2w, self.last_rigidity = nearest_rigid(c2w)
        if self.last_rigidity > RIGID_TOLERANCE:
            raise TrackerOutputError(f"SpatialTrackerV2's camera poses are not rotations: |R R^T - I| reaches "
                                     f"{self.last_rigidity:.3g} (> {RIGID_TOLERANCE})")
        points = camera_to_world(track3d[..., :3], c2w)
        try:
            return TrackingResult(c2w=c2w, intrinsics=processed_intrinsics_to_normalized(K, g), points_world=points,
                                  visible=vis[..., 0] > self.visibility_threshold, metric=self.metric,
                                  image_size=size, confidence=np.clip(np.nan_to_num(conf[..., 0]), 0.0, 1.0))
        except ValueError as e:
            raise TrackerOutputError(f"SpatialTrackerV2 output: {e}") from None


def usable_front(extrs: np.ndarray, intrs: np.ndarray, depth: np.ndarray, width: int, repair: bool = False
                 ) -> np.ndarray:
    """The front end's intrinsics [T, 3, 3], after checking its poses [T, 4, 4], intrinsics and depth [T, h, w]:
    non-finite values or a focal length that is not positive raise TrackerOutputError. With `repair` (random
    weights: an untrained camera head's field of view passes a ReLU and is often 0, an infinite focal length) such
    a focal length becomes the frame's other one, or the width, instead."""
    intrs = intrs.copy()
    focal = intrs[:, [0, 1], [0, 1]]  # [T, 2]
    bad = ~np.isfinite(focal) | (focal <= 0)
    if repair and bad.any():
        other = focal[:, ::-1]
        focal = np.where(bad, np.where(bad[:, ::-1], float(width), other), focal)
        intrs[:, 0, 0], intrs[:, 1, 1] = focal[:, 0], focal[:, 1]
    for name, value in (("camera poses", extrs), ("intrinsics", intrs), ("depth", depth)):
        if not np.isfinite(value).all():
            raise TrackerOutputError(f"SpatialTrackerV2's front end returned non-finite {name}")
    if (intrs[:, [0, 1], [0, 1]] <= 0).any():
        raise TrackerOutputError("SpatialTrackerV2's front end returned a focal length that is not positive")
    return intrs


def _numpy(x) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array -> float64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
