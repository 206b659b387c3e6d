import pytest
import torch

from track2view.conditioning.geometry import bilinear_sample, bilinear_scatter

MODES = ["border", "zeros"]


def cell_centres(h, w, dtype=torch.float64):
    """uv of every cell centre, row-major: [H*W, 2]."""
    i, j = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    return torch.stack([(j + 0.5) / w, (i + 0.5) / h], -1).reshape(-1, 2)


@pytest.mark.parametrize("mode", MODES)
def test_cell_centres_sample_and_scatter_exactly(mode):
    b, c, h, w = 2, 3, 4, 5
    grid = torch.randn(b, c, h, w, dtype=torch.float64)
    uv = cell_centres(h, w).expand(b, -1, -1)
    sampled = bilinear_sample(grid, uv, mode)  # [B, H*W, C]
    torch.testing.assert_close(sampled, grid.flatten(2).transpose(1, 2), rtol=0, atol=1e-12)
    scattered = bilinear_scatter(sampled, uv, (h, w), padding_mode=mode)
    torch.testing.assert_close(scattered, grid, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_scatter_is_adjoint_of_sample_before_averaging(mode):
    g = torch.Generator().manual_seed(0)
    b, c, h, w, n = 3, 4, 5, 7, 50
    grid = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    values = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    uv = torch.rand(b, n, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1  # includes points off the grid
    uv[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # corners
    lhs = (bilinear_scatter(values, uv, (h, w), padding_mode=mode, average=False) * grid).sum()
    rhs = (values * bilinear_sample(grid, uv, mode)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_border_modes_differ_at_the_edge():
    grid = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    corner = torch.zeros(1, 1, 2, dtype=torch.float64)  # uv = (0, 0): outer corner of the first cell
    assert bilinear_sample(grid, corner, "border").item() == 1.0
    assert bilinear_sample(grid, corner, "zeros").item() == pytest.approx(0.25)


def test_scatter_averages_contributions_and_leaves_empty_cells_zero():
    h, w = 3, 4
    centre = lambda i, j: [(j + 0.5) / w, (i + 0.5) / h]
    # two points on cell (0, 0); one point halfway between cells (2, 1) and (2, 2)
    uv = torch.tensor([[centre(0, 0), centre(0, 0), [2.0 / w, 2.5 / h]]], dtype=torch.float64)
    values = torch.tensor([[[1.0], [3.0], [5.0]]], dtype=torch.float64)
    out = bilinear_scatter(values, uv, (h, w))[0, 0]
    expected = torch.zeros(h, w, dtype=torch.float64)
    expected[0, 0], expected[2, 1], expected[2, 2] = 2.0, 5.0, 5.0
    torch.testing.assert_close(out, expected)
    # weighted average: a full-weight point (value 0) and a half-weight point (value 6) share cell (2, 1)
    uv2 = torch.tensor([[centre(2, 1), [2.0 / w, 2.5 / h]]], dtype=torch.float64)
    out2 = bilinear_scatter(torch.tensor([[[0.0], [6.0]]], dtype=torch.float64), uv2, (h, w))[0, 0]
    assert out2[2, 1].item() == pytest.approx(6.0 * 0.5 / 1.5)
    assert out2[2, 2].item() == pytest.approx(6.0)


def test_scatter_valid_mask_drops_points_even_with_nan_coordinates():
    uv = torch.tensor([[[0.1, 0.1], [float("nan"), float("inf")]]])
    values = torch.tensor([[[1.0], [100.0]]])
    out = bilinear_scatter(values, uv, (4, 4), valid=torch.tensor([[True, False]]))
    assert torch.isfinite(out).all()
    assert out.max().item() == pytest.approx(1.0)
    assert bilinear_scatter(values, uv, (4, 4), valid=torch.tensor([[False, False]])).abs().sum() == 0


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    g = torch.Generator().manual_seed(1)
    b, c, h, w, n = 2, 2, 3, 4, 5
    grid = torch.randn(b, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.randn(b, n, c, generator=g, dtype=torch.float64, requires_grad=True)
    # keep points away from cell-centre lines and the clamp, where bilinear weights have kinks
    cells = torch.tensor([w, h], dtype=torch.float64)
    idx = torch.stack([torch.randint(1, w - 1, (b, n), generator=g), torch.randint(1, h - 1, (b, n), generator=g)], -1)
    frac = 0.6 + 0.3 * torch.rand(b, n, 2, generator=g, dtype=torch.float64)
    uv = ((idx + frac) / cells).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda gr, u: bilinear_sample(gr, u, mode), (grid, uv))
    assert torch.autograd.gradcheck(lambda v, u: bilinear_scatter(v, u, (h, w), padding_mode=mode), (values, uv))
    assert torch.autograd.gradcheck(lambda v, u: bilinear_scatter(v, u, (h, w), padding_mode=mode, average=False),
                                    (values, uv))


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="uv must be"):
        bilinear_sample(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        bilinear_sample(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 2), "reflection")
    with pytest.raises(ValueError, match="valid must be"):
        bilinear_scatter(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), (3, 3), valid=torch.ones(1, 3, dtype=torch.bool))
