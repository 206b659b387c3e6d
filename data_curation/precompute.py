"""Stage 2: curated shards -> latent shards (docs/architecture.md "Shards"), so training never runs the VAE or T5.

    python -m data_curation.precompute --shards IN_DIR --out OUT_DIR --model DIFFUSERS_WAN_DIR \
        --height 480 --width 832 --num-frames 81 --batch-size 1 --device cuda --dtype bfloat16 [--keep-videos] \
        [--rank R --world-size W]

Per sample: both videos are cut to the first --num-frames frames, resized (aspect-preserving) and centre-
cropped to --height x --width, and encoded separately by the Wan VAE; the caption by UMT5. Tracks and camera
intrinsics are cut to the same frames and mapped to the cropped frame (points cropped away become invalid);
`tracking.npz` is passed through unchanged (it describes the original source video).

Resumable: an output shard is written atomically and an existing one is skipped; the temporaries a killed run
left (`.shard-*.tar.tmp*`) are removed at start. Shard i goes to rank i % world_size (one process per GPU:
torchrun sets RANK/WORLD_SIZE/LOCAL_RANK, or pass --rank/--world-size). Counts go to OUT/manifest.d/<shard>.json
and are summed into OUT/manifest.json; a sample that cannot be used (undecodable video, too short, non-finite
latents, an encoder error on its batch, a duplicate key) is skipped and counted there with its reason.
An input shard that cannot be read to its end (truncated, corrupt, an I/O error) is not written at all: its
record says `failed` with the error and the samples lost (all of the shard's: the number its curation manifest
gives, else those found), the other shards go on, and the run exits with 1 (`error: ...`); a re-run retries it.
The output tars are byte-reproducible (fixed mtime, owner and order). Bad input (missing --shards, an --out
that is or holds an input, a value out of range, other settings in --out) prints one line `error: ...` and
exits with 2; T2V_TRACEBACK=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from track2view.data import schema
from track2view.data.latents import CenterCrop, encode_prompt, encode_video, resize_and_crop
from track2view.data.shards import manifest_counts, resolve_shards
from track2view.data.tars import ShardReadError, local_path, read_tar, scan_tar
from track2view.dtypes import DTYPES
from track2view.errors import report_bad_input
from track2view.io import VideoError, atomic_path, check_disjoint, read_video, remove_stale_temps, write_json
from track2view.tracks import PairedTracks
from track2view.video_size import video_size_problem

log = logging.getLogger("precompute")
CONFIG_KEYS = ("height", "width", "num_frames", "model", "max_text_len", "dtype", "vae_dtype", "keep_videos")
TAR_MTIME = 0  # every member's mtime: the tars are a function of their content alone


class ShardsFailed(RuntimeError):
    """Input shards that could not be read to their end (their outputs were not written)."""


class SkipSample(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True,
                   help="stage-1 shards: a directory of .tar, a brace pattern, a glob, or several joined with '::'")
    p.add_argument("--out", required=True, type=Path, help="output directory for the latent shards")
    p.add_argument("--model", required=True, type=Path,
                   help="diffusers Wan-2.1 directory (vae/, text_encoder/, tokenizer/)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--num-frames", type=int, default=81, help="first frames kept; must be 4k+1")
    p.add_argument("--batch-size", type=int, default=1, help="videos per VAE call (and prompts per T5 call)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="text encoder (and VAE) dtype")
    p.add_argument("--vae-dtype", default=None, choices=sorted(DTYPES), help="VAE dtype (default: --dtype)")
    p.add_argument("--max-text-len", type=int, default=512)
    p.add_argument("--keep-videos", action="store_true", help="also copy source.mp4/target.mp4 into the output")
    p.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    p.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    p.add_argument("--allow-pipe-urls", action="store_true",
                   help="allow pipe: shard URLs (webdataset runs them as shell commands); refused otherwise")
    return p.parse_args(argv)


def check_args(a) -> None:
    """Raise ValueError naming the first value out of range (before any output is written)."""
    problems = [video_size_problem(a.height, a.width, a.num_frames, names=("--height", "--width", "--num-frames")),
                a.batch_size < 1 and f"--batch-size {a.batch_size} must be >= 1",
                a.max_text_len < 1 and f"--max-text-len {a.max_text_len} must be >= 1 (Wan: 512)",
                a.world_size < 1 and f"--world-size {a.world_size} must be >= 1",
                not 0 <= a.rank < max(a.world_size, 1) and f"--rank {a.rank} must be in [0, --world-size "
                                                            f"{a.world_size})",
                _device_problem(a.device)]
    problems += [f"{a.model}/{sub} not found: --model must be a diffusers Wan-2.1 directory, e.g. "
                 f"Wan-AI/Wan2.1-T2V-1.3B-Diffusers downloaded with `huggingface-cli download`"
                 for sub in ("vae", "text_encoder", "tokenizer") if not (a.model / sub).is_dir()]
    problems = [m for m in problems if m]
    if problems:
        raise ValueError(problems[0])


def _device_problem(device: str) -> str | None:
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a device; use cpu, cuda or cuda:N"
    if d.type not in ("cpu", "cuda"):
        return f"--device {device!r}: precompute runs on cpu or cuda"
    if d.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        return f"--device {device}: {why} on this machine; use --device cpu (slow) or run it on a GPU machine"
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices"
    return None


# ---- one sample -----------------------------------------------------------------------------------------
def _read_clip(data: bytes, key: str, member: str, num_frames: int) -> np.ndarray:
    try:
        frames, _ = read_video(data, max_frames=num_frames)
    except VideoError as e:
        raise SkipSample("bad_video", f"{key}: {member}: {e}") from e
    if len(frames) < num_frames:
        raise SkipSample("too_short", f"{key}: {member} has {len(frames)} frames, fewer than --num-frames {num_frames}")
    return frames


def prepare_sample(s: dict, args) -> tuple[np.ndarray, np.ndarray, dict]:
    """A decoded stage-1 sample -> (source frames, target frames [T, H0, W0, 3] uint8, output members without
    the latents). Raises SkipSample naming the problem."""
    key = s["__key__"]
    missing = [m for m in (schema.SOURCE_VIDEO, schema.TARGET_VIDEO, schema.TRACKS) if m not in s]
    if missing:
        raise SkipSample("missing_member", f"{key}: missing members {missing}")
    t = args.num_frames
    clips = [_read_clip(s[m], key, m, t) for m in (schema.SOURCE_VIDEO, schema.TARGET_VIDEO)]
    crops = [CenterCrop(c.shape[1:3], (args.height, args.width)) for c in clips]
    try:
        tracks = PairedTracks.from_numpy(s[schema.TRACKS]).validate()
    except (KeyError, ValueError) as e:
        raise SkipSample("bad_tracks", f"{key}: {schema.TRACKS}: {e}") from e
    if tracks.num_frames < t:
        raise SkipSample("too_short", f"{key}: tracks have {tracks.num_frames} frames, fewer than --num-frames {t}")
    tracks = tracks.frames(torch.arange(t))
    uv = torch.stack([crop.apply_uv(tracks.uv[v]) for v, crop in enumerate(crops)])
    tracks = PairedTracks.from_projections(uv, tracks.depth, visible=tracks.valid)
    arrays = tracks.to_numpy()
    if "confidence" in s[schema.TRACKS]:  # the tracker's confidence [2, T, N], cut to the same frames
        arrays["confidence"] = np.asarray(s[schema.TRACKS]["confidence"])[:, :t]

    out = {"__key__": key, schema.TRACKS: schema.encode_npz(arrays),
           schema.CAPTION: s.get(schema.CAPTION, "").encode()}
    if schema.CAMERAS in s:
        cams = s[schema.CAMERAS]
        try:
            k = np.stack([crop.apply_intrinsics(cams["intrinsics"][v, :t]) for v, crop in enumerate(crops)])
            out[schema.CAMERAS] = schema.encode_npz({**cams, "c2w": cams["c2w"][:, :t], "intrinsics": k})
        except (KeyError, IndexError, ValueError) as e:
            raise SkipSample("bad_cameras", f"{key}: {schema.CAMERAS} must hold c2w [2,T,4,4] and intrinsics "
                                            f"[2,T,3,3]: {e!r}") from e
    if schema.TRACKING in s:
        out[schema.TRACKING] = schema.encode_npz(s[schema.TRACKING])
    meta = s.get(schema.META, {})
    meta = dict(meta) if isinstance(meta, dict) else {"meta": meta}
    meta["latents"] = {"height": args.height, "width": args.width, "num_frames": t,
                       "crops": [{"input_hw": list(c.in_hw), "resized_hw": list(c.resized), "offset_yx": list(c.offset)}
                                 for c in crops]}
    out[schema.META] = schema.encode_json(meta)
    if args.keep_videos:
        out[schema.SOURCE_VIDEO], out[schema.TARGET_VIDEO] = s[schema.SOURCE_VIDEO], s[schema.TARGET_VIDEO]
    return clips[0], clips[1], out


# ---- one shard ------------------------------------------------------------------------------------------
def _finite_fp16(name: str, key: str, x: torch.Tensor) -> np.ndarray:
    a = x.float().cpu().numpy().astype(np.float16)
    if not np.isfinite(a).all():
        raise SkipSample("non_finite", f"{key}: {name} is not finite in float16 (model or dtype problem; "
                                       f"try --dtype float32)")
    return a


def encode_batch(batch: list, models: dict, args) -> list[dict | SkipSample]:
    """[(source frames, target frames, members)] -> per sample: members with latents and prompt embeddings
    added, or the SkipSample("non_finite") of a sample whose latents or embeddings are not finite.

    Frames are resized and cropped on the VAE's device (a 1280x1280x81 clip is 1.6 GB as float32)."""
    device = next(models["vae"].parameters()).device

    def videos(view: int) -> torch.Tensor:  # [B, 3, T, H, W] in [-1, 1]
        return torch.stack([resize_and_crop(torch.from_numpy(b[view]).to(device), args.height, args.width)
                            for b in batch])

    src = encode_video(models["vae"], videos(0))
    tgt = encode_video(models["vae"], videos(1))
    captions = [b[2][schema.CAPTION].decode() for b in batch]
    text = encode_prompt(models["tokenizer"], models["text_encoder"], captions, max_length=args.max_text_len)
    out = []
    for (_, _, members), s, g, e in zip(batch, src, tgt, text):
        key = members["__key__"]
        try:
            out.append({**members, schema.SOURCE_LATENTS: schema.encode_npy(_finite_fp16("source latents", key, s)),
                        schema.TARGET_LATENTS: schema.encode_npy(_finite_fp16("target latents", key, g)),
                        schema.PROMPT_EMBEDS: schema.encode_npy(_finite_fp16("prompt embeddings", key, e))})
        except SkipSample as skip:
            out.append(skip)
    return out


def process_shard(url: str, out_path: Path, models: dict, args) -> dict:
    """Convert one shard; write it (atomically) with its manifest record; return the record. An input that cannot
    be read to its end is not written: the record says `failed`, with the error and the samples lost."""
    record = {"shard": out_path.name, "input": url, "read": 0, "samples": 0, "skipped": Counter(),
              "skipped_keys": [], "error": None}
    scan = scan_tar(url, args.allow_pipe_urls) if local_path(url) is not None else None
    try:
        if scan is not None and scan.error:  # found by the header walk before any encoding work
            raise ShardReadError(f"{url}: {scan.error}")
        with atomic_path(out_path) as tmp_out:
            _convert(url, tmp_out, models, args, record)
            record["skipped"] = dict(record["skipped"])
            # the record goes first, the shard is renamed into place after it: an existing shard implies its record
            write_json(args.out / "manifest.d" / f"{out_path.name}.json", record, sort_keys=True)
        return record
    except ShardReadError as e:
        read = len(scan.samples) + bool(scan.partial) if scan is not None else record["read"] + 1  # + the cut one
        expected = manifest_counts([url]).get(url)
        failed = {"shard": out_path.name, "input": url, "failed": True, "error": str(e), "expected": expected,
                  "lost": expected if expected is not None else read}
        log.error("%s is not written: its input cannot be read to the end (%s); %d samples lost", out_path.name, e,
                  failed["lost"])
        write_json(args.out / "manifest.d" / f"{out_path.name}.json", failed, sort_keys=True)
        return failed


def _convert(url: str, tmp_out: Path, models: dict, args, record: dict) -> None:
    """Encode the samples of input shard `url` into the tar `tmp_out`, counting skips in `record`; ShardReadError
    when the input breaks off (the caller then discards `tmp_out`)."""
    pending, duplicates = [], []

    def skip(key: str, e: Exception):
        reason = getattr(e, "reason", "decode_error")
        record["skipped"][reason] += 1
        record["skipped_keys"].append([key, reason])
        log.warning("skipped sample (%s): %s", reason, e)

    with wds.TarWriter(str(tmp_out), encoder=False, mtime=TAR_MTIME) as writer:
        def flush():
            try:
                encoded = encode_batch(pending, models, args)
            except (RuntimeError, ValueError) as e:  # e.g. CUDA out of memory: skip the batch, not the run
                encoded = [SkipSample("encode_error", f"{m['__key__']}: encoder failed on its batch: {e!r}")
                           for _, _, m in pending]
            for (_, _, members), sample in zip(pending, encoded):
                if isinstance(sample, SkipSample):
                    skip(members["__key__"], sample)
                else:
                    writer.write(sample)
                    record["samples"] += 1
            pending.clear()

        for raw in read_tar(url, allow_pipe_urls=args.allow_pipe_urls, duplicates=duplicates):
            record["read"] += 1
            try:
                pending.append(prepare_sample(schema.decode_sample(raw), args))
            except (SkipSample, ValueError) as e:
                skip(raw["__key__"], e)
            if len(pending) >= args.batch_size:
                flush()
        if pending:
            flush()
    for name in duplicates:
        skip(name, SkipSample("duplicate_key", f"{url}: {name} is a duplicate (its first occurrence is kept)"))


# ---- driver ---------------------------------------------------------------------------------------------
def check_config(args) -> None:
    """Record the run's configuration in OUT/precompute.json; refuse to mix configurations in one OUT."""
    config = {"height": args.height, "width": args.width, "num_frames": args.num_frames,
              "model": str(args.model.resolve()), "max_text_len": args.max_text_len,
              "dtype": args.dtype, "vae_dtype": args.vae_dtype or args.dtype, "keep_videos": args.keep_videos}
    path = args.out / "precompute.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), config[k]) for k in CONFIG_KEYS if old.get(k) != config[k]}
        if diff:
            raise ValueError(f"{args.out} holds shards precomputed with other settings {diff} (old, new); "
                             f"use another --out or the same settings")
    else:
        write_json(path, config, sort_keys=True)


def write_manifest(out: Path) -> dict:
    """Sum all per-shard records into OUT/manifest.json (any rank may call it; the last one is complete)."""
    records = [json.loads(p.read_text()) for p in sorted((out / "manifest.d").glob("*.json"))]
    failed = {r["shard"]: {"error": r["error"], "lost": r["lost"]} for r in records
              if r.get("failed") and not (out / r["shard"]).exists()}
    records = [r for r in records if not r.get("failed") and (out / r["shard"]).exists()]
    skipped = Counter()
    for r in records:
        skipped.update(r["skipped"])
    manifest = {"shards": len(records), "samples": sum(r["samples"] for r in records), "skipped": dict(skipped),
                "shard_errors": {r["shard"]: r["error"] for r in records if r["error"]},
                "failed_shards": failed, "lost_samples": sum(f["lost"] for f in failed.values()),
                "config": json.loads((out / "precompute.json").read_text()),
                "per_shard": {r["shard"]: {"samples": r["samples"], "skipped": r["skipped"]} for r in records}}
    write_json(out / "manifest.json", manifest, sort_keys=True)
    return manifest


def load_models(args) -> dict:
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    device = args.device
    if device == "cuda" and torch.cuda.device_count() > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', args.rank)) % torch.cuda.device_count()}"
    vae = AutoencoderKLWan.from_pretrained(args.model / "vae", torch_dtype=DTYPES[args.vae_dtype or args.dtype])
    text_encoder = UMT5EncoderModel.from_pretrained(args.model / "text_encoder", torch_dtype=DTYPES[args.dtype])
    tokenizer = AutoTokenizer.from_pretrained(args.model / "tokenizer")
    return {"vae": vae.to(device).eval(), "text_encoder": text_encoder.to(device).eval(), "tokenizer": tokenizer}


def run(args) -> dict:
    check_args(args)
    urls = resolve_shards(args.shards, allow_pipe_urls=args.allow_pipe_urls)
    check_disjoint([local_path(u) for u in urls if local_path(u) is not None], args.out, "--shards", "--out")
    check_disjoint([args.model], args.out, "--model", "--out")
    names = [Path(u).name for u in urls]
    if len(set(names)) != len(names):
        raise ValueError("input shards have duplicate file names; give shards with unique names")
    args.out.mkdir(parents=True, exist_ok=True)
    check_config(args)
    mine = [(u, args.out / n) for i, (u, n) in enumerate(zip(urls, names)) if i % args.world_size == args.rank]
    _remove_stale_temps(args.out, [o.name for _, o in mine])
    todo = [(u, o) for u, o in mine if not o.exists()]
    log.info("rank %d/%d: %d shards, %d done already, %d to do", args.rank, args.world_size, len(mine),
             len(mine) - len(todo), len(todo))
    models = load_models(args) if todo else None
    failed = []
    for url, out_path in todo:
        start = time.time()
        record = process_shard(url, out_path, models, args)
        failed += [record] if record.get("failed") else []
        print(json.dumps({"shard": record["shard"], "samples": record.get("samples", 0), "skipped":
                          record.get("skipped", {}), "error": record["error"], "failed": bool(record.get("failed")),
                          "seconds": round(time.time() - start, 1)}), flush=True)
    manifest = write_manifest(args.out)
    if failed:
        raise ShardsFailed(f"{len(failed)} input shards could not be read to the end and were not written "
                           f"({'; '.join(r['error'] for r in failed[:3])}); {sum(r['lost'] for r in failed)} samples "
                           f"lost (see {args.out / 'manifest.json'}): repair or re-curate them and re-run, the "
                           f"finished shards are kept")
    return manifest


def _remove_stale_temps(out: Path, shards: list[str]) -> None:
    """Temporaries of killed writers: of this rank's shards and records (no other process writes them), and of the
    shared manifest files once they are a minute old (a live writer renames its own within milliseconds)."""
    removed = remove_stale_temps(out, shards) + remove_stale_temps(out / "manifest.d", [f"{n}.json" for n in shards])
    removed += remove_stale_temps(out, ["manifest.json", "precompute.json"], min_age_s=60)
    if removed:
        log.info("removed %d temporary files of killed runs: %s", len(removed), [p.name for p in removed[:5]])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        manifest = run(args)
    except ShardsFailed as e:  # the run did its work, but not all of it
        if os.environ.get("T2V_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # bad input: one line, not a traceback
        return report_bad_input(e)
    print(json.dumps({k: manifest[k] for k in ("shards", "samples", "skipped", "shard_errors")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
