"""Shard member names and their safe encoders/decoders (see docs/architecture.md, "Shards").

Only these decoders ever read shard bytes: `.npy`/`.npz` through numpy with `allow_pickle=False`,
`.json` through the json module, `.txt` as UTF-8, videos as raw bytes. A member with any other
extension is dropped, so a `.pickle`/`.pyd` member planted in a shard is never unpickled.
(webdataset's own `autodecode` handles `.pyd`/`.pickle` with pickle, hence these few hand-written lines.)
"""

from __future__ import annotations

import io
import json

import numpy as np

TRACKS = "tracks.npz"
CAMERAS = "cameras.npz"
TRACKING = "tracking.npz"
META = "meta.json"
CAPTION = "txt"
SOURCE_VIDEO = "source.mp4"
TARGET_VIDEO = "target.mp4"
SOURCE_LATENTS = "source_latents.npy"
TARGET_LATENTS = "target_latents.npy"
PROMPT_EMBEDS = "prompt_embeds.npy"

CURATED_MEMBERS = (TRACKS, CAMERAS, TRACKING, META, CAPTION, SOURCE_VIDEO, TARGET_VIDEO)
LATENT_MEMBERS = (TRACKS, CAMERAS, TRACKING, META, CAPTION, SOURCE_LATENTS, TARGET_LATENTS, PROMPT_EMBEDS)


def encode_npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def encode_npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def decode_npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


_DECODERS = {
    "npz": decode_npz,
    "npy": decode_npy,
    "json": lambda b: json.loads(b.decode("utf-8")),
    "txt": lambda b: b.decode("utf-8"),
    "mp4": bytes,
}


def decode_sample(sample: dict) -> dict:
    """Decode a raw webdataset sample ({'__key__': str, member: bytes, ...}) with safe decoders only.

    Members whose extension has no safe decoder are dropped (never unpickled). Raises ValueError
    (with the member name) when a member is corrupt, e.g. an npz holding object arrays.
    """
    out = {}
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        decoder = _DECODERS.get(name.rsplit(".", 1)[-1])
        if decoder is None:
            continue
        try:
            out[name] = decoder(value)
        except Exception as e:
            raise ValueError(f"member {name!r} of sample {sample.get('__key__')!r} cannot be decoded: {e}") from e
    return out
