"""Parameter-free geometry of the track conditioner: bilinear sampling and its adjoint, bilinear scattering.

Coordinates follow `track2view/tracks.py`: uv in [0, 1]^2 over the grid, uv[..., 0] = x along the width,
uv[..., 1] = y along the height, 0 = left/top edge of the first cell, 1 = right/bottom edge of the last.
The centre of cell (row i, column j) is uv = ((j + 0.5) / W, (i + 0.5) / H); a point there samples exactly
that cell and scatters exactly into it.

Borders (`padding_mode`, the same for both functions so that scatter stays the exact adjoint of sample):
* "border" (default): the coordinate is clamped to the outermost cell centres first, so a point in the
  outer half-cell (or outside the grid) reads / writes the edge cells with full weight. Sampled features
  keep their magnitude up to the image edge, which is what the conditioner wants for tracks near the edge.
* "zeros": `F.grid_sample`'s zeros padding; the corners that fall outside the grid have value 0 on sampling
  and are dropped on scattering, so a point at uv = 0 reads a quarter of the corner cell.

Sampling is `F.grid_sample(align_corners=False, grid=2 * uv - 1)`. Scattering is hand-written with
`index_add_` over the flattened cells because no library op splats points bilinearly with weights.
Before averaging, `<bilinear_scatter(v, uv, average=False), g> == <v, bilinear_sample(g, uv)>`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PADDING_MODES = ("border", "zeros")


def _check(uv: torch.Tensor, batch: int, padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if uv.dim() != 3 or uv.shape[0] != batch or uv.shape[-1] != 2:
        raise ValueError(f"uv must be [B={batch}, N, 2] (normalized x, y in [0, 1]), got {tuple(uv.shape)}")


def bilinear_sample(grid: torch.Tensor, uv: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Read `grid` [B, C, H, W] at `uv` [B, N, 2] with bilinear interpolation -> [B, N, C] (float32 or wider)."""
    if grid.dim() != 4:
        raise ValueError(f"grid must be [B, C, H, W], got {tuple(grid.shape)}")
    _check(uv, grid.shape[0], padding_mode)
    # float32 at least: in bfloat16 a coordinate is off by up to a fifth of a cell on a 52-cell axis
    dtype = torch.promote_types(grid.dtype, torch.float32)
    coords = (2 * uv.to(dtype) - 1).unsqueeze(1)  # [B, 1, N, 2] in grid_sample's [-1, 1] convention
    out = F.grid_sample(grid.to(dtype), coords, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.squeeze(2).transpose(1, 2)  # [B, C, 1, N] -> [B, N, C]


def bilinear_corners(uv: torch.Tensor, size: tuple[int, int], padding_mode: str = "border"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 cells around each point and their bilinear weights, exactly as `F.grid_sample` uses them.

    uv [B, N, 2] -> (flat cell index [B, N, 4] in [0, H*W), weight [B, N, 4]); a corner outside the grid
    has weight 0 (and a clamped, harmless index).
    """
    h, w = size
    x = uv[..., 0] * w - 0.5  # continuous cell coordinates: cell centres at integers
    y = uv[..., 1] * h - 0.5
    if padding_mode == "border":
        x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    index, weight = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            weight.append(wx * wy * inside)
            index.append(yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long())
    return torch.stack(index, -1), torch.stack(weight, -1)


def bilinear_scatter(values: torch.Tensor, uv: torch.Tensor, size: tuple[int, int], valid: torch.Tensor | None = None,
                     padding_mode: str = "border", average: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Splat `values` [B, N, C] at `uv` [B, N, 2] onto a grid of `size` = (H, W) -> [B, C, H, W].

    Each point spreads its value over its 4 nearest cells with bilinear weights; `valid` [B, N] (bool)
    drops points. With `average` (default) a cell holds the weighted average of its contributions
    (sum w v / sum w, empty cells 0); without it, the plain weighted sum, the adjoint of `bilinear_sample`.
    Accumulates in float32 or wider (atomic adds in half precision lose contributions) and returns that.
    """
    if values.dim() != 3:
        raise ValueError(f"values must be [B, N, C], got {tuple(values.shape)}")
    b, n, c = values.shape
    _check(uv, b, padding_mode)
    if uv.shape[1] != n:
        raise ValueError(f"uv has {uv.shape[1]} points but values has {n}")
    h, w = size
    if valid is not None:
        if tuple(valid.shape) != (b, n):
            raise ValueError(f"valid must be [B, N] = {(b, n)}, got {tuple(valid.shape)}")
        uv = torch.where(valid.unsqueeze(-1), uv, 0.5)  # invalid points may hold NaN: keep indices in range
    dtype = torch.promote_types(values.dtype, torch.float32)
    index, weight = bilinear_corners(uv.to(dtype), (h, w), padding_mode)  # [B, N, 4]
    if valid is not None:
        weight = weight * valid.unsqueeze(-1)
    index = (index + torch.arange(b, device=index.device).view(b, 1, 1) * (h * w)).flatten(0, 1)  # [B*N, 4]
    weight = weight.flatten(0, 1)
    values = values.to(dtype).flatten(0, 1)  # [B*N, C]
    # one corner at a time: a [B*N, 4, C] temporary (and its gradient) would be 4x the values' size
    total = values.new_zeros(b * h * w, c)
    for corner in range(4):
        total.index_add_(0, index[:, corner], values * weight[:, corner, None])
    if average:
        norm = weight.new_zeros(b * h * w).index_add_(0, index.flatten(), weight.flatten())
        total = total / norm.clamp_min(eps).unsqueeze(-1)  # empty cells: 0 / eps = 0
    return total.view(b, h, w, c).permute(0, 3, 1, 2)
