"""One process of tests/test_context_parallel.py's torchrun run (2 processes, gloo on the CPU):

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/context_parallel_worker.py CONFIG.json

CONFIG: {"out": folder, "infer_args": infer.py's arguments but --checkpoint and --out, "exports": {name: export}}.
In order: infer.py with a bad --ulysses-degree (every rank exits 2, rank 0 prints the error); the pipeline's denoising
loop split over both processes (`denoised`), full attention (eager and compiled) and one-way attention with the
source KV cache, whose first block sees half the tokens; a size whose tokens do not split (rank 0's error raised on
every rank); infer.py with each export into OUT/<name>/render.mp4, the
frames it decodes kept (rank 0 saves them as OUT/frames/<name>.npy; no other rank writes). Any failed check
raises, so torchrun fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
COND = dict(width=16, num_layers=1, num_heads=2, uv_fourier_bands=2, disparity_fourier_bands=2)
F, H, W, N = 2, 8, 8, 6  # latent frames per half, latent height and width, tracks


def tiny_model(attention: str, fuse: bool = True):
    """The tiny Wan + LoRA + track conditioning, every trainable weight nonzero (as if trained), the LoRA merged
    (`fuse`)."""
    from track2view.model.transformer import Track2ViewTransformer
    from track2view.testing.tiny import tiny_transformer

    m = Track2ViewTransformer(tiny_transformer(0), conditioning_config=COND, lora=dict(rank=4, alpha=8),
                              attention=attention)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    if fuse:
        m.transformer.fuse_lora()
    return m.eval()


def denoised(attention: str, split=None, compile_backend: str | None = None, seen: list | None = None):
    """Target latents [1, 16, F, H, W] of 3 CFG steps of Track2ViewPipeline.denoise on fixed inputs; with `split`
    (parallel.ContextSplit) across the process group. `seen`: the token counts blocks.1 receives."""
    from track2view.inference.parallel import enable_context_parallel
    from track2view.inference.pipeline import Track2ViewPipeline, default_scheduler
    from track2view.inference.speed import compile_blocks
    from track2view.tracks import PairedTracks

    m = tiny_model(attention)
    pipe = Track2ViewPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=m, scheduler=default_scheduler(),
                              timestep_mode="per_token" if attention == "one_way" else "per_sample")
    pipe.set_progress_bar_config(disable=True)
    if split is not None:
        enable_context_parallel(m.transformer, split)
    if compile_backend:
        compile_blocks(m.transformer, backend=compile_backend)  # as infer.py --compile
    if seen is not None:
        m.transformer.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    g = torch.Generator().manual_seed(3)
    source, text, negative = (torch.randn(1, 16, F, H, W, generator=g), torch.randn(1, 5, 32, generator=g),
                              torch.randn(1, 5, 32, generator=g))
    tracks = PairedTracks(torch.rand(1, 2, F, N, 2, generator=g), 1 + torch.rand(1, 2, F, N, generator=g),
                          torch.rand(1, 2, F, N, generator=g) < 0.8)
    return pipe.denoise(source, text, {"tracks": tracks}, negative, num_inference_steps=3, guidance_scale=5.0,
                        generator=torch.Generator().manual_seed(0))


def capture_pipeline_frames(folder: Path) -> list:
    """Make rerender.write_outputs also save the decoded frames [T, H, W, 3] float32 it writes to NAME/render.mp4 as
    FOLDER/NAME.npy; returns the list of its calls in this process."""
    import track2view.inference.rerender as rerender

    calls, write = [], rerender.write_outputs

    def capturing(path, request, view, source_frames, generated, fps):
        calls.append(path)
        folder.mkdir(exist_ok=True)
        np.save(folder / f"{Path(path).parent.name}.npy", generated)
        return write(path, request, view, source_frames, generated, fps)

    rerender.write_outputs = capturing
    return calls


def main(config_path: str) -> None:
    import infer
    from track2view.inference.parallel import ContextSplit, finish, init_process_group, is_rank0

    torch.set_num_threads(1)
    config = json.loads(Path(config_path).read_text())
    out, args = Path(config["out"]), config["infer_args"]
    assert infer.main([*args, "--out", str(out / "bad.mp4"), "--ulysses-degree", "4"]) == 2
    init_process_group("cpu")
    for attention, compile_backend, tokens in (("full", None, 2 * F * H * W // 4 // 2), ("full", "aot_eager", None),
                                               ("one_way", None, F * H * W // 4 // 2)):
        seen = [] if tokens else None
        latents = denoised(attention, ContextSplit(ulysses=2, ring=1), compile_backend, seen)
        assert seen is None or set(seen) == {tokens}, (attention, seen)  # each process: half the blocks' tokens
        if is_rank0():
            torch.save(latents, out / f"latents_{attention}{'_compiled' if compile_backend else ''}.pt")
    one_way = infer.build_parser().parse_args([*args, "--checkpoint", config["exports"]["one_way"], "--out",
                                               str(out / "small.mp4"), "--height", "16", "--width", "16",
                                               "--num-frames", "1"])
    try:  # 1 token per call: rank 0's check fails, and every rank raises its error
        infer.run(one_way)
        raise AssertionError("a size that does not split was accepted")
    except infer.InputError as e:
        assert "16x16x1 with one-way attention: the DiT sees 1 tokens per call" in str(e), e
    calls = capture_pipeline_frames(out / "frames")
    for name, export in config["exports"].items():  # infer.run: infer.main would leave the process group
        written = infer.run(infer.build_parser().parse_args([*args, "--checkpoint", export,
                                                             "--out", str(out / name / "render.mp4")]))
        assert len(calls) == len(written) == (1 if is_rank0() else 0), (calls, written)  # rank 0 alone writes
        calls.clear()
    finish()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1])
