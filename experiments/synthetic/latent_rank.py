r"""Does the transformer's patch embedding lose detail? A diagnostic of the experiment's model config.

    python experiments/synthetic/latent_rank.py --vae experiments/synthetic/shipped/wan/vae \
        --fit "outputs/demo/scenes/train/*/*/videos/*.mp4" --test "outputs/synthetic/data/test/*/*/videos/cam02.mp4"

`model.json` patches the latents 1 x 4 x 4 (16 channels: 256 values) into tokens of width 192, a linear map of rank
<= 192 that no block can undo. This fits a PCA to the latent patches of the `--fit` videos, projects the latents
of the `--test` videos onto the top `--ranks` components, decodes them, and prints their PSNR against the videos
beside the autoencoder's own (docs/results.md: no loss at rank 192, nor at 128).
"""

from __future__ import annotations

import argparse
import glob
import sys

import numpy as np
import torch
from einops import rearrange

PATCH = "b c f (h p) (w q) -> (b f h w) (c p q)"


def main(argv=None) -> int:
    from diffusers import AutoencoderKLWan

    from summarize import frame_psnr  # this folder's (the script's own directory is on sys.path)

    from track2view.data.latents import encode_video, latent_stats
    from track2view.io import read_video

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True)
    p.add_argument("--fit", required=True, help="glob of the videos the PCA is fitted on")
    p.add_argument("--test", required=True, help="glob of the videos that are projected and decoded")
    p.add_argument("--max-videos", type=int, default=12)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--ranks", default="128,192")
    a = p.parse_args(argv)
    fit, test = (sorted(glob.glob(g))[:a.max_videos] for g in (a.fit, a.test))
    if not fit or not test:
        p.error(f"no videos match --fit ({len(fit)}) or --test ({len(test)})")
    torch.set_grad_enabled(False)
    vae = AutoencoderKLWan.from_pretrained(a.vae, torch_dtype=torch.float32).eval()
    mean, std = latent_stats(vae)

    def encode(path):  # -> normalized latents [1, C, F, h, w], frames [T, H, W, 3] uint8
        frames = read_video(path, max_frames=a.frames)[0]
        return encode_video(vae, torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1), frames

    def decode(z):
        video = vae.decode(z * std + mean).sample[0].clamp(-1, 1)
        return ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()

    patches = torch.cat([rearrange(encode(f)[0], PATCH, p=a.patch, q=a.patch) for f in fit])  # [N, C * p * p]
    centre = patches.mean(0)
    _, s, basis = torch.linalg.svd(patches - centre, full_matrices=False)
    share = (s ** 2).cumsum(0) / (s ** 2).sum()
    tests = [encode(f) for f in test]
    full = np.mean([frame_psnr(decode(z), frames) for z, frames in tests])
    print(f"{len(fit)} fit / {len(test)} test videos, patches of {patches.shape[1]} values; autoencoder {full:.2f} dB")
    for rank in (int(r) for r in a.ranks.split(",")):
        b = basis[:rank]
        projected = []
        for z, frames in tests:
            zp = rearrange(z, PATCH, p=a.patch, q=a.patch)
            zp = (zp - centre) @ b.T @ b + centre
            _, c, f, h, w = z.shape
            zp = rearrange(zp, "(f h w) (c p q) -> 1 c f (h p) (w q)", f=f, h=h // a.patch, p=a.patch, q=a.patch, c=c)
            projected.append(frame_psnr(decode(zp), frames))
        print(f"rank {rank}: {share[rank - 1]:.5f} of the patch variance, decoded {np.mean(projected):.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
