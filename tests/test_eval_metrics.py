"""Metrics with random-init networks of the real classes: CLIP scores, FID, VBench dimensions, Mat.Pix.,
reference pixels, and the one-line errors of a weights path that is missing or holds another network."""

import math

import numpy as np
import pytest
import torch

from eval_fixtures import inception_file, tiny_clip_dir, tiny_dino_dir  # noqa: F401
from track2view.eval.errors import EvalInputError
from track2view.eval.metric import Clip

RNG = np.random.default_rng(0)


def textured_video(num_frames=9, height=48, width=64, seed=0, motion=2):
    """A smooth random texture sliding sideways by `motion` pixels a frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 4 + 1, (width + motion * num_frames) // 4 + 1, 3)).astype(np.float32)
    big = np.kron(base, np.ones((4, 4, 1)))[:height]
    return np.stack([big[:, t * motion:t * motion + width] for t in range(num_frames)]).astype(np.uint8)


@pytest.fixture(scope="module")
def clip_encoder(tiny_clip_dir):
    from track2view.eval.networks.clip import CLIPEncoder

    return CLIPEncoder(tiny_clip_dir, "cpu")


def test_clip_scores_of_a_clip_against_itself(clip_encoder):
    from track2view.eval.metrics.clip_scores import CLIPScores

    video = textured_video()
    metric = CLIPScores(clip_encoder)
    same = metric(Clip("a", video, source=video, prompt="a red ball"))
    assert same["clip_v"] == pytest.approx(100.0, abs=1e-3)
    assert 0.0 <= same["clip_t"] <= 100.0 and same["clip_f"] <= 100.0 + 1e-3
    other = metric(Clip("b", video, source=textured_video(seed=5)[::-1].copy(), prompt="a red ball"))
    assert other["clip_v"] < 99.9
    by_length = metric.score_lengths(Clip("a", video, source=textured_video(seed=5), prompt="x"), (3, 9))
    direct = metric(Clip("a", video[:3], source=textured_video(seed=5)[:3], prompt="x"))
    assert by_length[3] == pytest.approx(direct) and by_length[9] != pytest.approx(direct)


def test_fid_of_a_set_against_itself_is_zero(inception_file, tmp_path):
    from track2view.eval.metrics.fid import FID, InceptionFeatures, ReferenceStatistics, save_reference

    frames = np.concatenate([textured_video(3, seed=s) for s in range(3)])
    extract = InceptionFeatures(inception_file, "cpu")
    stats = ReferenceStatistics(2048)
    features = extract(frames)
    stats.add(features[:4])
    stats.add(features[4:])  # streamed in parts
    reference = save_reference(tmp_path / "ref.npz", stats.result())
    fid = FID(inception_file, reference, "cpu")
    assert fid.compute([features[i * 3:(i + 1) * 3] for i in range(3)])["fid"] == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(fid.features(Clip("0", frames[:3])), features[:3], rtol=1e-5, atol=1e-5)
    noise = RNG.integers(0, 255, frames[:4].shape, dtype=np.uint8)
    assert fid.compute([fid.features(Clip("n", noise))])["fid"] > 1.0


def test_fid_reference_of_another_format_is_one_clear_error(inception_file, tmp_path):
    from track2view.eval.metrics.fid import FID

    bad = tmp_path / "ref.npz"
    np.savez(bad, mean=np.zeros(3))
    with pytest.raises(EvalInputError, match="not FID reference statistics"):
        FID(inception_file, bad, "cpu")
    with pytest.raises(EvalInputError, match="compute it once"):
        FID(inception_file, tmp_path / "absent.npz", "cpu")


def test_static_video_has_temporal_flickering_and_consistency_one(clip_encoder, tiny_dino_dir):
    from track2view.eval.metrics.background_consistency import BackgroundConsistency
    from track2view.eval.metrics.subject_consistency import DINOEncoder, SubjectConsistency
    from track2view.eval.metrics.temporal_flickering import TemporalFlickering

    static = np.repeat(textured_video(1), 7, axis=0)
    assert TemporalFlickering()(Clip("s", static))["temporal_flickering"] == 1.0
    flicker = static.copy()
    flicker[1::2] = 255 - flicker[1::2]
    assert TemporalFlickering()(Clip("f", flicker))["temporal_flickering"] < 0.9
    dino = SubjectConsistency(DINOEncoder(tiny_dino_dir, "cpu"))
    background = BackgroundConsistency(clip_encoder)
    for metric in (dino, background):
        name = metric.names[0]
        assert metric(Clip("s", static))[name] == pytest.approx(1.0, abs=1e-5)
        noise = RNG.integers(0, 255, static.shape, dtype=np.uint8)
        assert metric(Clip("n", noise))[name] < 1.0 - 1e-4


def test_vbench_consistency_formula():
    from track2view.eval.metrics.consistency import consistency_values

    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # frame 1 orthogonal, frame 2 back to frame 0
    np.testing.assert_allclose(consistency_values(f), [0.0, 0.5])  # [max(0,0)+max(0,0)]/2, [0 + 1]/2


def test_aesthetic_quality_is_the_laion_head_over_ten(tiny_clip_dir, clip_encoder, tmp_path):
    from track2view.eval.metrics.aesthetic import AestheticQuality

    weight = torch.randn(1, 16)
    torch.save({"layers.0.weight": weight, "layers.0.bias": torch.tensor([4.0])}, tmp_path / "head.pth")
    video = textured_video(4)
    score = AestheticQuality(clip_encoder, tmp_path / "head.pth")(Clip("a", video))["aesthetic_quality"]
    expected = float(((clip_encoder.image_features(video) @ weight.T)[:, 0] + 4.0).mean() / 10)
    assert score == pytest.approx(expected, rel=1e-5)
    torch.save({"weight": torch.randn(1, 768), "bias": torch.zeros(1)}, tmp_path / "l14.pth")
    with pytest.raises(EvalInputError, match="expects CLIP ViT-L/14"):
        AestheticQuality(clip_encoder, tmp_path / "l14.pth")


def test_imaging_quality_formula_with_a_stand_in_network():
    from track2view.eval.metrics.imaging_quality import ImagingQuality

    seen = []

    def mos(frame):  # stands in for MUSIQ: MOS = 100 x mean intensity
        seen.append(tuple(frame.shape[-2:]))
        return frame.mean() * 100

    video = np.full((3, 600, 300, 3), 51, np.uint8)
    score = ImagingQuality(mos, "cpu")(Clip("a", video))["imaging_quality"]
    assert score == pytest.approx(0.2, rel=1e-4) and seen[0] == (512, 256)  # longer side to 512, / 100


def test_motion_smoothness_formula_with_a_stand_in_interpolator():
    from track2view.eval.metrics.motion_smoothness import MotionSmoothness

    def blend(a, b):
        return ((a.astype(np.float32) + b) / 2).round().astype(np.uint8)

    ramp = np.stack([np.full((8, 8, 3), 10 * t, np.uint8) for t in range(9)])
    metric = MotionSmoothness(blend)
    assert metric(Clip("r", ramp))["motion_smoothness"] == 1.0
    jumpy = ramp.copy()
    jumpy[3] = 200
    by_length = metric.score_lengths(Clip("j", jumpy), (3, 4, 9))
    assert by_length[3]["motion_smoothness"] == 1.0  # odd frame 1 only
    assert by_length[4]["motion_smoothness"] == 1.0  # frame 3 needs frame 4
    assert by_length[9]["motion_smoothness"] == pytest.approx((255 - 170 / 4) / 255)


def test_matched_pixels_with_sift():
    from track2view.eval.metrics.matched_pixels import MatchedPixels
    from track2view.eval.metrics.matchers import SIFTMatcher

    video = textured_video(3, 96, 128, motion=3)
    metric = MatchedPixels(SIFTMatcher())
    same = metric(Clip("a", video, source=video))["mat_pix_k"]
    unrelated = metric(Clip("b", video, source=RNG.integers(0, 255, video.shape, dtype=np.uint8)))["mat_pix_k"]
    assert same > 0.02 and same > 5 * unrelated
    assert metric.info()["matcher"].startswith("sift")


def test_lightglue_matcher_loads_local_upstream_format_weights(tmp_path):
    import kornia.feature as KF

    from track2view.eval.metrics.matchers import LightGlueMatcher

    torch.manual_seed(0)
    torch.save({"extractor": KF.DISK().state_dict()}, tmp_path / "disk.pth")
    lightglue = KF.LightGlue(features=None, input_dim=128).state_dict()
    upstream = {k.replace("transformers.0.self_attn.", "self_attn.0."): v for k, v in lightglue.items()}
    torch.save(upstream, tmp_path / "disk_lightglue.pth")
    matcher = LightGlueMatcher(tmp_path / "disk.pth", tmp_path / "disk_lightglue.pth", "cpu")
    video = textured_video(1, 64, 64)
    a, b = matcher(video[0], video[0])
    assert a.shape == b.shape and a.shape[1] == 2
    with pytest.raises(EvalInputError, match="holds another network than LightGlue"):
        LightGlueMatcher(tmp_path / "disk.pth", tmp_path / "disk.pth", "cpu")


def test_reference_pixels_against_the_true_target():
    from track2view.eval.metrics.reference_pixels import ReferencePixels

    video = textured_video(3)
    same = ReferencePixels()(Clip("a", video, target=video))
    assert same["pixel_error"] == 0.0 and same["ssim"] == pytest.approx(1.0) and math.isinf(same["psnr"])
    shifted = ReferencePixels()(Clip("b", video, target=np.clip(video.astype(int) + 10, 0, 255).astype(np.uint8)))
    assert 0 < shifted["pixel_error"] <= 10 and 25 < shifted["psnr"] < 40


def test_weights_that_are_missing_or_another_network(tiny_clip_dir, tmp_path):
    from track2view.eval.networks.clip import CLIPEncoder
    from track2view.eval.networks.inception import load_fid_inception
    from track2view.eval.registry import MetricOptions, build_metrics
    from track2view.eval.metrics.subject_consistency import DINOEncoder

    with pytest.raises(EvalInputError, match="--clip .*does not exist"):
        CLIPEncoder(tmp_path / "absent", "cpu")
    with pytest.raises(EvalInputError, match="holds a 'clip' model, not DINO"):
        DINOEncoder(tiny_clip_dir, "cpu")
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(EvalInputError, match="holds another network than Inception-v3"):
        load_fid_inception(tmp_path / "other.pth")
    (tmp_path / "code.pth").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle naming os.system
    with pytest.raises(EvalInputError, match="not a readable weights file"):
        load_fid_inception(tmp_path / "code.pth")
    with pytest.raises(EvalInputError, match="needs local weights: pass --dino"):
        build_metrics(["subject_consistency"], MetricOptions())
    with pytest.raises(EvalInputError, match="unknown metric"):
        build_metrics(["clip_score"], MetricOptions())


@pytest.mark.parametrize("generated", [5, 40])  # fewer and more samples than feature dimensions
def test_frechet_distance_agrees_with_torchmetrics(generated):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from track2view.eval.metrics.fid import ReferenceStatistics, frechet

    class Rows(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    real, fake = RNG.normal(0, 1, (30, 16)), RNG.normal(0.3, 1.5, (generated, 16))
    metric = FrechetInceptionDistance(feature=Rows())
    metric.update(torch.as_tensor(real), real=True)
    metric.update(torch.as_tensor(fake), real=False)
    stats = ReferenceStatistics(16)
    stats.add(real)
    assert frechet(stats.result(), fake) == pytest.approx(float(metric.compute()), rel=1e-6)
