"""Paired 3D point tracks: one scene point seen in the source and in the target view.

Coordinate convention (used everywhere in this project)
-------------------------------------------------------
* Pixel coordinates are continuous: x in [0, W] along the width, y in [0, H] along the height, the
  left/top edge of the first pixel is 0, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5).
  Intrinsics K use the same convention (a principal point at the image centre is cx = W / 2).
* Normalized coordinates `uv = (x / W, y / H)` lie in [0, 1]^2 over the image: `uv[..., 0]` is x,
  `uv[..., 1]` is y; 0 is the left/top edge of the first pixel, 1 the right/bottom edge of the last.
  They are resolution-free, so the same tracks address the video (H x W), the VAE latents
  (H/8 x W/8) and the token grid (H/16 x W/16).
* Cameras are OpenCV (x right, y down, z forward), depth is the camera-space z in scene units.
* View axis: index 0 is the source view, index 1 the target view.

Shapes (a leading batch axis B is optional and kept by every method):
    uv     [B?, 2, T, N, 2]  float
    depth  [B?, 2, T, N]     float
    valid  [B?, 2, T, N]     bool   (positive depth, inside the image, visible per the tracker)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

SOURCE, TARGET = 0, 1


@dataclass
class PairedTracks:
    uv: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_numpy(cls, arrays: dict) -> "PairedTracks":
        """From a dict of numpy arrays with keys `uv`, `depth`, `valid` (e.g. an `np.load`ed npz)."""
        missing = [k for k in ("uv", "depth", "valid") if k not in arrays]
        if missing:
            raise KeyError(f"paired tracks are missing arrays {missing}; expected keys uv, depth, valid")
        return cls(uv=torch.as_tensor(np.asarray(arrays["uv"], dtype=np.float32)),
                   depth=torch.as_tensor(np.asarray(arrays["depth"], dtype=np.float32)),
                   valid=torch.as_tensor(np.asarray(arrays["valid"]).astype(bool)))

    @classmethod
    def from_projections(cls, uv: torch.Tensor, depth: torch.Tensor, visible: torch.Tensor | None = None
                         ) -> "PairedTracks":
        """Build with the validity mask derived from geometry: depth > 0, uv inside [0, 1]^2, and `visible`."""
        uv, depth = torch.as_tensor(uv, dtype=torch.float32), torch.as_tensor(depth, dtype=torch.float32)
        inside = ((uv >= 0) & (uv <= 1)).all(-1)
        valid = inside & (depth > 0) & torch.isfinite(depth) & torch.isfinite(uv).all(-1)
        if visible is not None:
            valid = valid & torch.as_tensor(visible).bool()
        return cls(uv=uv, depth=depth, valid=valid)

    def to_numpy(self) -> dict:
        return {"uv": self.uv.cpu().numpy().astype(np.float32), "depth": self.depth.cpu().numpy().astype(np.float32),
                "valid": self.valid.cpu().numpy().astype(bool)}

    @staticmethod
    def stack(items: list["PairedTracks"]) -> "PairedTracks":
        """Stack unbatched tracks (same T and N) into a batch."""
        return PairedTracks(*(torch.stack([getattr(t, f.name) for t in items]) for f in fields(PairedTracks)))

    # ---- shape ----------------------------------------------------------------------------------
    @property
    def batched(self) -> bool:
        return self.depth.dim() == 4

    @property
    def num_frames(self) -> int:
        return self.depth.shape[-2]

    @property
    def num_tracks(self) -> int:
        return self.depth.shape[-1]

    def validate(self) -> "PairedTracks":
        """Raise ValueError naming the problem if shapes disagree or values are not finite; return self."""
        d = self.depth
        if d.dim() not in (3, 4) or d.shape[-3] != 2:
            raise ValueError(f"depth must be [B?, 2, T, N] (2 views: source, target), got {tuple(d.shape)}")
        if tuple(self.uv.shape) != (*d.shape, 2):
            raise ValueError(f"uv must be {(*d.shape, 2)} to match depth {tuple(d.shape)}, got {tuple(self.uv.shape)}")
        if tuple(self.valid.shape) != tuple(d.shape):
            raise ValueError(f"valid must match depth {tuple(d.shape)}, got {tuple(self.valid.shape)}")
        if self.valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool mask, got {self.valid.dtype}")
        v = self.valid
        if not torch.isfinite(self.uv[v]).all() or not torch.isfinite(self.depth[v]).all():
            raise ValueError("paired tracks hold non-finite uv or depth where valid is True; "
                             "mark such points invalid (valid=False) or drop them")
        if (self.depth[v] <= 0).any():
            raise ValueError("paired tracks hold non-positive depth where valid is True; points behind the "
                             "camera must be marked invalid")
        return self

    # ---- selection ------------------------------------------------------------------------------
    def frames(self, index) -> "PairedTracks":
        """Select frames (any index valid for a 1-D tensor) along T."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.depth.device)
        return PairedTracks(self.uv.index_select(-3, idx), self.depth.index_select(-2, idx),
                            self.valid.index_select(-2, idx))

    def at_latent_stride(self, stride: int = 4) -> "PairedTracks":
        """Keep the frames aligned with Wan's causal VAE latents: 0, stride, 2*stride, ... (81 -> 21 frames).

        The frame count must be stride*k + 1, as the VAE requires of the video.
        """
        t = self.num_frames
        if (t - 1) % stride:
            raise ValueError(f"{t} frames do not align with temporal stride {stride}: need {stride}k+1 frames")
        return self.frames(torch.arange(0, t, stride))

    def tracks(self, index) -> "PairedTracks":
        """Select tracks along N (index tensor or list)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.depth.device)
        return PairedTracks(self.uv.index_select(-2, idx), self.depth.index_select(-1, idx),
                            self.valid.index_select(-1, idx))

    def subsample_tracks(self, keep: int, generator: torch.Generator | None = None) -> "PairedTracks":
        """A random subset of `keep` tracks (same subset for the whole batch)."""
        if not 0 < keep <= self.num_tracks:
            raise ValueError(f"cannot keep {keep} of {self.num_tracks} tracks")
        idx = torch.randperm(self.num_tracks, generator=generator)[:keep].sort().values
        return self.tracks(idx)

    def pad_tracks(self, n: int) -> "PairedTracks":
        """Pad with invalid tracks, or truncate to the first n, to exactly n tracks."""
        cur = self.num_tracks
        if cur >= n:
            return self.tracks(torch.arange(n))
        pad = n - cur
        uv = torch.cat([self.uv, self.uv.new_zeros(*self.uv.shape[:-2], pad, 2)], -2)
        depth = torch.cat([self.depth, self.depth.new_ones(*self.depth.shape[:-1], pad)], -1)
        valid = torch.cat([self.valid, self.valid.new_zeros(*self.valid.shape[:-1], pad)], -1)
        return PairedTracks(uv, depth, valid)

    def shifted(self, view: int, dx: float) -> "PairedTracks":
        """Unbatched [2, F, N]: `view`'s uv moved by `dx` along x (uv units), points leaving [0, 1]^2 invalid."""
        uv, valid = self.uv.clone(), self.valid.clone()
        uv[view, ..., 0] += dx
        valid[view] &= ((uv[view] >= 0) & (uv[view] <= 1)).all(-1)
        return PairedTracks(uv, self.depth, valid)

    def apply(self, fn) -> "PairedTracks":
        """The same tracks with `fn` applied to each of uv, depth and valid (e.g. batch slicing)."""
        return PairedTracks(fn(self.uv), fn(self.depth), fn(self.valid))

    def to(self, *args, **kwargs) -> "PairedTracks":
        """Move to a device / cast floats; the mask stays bool."""
        return replace(self, uv=self.uv.to(*args, **kwargs), depth=self.depth.to(*args, **kwargs),
                       valid=self.valid.to(device=self.uv.to(*args, **kwargs).device))
