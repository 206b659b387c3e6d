r"""The experiment's reference rows, results table and contact sheet.

    python experiments/synthetic/summarize.py baselines --manifest M.json --vae RUN/vae --out RUN/eval/generated \
        [--blur 1,2,4]
    python experiments/synthetic/summarize.py table --out-dir RUN --arms "tracks camera none ..." [--sheet PNG]

`baselines` writes three reference "methods" in the generated-clips layout (BASELINES), scored like the arms:
* source_copy: the source video itself as the re-render (what a model that ignores the camera gets);
* autoencoder: the true target video through the autoencoder (the ceiling any arm can reach in pixels);
* target_copy: the true target video itself, re-encoded (the camera metrics' floor: pycolmap on a perfect video);
* with `--blur SIGMAS`, target_blur<sigma> per sigma: the true target blurred by a Gaussian of that many pixels
  (kornia), how sharp a re-render must be before pycolmap reads its camera (the arms' re-renders are blurred).
`table` reads every `evaluate.py score` result (RUN/eval/scores/<arm>/results.json, all clips) and prints one
Markdown table (also written to RUN/eval/results.md) with a view-specificity column (`view_specificity`), then,
for rows scored against their exact re-render (RUN/eval/scores_vs_exact/<row>: the step caches), a second one
(clips equal to the exact re-render counted apart: their PSNR is infinite); `--sheet` writes a contact sheet: per
clip, source | true target | each arm, at a few evenly spaced frames.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BASELINES = ("source_copy", "autoencoder", "target_copy")
COLUMNS = (("psnr", "PSNR (dB) ↑", 2), ("ssim", "SSIM ↑", 3), ("rot_err_deg", "RotErr (deg) ↓", 2),
           ("trans_err", "TransErr ↓", 3), ("mat_pix_k", "Mat.Pix.(K) ↑", 3))


def blurred(frames: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 [T, H, W, 3] -> the same, each frame blurred by a Gaussian of `sigma` pixels (kernel to 3 sigma)."""
    import torch
    from kornia.filters import gaussian_blur2d

    size = 2 * int(np.ceil(3 * sigma)) + 1
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="reflect")
    return y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def blur_row(sigma: float) -> str:
    return f"target_blur{sigma:g}"


def write_baselines(manifest_path: str, vae_dir: str, out: str, blur: tuple[float, ...] = ()) -> None:
    import torch
    from diffusers import AutoencoderKLWan

    from track2view.data.latents import encode_video, latent_stats
    from track2view.eval import clips as clip_files
    from track2view.eval.manifest import read_manifest
    from track2view.io import atomic_directory, read_video, write_video

    manifest = read_manifest(manifest_path)
    vae = AutoencoderKLWan.from_pretrained(vae_dir).eval()
    mean, std = latent_stats(vae)
    sigmas = {blur_row(sigma): sigma for sigma in blur}
    for name in (*BASELINES, *sigmas):
        (Path(out) / name).mkdir(parents=True, exist_ok=True)
    for entry in manifest.clips:
        for name in (*BASELINES, *sigmas):
            folder = Path(out) / name / entry.key
            if (folder / clip_files.VIDEO).is_file():
                continue
            video = entry.source_video if name == "source_copy" else entry.target_video
            frames, fps = read_video(manifest.video_path(video), max_frames=manifest.num_frames)
            if name == "autoencoder":
                pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
                with torch.no_grad():
                    z = encode_video(vae, pixels) * std + mean
                    decoded = vae.decode(z).sample[0].clamp(-1, 1)
                frames = ((decoded.permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
            if name in sigmas:
                frames = blurred(frames, sigmas[name])
            with atomic_directory(folder, "track2view-eval-clip") as tmp:
                write_video(tmp / clip_files.VIDEO, frames, fps)


def read_scores(out_dir: Path, arm: str) -> dict:
    path = out_dir / "eval" / "scores" / arm / "results.json"
    rows = json.loads(path.read_text())["rows"]
    return next(r for r in rows if r["split"] == "all")


def against_exact(out_dir: Path, row: str) -> str:
    """One table line from RUN/eval/scores_vs_exact/<row>'s per-clip records: clips, how many equal the exact
    re-render (pixel error 0, PSNR inf), mean PSNR over the others, mean SSIM over all."""
    records = [json.loads(p.read_text())["scores"]
               for p in sorted((out_dir / "eval" / "scores_vs_exact" / row / "clips").glob("*.json"))]
    scores = [r[max(r, key=int)] for r in records]  # the longest frame count scored
    differ = [s["psnr"] for s in scores if s["pixel_error"] > 0]
    psnr = f"{np.mean(differ):.2f}" if differ else "n/a"
    return (f"| {row} | {len(scores)} | {len(scores) - len(differ)} | {psnr} | "
            f"{np.mean([s['ssim'] for s in scores]):.3f} |")


def frame_psnrs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR [T] (dB, data range 1, torchmetrics as reference_pixels; an identical frame counts 120 dB,
    not infinity) of uint8 videos [T, H, W, 3] (the shorter one's frames)."""
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

    t = min(len(a), len(b))
    x, y = (torch.from_numpy(v[:t]).double() / 255.0 for v in (a, b))
    return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=120.0).numpy()


def frame_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The mean over frames of `frame_psnrs`."""
    return float(frame_psnrs(a, b).mean())


def true_targets(out_dir: Path) -> tuple:
    """(the run's manifest, {clip key: its true target video [T, H, W, 3] uint8}), read once for every row."""
    from track2view.eval.manifest import read_manifest
    from track2view.io import read_video

    manifest = read_manifest(out_dir / "eval" / "manifest.json")
    return manifest, {c.key: read_video(manifest.video_path(c.target_video))[0] for c in manifest.clips}


def view_specificity(out_dir: Path, arm: str, truth: tuple) -> np.ndarray:
    """Per clip [N] (dB): its PSNR against its own true target minus the mean against the other true targets of
    the same source video (the scene's other cameras); `truth` = `true_targets(out_dir)`. A re-render that
    follows its target camera is closer to its own view than to the others; one that ignores the camera (`none`:
    one video for every target) scores 0 on average.
    No pose estimation: it still reads where pycolmap cannot (blurred videos, docs/results.md)."""
    from track2view.io import read_video

    manifest, targets = truth
    out = []
    for entry in manifest.clips:
        others = [c.key for c in manifest.clips if c.source_video == entry.source_video and c.key != entry.key]
        if not others:
            continue
        video = read_video(out_dir / "eval" / "generated" / arm / entry.key / "video.mp4")[0]
        own = frame_psnr(video, targets[entry.key])
        out.append(own - np.mean([frame_psnr(video, targets[k]) for k in others]))
    return np.asarray(out)


def mean_and_error(values: np.ndarray) -> str:
    """'mean ± standard error (clips above 0/clips)' of per-clip values [N]."""
    if len(values) < 2:
        return "n/a"
    error = values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():+.2f} ± {error:.2f} ({(values > 0).sum()}/{len(values)})"


def table(out_dir: Path, arms: list[str]) -> str:
    head = ("| arm | clips | " + " | ".join(h for _, h, _ in COLUMNS)
            + " | pose failed | own - other views (dB) ↑, ± SE (clips > 0) |")
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    truth = true_targets(out_dir)
    for arm in arms + list(BASELINES):
        row = read_scores(out_dir, arm)
        cells = [f"{row[k]:.{d}f}" if row.get(k) is not None and np.isfinite(row[k]) else "n/a" for k, _, d in COLUMNS]
        lines.append(f"| {arm} | {row['clips']} | " + " | ".join(cells) + f" | {row.get('pose_failed', 0)} | "
                     f"{mean_and_error(view_specificity(out_dir, arm, truth))} |")
    approximate = [arm for arm in arms if (out_dir / "eval" / "scores_vs_exact" / arm).is_dir()]
    if approximate:
        lines += ["", "| re-render | clips | equal to exact | PSNR vs exact, the others (dB) ↑ | SSIM vs exact ↑ |",
                  "|---|---|---|---|---|"]
        lines += [against_exact(out_dir, arm) for arm in approximate]
    return "\n".join(lines)


def contact_sheet(out_dir: Path, arms: list[str], path: Path, clips: int = 3, frames: int = 4) -> None:
    """Rows: clips; per frame time: source | true target | each arm (labelled across the top)."""
    from PIL import Image, ImageDraw

    from track2view.eval.manifest import read_manifest
    from track2view.io import atomic_path, read_video

    manifest = read_manifest(out_dir / "eval" / "manifest.json")
    step = max(1, len(manifest.clips) // clips)
    names = ["source", "true target", *arms]
    rows = []
    for entry in manifest.clips[::step][:clips]:
        videos = [read_video(manifest.video_path(entry.source_video))[0],
                  read_video(manifest.video_path(entry.target_video))[0]]
        videos += [read_video(out_dir / "eval" / "generated" / arm / entry.key / "video.mp4")[0] for arm in arms]
        t = len(videos[-1])
        times = np.linspace(0, t - 1, frames).round().astype(int)
        rows.append(np.concatenate([np.concatenate([v[min(i, len(v) - 1)] for v in videos], 1) for i in times], 0))
    sheet = np.concatenate(rows, 0)
    w = rows[0].shape[1] // len(names)
    canvas = Image.new("RGB", (sheet.shape[1], sheet.shape[0] + 16), "white")
    canvas.paste(Image.fromarray(sheet), (0, 16))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        draw.text((i * w + 3, 2), name, fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baselines")
    b.add_argument("--manifest", required=True)
    b.add_argument("--vae", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--blur", default="", help="comma-separated Gaussian sigmas (pixels): target_blur<sigma> rows")
    t = sub.add_parser("table")
    t.add_argument("--out-dir", required=True)
    t.add_argument("--arms", required=True, help="space-separated arm names")
    t.add_argument("--sheet", help="write a contact sheet PNG here")
    a = p.parse_args(argv)
    if a.command == "baselines":
        write_baselines(a.manifest, a.vae, a.out, tuple(float(v) for v in a.blur.split(",") if v))
        return 0
    out_dir, arms = Path(a.out_dir), a.arms.split()
    text = table(out_dir, arms)
    (out_dir / "eval" / "results.md").write_text(text + "\n")
    print(text)
    if a.sheet:
        contact_sheet(out_dir, [arm for arm in arms if arm in ("tracks", "camera", "none")] or arms, Path(a.sheet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
