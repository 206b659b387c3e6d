r"""Re-render a video along new camera trajectories with a trained Track2View model.

    python infer.py --video in.mp4 --trajectory arc_left --amount 30 --checkpoint EXPORT_DIR \
        --model Wan2.1-T2V-1.3B-Diffusers --out out.mp4 [--side-by-side] [--overlay]

Steps: read the video -> 3D tracks of the source (a tracker, or --tracks FILE) -> per trajectory, target
cameras and reprojected paired tracks -> encode the source once -> denoise + decode per trajectory ->
mp4 files (written atomically: a failed run leaves no partial file).

Trajectories (several may be given; outputs are then suffixed with the trajectory name):
  presets: see --list-trajectories. Amounts are degrees (pan, tilt, roll, arc) or metres (dolly, translate).
  With a relative-scale (monocular) tracker a "metre" is the scene's median track depth / 4, i.e. the scene
  is taken to be 4 m deep (ReCamMaster's orbit distance); with metric depth (e.g. --tracks from the oracle)
  metres are metres. Arcs orbit a pivot on the optical axis at the median track depth.
  --mode gradual: start at the source camera and move at constant speed; direct: the new pose from frame 0.
  The target camera at frame t is the source camera at frame t moved by the preset, so the source's own
  camera motion is kept; `static` instead locks the camera at the source's frame-0 pose. --poses FILE:
  per-frame OpenCV 4x4 poses of the target camera relative to the source camera at frame 0, translations in
  metres (JSON {"pose": "c2w"|"w2c", "poses": [...]} or npz `c2w`/`w2c`; details in track2view/trajectories.py);
  a file with a single pose gives a static camera at that new viewpoint.

Bad input (missing/undecodable video, too few frames, bad pose file, unknown trajectory, no track in the
target view, a checkpoint that does not match the model) prints one line `error: ...` and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from track2view.errors import report_bad_input
from track2view.video_size import video_size_problem

# The defaults of track2view.pipeline (Wan-2.1 480p, 81 frames) and track2view.reprojection (1152 queries),
# repeated here so that `--help` and bad-input errors do not wait for torch/diffusers to import.
DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_NUM_FRAMES, DEFAULT_NUM_QUERIES = 480, 832, 81, 1152


class InputError(ValueError):
    """Bad user input; printed as one line `error: ...`."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    io = p.add_argument_group("input and output")
    io.add_argument("--video", help="source video (any format PyAV decodes)")
    io.add_argument("--out", help="output mp4 (with several trajectories: OUT_<name>.mp4)")
    io.add_argument("--model", help="Wan-2.1 T2V diffusers directory (transformer, vae, text_encoder, tokenizer, "
                    "scheduler)")
    io.add_argument("--checkpoint", help="trained Track2View export directory (LoRA + conditioner); "
                    "without it the untrained conditioner is used (output = base model, for testing only)")
    io.add_argument("--side-by-side", action="store_true", help="also write OUT_side_by_side.mp4 (source | target)")
    io.add_argument("--overlay", action="store_true", help="also write OUT_overlay.mp4 (tracks drawn on both views)")
    io.add_argument("--save-tracks", action="store_true",
                    help="also write OUT_tracks.npz: the paired tracks (uv [2,T,N,2], depth [2,T,N], valid [2,T,N]) "
                         "and the source/target cameras (source_c2w, target_c2w [T,4,4], tracker world frame)")
    traj = p.add_argument_group("trajectory")
    traj.add_argument("--trajectory", action="append", default=[], metavar="NAME",
                      help="a preset (repeatable), see --list-trajectories")
    traj.add_argument("--amount", action="append", type=float, default=[],
                      help="degrees or metres in the preset's direction (negative reverses it); one value for all "
                           "trajectories or one per --trajectory (default: the preset's, e.g. arc 30 deg, pan 20 deg, "
                           "dolly 2 m)")
    traj.add_argument("--mode", choices=("gradual", "direct"), default="gradual")
    traj.add_argument("--aim", action="store_true", help="translations also turn the camera to keep the scene "
                      "centre (pivot) in view, as ReCamMaster's translate up/down (14 deg for 1 m at 4 m)")
    traj.add_argument("--poses", action="append", default=[], metavar="FILE",
                      help="custom trajectory file (JSON or npz, repeatable)")
    traj.add_argument("--list-trajectories", action="store_true", help="print the presets and exit")
    tracks = p.add_argument_group("tracks")
    tracks.add_argument("--tracks", help="precomputed TrackingResult npz of the source video (skips tracking)")
    tracks.add_argument("--tracker", default="spatialtracker_v2", help="tracker backend (default %(default)s)")
    tracks.add_argument("--tracker-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the tracker backend (repeatable)")
    tracks.add_argument("--num-queries", type=int, default=DEFAULT_NUM_QUERIES,
                        help="query points, half on the first and half on the last frame (default %(default)s)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--prompt", default="", help="caption of the source video")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance on the prompt")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    gen.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    gen.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES,
                     help="frames used from the start of the video, 4k+1 (25, 49, 81)")
    gen.add_argument("--flow-shift", type=float, default=None, help="scheduler shift (default: the model's)")
    gen.add_argument("--no-fuse-lora", action="store_true",
                     help="keep the LoRA separate (default: merged into the base weights, which runs at the base "
                          "model's speed)")
    gen.add_argument("--compile", action="store_true",
                     help="compile the transformer blocks (torch.compile; ~10%% faster per video on an H200 at "
                          "480x832x81 after a one-off compilation, see docs/benchmarks.md)")
    gen.add_argument("--device", default=None, help="default: cuda if available")
    gen.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                     help="default: bfloat16 on GPU, float32 on CPU")
    return p


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


def extra_path(path: Path, kind: str) -> Path:
    return path.with_name(f"{path.stem}_{kind}{path.suffix}")


def check_args(args) -> None:
    """Checks that need nothing loaded (fast failures before any model or tracker runs)."""
    from track2view.trajectories import resolve_name

    for flag in ("video", "out", "model"):
        if not getattr(args, flag):
            raise InputError(f"--{flag} is required")
    if not args.trajectory and not args.poses:
        raise InputError("give at least one --trajectory NAME or --poses FILE (see --list-trajectories)")
    for name in args.trajectory:
        resolve_name(name)
    if not args.tracks:
        from track2view.trackers import available_trackers

        if args.tracker not in available_trackers():
            raise InputError(f"unknown tracker {args.tracker!r}; available: {', '.join(available_trackers())} "
                             f"(or pass precomputed tracks with --tracks)")
    if args.amount and len(args.amount) not in (1, len(args.trajectory)):
        raise InputError(f"give one --amount for all trajectories or one per --trajectory "
                         f"({len(args.trajectory)}), got {len(args.amount)}")
    problem = video_size_problem(args.height, args.width, args.num_frames,
                                 names=("--height", "--width", "--num-frames"))
    if problem:
        raise InputError(problem)
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.num_queries < 2:
        raise InputError(f"--num-queries must be >= 2, got {args.num_queries}")
    if Path(args.out).suffix.lower() != ".mp4":
        raise InputError(f"--out must be an .mp4 path, got {args.out}")
    if not (Path(args.model) / "model_index.json").is_file():
        raise InputError(f"--model {args.model} is not a diffusers model directory (no model_index.json); "
                         f"pass the Wan-2.1 T2V diffusers folder")
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise InputError(f"--checkpoint {args.checkpoint} is not a directory; pass a Track2View export directory")
    if args.tracks and not Path(args.tracks).is_file():
        raise InputError(f"--tracks file not found: {args.tracks}")


def trajectories_for(args, num_frames: int, pivot_depth: float, units_per_metre: float):
    from track2view.trajectories import load_poses, make_trajectory

    out = []
    for i, name in enumerate(args.trajectory):
        amount = (args.amount[i] if len(args.amount) > 1 else args.amount[0]) if args.amount else None
        out.append(make_trajectory(name, num_frames, amount, args.mode, pivot_depth, units_per_metre, args.aim))
    out += [load_poses(p, num_frames, units_per_metre) for p in args.poses]
    return out


def load_or_track(args, frames):
    """TrackingResult of the source frames (their own resolution): from --tracks, or by running the tracker."""
    from track2view.reprojection import track_video
    from track2view.trackers import TrackingResult, parse_tracker_options

    if args.tracks:
        return TrackingResult.load(args.tracks)
    sources = [(str(Path(args.video).resolve()), t) for t in range(len(frames))]
    try:
        return track_video(frames, args.tracker, args.num_queries, sources,
                           **parse_tracker_options(args.tracker_arg, flag="--tracker-arg"))
    except (RuntimeError, ImportError, TypeError) as e:  # backend set-up: missing clone, weights, bad option
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"tracker {args.tracker!r}: {first} (tracker options: --tracker-arg KEY=VALUE; or "
                         f"pass precomputed tracks with --tracks)") from e


def run(args) -> list[Path]:
    import numpy as np

    from track2view.io import read_video, write_video
    from track2view.trajectories import load_poses, scene_scale

    check_args(args)
    for p in args.poses:  # validate pose files before the slow steps (scale applied later)
        load_poses(p, args.num_frames)
    video, fps = read_video(args.video, max_frames=args.num_frames)  # not the whole (maybe long, 1080p) clip
    if len(video) < args.num_frames:
        usable = (len(video) - 1) // 4 * 4 + 1
        raise InputError(f"{args.video} has {len(video)} frames but --num-frames is {args.num_frames}; "
                         f"use a longer video or --num-frames {usable}" if usable >= 5 else
                         f"{args.video} has only {len(video)} frames; at least 5 are needed")
    video = video[:args.num_frames]
    size = (args.height, args.width)

    import torch

    from track2view.reprojection import median_depth, prepare_tracks

    tracking = load_or_track(args, video)  # at the video's resolution; reprojection follows the crop
    (th, tw), (vh, vw) = tracking.image_size, video.shape[1:3]
    if abs(th / tw - vh / vw) > 0.01 * vh / vw:
        raise InputError(f"the tracks were computed on {th}x{tw} frames but the video is {vh}x{vw} (another "
                         f"aspect ratio); track this video or pass its own --tracks file")
    pivot, units = scene_scale(median_depth(tracking), bool(np.asarray(tracking.metric)))
    trajectories = trajectories_for(args, args.num_frames, pivot, units)
    prepared = [prepare_tracks(tracking, traj, args.num_frames, image_size=size, num_tracks=args.num_queries)
                for traj in trajectories]
    outputs = output_paths(Path(args.out), [t.name for t in trajectories])

    from track2view.pipeline import Track2ViewPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype
    pipe = Track2ViewPipeline.from_checkpoint(args.model, args.checkpoint, torch_dtype=dtype,
                                              flow_shift=args.flow_shift).to(device)
    if args.checkpoint and not args.no_fuse_lora:
        pipe.fuse_lora()
    if args.compile:
        pipe.transformer.transformer.compile_repeated_blocks(fullgraph=True)
    source = pipe.prepare_source(video, args.prompt, args.negative_prompt, *size, args.num_frames,
                                 args.guidance, fps)
    if device.startswith("cuda"):  # the prompts are encoded: free the text encoder's GPU memory for the DiT
        pipe.text_encoder.to("cpu")
        torch.cuda.empty_cache()
    written = []
    for prep, path in zip(prepared, outputs):
        generator = torch.Generator("cpu").manual_seed(args.seed)
        result = pipe(source=source, tracks=prep.latent, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, generator=generator)
        frames = (result.frames * 255).round().clip(0, 255).astype(np.uint8)
        written.append(write_video(path, frames, fps=fps))
        if args.save_tracks:
            written.append(save_tracks(path.with_name(f"{path.stem}_tracks.npz"), prep, tracking, args.num_frames))
        if args.side_by_side:
            from track2view.visualize import side_by_side

            written.append(write_video(extra_path(path, "side_by_side"), side_by_side(source.frames, frames), fps=fps))
        if args.overlay:
            from track2view.visualize import track_overlay

            written.append(write_video(extra_path(path, "overlay"), track_overlay(source.frames, frames, prep.full),
                                       fps=fps))
    return written


def save_tracks(path: Path, prep, tracking, num_frames: int) -> Path:
    import numpy as np

    from track2view.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **prep.full.to_numpy(), target_c2w=prep.target_c2w.astype(np.float32),
                     source_c2w=np.asarray(tracking.c2w[:num_frames], np.float32))
    return path


def bad_input_types() -> tuple[type, ...]:
    """Exceptions that mean bad input (one-line message) rather than a bug (traceback)."""
    from track2view.io import VideoError
    from track2view.trajectories import TrajectoryError

    # ValueError covers NoValidTracksError, tracker input errors, malformed tracks files and a checkpoint
    # trained for another base model (Track2ViewTransformer.load_trained)
    return InputError, VideoError, TrajectoryError, FileNotFoundError, ValueError


def main(argv: list[str] | None = None) -> int:
    import os

    # library warnings and weight-loading bars would bury the one-line error; the denoising bar stays
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_trajectories:
        from track2view.trajectories import ALIASES, PRESETS

        for name, preset in sorted(PRESETS.items()):
            amount = f"{abs(preset.default_amount):g} {preset.unit}" if preset.unit else "-"
            print(f"{name:24s} {amount:8s} {preset.help}")
        print("aliases: " + ", ".join(f"{a}={n}" for a, n in sorted(ALIASES.items())))
        return 0
    try:
        written = run(args)
    except bad_input_types() as e:
        return report_bad_input(e)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
