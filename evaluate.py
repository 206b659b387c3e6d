r"""Benchmark evaluation: manifests, FID reference statistics, generation over a manifest, scores and tables.

    python evaluate.py manifest realcam --metadata RealCam-Vid_test.npz --root RealCam-Vid/ --out realcam.json
    python evaluate.py manifest synthetic --root data/synthetic/test --out synthetic.json
    python evaluate.py reference --metadata RealCam-Vid_test.npz --root RealCam-Vid/ --inception pt_inception.pth \
        --frames-per-clip 7 --out fid_reference.npz
    python evaluate.py generate --manifest realcam.json --model Wan2.1-T2V-1.3B-Diffusers --checkpoint EXPORT \
        --out generated/ --tracker-option repo_dir=/opt/SpaTrackerV2 ...      (sharded: --rank R --world-size N)
    torchrun --nproc-per-node 8 evaluate.py generate ...         (clips shared out; --parallel context: each clip
                                                                  split over the 8 GPUs)
    python evaluate.py score --manifest realcam.json --generated generated/ --out scores/ --metrics all \
        --inception pt_inception.pth --fid-reference fid_reference.npz --clip clip-vit-base-patch32 ...

Every network is read from a local path (no downloads); docs/evaluation.md says where each comes from, the
protocol and the conventions. generate and score resume: finished clips are skipped. Bad input (missing
videos, short clips, a metadata file of another format, weights that are missing or another network, a
generated folder that does not match the manifest) prints one line `error: ...` and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from track2view.errors import EXIT_BAD_INPUT, report_bad_input
from track2view.inference.parallel import finish, is_rank0
from track2view.inference.speed import add_speed_arguments


def _frames(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated frame counts like 25,49,81, got {text!r}")


def _add_manifest(sub) -> None:
    p = sub.add_parser("manifest", help="write a benchmark manifest (clips, prompts, target trajectories)")
    kinds = p.add_subparsers(dest="benchmark", required=True)
    real = kinds.add_parser("realcam", help="the paper's seeded RealCam-Vid selection")
    real.add_argument("--metadata", required=True, help="RealCam-Vid_test.npz (read with a restricted unpickler)")
    real.add_argument("--root", required=True, help="RealCam-Vid's root (video_path is relative to it)")
    real.add_argument("--static", type=int, default=200, help="RealEstate10K clips (default %(default)s)")
    real.add_argument("--dynamic", type=int, default=200, help="MiraData clips (default %(default)s)")
    real.add_argument("--prompt-field", default="long_caption", choices=("long_caption", "short_caption"))
    syn = kinds.add_parser("synthetic", help="held-out synthetic scenes (python -m track2view.synthetic)")
    syn.add_argument("--root", required=True, help="a split folder written by python -m track2view.synthetic")
    syn.add_argument("--targets-per-scene", type=int, default=1)
    syn.add_argument("--max-scenes", type=int, default=None)
    for q in (real, syn):
        q.add_argument("--out", required=True, help="manifest JSON to write")
        q.add_argument("--num-frames", type=int, default=None, help="frames per clip (realcam default 81)")
        q.add_argument("--seed", type=int, default=0)


def _add_reference(sub) -> None:
    p = sub.add_parser("reference", help="FID reference statistics from real frames (once)")
    p.add_argument("--metadata", help="RealCam-Vid metadata: every clip with --num-frames frames")
    p.add_argument("--manifest", help="or a manifest: its source videos")
    p.add_argument("--root", help="videos root (default: the manifest's)")
    p.add_argument("--inception", required=True, help="Inception-v3 FID weights (.pth / .safetensors)")
    p.add_argument("--out", required=True, help="statistics file to write (.npz)")
    p.add_argument("--num-frames", type=int, default=81)
    p.add_argument("--frames-per-clip", type=int, default=0, help="evenly spaced frames per clip (0: all)")
    p.add_argument("--height", type=int, default=480, help="generation height the frames are fitted to")
    p.add_argument("--width", type=int, default=832, help="generation width the frames are fitted to")
    p.add_argument("--device", default=None)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="re-render every clip of a manifest (resumable, sharded by rank)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="folder of generated clips (one subfolder per clip)")
    p.add_argument("--root", help="videos root (default: the manifest's)")
    p.add_argument("--model", required=True, help="Wan-2.1 T2V diffusers directory")
    p.add_argument("--checkpoint", help="Track2View export directory")
    p.add_argument("--tracker", default="spatialtracker_v2")
    p.add_argument("--tracker-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-queries", type=int, default=None)
    p.add_argument("--query-frames", choices=("first_last", "first", "random"), default=None,
                   help="source frames of the tracker's queries, as the model's training data was curated")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--guidance-interval", default="0,1", metavar="START,END",
                   help="run CFG only on this fraction of the denoising steps (default %(default)s: every step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-tracks", action="store_true", help="a 'tracks' export with every track marked invalid "
                   "(infer.py --drop-tracks): what the model makes without its tracks")
    p.add_argument("--shift-target-tracks", type=float, default=0.0, metavar="DX",
                   help="a 'tracks' export given the target view's tracks moved right by DX of the frame width: a "
                        "model that follows its tracks moves its re-render by as much (track_following.py measures it)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    add_speed_arguments(p, calibration=False)  # infer.py's speed and memory options (docs/inference.md)
    p.add_argument("--rank", type=int, default=None, help="shard index (default: $RANK, else 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of shards (default: $WORLD_SIZE, else 1)")
    p.add_argument("--parallel", choices=("clips", "context"), default="clips",
                   help="several processes (torchrun): clips (default) gives each its own clips (--rank/--world-size); "
                        "context splits every clip over all of them (infer.py's context parallelism, "
                        "docs/inference.md)")
    p.add_argument("--ulysses-degree", type=int, default=None, help="with --parallel context: as infer.py's")
    p.add_argument("--ring-degree", type=int, default=None, help="with --parallel context: as infer.py's")


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score a folder of generated clips; write per-clip JSON and the tables")
    p.add_argument("--manifest", required=True)
    p.add_argument("--generated", required=True, help="folder with <key>/video.mp4 per manifest clip")
    p.add_argument("--out", required=True, help="scores folder (resumable)")
    p.add_argument("--root", help="videos root (default: the manifest's)")
    p.add_argument("--metrics", default="all", help="comma-separated metrics or groups: table1, table2, "
                   "reference, all, or fid, clip, matched_pixels, camera_accuracy, aesthetic_quality, ...")
    p.add_argument("--frames", type=_frames, default=None, help="frame counts (default: 25,49,81 that fit)")
    p.add_argument("--title", default=None)
    p.add_argument("--against", default=None, help="another folder of generated clips: the reference metrics (PSNR, "
                   "SSIM, pixel error) compare with its clips instead of the true targets, e.g. a step-cache run "
                   "against the exact one")
    w = p.add_argument_group("local weights (docs/evaluation.md, 'Getting the benchmark and the weights')")
    for flag, help_text in (("--inception", "Inception-v3 FID weights file"),
                            ("--fid-reference", "statistics written by `evaluate.py reference`"),
                            ("--clip", "CLIP ViT-B/32 transformers directory (CLIP-T/F/V, background consistency)"),
                            ("--dino", "DINO ViT-B/16 transformers directory (subject consistency)"),
                            ("--aesthetic-clip", "CLIP ViT-L/14 transformers directory (aesthetic quality)"),
                            ("--aesthetic-head", "LAION aesthetic linear head (sa_0_4_vit_l_14_linear.pth)"),
                            ("--musiq", "MUSIQ SPAQ checkpoint (imaging quality; needs pyiqa)"),
                            ("--amt-config", "VBench's AMT-S.yaml (motion smoothness; needs vbench)"),
                            ("--amt", "AMT-S checkpoint amt-s.pth"),
                            ("--disk", "DISK weights (matcher lightglue)"),
                            ("--lightglue", "LightGlue weights for DISK (matcher lightglue)")):
        w.add_argument(flag, default=None, help=help_text)
    p.add_argument("--matcher", default="sift", choices=("sift", "lightglue"), help="Mat.Pix. matcher")
    p.add_argument("--match-stride", type=int, default=1, help="Mat.Pix. on every n-th frame pair")
    p.add_argument("--pose-threads", type=int, default=-1, help="COLMAP threads (-1: all cores)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_manifest, _add_reference, _add_generate, _add_score):
        add(sub)
    return p


def run_manifest(a) -> Path:
    if a.benchmark == "realcam":
        from track2view.eval.benchmarks.realcam import read_realcam, realcam_manifest

        selection = {"static": ("RealEstate10K", a.static), "dynamic": ("MiraData9K", a.dynamic)}
        manifest = realcam_manifest(read_realcam(a.metadata), str(Path(a.root).resolve()), a.num_frames or 81,
                                    a.seed, {k: v for k, v in selection.items() if v[1] > 0}, a.prompt_field)
    else:
        from track2view.eval.benchmarks.synthetic import synthetic_manifest

        manifest = synthetic_manifest(a.root, a.targets_per_scene, a.num_frames, a.max_scenes)
    return manifest.write(a.out)


def run_reference(a) -> Path:
    from track2view.eval.errors import EvalInputError
    from track2view.eval.reference import compute_reference

    if bool(a.metadata) == bool(a.manifest):
        raise EvalInputError("give exactly one of --metadata (RealCam-Vid) or --manifest")
    if a.metadata:
        from track2view.eval.benchmarks.realcam import read_realcam

        if not a.root:
            raise EvalInputError("--metadata needs --root (RealCam-Vid's root folder)")
        videos = [Path(a.root) / c.video_path for c in read_realcam(a.metadata) if c.num_frames >= a.num_frames]
    else:
        from track2view.eval.manifest import read_manifest

        manifest = read_manifest(a.manifest)
        videos = [manifest.video_path(c.source_video, a.root) for c in manifest.clips]
    return compute_reference(videos, a.inception, a.out, a.num_frames, a.frames_per_clip, a.height, a.width, a.device)


def run_score(a) -> list[Path]:
    from track2view.eval.manifest import read_manifest
    from track2view.eval.registry import MetricOptions, build_metrics
    from track2view.eval.scoring import frame_lengths, score

    manifest = read_manifest(a.manifest)
    lengths = frame_lengths(manifest, a.frames)
    fields = MetricOptions.__dataclass_fields__
    options = MetricOptions(**{k: getattr(a, k) for k in fields if hasattr(a, k)})
    metrics = build_metrics([m.strip() for m in a.metrics.split(",") if m.strip()], options)
    return score(manifest, a.generated, a.out, metrics, lengths, a.root, not a.no_progress, a.title, a.against)


def run_generate(a) -> list[Path]:
    from track2view.eval.generation import generate_from_args

    return generate_from_args(a)


def bad_input_types() -> tuple:
    from track2view.eval.errors import EvalInputError
    from track2view.io import VideoError

    return EvalInputError, VideoError, FileExistsError


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    a = build_parser().parse_args(argv)
    commands = {"manifest": run_manifest, "reference": run_reference, "generate": run_generate, "score": run_score}
    try:
        written = commands[a.command](a)
    except bad_input_types() as e:  # --parallel context: every rank stops with rank 0's error; rank 0 prints it
        quiet = getattr(a, "parallel", None) == "context" and not is_rank0()
        return EXIT_BAD_INPUT if quiet else report_bad_input(e, "evaluate.py")
    finally:
        finish()
    for path in written if isinstance(written, list) else [written]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
