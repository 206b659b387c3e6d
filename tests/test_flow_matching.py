import pytest
import torch

from track2view.model.flow_matching import (FlowMatchingConfig, drop_source_frames, flow_matching_loss,
                                            noise_target, prepare_training_inputs, sample_sigmas, shift_sigmas,
                                            timesteps, token_timesteps)

B, C, F, H, W = 3, 16, 4, 4, 6


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def latents(seed):
    return torch.randn(B, C, F, H, W, generator=gen(seed))


@pytest.mark.parametrize("sampling", ["shifted_uniform", "logit_normal"])
def test_sigmas_are_in_range_deterministic_and_shifted(sampling):
    cfg = FlowMatchingConfig(sigma_sampling=sampling, shift=3.0)
    s = sample_sigmas(4096, cfg, generator=gen(1))
    assert s.shape == (4096,) and (s > 0).all() and (s <= 1).all()
    torch.testing.assert_close(s, sample_sigmas(4096, cfg, generator=gen(1)))
    unshifted = sample_sigmas(4096, FlowMatchingConfig(sigma_sampling=sampling, shift=1.0), generator=gen(1))
    torch.testing.assert_close(s, shift_sigmas(unshifted, 3.0))
    assert s.mean() > unshifted.mean() + 0.1  # shift > 1 moves mass to high noise


def test_only_the_target_half_is_noised_and_velocity_is_noise_minus_x0():
    src, tgt, noise = latents(0), latents(1), latents(2)
    sigmas = torch.tensor([0.0, 0.3, 1.0])
    x, velocity = noise_target(src, tgt, sigmas, noise=noise)
    assert x.shape == (B, C, 2 * F, H, W)
    torch.testing.assert_close(x[:, :, :F], src)  # source stays clean
    s = sigmas.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(x[:, :, F:], (1 - s) * tgt + s * noise)
    torch.testing.assert_close(velocity, noise - tgt)
    torch.testing.assert_close(x[0, :, F:], tgt[0])  # sigma 0: clean
    torch.testing.assert_close(x[2, :, F:], noise[2])  # sigma 1: pure noise


def test_per_token_timesteps_are_zero_on_the_source_half_in_frame_major_order():
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    shape = (B, C, 2 * F, H, W)
    torch.testing.assert_close(timesteps(sigmas, FlowMatchingConfig(), shape), 1000 * sigmas)
    t = timesteps(sigmas, FlowMatchingConfig(timestep_mode="per_token"), shape)
    per_frame = (H // 2) * (W // 2)
    assert t.shape == (B, 2 * F * per_frame)
    assert (t[:, : F * per_frame] == 0).all()
    torch.testing.assert_close(t[:, F * per_frame:], (1000 * sigmas).unsqueeze(1).expand(-1, F * per_frame))


def test_token_timesteps_are_the_training_timesteps_for_given_t():
    t, shape = torch.tensor([100.0, 500.0, 900.0]), (B, C, 2 * F, H, W)
    for mode in ("per_sample", "per_token"):
        torch.testing.assert_close(token_timesteps(t, mode, shape),
                                   timesteps(t / 1000, FlowMatchingConfig(timestep_mode=mode), shape))
    with pytest.raises(ValueError, match="timestep_mode must be one of"):
        token_timesteps(t, "per_frame", shape)


def test_per_token_timesteps_are_accepted_by_wan():
    from track2view.testing.tiny import tiny_transformer

    model = tiny_transformer()
    x = torch.randn(1, 16, 4, 8, 8)
    sigmas = torch.tensor([0.4])
    t = timesteps(sigmas, FlowMatchingConfig(timestep_mode="per_token"), x.shape)
    text = torch.randn(1, 5, 32)
    out = model(x, t, text, return_dict=False)[0]
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a per-token timestep equal everywhere is the scalar timestep
    same = model(x, torch.full_like(t, 400.0), text, return_dict=False)[0]
    torch.testing.assert_close(same, model(x, 1000 * sigmas, text, return_dict=False)[0], rtol=1e-4, atol=1e-4)


def test_loss_ignores_the_source_half_and_is_fp32():
    src, tgt = latents(0), latents(1)
    x, velocity = noise_target(src, tgt, torch.full((B,), 0.5), generator=gen(3))
    pred = torch.randn(B, C, 2 * F, H, W, generator=gen(4)).to(torch.bfloat16)
    loss = flow_matching_loss(pred, velocity)
    assert loss.dtype == torch.float32
    changed = pred.clone()
    changed[:, :, :F] = 1e3
    assert flow_matching_loss(changed, velocity) == loss
    torch.testing.assert_close(loss, ((pred[:, :, F:].float() - velocity) ** 2).mean())
    with pytest.raises(ValueError, match="prediction must be"):
        flow_matching_loss(pred[:, :, :F], velocity)


def test_source_frame_dropout_zeroes_up_to_half_the_frames():
    src = torch.ones(64, 2, 10, 2, 2)
    out, kept = drop_source_frames(src, 0.5, generator=gen(5))
    dropped = (~kept).sum(1)
    assert dropped.max() <= 5 and dropped.min() == 0 and dropped.float().std() > 0
    assert torch.equal(out.amax(dim=(1, 3, 4)) > 0, kept)  # exactly the dropped frames are zero
    out2, kept2 = drop_source_frames(src, 0.5, generator=gen(5))
    assert torch.equal(kept, kept2)


def test_prepare_training_inputs_augments_only_when_asked():
    src, tgt = latents(0), latents(1)
    cfg = FlowMatchingConfig()
    val = prepare_training_inputs(src, tgt, cfg, generator=gen(7), augment=False)
    assert val.source_frame_mask is None
    torch.testing.assert_close(val.hidden_states[:, :, :F], src)
    train = prepare_training_inputs(src, tgt, cfg, generator=gen(7))
    assert train.source_frame_mask.shape == (B, F) and train.timestep.shape == (B,)
    again = prepare_training_inputs(src, tgt, cfg, generator=gen(7))
    torch.testing.assert_close(train.hidden_states, again.hidden_states)


def test_config_validation():
    with pytest.raises(ValueError, match="sigma_sampling"):
        FlowMatchingConfig(sigma_sampling="cosine")
    with pytest.raises(ValueError, match="track_keep_min"):
        FlowMatchingConfig(track_keep_min=0.0)
    with pytest.raises(ValueError, match="timestep_mode"):
        FlowMatchingConfig(timestep_mode="per_frame")
