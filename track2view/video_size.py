"""The video sizes Wan-2.1 accepts: one check shared by training, precompute, the pipeline and infer.py.

The VAE compresses space by 8 and time by 4 after the first frame, and the transformer patchifies latents by
2 x 2, so height and width must be multiples of 16 and the frame count 4k+1 (81 frames -> 21 latent frames).
"""

from __future__ import annotations


def video_size_problem(height: int | None, width: int | None, num_frames: int | None, spatial_multiple: int = 16,
                       temporal_stride: int = 4, names: tuple[str, str, str] = ("height", "width", "num_frames")
                       ) -> str | None:
    """None if the size is valid, else one sentence naming the value, the rule and a fix. None values are skipped.

    `names` are how the caller's user spells the three settings (e.g. "model.height" or "--height").
    """
    for name, value in zip(names[:2], (height, width)):
        if value is not None and (value <= 0 or value % spatial_multiple):
            return (f"{name}={value} is not a positive multiple of {spatial_multiple} (VAE stride x patch size); "
                    f"use e.g. 480x832")
    if num_frames is not None and (num_frames < 1 or (num_frames - 1) % temporal_stride):
        return (f"{names[2]}={num_frames} is not {temporal_stride}k+1 (the Wan VAE compresses time by "
                f"{temporal_stride} after the first frame); use e.g. 81, 49 or 25")
    return None


def latent_frames(num_frames: int, temporal_stride: int = 4) -> int:
    """Latent frames of a (temporal_stride k + 1)-frame video: (num_frames - 1) // stride + 1 (81 -> 21)."""
    return (num_frames - 1) // temporal_stride + 1


def latent_tokens(height: int, width: int, num_frames: int, patch: tuple[int, int, int] = (1, 2, 2),
                  spatial_stride: int = 8, temporal_stride: int = 4) -> int:
    """Tokens of one video's latents after the patch embedding (480x832x81: 21 x 30 x 52 = 32,760); the pipeline's
    DiT sees twice as many, the source's and the target's."""
    p_t, p_h, p_w = patch
    return (latent_frames(num_frames, temporal_stride) // p_t) * (height // spatial_stride // p_h) * \
        (width // spatial_stride // p_w)
