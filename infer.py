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
  metres (JSON {"pose": "c2w"|"w2c", "poses": [...]} or npz `c2w`/`w2c`; details in track2view/inference/trajectories.py);
  a file with a single pose gives a static camera at that new viewpoint.

Speed and memory (all off by default; docs/inference.md): --cache first_block|taylorseer|mag (diffusers' step
caches), --guidance-interval START,END (CFG on part of the steps), --attention-backend NAME, --compile,
--vae-tiling and --offload model|sequential (smaller GPUs).

Several GPUs (docs/inference.md): `torchrun --nproc-per-node N infer.py ...` splits each video's tokens over the N
processes (--parallel context, diffusers' context parallelism: Ulysses where the degree divides the attention
heads, else ring attention); rank 0 alone tracks, encodes, decodes and writes the files.

Bad input (missing/undecodable video, too few frames, bad pose file, unknown trajectory, no track in the
target view, a checkpoint that does not match the model) prints one line `error: ...` and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from track2view.errors import EXIT_BAD_INPUT, report_bad_input
from track2view.inference.guidance import parse_interval
from track2view.inference.parallel import context_from_flags, finish, is_rank0, launched_world
from track2view.inference.rerender import InputError, Rerenderer, RerenderRequest
from track2view.inference.speed import add_speed_arguments, speed_options_from
from track2view.inference.trajectories import MODES

DEFAULTS = RerenderRequest  # the options' defaults are the request's (Wan-2.1 480p, 81 frames, 1152 queries)


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
    io.add_argument("--overwrite", action="store_true", help="replace output files that exist (default: refuse)")
    io.add_argument("--side-by-side", action="store_true", help="also write OUT_side_by_side.mp4 (source | target)")
    io.add_argument("--overlay", action="store_true", help="also write OUT_overlay.mp4 (tracks drawn on both views)")
    io.add_argument("--save-tracks", action="store_true",
                    help="also write OUT_tracks.npz: the paired tracks (uv [2,T,N,2], depth [2,T,N], valid [2,T,N]) "
                         "and the source/target cameras (source_c2w, target_c2w [T,4,4], tracker world frame)")
    io.add_argument("--drop-tracks", action="store_true",
                    help="mark every track invalid in the model's input (a 'tracks' export; what the model makes "
                         "without its tracks: a diagnostic, the target cameras still shape nothing else)")
    traj = p.add_argument_group("trajectory")
    traj.add_argument("--trajectory", action="append", default=[], metavar="NAME",
                      help="a preset (repeatable), see --list-trajectories")
    traj.add_argument("--amount", action="append", type=float, default=[],
                      help="degrees or metres in the preset's direction (negative reverses it); one value for all "
                           "trajectories or one per --trajectory (default: the preset's, e.g. arc 30 deg, pan 20 deg, "
                           "dolly 2 m)")
    traj.add_argument("--mode", choices=MODES, default=DEFAULTS.mode)
    traj.add_argument("--aim", action="store_true", help="translations also turn the camera to keep the scene "
                      "centre (pivot) in view, as ReCamMaster's translate up/down (14 deg for 1 m at 4 m)")
    traj.add_argument("--poses", action="append", default=[], metavar="FILE",
                      help="custom trajectory file (JSON or npz, repeatable)")
    traj.add_argument("--list-trajectories", action="store_true", help="print the presets and exit")
    tracks = p.add_argument_group("tracks")
    tracks.add_argument("--tracks", help="precomputed TrackingResult npz of the source video (skips tracking)")
    tracks.add_argument("--tracker", default="spatialtracker_v2", help="tracker backend (default %(default)s)")
    tracks.add_argument("--tracker-option", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the tracker backend (repeatable)")
    tracks.add_argument("--num-queries", type=int, default=DEFAULTS.num_queries,
                        help="query points, half on the first and half on the last frame (default %(default)s)")
    tracks.add_argument("--query-frames", default=DEFAULTS.query_frames, choices=("first_last", "first", "random"),
                        help="source frames of the queries, as the training data was curated (default %(default)s)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--prompt", default="", help="caption of the source video")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, default=DEFAULTS.steps)
    gen.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance on the prompt")
    gen.add_argument("--guidance-interval", default="0,1", metavar="START,END",
                     help="run CFG only on this fraction of the denoising steps, the others with the prompt alone "
                          "(about half the cost); default %(default)s: every step")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=DEFAULTS.height)
    gen.add_argument("--width", type=int, default=DEFAULTS.width)
    gen.add_argument("--num-frames", type=int, default=DEFAULTS.num_frames,
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
    add_speed_arguments(p)
    par = p.add_argument_group("several GPUs (docs/inference.md, 'Several GPUs')")
    par.add_argument("--parallel", choices=("none", "context"), default=None,
                     help="context: split each video over the processes of torchrun --nproc-per-node N (diffusers' "
                          "context parallelism; the default when WORLD_SIZE > 1); none: this process alone (the "
                          "default otherwise)")
    par.add_argument("--ulysses-degree", type=int, default=None,
                     help="processes that split the attention heads (Ulysses; must divide the heads, 12 for Wan-1.3B); "
                          "default: the largest that divides both the process count and the heads")
    par.add_argument("--ring-degree", type=int, default=None,
                     help="processes that pass key/value chunks round (ring attention; needs --attention-backend "
                          "_native_cudnn, flash or sage, _native_cudnn by default on CUDA); default: the process "
                          "count / the Ulysses degree")
    return p


def request_from(args) -> RerenderRequest:
    return RerenderRequest(video=args.video, out=args.out, trajectories=args.trajectory, amounts=args.amount,
                           mode=args.mode, aim=args.aim, poses=args.poses, tracks=args.tracks, tracker=args.tracker,
                           tracker_options=args.tracker_option, num_queries=args.num_queries,
                           query_frames=args.query_frames, prompt=args.prompt,
                           negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
                           guidance_interval=parse_interval(args.guidance_interval),
                           seed=args.seed, height=args.height, width=args.width, num_frames=args.num_frames,
                           side_by_side=args.side_by_side, overlay=args.overlay, save_tracks=args.save_tracks,
                           drop_tracks=args.drop_tracks, overwrite=args.overwrite)


def run(args) -> list:
    for flag in ("video", "out", "model"):
        if not getattr(args, flag):
            raise InputError(f"--{flag} is required")
    if args.parallel == "none" and launched_world()[1] > 1:
        raise InputError(f"--parallel none under torchrun (WORLD_SIZE={launched_world()[1]}) would re-render the same "
                         f"video in every process; drop --parallel none, or run without torchrun")
    request = request_from(args)
    rerenderer = Rerenderer(args.model, args.checkpoint, device=args.device, dtype=args.dtype,
                            flow_shift=args.flow_shift, fuse_lora=not args.no_fuse_lora, compile=args.compile,
                            speed=speed_options_from(args),
                            context=context_from_flags(args.parallel, args.ulysses_degree, args.ring_degree))
    return rerenderer.render(request)


def bad_input_types() -> tuple[type, ...]:
    """Exceptions that mean bad input (one-line message) rather than a bug (traceback)."""
    from track2view.inference.trajectories import TrajectoryError
    from track2view.io import VideoError

    # ValueError covers NoValidTracksError, tracker input errors, malformed tracks files, an export of another
    # conditioning kind or trained for another base model; OSError a full disk or a file that cannot be written
    return InputError, VideoError, TrajectoryError, OSError, ValueError


def main(argv: list[str] | None = None) -> int:
    import os

    # library warnings and weight-loading bars would bury the one-line error; the denoising bar stays
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_trajectories:
        from track2view.inference.trajectories import ALIASES, PRESETS

        for name, preset in sorted(PRESETS.items()):
            amount = f"{abs(preset.default_amount):g} {preset.unit}" if preset.unit else "-"
            print(f"{name:24s} {amount:8s} {preset.help}")
        print("aliases: " + ", ".join(f"{a}={n}" for a, n in sorted(ALIASES.items())))
        return 0
    try:
        written = run(args)
    except bad_input_types() as e:  # under torchrun every rank stops with rank 0's error; rank 0 prints it
        return report_bad_input(e) if is_rank0() else EXIT_BAD_INPUT
    finally:
        finish()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
