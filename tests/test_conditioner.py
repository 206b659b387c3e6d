import copy

import pytest
import torch

from track2view.conditioning.tracks import DualViewTrackConditioner, subsample_tracks
from track2view.tracks import PairedTracks

D, B, F, N, H, W = 24, 2, 3, 12, 4, 6
SMALL = dict(token_dim=D, width=16, num_layers=2, num_heads=2, uv_fourier_bands=3, disparity_fourier_bands=3)


def make_tracks(valid_fraction=0.7, seed=0) -> PairedTracks:
    g = torch.Generator().manual_seed(seed)
    return PairedTracks(uv=torch.rand(B, 2, F, N, 2, generator=g), depth=0.5 + 3 * torch.rand(B, 2, F, N, generator=g),
                        valid=torch.rand(B, 2, F, N, generator=g) < valid_fraction)


def trained_conditioner(seed=0, **overrides) -> DualViewTrackConditioner:
    """A conditioner whose output projection is no longer zero (as after training)."""
    torch.manual_seed(seed)
    c = DualViewTrackConditioner(**{**SMALL, **overrides})
    torch.nn.init.normal_(c.out_proj.weight, std=0.5)
    torch.nn.init.normal_(c.out_proj.bias, std=0.5)
    return c


def tokens(seed=1):
    return torch.randn(B, D, 2 * F, H, W, generator=torch.Generator().manual_seed(seed))


def test_untrained_conditioner_outputs_exact_zeros():
    c = DualViewTrackConditioner(**SMALL)
    out = c(tokens(), make_tracks())
    assert out.shape == (B, D, 2 * F, H, W) and out.abs().max() == 0


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.0])
def test_shape_and_finite_for_all_some_and_no_valid_tracks(fraction):
    c = trained_conditioner()
    tr = make_tracks(fraction)
    tr.uv[~tr.valid] = float("nan")  # invalid points may carry garbage
    tr.depth[~tr.valid] = 0.0
    tok = tokens().requires_grad_(True)
    out = c(tok, tr)
    assert out.shape == (B, D, 2 * F, H, W) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in c.parameters() if p.grad is not None)
    assert torch.isfinite(tok.grad).all()
    if fraction == 0.0:
        assert out.abs().max() == 0  # nothing to scatter
    else:
        assert out.abs().max() > 0


def test_track_never_valid_in_source_gives_no_nan_and_only_its_depth_code():
    c = trained_conditioner()
    tr = make_tracks(1.0)
    tr.valid[:, 0] = False  # no track is visible in any source frame: every key padding mask row is all-True
    out = c(tokens(), tr)
    assert torch.isfinite(out).all()
    assert out[:, :, F:].abs().max() > 0  # target view still gets the disparity encoding
    # without source visibility the output cannot depend on the source tokens
    torch.testing.assert_close(out, c(tokens(seed=5), tr))


def test_inference_mode_matches_training_mode():
    # eval + no_grad takes nn.TransformerEncoder's fused fast path; it must agree (dropout is 0)
    c = trained_conditioner()
    tr, tok = make_tracks(0.5), tokens()
    tr.valid[:, 0, :, :3] = False  # includes tracks never valid in the source view
    expected = c(tok, tr)
    c.eval()
    with torch.inference_mode():
        torch.testing.assert_close(c(tok, tr), expected.detach(), rtol=1e-5, atol=1e-5)


def test_permutation_equivariance_over_tracks():
    c = trained_conditioner()
    tr, tok = make_tracks(), tokens()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(c(tok, tr), c(tok, tr.tracks(perm)), rtol=1e-5, atol=1e-5)


def test_single_track_at_a_cell_centre_writes_only_that_cell():
    c = trained_conditioner()
    uv = torch.zeros(B, 2, F, 1, 2)
    uv[..., 0], uv[..., 1] = (2 + 0.5) / W, (1 + 0.5) / H  # centre of cell (row 1, column 2)
    tr = PairedTracks(uv, torch.ones(B, 2, F, 1), torch.ones(B, 2, F, 1, dtype=torch.bool))
    out = c(tokens(), tr)
    nonzero = out.abs().amax(dim=(0, 1, 2)) > 0  # [H, W]
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(nonzero, expected)


def test_dropped_source_frames_are_ignored_when_masked():
    c = trained_conditioner()
    tr, tok = make_tracks(1.0), tokens()
    kept = torch.ones(B, F, dtype=torch.bool)
    kept[:, 1] = False
    changed = tok.clone()
    changed[:, :, 1] = torch.randn_like(changed[:, :, 1])  # what the DiT would see in a dropped frame
    torch.testing.assert_close(c(tok, tr, kept), c(changed, tr, kept))
    assert not torch.allclose(c(tok, tr), c(changed, tr))  # without the mask the frame's content matters


def test_disparity_is_normalized_jointly_over_views():
    c = DualViewTrackConditioner(**SMALL)
    depth = torch.tensor([2.0, 4.0]).view(1, 1, 1, 2).expand(1, 2, 1, 2).clone()
    depth[:, 1] *= 2  # target twice as far: half the disparity, kept relative to the source
    disp = c.normalized_disparity(depth, torch.ones_like(depth, dtype=torch.bool))
    torch.testing.assert_close(disp[0, :, 0], torch.tensor([[1.0, 0.5], [0.5, 0.25]]))
    # invariant to a global depth scale (relative-depth trackers)
    torch.testing.assert_close(disp, c.normalized_disparity(depth * 7, torch.ones_like(depth, dtype=torch.bool)))


def test_gradient_checkpointing_matches_and_save_load_roundtrip(tmp_path):
    c = trained_conditioner(sample_pre_bias=True)
    tr, tok = make_tracks(), tokens()
    bias = torch.randn(D)
    out = c(tok, tr, patch_bias=bias)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in c.parameters()]
    c.zero_grad()
    c.enable_gradient_checkpointing()
    out_ckpt = c(tok, tr, patch_bias=bias)
    out_ckpt.square().sum().backward()
    torch.testing.assert_close(out, out_ckpt)
    for a, p in zip(grads, c.parameters()):
        torch.testing.assert_close(a, p.grad)
    c.save_pretrained(tmp_path / "cond")
    assert (tmp_path / "cond" / "config.json").is_file()
    assert (tmp_path / "cond" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DualViewTrackConditioner.from_pretrained(tmp_path / "cond")
    assert loaded.config.sample_pre_bias is True
    torch.testing.assert_close(loaded(tok, tr, patch_bias=bias), out)


def test_bad_input_names_the_problem():
    c = DualViewTrackConditioner(**SMALL)
    with pytest.raises(ValueError, match="tracks must be"):
        c(tokens(), make_tracks().frames([0, 1]))
    with pytest.raises(ValueError, match="tokens must be"):
        c(torch.zeros(B, D + 1, 2 * F, H, W), make_tracks())
    with pytest.raises(ValueError, match="padding_mode"):
        DualViewTrackConditioner(**SMALL, padding_mode="reflect")


def test_bfloat16_parameters_keep_coordinates_and_fourier_features_in_float32():
    """DeepSpeed bf16 casts the whole module: uv, disparity and their Fourier features (8 bands, up to 2^7 pi uv)
    must still be float32, so that the bf16 model differs from float32 only by the rounding of activations."""
    low = trained_conditioner(uv_fourier_bands=8, disparity_fourier_bands=8).to(torch.bfloat16)
    high = copy.deepcopy(low).float()  # the same (bf16-representable) weights in float32
    tr = make_tracks(1.0)
    tok = tokens().bfloat16()
    shifted = PairedTracks(tr.uv + 1e-3, tr.depth, tr.valid)  # a tenth of bf16's spacing of uv in [0.5, 1)
    with torch.no_grad():
        ref, out = high(tok.float(), tr), low(tok, tr)
        ref_shift, out_shift = high(tok.float(), shifted) - ref, low(tok, shifted).float() - out.float()
    assert out.dtype == torch.bfloat16
    # bf16 coordinates / features: 12% and 100% relative error; float32 ones: 0.5% and 5%
    assert (out.float() - ref).norm() / ref.norm() < 0.03
    assert ref_shift.norm() > 0 and (out_shift - ref_shift).norm() / ref_shift.norm() < 0.25


def test_track_subsampling_keeps_half_to_all_and_shapes():
    n = 200
    tr = PairedTracks(torch.rand(64, 2, 3, n, 2), torch.ones(64, 2, 3, n), torch.ones(64, 2, 3, n, dtype=torch.bool))
    sub = subsample_tracks(tr, 0.5, 1.0, generator=torch.Generator().manual_seed(6))
    assert sub.valid.shape == tr.valid.shape
    kept = sub.valid[:, 0, 0].sum(1)
    assert kept.min() >= n // 2 and kept.max() <= n and kept.float().std() > 0
    assert torch.equal(sub.valid, sub.valid[:, :1, :1].expand_as(sub.valid))  # whole tracks kept or dropped
