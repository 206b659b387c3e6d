"""Small stage-1 and stage-2 shards for tests, following docs/architecture.md "Shards" exactly.

Sample members are dicts {'__key__': str, member name: bytes}; `write_shard` writes them with
webdataset's TarWriter. Corruptions used by the loader tests live here too.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import webdataset as wds

from track2view.data import schema
from track2view.io import atomic_path, write_video

CAPTIONS = ("a red car moving on the street", "the camera view of a room", "a person with a blue ball", "")


def _tracks(rng, num_frames: int, num_tracks: int) -> dict:
    uv = rng.uniform(0.05, 0.95, (2, num_frames, num_tracks, 2)).astype(np.float32)
    depth = rng.uniform(1.0, 3.0, (2, num_frames, num_tracks)).astype(np.float32)
    valid = rng.random((2, num_frames, num_tracks)) > 0.2
    return {"uv": uv, "depth": depth, "valid": valid}


def _cameras(num_frames: int) -> dict:
    c2w = np.tile(np.eye(4, dtype=np.float32), (2, num_frames, 1, 1))
    c2w[1, :, 0, 3] = np.linspace(0.0, 0.5, num_frames)
    k = np.array([[0.8, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], np.float32)
    return {"c2w": c2w, "intrinsics": np.tile(k, (2, num_frames, 1, 1))}


def _video_bytes(rng, num_frames: int, height: int, width: int) -> bytes:
    """A tiny H.264 clip (smooth moving gradient plus noise) written by track2view.io.write_video."""
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = np.stack([np.stack([127 + 100 * np.sin(x / 7.0 + t / 3.0 + phase[c]) * np.cos(y / 9.0 + phase[c])
                                 for c in range(3)], -1) for t in range(num_frames)])
    frames = np.clip(frames + rng.normal(0, 5, frames.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        return write_video(Path(tmp) / "clip.mp4", frames, fps=15.0).read_bytes()


def stage1_sample(key: str, *, num_frames: int = 9, height: int = 48, width: int = 64, num_tracks: int = 12,
                  caption: str | None = None, seed: int = 0) -> dict:
    """A curated (stage-1) sample: two videos, paired tracks, cameras, the tracking result, meta, caption."""
    rng = np.random.default_rng(seed)
    caption = CAPTIONS[seed % len(CAPTIONS)] if caption is None else caption
    tracks, cams = _tracks(rng, num_frames, num_tracks), _cameras(num_frames)
    tracking = {"c2w": cams["c2w"][0], "intrinsics": cams["intrinsics"][0],
                "points_world": rng.normal(0, 1, (num_frames, num_tracks, 3)).astype(np.float32),
                "visible": tracks["valid"][0], "metric": np.array(True), "image_size": np.array([height, width])}
    meta = {"scene": key, "lens": "f24", "cameras": [1, 2], "fps": 15, "num_frames": num_frames,
            "height": height, "width": width, "tracker": "oracle", "counts": {"tracks": num_tracks}}
    return {"__key__": key, schema.SOURCE_VIDEO: _video_bytes(rng, num_frames, height, width),
            schema.TARGET_VIDEO: _video_bytes(rng, num_frames, height, width),
            schema.TRACKS: schema.encode_npz(tracks), schema.CAMERAS: schema.encode_npz(cams),
            schema.TRACKING: schema.encode_npz(tracking), schema.META: schema.encode_json(meta),
            schema.CAPTION: caption.encode()}


def stage2_arrays(*, latent_frames: int = 3, latent_hw=(4, 6), num_tracks: int = 10, text_len: int = 5,
                  text_dim: int = 32, temporal_stride: int = 4, seed: int = 0) -> dict:
    """The arrays of a latent (stage-2) sample; tracks at full frame rate T = stride * (F - 1) + 1."""
    rng = np.random.default_rng(seed)
    t = temporal_stride * (latent_frames - 1) + 1
    tracks = _tracks(rng, t, num_tracks)
    tracks["valid"][:, :, 0] = False  # one track never valid (the loader drops it before subsetting)
    shape = (16, latent_frames, *latent_hw)
    return {"source_latents": rng.normal(0, 1, shape).astype(np.float16),
            "target_latents": rng.normal(0, 1, shape).astype(np.float16),
            "prompt_embeds": rng.normal(0, 1, (text_len, text_dim)).astype(np.float16),
            "tracks": tracks, "cameras": _cameras(t)}


def stage2_sample(key: str, *, caption: str | None = None, seed: int = 0, **shape) -> dict:
    a = stage2_arrays(seed=seed, **shape)
    caption = CAPTIONS[seed % len(CAPTIONS)] if caption is None else caption
    return {"__key__": key, schema.SOURCE_LATENTS: schema.encode_npy(a["source_latents"]),
            schema.TARGET_LATENTS: schema.encode_npy(a["target_latents"]),
            schema.PROMPT_EMBEDS: schema.encode_npy(a["prompt_embeds"]), schema.TRACKS: schema.encode_npz(a["tracks"]),
            schema.CAMERAS: schema.encode_npz(a["cameras"]), schema.META: schema.encode_json({"scene": key}),
            schema.CAPTION: caption.encode()}


def write_shard(path, samples: list[dict]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with wds.TarWriter(str(tmp), encoder=False) as writer:
            for s in samples:
                writer.write(s)
    return path


def write_stage1_shards(root, num_shards: int = 2, per_shard: int = 2, **kw) -> list[Path]:
    return [write_shard(Path(root) / f"shard-{i:06d}.tar",
                        [stage1_sample(f"f24-scene{i}-cam01-cam{j + 2:02d}", seed=i * per_shard + j, **kw)
                         for j in range(per_shard)]) for i in range(num_shards)]


def write_stage2_shards(root, num_shards: int = 2, per_shard: int = 3, **kw) -> list[Path]:
    return [write_shard(Path(root) / f"shard-{i:06d}.tar",
                        [stage2_sample(f"f24-scene{i}-cam01-cam{j + 2:02d}", seed=i * per_shard + j, **kw)
                         for j in range(per_shard)]) for i in range(num_shards)]


def write_manifest(root, counts: dict[str, int], kind: str = "latents") -> Path:
    """A manifest.json saying how many samples each shard holds, as precompute ("latents": per_shard) or curation
    ("curation": shards) writes it."""
    if kind == "latents":
        manifest = {"per_shard": {name: {"samples": n, "skipped": {}} for name, n in counts.items()}}
    else:
        manifest = {"shards": [{"name": name, "samples": n} for name, n in counts.items()]}
    path = Path(root) / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def read_shard(path) -> list[dict]:
    """All samples of a shard as {key: {member: bytes}} order-preserving list (plain tarfile, for checks)."""
    samples = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, member = m.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[member] = tar.extractfile(m).read()
    return list(samples.values())


# ---- corruptions -------------------------------------------------------------------------------------------
def write_raw_tar(path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of exactly these (name, bytes) members in this order (duplicates included, as TarWriter cannot)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Path(path)


def sample_members(sample: dict) -> list[tuple[str, bytes]]:
    """A sample dict as the (name, bytes) members a shard holds, in TarWriter's order."""
    return [(f"{sample['__key__']}.{k}", v) for k, v in sorted(sample.items()) if not k.startswith("__")]


def member_offset(path, name: str) -> int:
    """The byte at which member `name`'s header starts in tar `path`."""
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset


def truncate_in_member(path, key: str, member: str) -> Path:
    """Cut the tar file in the middle of `key.member`'s data (as an interrupted copy would)."""
    with tarfile.open(path) as tar:
        info = tar.getmember(f"{key}.{member}")
    with open(path, "r+b") as f:
        f.truncate(info.offset_data + info.size // 2)
    return Path(path)


class _CreateFile:
    """Unpickling this creates `path` (the side effect a malicious shard member would have)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def pickle_payload(marker) -> bytes:
    """Bytes of a pickle whose loading creates the file `marker`."""
    return pickle.dumps(_CreateFile(marker))


def object_npy_payload(marker) -> bytes:
    """A .npy of object dtype whose loading with allow_pickle=True creates the file `marker`."""
    buf = io.BytesIO()
    np.save(buf, np.array([_CreateFile(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()
