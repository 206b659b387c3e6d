"""One stage-2 sample -> the tensors of one batch row, validated; and the batch (docs/architecture.md "Batch").

Every check raises `BadSample(reason, message)`: the loader counts the reason and skips the sample, so a sample
that could not join its batch (another latent shape or text width than the stream's `Reference`, a dtype the
schema does not allow, a frame count that does not match) never reaches `collate` and never stops a run.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import NamedTuple

import numpy as np
import torch

from track2view.conditioning.camera import relative_camera_features
from track2view.data import schema
from track2view.data.stats import BadSample
from track2view.tracks import PairedTracks
from track2view.video_size import latent_frames

REQUIRED = (schema.SOURCE_LATENTS, schema.TARGET_LATENTS, schema.PROMPT_EMBEDS)
# The shard member behind each conditioning input (track2view/conditioning/): the loader reads only those the
# configured kind needs, and never the videos.
INPUT_MEMBERS = {"tracks": schema.TRACKS, "cameras": schema.CAMERAS}


class Reference(NamedTuple):
    """The shapes every sample of a stream must have: latents [C, F, h, w] and the text width D."""
    latents: tuple[int, ...]
    text_dim: int


def members_read(inputs: tuple[str, ...]) -> tuple[str, ...]:
    """The shard members a batch for conditioning `inputs` needs (latents, prompt, caption + the inputs')."""
    unknown = [k for k in inputs if k not in INPUT_MEMBERS]
    if unknown:
        raise ValueError(f"the loader cannot read conditioning inputs {unknown}; it knows {sorted(INPUT_MEMBERS)}")
    return REQUIRED + (schema.CAPTION,) + tuple(INPUT_MEMBERS[k] for k in inputs)


def _check_finite(name: str, a: np.ndarray, key: str) -> None:
    if not np.isfinite(a).all():
        raise BadSample("non_finite", f"{key}: {name} holds NaN or inf")


def _check_float(name: str, a: np.ndarray, key: str) -> None:
    if not np.issubdtype(a.dtype, np.floating):
        raise BadSample("bad_dtype", f"{key}: {name} is {a.dtype}; it must be floating point (precompute writes "
                                     f"float16 latents and embeddings, float32 tracks and cameras)")


def _check_mask(name: str, a: np.ndarray, key: str) -> None:
    if a.dtype != np.bool_ and not (np.issubdtype(a.dtype, np.number) and np.isin(a, (0, 1)).all()):
        raise BadSample("bad_dtype", f"{key}: {name} must be a bool mask; it is {a.dtype} holding values other "
                                     f"than 0 and 1")


def prepare_sample(raw: dict, num_tracks: int, max_text_len: int, temporal_stride: int = 4,
                   latent_channels: int = 16, rng: torch.Generator | None = None,
                   inputs: tuple[str, ...] = ("tracks",), reference: Reference | None = None) -> dict:
    """Decode (safe decoders only), validate and shape one raw sample; raise BadSample naming the problem.

    Returns source_latents/target_latents [C, F, h, w] float32, prompt_embeds [max_text_len, D] float32
    (zero-padded or truncated), key, caption, and the conditioning `inputs`: tracks PairedTracks [2, F, num_tracks]
    at the latent stride (`_tracks`), cameras [F, 12] float32 (`_cameras`). reference: the stream's shapes; a
    sample with others is refused (`shape_mismatch`).
    """
    key = raw.get("__key__", "?")
    try:
        s = schema.decode_sample(raw)
    except ValueError as e:
        raise BadSample("decode_error", str(e)) from e
    missing = [m for m in REQUIRED + tuple(INPUT_MEMBERS[k] for k in inputs) if m not in s]
    if missing:
        raise BadSample("missing_member", f"{key} ({raw.get('__url__')}): missing members {missing}")

    src, tgt, text = s[schema.SOURCE_LATENTS], s[schema.TARGET_LATENTS], s[schema.PROMPT_EMBEDS]
    if src.ndim != 4 or src.shape[0] != latent_channels or src.shape != tgt.shape:
        raise BadSample("bad_shape", f"{key}: latents must be [{latent_channels}, F, h, w] and equal for source "
                                     f"and target, got {src.shape} and {tgt.shape}")
    if text.ndim != 2 or text.shape[0] < 1:
        raise BadSample("bad_shape", f"{key}: prompt_embeds must be [L, D] with L >= 1, got {text.shape}")
    if reference is not None and (src.shape, text.shape[1]) != (reference.latents, reference.text_dim):
        raise BadSample("shape_mismatch", f"{key}: latents {list(src.shape)} and text width {text.shape[1]} differ "
                                          f"from the rest of the shards ({list(reference.latents)}, "
                                          f"{reference.text_dim}): precomputed with other settings?")
    for name, a in ((schema.SOURCE_LATENTS, src), (schema.TARGET_LATENTS, tgt), (schema.PROMPT_EMBEDS, text)):
        _check_float(name, a, key)
        _check_finite(name, a, key)

    f = src.shape[1]
    conditioning = {}
    if "tracks" in inputs:
        conditioning["tracks"] = _tracks(s[schema.TRACKS], key, f, num_tracks, temporal_stride, rng)
    if "cameras" in inputs:
        conditioning["cameras"] = _cameras(s[schema.CAMERAS], key, f, temporal_stride)
    text = torch.from_numpy(text[:max_text_len].astype(np.float32))
    text = torch.cat([text, text.new_zeros(max_text_len - text.shape[0], text.shape[1])])
    return dict(source_latents=torch.from_numpy(src.astype(np.float32)),
                target_latents=torch.from_numpy(tgt.astype(np.float32)),
                prompt_embeds=text, key=key, caption=s.get(schema.CAPTION, ""), **conditioning)


def _frame_count_problem(t: int, f: int, temporal_stride: int, key: str, what: str) -> None:
    if (t - 1) % temporal_stride or latent_frames(t, temporal_stride) != f:
        raise BadSample("frame_count", f"{key}: {t} {what} frames do not match {f} latent frames "
                                       f"(need T = {temporal_stride}*(F-1)+1 = {temporal_stride * (f - 1) + 1})")


def _tracks(arrays: dict, key: str, f: int, num_tracks: int, temporal_stride: int, rng) -> PairedTracks:
    """PairedTracks [2, F, num_tracks] at the latent stride: all-invalid tracks dropped, then a random subset if
    more than num_tracks, then padded with invalid tracks; invalid entries set to uv 0 / depth 1 (no NaN).
    Arrays other than uv, depth, valid (e.g. a tracker's confidence) are ignored."""
    for name in ("uv", "depth"):
        if name in arrays:
            _check_float(f"{schema.TRACKS} {name}", arrays[name], key)
    if "valid" in arrays:
        _check_mask(f"{schema.TRACKS} valid", arrays["valid"], key)
    try:
        tracks = PairedTracks.from_numpy(arrays).validate()
    except (KeyError, ValueError) as e:
        reason = "non_finite" if "non-finite" in str(e) else "bad_shape"
        raise BadSample(reason, f"{key}: {schema.TRACKS}: {e}") from e
    _frame_count_problem(tracks.num_frames, f, temporal_stride, key, "track")
    tracks = tracks.at_latent_stride(temporal_stride)
    tracks = tracks.tracks(torch.nonzero(tracks.valid.flatten(0, 1).any(0)).flatten())
    if tracks.num_tracks > num_tracks:
        tracks = tracks.subsample_tracks(num_tracks, generator=rng)
    tracks = tracks.pad_tracks(num_tracks)
    invalid = ~tracks.valid
    return PairedTracks(tracks.uv.masked_fill(invalid[..., None], 0.0), tracks.depth.masked_fill(invalid, 1.0),
                        tracks.valid)


def _cameras(arrays: dict, key: str, f: int, temporal_stride: int) -> torch.Tensor:
    """[F, 12]: the target camera relative to the source camera at frame 0 per latent frame (cameras.npz c2w
    [2, T, 4, 4], metres)."""
    c2w = arrays.get("c2w")
    if c2w is None or c2w.ndim != 4 or c2w.shape[:1] != (2,) or c2w.shape[2:] != (4, 4):
        raise BadSample("bad_shape", f"{key}: {schema.CAMERAS}: c2w must be [2, T, 4, 4], got "
                                     f"{None if c2w is None else c2w.shape}")
    _check_float("cameras c2w", c2w, key)
    _check_finite("cameras c2w", c2w, key)
    _frame_count_problem(c2w.shape[1], f, temporal_stride, key, "camera")
    return torch.from_numpy(relative_camera_features(c2w[0], c2w[1], temporal_stride))


def collate(samples: list[dict]) -> dict:
    """Stack prepared samples of equal shapes into a batch (docs/architecture.md "Batch")."""
    shapes = {s["key"]: (tuple(s["source_latents"].shape), tuple(s["prompt_embeds"].shape)) for s in samples}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"samples of one batch have different latent / prompt shapes {shapes}; precompute all "
                         f"shards with one --height/--width/--num-frames and use one max_text_len")
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("source_latents", "target_latents", "prompt_embeds")}
    if "tracks" in samples[0]:
        batch["tracks"] = PairedTracks.stack([s["tracks"] for s in samples])
    if "cameras" in samples[0]:
        batch["cameras"] = torch.stack([s["cameras"] for s in samples])
    batch["key"] = [s["key"] for s in samples]
    batch["caption"] = [s["caption"] for s in samples]
    return batch


def _npy_shape(head: bytes) -> tuple[int, ...] | None:
    """The shape in a .npy header (`head`: the member's first bytes), None if it is not a readable one."""
    try:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(reader(f)[0])
    except Exception:  # noqa: BLE001 - any malformed header: no vote
        return None


def probe_reference(index, reader, probes: int = 16) -> Reference | None:
    """The stream's shapes: the most common (latents, text width) among `probes` samples spread over the index,
    read from their .npy headers only. None when no probe is readable (then no sample is refused for its shape)."""
    usable = np.flatnonzero(~index.lost)
    votes = Counter()
    for i in usable[np.linspace(0, len(usable) - 1, min(probes, len(usable))).astype(int)] if len(usable) else []:
        shapes = []
        for member in (schema.SOURCE_LATENTS, schema.PROMPT_EMBEDS):
            offset, size = index.extents[i, index.members.index(member)].tolist()
            try:
                shapes.append(_npy_shape(reader.read_at(int(index.shard[i]), offset, min(size, 4096))) if size >= 0
                              else None)
            except BadSample:
                shapes.append(None)
        if None not in shapes and len(shapes[1]) == 2:
            votes[Reference(shapes[0], shapes[1][1])] += 1
    return votes.most_common(1)[0][0] if votes else None
