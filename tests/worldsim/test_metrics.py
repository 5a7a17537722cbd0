import json
import math

import numpy as np
import pytest
import skimage.metrics
import torch
from torch import Tensor, nn

from worldsim.metrics.lpips import LPIPS
from worldsim.metrics.video import (
    MetricResult,
    dreamsim,
    frechet_distance,
    fvd,
    gaussian_fit,
    lpips,
    psnr,
    scene_revisit_consistency,
    ssim,
)


@pytest.fixture
def videos(generator):
    target = torch.rand(2, 3, 3, 32, 32, generator=generator)  # (B, T, 3, H, W)
    noise = torch.randn(target.shape, generator=generator) * 0.05
    return (target + noise).clamp(0, 1), target


def test_psnr_matches_the_formula_and_skimage(videos):
    pred, target = videos
    result = psnr(pred, target)
    mse = (pred - target).double().square().mean(dim=(2, 3, 4))  # (B, T)
    expected = 10 * torch.log10(1.0 / mse)
    # torchmetrics accumulates the float32 squared error in float32
    np.testing.assert_allclose(result.per_item, expected.flatten().numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.per_step, expected.mean(dim=0).numpy(), rtol=1e-5)
    assert result.value == pytest.approx(float(expected.mean()), rel=1e-5)
    frame = (pred[0, 0].permute(1, 2, 0).numpy(), target[0, 0].permute(1, 2, 0).numpy())
    sk = skimage.metrics.peak_signal_noise_ratio(frame[1], frame[0], data_range=1.0)
    assert result.per_item[0] == pytest.approx(sk, rel=1e-5)  # float32 vs float64 error sum
    assert result.unit == "dB" and result.per_step.shape == (3,)
    assert math.isinf(psnr(target, target).value)


def test_ssim_matches_skimage(videos):
    pred, target = videos
    result = ssim(pred, target)
    assert result.per_item.shape == (6,)
    for k, (p, t) in enumerate(zip(pred.flatten(0, 1), target.flatten(0, 1), strict=True)):
        sk = skimage.metrics.structural_similarity(
            p.permute(1, 2, 0).double().numpy(),
            t.permute(1, 2, 0).double().numpy(),
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        # same SSIM map inside; torchmetrics also averages reflect-padded border pixels
        assert result.per_item[k] == pytest.approx(sk, abs=2e-3)
    assert ssim(target, target).value == pytest.approx(1.0, abs=1e-6)  # float32 arithmetic


def test_lpips_metric_equals_the_lpips_module(videos):
    pred, target = videos
    model = LPIPS("alex")
    result = lpips(pred, target, model, batch_size=4)
    with torch.no_grad():
        expected = model(pred.flatten(0, 1), target.flatten(0, 1))
    # split vs whole batches: float32 rounding of the same convolutions
    np.testing.assert_allclose(result.per_item, expected.double().numpy(), atol=1e-6)
    assert result.details["net"] == "alex"
    with pytest.raises(ValueError, match="expects inputs in"):
        lpips(pred, target, LPIPS("alex", input_range=(-1, 1)))


class MeanColour(nn.Module):
    """A tiny hand-checkable encoder: the mean colour of each image."""

    name = "mean-colour"

    def forward(self, images: Tensor) -> Tensor:
        return images.mean(dim=(2, 3))  # (B, 3)


def test_src_with_a_named_encoder_matches_a_hand_computed_cosine(generator):
    first = torch.rand(4, 3, 16, 16, generator=generator)
    revisit = torch.rand(4, 3, 16, 16, generator=generator)
    result = scene_revisit_consistency(first, revisit, encoder=MeanColour())
    a, b = first.mean(dim=(2, 3)).double(), revisit.mean(dim=(2, 3)).double()
    expected = [float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(4)]
    np.testing.assert_allclose(result.per_item, expected, rtol=1e-6)  # float32 features
    assert result.details["encoder"] == "mean-colour"
    named = scene_revisit_consistency(first, revisit, lambda x: x, encoder_name="identity")
    assert named.details["encoder"] == "identity"
    flat = scene_revisit_consistency(first, revisit, lambda x: x, pooling="flatten")
    a, b = first.flatten(1).double(), revisit.flatten(1).double()
    expected = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    np.testing.assert_allclose(flat.per_item, expected.numpy(), rtol=1e-5)  # float32 sums


def test_src_defaults_to_named_vgg16_features(generator):
    frames = torch.rand(2, 3, 32, 32, generator=generator)
    other = torch.rand(2, 3, 32, 32, generator=generator)
    same = scene_revisit_consistency(frames, frames)
    assert same.details["encoder"] == "vgg16-imagenet/relu5_3"
    assert same.value == pytest.approx(1.0, abs=1e-6)  # float32 cosine of equal vectors
    assert scene_revisit_consistency(frames, other).value < same.value
    with pytest.raises(ValueError, match="SRC needs"):
        scene_revisit_consistency(frames, other, encoder=lambda x: x[:, :, 0])  # (B, 3, W)


def test_frechet_distance_hand_computed_cases():
    # Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    value = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert value == pytest.approx(expected, abs=1e-9)  # sqrtm round-off
    # Same covariance, rotated frame: only the means differ.
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
    sigma = rotation @ np.diag([2.0, 0.5]) @ rotation.T
    assert frechet_distance([0, 0], sigma, [3, 4], sigma) == pytest.approx(25.0, abs=1e-9)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        frechet_distance(mu1, np.eye(2), mu2, np.eye(3))


class TinyI3D(nn.Module):
    """Random stand-in with the calling convention of i3d_torchscript.pt."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 6, kernel_size=3, padding=1)

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = True, return_features: bool = True
    ) -> Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3, 4))  # (B, 6)


def test_fvd_is_unavailable_without_weights(tmp_path, videos):
    pred, target = videos
    missing = fvd(target, pred)
    assert not missing.available and missing.value is None and "I3D" in missing.reason
    absent = fvd(target, pred, tmp_path / "i3d_torchscript.pt")
    assert not absent.available and "does not exist" in absent.reason


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the upstream format
def test_fvd_with_a_tiny_torchscript_i3d_saved_locally(tmp_path, generator):
    path = tmp_path / "i3d_torchscript.pt"
    with torch.random.fork_rng(devices=[]):  # seeded stand-in weights, global RNG untouched
        torch.manual_seed(0)
        torch.jit.script(TinyI3D()).save(str(path))
    real = torch.rand(12, 4, 3, 16, 16, generator=generator)
    generated = (real * 0.5 + 0.3).clamp(0, 1)
    result = fvd(real, generated, path, batch_size=5)
    detector = torch.jit.load(str(path))
    with torch.no_grad():
        feats = [
            detector(v.permute(0, 2, 1, 3, 4) * 2 - 1).double().numpy() for v in (real, generated)
        ]
    mu1, mu2 = feats[0].mean(0), feats[1].mean(0)
    sigma1, sigma2 = np.cov(feats[0], rowvar=False), np.cov(feats[1], rowvar=False)
    assert result.available and result.details["feature_dim"] == 6
    expected = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert result.value == pytest.approx(expected, rel=1e-6)  # batched vs whole calls
    assert result.value > 0
    same = fvd(real, real, path)
    assert abs(same.value) < 1e-6  # sqrtm round-off of identical fits
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not a loadable TorchScript I3D"):
        fvd(real, generated, corrupt)
    with pytest.raises(ValueError, match="at least 2 real videos"):
        fvd(real[:1], generated, path)


def test_gaussian_fit_rejects_too_few_samples():
    mu, sigma = gaussian_fit(np.array([[0.0, 1.0], [2.0, 3.0]]))
    np.testing.assert_allclose(mu, [1.0, 2.0])
    np.testing.assert_allclose(sigma, [[2.0, 2.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_fit(np.zeros((1, 4)))


class TinyEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).mean(dim=(2, 3))  # (B, 8)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the upstream format
def test_dreamsim_unavailable_then_computed_with_a_tiny_local_model(tmp_path, videos):
    pred, target = videos
    assert not dreamsim(pred, target).available
    assert "does not exist" in dreamsim(pred, target, tmp_path / "x.pt").reason
    path = tmp_path / "dreamsim.pt"
    with torch.random.fork_rng(devices=[]):  # seeded stand-in weights, global RNG untouched
        torch.manual_seed(0)
        torch.jit.script(TinyEmbedding()).save(str(path))
    result = dreamsim(pred, target, path, image_size=32)
    model = torch.jit.load(str(path))
    with torch.no_grad():
        a, b = model(pred.flatten(0, 1)), model(target.flatten(0, 1))
    expected = 1 - torch.nn.functional.cosine_similarity(a, b, dim=1)
    # same size, so the antialiased resize is the identity; float32 cosine
    np.testing.assert_allclose(result.per_item, expected.double().numpy(), atol=1e-6)
    assert result.per_step.shape == (3,)
    assert dreamsim(target, target, path, image_size=32).value == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 20), "same shape"),
        ((torch.rand(2, 3, 16, 16) * 255).byte(), torch.rand(2, 3, 16, 16), "uint8"),
        (torch.full((2, 3, 16, 16), float("nan")), torch.rand(2, 3, 16, 16), "NaN"),
        (torch.rand(2, 3, 16, 16) * 255, torch.rand(2, 3, 16, 16), r"must lie in \[0, 1\]"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), "frames or"),
    ],
)
def test_bad_inputs_raise(pred, target, match):
    with pytest.raises(ValueError, match=match):
        psnr(pred, target)


def test_results_serialise_to_json(videos):
    pred, target = videos
    text = json.dumps(psnr(pred, target).as_dict())
    assert json.loads(text)["per_step"] == pytest.approx(list(psnr(pred, target).per_step))
    unavailable = MetricResult.unavailable("fvd", "no I3D checkpoint given")
    assert json.loads(json.dumps(unavailable.as_dict()))["available"] is False
