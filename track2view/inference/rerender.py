"""The re-render routine behind infer.py (and evaluate.py generate), one straight path:

    video file --read once--> frames [T, H, W, 3]
      -> 3D tracks of the source (a tracker, or a TrackingResult npz)          (kinds tracks, camera)
      -> per trajectory: target cameras -> paired tracks [2, T, N] -> the conditioning kind's inputs
      -> Track2ViewPipeline: encode the source once, denoise + decode per trajectory
      -> mp4 files (+ side by side, track overlay, tracks npz), each written atomically

`Rerenderer` loads the pipeline once (lazily, after the inputs are checked) and re-renders many requests; the
export's track2view.json is read once into `ExportInfo` and decides the conditioning kind: "tracks" and
"camera" need a target trajectory, "none" takes none (it re-renders without camera control).

With `context` (torchrun, parallel.py) every process denoises its share of each video's tokens; rank 0 alone checks
the request, reads and tracks the video and encodes it (`from_rank0` sends the views and the encoding to the
others), decodes and writes the files (outputs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from track2view.inference.guidance import BOTH_BRANCHES, FULL_INTERVAL, POSITIVE_BRANCH, check_interval, guided_steps
from track2view.inference.outputs import extra_path, output_paths, write_outputs
from track2view.inference.parallel import ContextDegrees, enable_context_parallel, from_rank0, is_rank0, launch_context
from track2view.inference.speed import SpeedOptions, apply_speed_options, compile_blocks
from track2view.inference.step_cache import enable_step_cache, recorded_mag_ratios, write_mag_ratios
from track2view.inference.trajectories import Trajectory, load_poses, make_trajectory, resolve_name, scene_scale
from track2view.model.export import ExportInfo
from track2view.trackers.queries import DEFAULT_NUM_QUERIES, MAX_QUERIES, QUERY_FRAMES
from track2view.tracks import TARGET
from track2view.video_size import video_size_problem

CAMERA_KINDS = ("tracks", "camera")  # the kinds that take a target trajectory (and so need the source's tracks)


class InputError(ValueError):
    """Bad user input; printed as one line `error: ...`."""


@dataclass
class RerenderRequest:
    """One source video and the trajectories to re-render it along (infer.py's options, README "Re-render")."""

    video: str
    out: str  # .mp4; with several trajectories OUT_<name>.mp4
    trajectories: list[str] = field(default_factory=list)  # preset names (trajectories.PRESETS)
    amounts: list[float] = field(default_factory=list)  # one for all, or one per preset
    mode: str = "gradual"
    aim: bool = False
    poses: list[str] = field(default_factory=list)  # custom pose files
    tracks: str | None = None  # a TrackingResult npz of the source (skips tracking)
    tracker: str = "spatialtracker_v2"
    tracker_options: list[str] = field(default_factory=list)  # KEY=VALUE
    num_queries: int = DEFAULT_NUM_QUERIES
    query_frames: str = "first_last"  # the curation's --query-frames the model was trained on
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 50
    guidance: float = 5.0
    guidance_interval: tuple[float, float] = FULL_INTERVAL  # fractions of the steps that run CFG (guidance.py)
    seed: int = 0
    height: int = 480
    width: int = 832
    num_frames: int = 81
    side_by_side: bool = False
    overlay: bool = False
    save_tracks: bool = False
    drop_tracks: bool = False  # every track marked invalid in the model's input (a diagnostic of the tracks kind)
    shift_target_tracks: float = 0.0  # the target view's tracks moved right by this fraction of the width (diagnostic)
    overwrite: bool = False  # replace existing output files (never a directory)


@dataclass
class View:
    """One trajectory ready for the pipeline."""

    name: str
    inputs: dict  # the conditioning kind's inputs for Track2ViewPipeline.__call__
    prepared: object | None = None  # reprojection.PreparedTracks (kinds with a trajectory), for overlays
    source_c2w: np.ndarray | None = None  # [T, 4, 4] in the tracker's world frame


@dataclass
class Plan:
    """A checked request and what it re-renders: one view per trajectory and the source clip (frames [T, H, W, 3]
    uint8 at the video's own size and its fps). Under context parallelism rank 0 makes it and the other ranks
    receive it without the frames (`video` None): only rank 0 encodes them."""

    request: RerenderRequest
    views: list[View]
    fps: float
    video: np.ndarray | None


class Rerenderer:
    """A Wan-2.1 directory + a Track2View export (or none: the untrained conditioning, for testing), loaded once."""

    def __init__(self, model_dir: str, checkpoint: str | None = None, device: str | None = None,
                 dtype: str | None = None, flow_shift: float | None = None, fuse_lora: bool = True,
                 compile: bool = False, speed: SpeedOptions | None = None, context: ContextDegrees | None = None):
        """speed: step cache, attention backend, VAE tiling, offload (track2view/inference/speed.py); context: split
        each video over torchrun's processes as asked (context parallelism, parallel.py; None: this process
        alone)."""
        check_device(device)
        self.speed = speed or SpeedOptions()
        _as_input_error(self.speed.check, device)
        if not (Path(model_dir) / "model_index.json").is_file():
            raise InputError(f"--model {model_dir} is not a diffusers model directory (no model_index.json); pass "
                             f"the Wan-2.1 T2V diffusers folder")
        if checkpoint and not Path(checkpoint).is_dir():
            raise InputError(f"--checkpoint {checkpoint} is not a directory; pass a Track2View export directory")
        self.model_dir, self.checkpoint, self.device, self.dtype = model_dir, checkpoint, device, dtype
        self.flow_shift, self.fuse_lora, self.compile = flow_shift, fuse_lora, compile
        self.info = ExportInfo.read(checkpoint) if checkpoint else None
        self.kind = self.info.conditioning if self.info else "tracks"
        self._pipe, self._cache_steps = None, None
        attention = self.info.attention if self.info else "full"
        self.context = None if context is None else _as_input_error(
            launch_context, context, self.wan_config(), attention, device, self.speed)
        if self.context is not None:  # this rank's GPU, and the backend its split runs with
            self.device = self.context.device
            self.speed = replace(self.speed, attention_backend=self.context.attention_backend)

    @property
    def writes_files(self) -> bool:
        """Whether this process writes the outputs: always, except on the ranks > 0 of a context-parallel run."""
        return self.context is None or is_rank0()

    def wan_config(self) -> dict:
        """The config of the Wan transformer this re-renders with: the export's trained base, or the model's."""
        from diffusers import WanTransformer3DModel

        folder, sub = (self.checkpoint, self.info.transformer) if self.info and self.info.transformer else \
            (self.model_dir, "transformer")
        return dict(WanTransformer3DModel.load_config(folder, subfolder=sub))

    def pipeline(self):
        """The Track2ViewPipeline, loaded on first use (so that bad input is reported before the slow load)."""
        if self._pipe is None:
            import torch

            from track2view.dtypes import parse_dtype
            from track2view.inference.pipeline import Track2ViewPipeline

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = parse_dtype(self.dtype, "--dtype") if self.dtype else (
                torch.bfloat16 if device.startswith("cuda") else torch.float32)
            pipe = Track2ViewPipeline.from_checkpoint(self.model_dir, self.checkpoint, torch_dtype=dtype,
                                                      flow_shift=self.flow_shift, info=self.info)
            if self.speed.offload == "none":  # else the offload hooks place the weights, after the LoRA is merged
                pipe.to(device)
            if self.checkpoint and self.fuse_lora:
                pipe.fuse_lora()
            _as_input_error(apply_speed_options, pipe, device, self.speed, self.context is not None)
            if self.context is not None:
                enable_context_parallel(pipe.transformer.transformer, self.context.split)
                pipe.set_progress_bar_config(disable=not self.writes_files)  # one progress bar, rank 0's
            if self.compile:  # before render() enables a step cache: its hooks stay outside the graph
                compile_blocks(pipe.transformer.transformer)
            self._pipe = pipe
        return self._pipe

    def render(self, request: RerenderRequest | None) -> list[Path]:
        """Re-render `request.video` along every trajectory of the request; returns the files written. Under
        context parallelism rank 0's request is the one rendered (the other ranks may pass None) and only rank 0
        writes: the others return []."""
        import torch

        plan = from_rank0(lambda: self._plan(request), shared=lambda p: replace(p, video=None))
        request, pipe = plan.request, self.pipeline()
        self._use_step_cache(pipe, request.steps)
        source = from_rank0(lambda: pipe.prepare_source(plan.video, request.prompt, request.negative_prompt,
                                                        request.height, request.width, request.num_frames,
                                                        request.guidance, plan.fps), shared=shared_source)
        if self.speed.offload == "none":  # with offload, its hooks move the text encoder off the GPU
            free_text_encoder(pipe)
        written, calibrated = [], []
        for view, path in zip(plan.views, output_paths(Path(request.out), [v.name for v in plan.views])):
            result = pipe(source=source, inputs=view.inputs, num_inference_steps=request.steps,
                          guidance_scale=request.guidance, generator=torch.Generator("cpu").manual_seed(request.seed),
                          guidance_interval=request.guidance_interval,
                          output_type="np" if self.writes_files else "latent")  # rank 0 decodes
            if self.writes_files:
                written += write_outputs(path, request, view, source.frames, result.frames, plan.fps)
            if self.speed.cache.calibrate_to:
                calibrated.append(recorded_mag_ratios(pipe.transformer.transformer, (BOTH_BRANCHES, POSITIVE_BRANCH)))
        if calibrated:
            written.append(write_mag_ratios(self.speed.cache.calibrate_to, calibrated, model=str(self.model_dir),
                                            checkpoint=self.checkpoint))
        return written

    def _plan(self, request: RerenderRequest) -> Plan:
        """Check the request, read its clip and prepare its views (tracking the source)."""
        check_request(request, self.kind)
        guided = guided_steps(request.steps, request.guidance_interval) if request.guidance > 1 else []
        _as_input_error(self.speed.cache.check_run, guided, request.overwrite)
        if self.context is not None:
            _as_input_error(self.context.check_size, request.height, request.width, request.num_frames)
        poses = [load_poses(p, request.num_frames) for p in request.poses]  # parsed once, metres kept
        video, fps = read_clip(request.video, request.num_frames)
        return Plan(request, self._views(request, video, poses), fps, video)

    def _use_step_cache(self, pipe, steps: int) -> None:
        """The step cache for runs of `steps` steps (re-enabled when the count changes: MagCache maps its ratios)."""
        if self._cache_steps != steps:
            enable_step_cache(pipe.transformer.transformer, self.speed.cache, steps)
            self._cache_steps = steps

    def _views(self, request: RerenderRequest, video: np.ndarray, poses: list[Trajectory]) -> list[View]:
        if self.kind not in CAMERA_KINDS:
            return [View(Path(request.out).stem, {})]
        from track2view.inference.reprojection import median_depth, prepare_tracks

        tracking = load_or_track(request, video)
        (th, tw), (vh, vw) = tracking.image_size, video.shape[1:3]
        if abs(th / tw - vh / vw) > 0.01 * vh / vw:
            raise InputError(f"the tracks were computed on {th}x{tw} frames but the video is {vh}x{vw} (another "
                             f"aspect ratio); track this video or pass its own --tracks file")
        pivot, units = scene_scale(median_depth(tracking), bool(np.asarray(tracking.metric)))
        trajectories = [make_trajectory(name, request.num_frames, amount_for(request, i), request.mode, pivot,
                                        units, request.aim) for i, name in enumerate(request.trajectories)]
        trajectories += [p.in_scene_units(units) for p in poses]
        views = []
        for trajectory in trajectories:
            prep = prepare_tracks(tracking, trajectory, request.num_frames, image_size=(request.height, request.width),
                                  num_tracks=request.num_queries)
            source_c2w = np.asarray(tracking.c2w[:request.num_frames], np.float64)
            inputs = conditioning_inputs(self.kind, prep, source_c2w, units, drop_tracks=request.drop_tracks,
                                         shift_target_tracks=request.shift_target_tracks)
            views.append(View(trajectory.name, inputs, prep, source_c2w))
        return views


def conditioning_inputs(kind: str, prepared, source_c2w: np.ndarray, units_per_metre: float,
                        stride: int = 4, drop_tracks: bool = False, shift_target_tracks: float = 0.0) -> dict:
    """The pipeline inputs of conditioning `kind` for one prepared trajectory (reprojection.PreparedTracks);
    `drop_tracks`: the tracks all marked invalid (the conditioner then adds nothing: the model without them);
    `shift_target_tracks`: the target tracks moved right by this fraction of the width (a track-following probe)."""
    if kind == "tracks":
        tracks = prepared.latent.shifted(TARGET, shift_target_tracks) if shift_target_tracks else prepared.latent
        return {"tracks": replace(tracks, valid=tracks.valid & False) if drop_tracks else tracks}
    if kind == "camera":
        from track2view.conditioning.camera import relative_camera_features

        return {"cameras": relative_camera_features(source_c2w, prepared.target_c2w, stride, units_per_metre)}
    return {}


def check_request(r: RerenderRequest, kind: str) -> None:
    """Checks that need nothing loaded (fast failures before any model or tracker runs)."""
    if kind in CAMERA_KINDS:
        if not r.trajectories and not r.poses:
            raise InputError("give at least one --trajectory NAME or --poses FILE (see --list-trajectories)")
    else:
        given = [flag for flag, value in (("--trajectory", r.trajectories), ("--poses", r.poses),
                                          ("--tracks", r.tracks), ("--tracker-option", r.tracker_options),
                                          ("--overlay", r.overlay), ("--save-tracks", r.save_tracks)) if value]
        if given:
            raise InputError(f"the export's conditioning is {kind!r}: it takes no camera trajectory, so "
                             f"{', '.join(given)} cannot apply; drop them, or use an export trained with tracks "
                             f"or camera conditioning")
    for name in r.trajectories:
        resolve_name(name)
    if r.shift_target_tracks and kind != "tracks":
        raise InputError(f"--shift-target-tracks moves the target tracks of a 'tracks' export; this export's "
                         f"conditioning is {kind!r}: drop the flag")
    if r.drop_tracks and kind != "tracks":
        raise InputError(f"--drop-tracks marks the tracks of a 'tracks' export invalid; this export's conditioning is "
                         f"{kind!r}: drop the flag")
    if kind in CAMERA_KINDS and not r.tracks:
        from track2view.trackers import available_trackers

        if r.tracker not in available_trackers():
            raise InputError(f"unknown tracker {r.tracker!r}; available: {', '.join(available_trackers())} "
                             f"(or pass precomputed tracks with --tracks)")
    if r.amounts and len(r.amounts) not in (1, len(r.trajectories)):
        raise InputError(f"give one --amount for all trajectories or one per --trajectory "
                         f"({len(r.trajectories)}), got {len(r.amounts)}")
    problem = video_size_problem(r.height, r.width, r.num_frames, names=("--height", "--width", "--num-frames"))
    if problem:
        raise InputError(problem)
    if r.steps < 1:
        raise InputError(f"--steps must be >= 1, got {r.steps}")
    _as_input_error(check_interval, r.guidance_interval, "--guidance-interval")
    if not 2 <= r.num_queries <= MAX_QUERIES:
        raise InputError(f"--num-queries must be in [2, {MAX_QUERIES}], got {r.num_queries}")
    if r.query_frames not in QUERY_FRAMES:
        raise InputError(f"--query-frames must be one of {', '.join(QUERY_FRAMES)}, got {r.query_frames!r}")
    for flag, value in [("--guidance", r.guidance)] + [("--amount", a) for a in r.amounts]:
        if not np.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")
    if r.tracks and not Path(r.tracks).is_file():
        raise InputError(f"--tracks file not found: {r.tracks}")
    check_output(r, kind)


def check_output(r: RerenderRequest, kind: str) -> None:
    """--out: an .mp4 path in a writable folder; existing outputs only with --overwrite, and never a directory."""
    import os

    out = Path(r.out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"--out must be an .mp4 path, got {r.out}")
    folder = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write into {folder} (--out {r.out}): not a writable folder; choose another --out")
    names = [*map(resolve_name, r.trajectories), *(Path(p).stem for p in r.poses)] if kind in CAMERA_KINDS else [out.stem]
    paths = output_paths(out, names)
    suffixes = [("tracks", ".npz")] * r.save_tracks + [("side_by_side", None)] * r.side_by_side + \
        [("overlay", None)] * r.overlay
    paths += [extra_path(p, k, x) for p in paths for k, x in suffixes]
    for path in paths:
        if path.is_dir():
            raise InputError(f"{path} is a directory; --out names the video file to write")
        if path.exists() and not r.overwrite:
            raise InputError(f"{path} exists; pass --overwrite to replace it, or choose another --out")


def _as_input_error(check, *args):
    """`check(*args)`, its ValueError (a library check's message) raised as InputError."""
    try:
        return check(*args)
    except ValueError as e:
        raise InputError(str(e)) from None


def check_device(device: str | None) -> None:
    """--device: a torch device that exists here (default: cuda if available, else cpu)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"--device {device!r} is not a device ({e}); use cpu, cuda or cuda:N") from e
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"--device {device}: no such CUDA device on this machine "
                         f"({torch.cuda.device_count()} visible); use cpu or an existing cuda:N")
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: only cpu and cuda devices are supported")


def amount_for(r: RerenderRequest, i: int) -> float | None:
    return (r.amounts[i] if len(r.amounts) > 1 else r.amounts[0]) if r.amounts else None


def read_clip(path: str, num_frames: int) -> tuple[np.ndarray, float]:
    """The first `num_frames` frames of the video (decoding stops there) and its fps."""
    from track2view.io import read_video

    video, fps = read_video(path, max_frames=num_frames)
    if len(video) < num_frames:
        usable = (len(video) - 1) // 4 * 4 + 1
        raise InputError(f"{path} has {len(video)} frames but --num-frames is {num_frames}; use a longer video or "
                         f"--num-frames {usable}" if usable >= 5 else
                         f"{path} has only {len(video)} frames; at least 5 are needed")
    return video[:num_frames], fps


def load_or_track(r: RerenderRequest, frames: np.ndarray):
    """TrackingResult of the source frames (their own resolution): from --tracks, or by running the tracker."""
    from track2view.inference.reprojection import track_video
    from track2view.trackers import TrackingResult, parse_tracker_options

    if r.tracks:
        if r.tracker_options:
            raise InputError("--tracker-option applies to the tracker, which --tracks skips; drop one of them")
        return TrackingResult.load(r.tracks)
    sources = [(str(Path(r.video).resolve()), t) for t in range(len(frames))]
    try:
        return track_video(frames, r.tracker, r.num_queries, sources, r.query_frames,
                           **parse_tracker_options(r.tracker_options, flag="--tracker-option"))
    except (RuntimeError, ImportError, TypeError) as e:  # backend set-up: missing clone, weights, bad option
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"tracker {r.tracker!r}: {first} (tracker options: --tracker-option KEY=VALUE; or pass "
                         f"precomputed tracks with --tracks)") from e


def shared_source(source):
    """What the other ranks receive of rank 0's SourceCache: its tensors on the CPU (each rank moves them to its
    own device) and frames [T, 0, 0, 3], the frame count without the pixels (only rank 0 writes the files)."""
    negative = source.negative_prompt_embeds
    return replace(source, latents=source.latents.cpu(), prompt_embeds=source.prompt_embeds.cpu(),
                   negative_prompt_embeds=None if negative is None else negative.cpu(),
                   frames=source.frames[:, :0, :0])


def free_text_encoder(pipe) -> None:
    """The prompts are encoded: give the text encoder's GPU memory to the DiT."""
    import torch

    if pipe.text_encoder is not None and pipe.device.type == "cuda":
        pipe.text_encoder.to("cpu")
        torch.cuda.empty_cache()
