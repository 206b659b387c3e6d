"""Seconds per clip of `evaluate.py score` with every metric, at the real network shapes (random weights).

Builds each network at its real architecture with random weights, writes it in the format its loader reads
(transformers directories, state-dict files) and loads it through the metric's own code; renders a synthetic
scene (source camera and a second camera as the "generated" video, so SIFT and GLOMAP see real texture and
real camera motion) at the generation size; then times every metric's per-clip work for the paper's frame
counts (25, 49, 81 by truncation, as `score` does). Decoding videos is not included (frames are in memory).

    python bench/eval_score.py                                  # GPU: 480x832x81, 3 clips, every metric
    python bench/eval_score.py --device cpu --tiny --clips 1    # CPU smoke test (small frames, same networks)

Prints one JSON line per metric {metric, load_s, s_per_clip, share} (share of the per-clip total), then the
total and the metric that dominates. Metrics whose package is missing (imaging quality: pyiqa; motion
smoothness: vbench) are reported as not measured, with the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from track2view.eval.metric import Clip, SetMetric  # noqa: E402

LENGTHS = (25, 49, 81)


def tokenizer_files(path: Path) -> None:
    """A byte-level CLIP tokenizer (the real vocabulary cannot be fetched; token ids stay inside the real one)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in bytes_to_unicode().values():
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)


def save_clip(path: Path, large: bool) -> Path:
    """CLIP ViT-B/32 (transformers' defaults) or ViT-L/14 (aesthetic), random init."""
    from transformers import CLIPConfig, CLIPModel

    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if large:
        config = CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, **ids),
                            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                               num_attention_heads=16, patch_size=14), projection_dim=768)
    else:
        config = CLIPConfig(text_config=ids)
    CLIPModel(config).save_pretrained(path)
    tokenizer_files(path)
    return path


def save_networks(folder: Path) -> dict:
    """Every network at its real shape, random init, in the format the metrics load."""
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel

    from track2view.eval.networks.inception import FIDInceptionV3

    inception = {k: v.contiguous() for k, v in FIDInceptionV3().state_dict().items()}
    save_file(inception, str(folder / "inception.safetensors"))
    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(folder / "dino")  # ViT-B/16
    torch.save({"weight": torch.randn(1, 768) * 0.05, "bias": torch.tensor([5.0])}, folder / "head.pth")
    try:
        import kornia.feature as KF

        torch.save({"extractor": KF.DISK().state_dict()}, folder / "disk.pth")
        torch.save(KF.LightGlue(features=None, input_dim=128).state_dict(), folder / "lightglue.pth")
    except ImportError:  # no kornia here: the LightGlue matcher is reported as not measured
        pass
    return {"inception": folder / "inception.safetensors", "clip": save_clip(folder / "clip-b32", False),
            "aesthetic_clip": save_clip(folder / "clip-l14", True), "aesthetic_head": folder / "head.pth",
            "dino": folder / "dino", "disk": folder / "disk.pth", "lightglue": folder / "lightglue.pth"}


def rendered_clip(height: int, width: int, num_frames: int) -> Clip:
    """A synthetic scene: source = camera 1, generated = camera 2 (an arc), with the true relative cameras."""
    from track2view.synthetic import random_scene, render, scene_cameras

    spec = random_scene(seed=0, index=0, num_cameras=2, height=height, width=width, num_frames=num_frames,
                        lens="f24_aperture5")
    spec["cameras"]["trajectories"][1] = {"kind": "arc", "arc": math.radians(20.0), "radius": 4.0}
    _, c2w, K = scene_cameras(spec)
    source, _ = render(spec, c2w[0], K, supersample=1)
    generated, _ = render(spec, c2w[1], K, supersample=1)
    return Clip("bench", generated, source=source, prompt="a room with patterned walls and balls on the floor",
                target_c2w=np.linalg.inv(c2w[0][0]) @ c2w[1], intrinsics=K, split="dynamic")


def optional_metrics(device: str) -> list:
    """(name, builder) of the metrics that need pyiqa / vbench, with random-init networks."""
    def musiq():
        from pyiqa.archs.musiq_arch import MUSIQ

        from track2view.eval.metrics.imaging_quality import ImagingQuality

        return ImagingQuality(MUSIQ(pretrained=False).to(device).eval(), device)

    def amt():
        import vbench

        from track2view.eval.metrics.motion_smoothness import AMTInterpolator, MotionSmoothness, build_amt

        config = Path(vbench.__file__).parent / "third_party" / "amt" / "cfgs" / "AMT-S.yaml"
        return MotionSmoothness(AMTInterpolator(build_amt(config), device))

    return [("imaging_quality", musiq), ("motion_smoothness", amt)]


def core_metrics(paths: dict, device: str, pose_threads: int) -> list:
    from track2view.eval.registry import MetricOptions, SharedNetworks, build_metric

    options = MetricOptions(device=device, pose_threads=pose_threads, **{k: str(v) for k, v in paths.items()})
    nets = SharedNetworks(options)
    builders = []
    for name in ("fid", "clip", "matched_pixels", "camera_accuracy", "aesthetic_quality", "temporal_flickering",
                 "subject_consistency", "background_consistency"):
        builders.append((name, lambda n=name: build_metric(n, options, nets)))
    builders.append(("matched_pixels_lightglue", lambda: build_metric("matched_pixels", MetricOptions(
        matcher="lightglue", device=device, disk=str(paths["disk"]), lightglue=str(paths["lightglue"])), nets)))
    return builders


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def run_metric(metric, clip: Clip, lengths, clips: int) -> tuple[float, dict]:
    """(median seconds per clip, the scores at the longest length) of the metric's per-clip work."""
    work = (lambda: metric.features(clip)) if isinstance(metric, SetMetric) else (
        lambda: metric.score_lengths(clip, lengths))
    runs = [timed(work) for _ in range(clips)]
    scores = {} if isinstance(metric, SetMetric) else runs[-1][0][max(lengths)]
    return float(np.median([t for _, t in runs])), {k: round(v, 4) for k, v in scores.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--clips", type=int, default=3, help="timed repetitions per metric (median reported)")
    p.add_argument("--pose-threads", type=int, default=-1)
    p.add_argument("--tiny", action="store_true", help="smoke test: 96x160 frames, 25 frames")
    p.add_argument("--out", default=None, help="also write the JSON lines to this file")
    p.add_argument("--metrics", type=lambda s: s.split(","), default=None,
                   help="only these (comma-separated), e.g. imaging_quality,motion_smoothness")
    a = p.parse_args(argv)
    if a.tiny:
        a.height, a.width, a.frames = 96, 160, 25
    lengths = [n for n in LENGTHS if n <= a.frames] or [a.frames]
    clip, render_s = timed(lambda: rendered_clip(a.height, a.width, a.frames))
    lines = [{"setup": "render", "frames": a.frames, "height": a.height, "width": a.width, "seconds": render_s,
              "device": a.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}]
    with tempfile.TemporaryDirectory() as tmp:
        paths = save_networks(Path(tmp))
        from track2view.eval.metrics.fid import InceptionFeatures, ReferenceStatistics, frechet, save_reference

        stats = ReferenceStatistics(2048)
        stats.add(InceptionFeatures(paths["inception"], a.device)(clip.source))
        paths["fid_reference"] = save_reference(Path(tmp) / "ref.npz", stats.result())
        results = []
        for name, build in core_metrics(paths, a.device, a.pose_threads) + optional_metrics(a.device):
            if a.metrics and name not in a.metrics:
                continue
            try:
                metric, load_s = timed(build)
            except Exception as e:  # a package this machine lacks (pyiqa, vbench): report, do not stop
                results.append({"metric": name, "measured": False, "reason": f"{type(e).__name__}: {e}"[:300]})
                continue
            try:
                s, scores = run_metric(metric, clip, lengths, a.clips)
            except ImportError as e:  # e.g. pycolmap missing: camera accuracy imports it when it runs
                results.append({"metric": name, "measured": False, "reason": f"ImportError: {e}"[:300]})
                continue
            result = {"metric": name, "measured": True, "load_s": round(load_s, 3), "s_per_clip": round(s, 3),
                      "scores": scores}
            if name == "fid":
                features = metric.features(clip)
                result["set_compute_s_per_group"] = round(timed(lambda: frechet(metric.reference, features))[1], 3)
            results.append(result)
    measured = [r for r in results if r["measured"] and r["metric"] != "matched_pixels_lightglue"]
    total = sum(r["s_per_clip"] for r in measured)
    for r in results:
        if r["measured"]:
            r["share"] = round(r["s_per_clip"] / total, 3) if total else None
    dominant = max(measured, key=lambda r: r["s_per_clip"])["metric"] if measured else None
    lines += results + [{"total_s_per_clip": round(total, 3), "lengths": lengths, "dominant": dominant,
                         "note": "total: every measured metric with the SIFT matcher; matched_pixels_lightglue "
                                 "is the alternative matcher"}]
    text = "\n".join(json.dumps(line) for line in lines)
    print(text, flush=True)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
