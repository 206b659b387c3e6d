"""Generated clips on disk: one folder per manifest clip, and loading one as a `Clip` for the metrics.

    <generated>/<key>/video.mp4          the generated video (the only file another method must provide)
    <generated>/<key>/target_poses.json  the target cameras it was generated for (written by `generate`)
    <generated>/<key>/tracks.npz         the paired tracks used (written by `generate`)
    <generated>/<key>/clip.json          the manifest entry, written last by `generate` (marks the clip complete)
    <generated>/generation.json          the manifest's fingerprint and the generation settings

Source and true target videos are fitted to the generated video's size by the pipeline's own rule
(`track2view.data.latents.resize_and_crop`: aspect-preserving resize, centred crop), and the intrinsics with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from track2view.eval.errors import EvalInputError
from track2view.eval.manifest import Manifest, ManifestClip
from track2view.eval.metric import Clip
from track2view.io import VideoError, read_video

VIDEO, POSES, TRACKS, RECORD = "video.mp4", "target_poses.json", "tracks.npz", "clip.json"
GENERATION = "generation.json"


def read_frames(path: Path, num_frames: int, what: str) -> np.ndarray:
    """The first `num_frames` frames [T, H, W, 3] uint8 of a video; a missing, broken or short one is bad input."""
    try:
        frames, _ = read_video(path, max_frames=num_frames)
    except VideoError as e:
        raise EvalInputError(f"{what}: {e}") from None
    if len(frames) < num_frames:
        raise EvalInputError(f"{what}: {path} has {len(frames)} frames, {num_frames} are asked")
    return frames


def fit_to(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """frames [T, H0, W0, 3] uint8 -> [T, height, width, 3] uint8 by the pipeline's resize-and-crop."""
    if frames.shape[1:3] == (height, width):
        return frames
    from track2view.data.latents import resize_and_crop

    video = resize_and_crop(frames, height, width)  # [3, T, H, W] in [-1, 1]
    return ((video.permute(1, 2, 3, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def fitted_intrinsics(intrinsics: np.ndarray, source_hw, generated_hw) -> np.ndarray:
    from track2view.data.latents import CenterCrop

    return CenterCrop(tuple(source_hw), tuple(generated_hw)).apply_intrinsics(intrinsics).astype(np.float64)


def generated_keys(folder: Path) -> set[str]:
    return {p.parent.name for p in folder.glob(f"*/{VIDEO}")}


def check_generated(manifest: Manifest, folder: str | Path) -> Path:
    """The folder of generated clips matches the manifest: every clip present, no other, same fingerprint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalInputError(f"generated clips folder not found: {folder}")
    found, wanted = generated_keys(folder), {c.key for c in manifest.clips}
    missing, unknown = sorted(wanted - found), sorted(found - wanted)
    if missing or unknown:
        parts = [f"{len(missing)} manifest clips have no {VIDEO} (first: {', '.join(missing[:3])})"] * bool(missing)
        parts += [f"{len(unknown)} folders are not in the manifest (first: {', '.join(unknown[:3])})"] * bool(unknown)
        raise EvalInputError(f"{folder} does not match the manifest: {'; '.join(parts)}")
    record = folder / GENERATION
    if record.is_file():
        fingerprint = json.loads(record.read_text()).get("manifest_fingerprint")
        if fingerprint not in (None, manifest.fingerprint()):
            raise EvalInputError(f"{folder} was generated from another manifest (fingerprint {fingerprint}, this "
                                 f"manifest's is {manifest.fingerprint()})")
    return folder


def load_clip(manifest: Manifest, entry: ManifestClip, folder: str | Path, num_frames: int,
              root: str | Path | None = None, against: str | Path | None = None) -> Clip:
    """The generated clip `entry.key` with its source (and true target) fitted to its size, first num_frames.
    `against`: another folder of generated clips whose clip `entry.key` stands in for the true target (e.g. the
    exact re-render, to score an approximate one against it)."""
    generated = read_frames(Path(folder) / entry.key / VIDEO, num_frames, f"generated clip {entry.key}")
    h, w = generated.shape[1:3]
    source = read_frames(manifest.video_path(entry.source_video, root), num_frames, f"source of {entry.key}")
    target = None
    if against is not None:
        target = fit_to(read_frames(Path(against) / entry.key / VIDEO, num_frames, f"--against clip {entry.key}"), h, w)
    elif entry.target_video:
        target = fit_to(read_frames(manifest.video_path(entry.target_video, root), num_frames,
                                    f"true target of {entry.key}"), h, w)
    return Clip(key=entry.key, generated=generated, source=fit_to(source, h, w), target=target, prompt=entry.clip_text,
                target_c2w=entry.target_c2w[:num_frames], split=entry.split,
                intrinsics=fitted_intrinsics(entry.intrinsics, source.shape[1:3], (h, w)),
                meta={"trajectory": entry.trajectory})
