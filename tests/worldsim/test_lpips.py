import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.metrics.lpips import LPIPS, lpips_head_path

DATA = Path(__file__).resolve().parents[1] / "data" / "lpips"
PAIRS = np.load(DATA / "pairs.npz")
REFERENCES = {
    source: json.loads((DATA / f"reference_lpips_{source}.json").read_text())
    for source in ("torch", "jax")
}


@pytest.fixture(scope="module")
def models():
    return {"alex": LPIPS("alex"), "vgg": LPIPS("vgg")}


@pytest.fixture(scope="module")
def distances(models):
    """Our distances on every recorded pair, computed once: {(net, size): {pair name: value}}."""
    out = {}
    for net, model in models.items():
        for size in ("64x64", "48x80"):
            pairs = torch.from_numpy(PAIRS[f"pairs_{size}"]).float() / 255.0  # (N, 2, 3, H, W)
            with torch.no_grad():
                values = model(pairs[:, 0], pairs[:, 1])
            names = [str(n) for n in PAIRS[f"names_{size}"]]
            out[net, size] = dict(zip(names, values.tolist(), strict=True))
    return out


@pytest.mark.parametrize("source", ["torch", "jax"])
@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.parametrize("size", ["64x64", "48x80"])
def test_matches_recorded_reference_distances(distances, source, net, size):
    got = distances[net, size]
    reference = REFERENCES[source][net][size]
    assert sorted(reference) == sorted(got)
    for name, value in got.items():
        # the bound; the float32 networks agree to ~1e-7 in practice
        assert abs(value - reference[name]) <= 1e-4, name
    assert got["identical"] == 0.0


def test_identical_images_give_zero_and_distance_is_symmetric(models, generator):
    x = torch.rand(3, 3, 40, 56, generator=generator)
    y = torch.rand(3, 3, 40, 56, generator=generator)
    model = models["alex"]  # VGG's identical pairs are checked with the reference pairs
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(3))
        # the two orders run the same float operations with the roles swapped
        assert torch.allclose(model(x, y), model(y, x), atol=1e-6)


def test_minus_one_one_inputs_give_the_same_distances(models, generator):
    x, y = torch.rand(2, 2, 3, 32, 32, generator=generator)
    signed = LPIPS("alex", input_range=(-1, 1))
    with torch.no_grad():
        # 2x - 1 is applied before or after the call: identical up to float rounding
        assert torch.allclose(signed(2 * x - 1, 2 * y - 1), models["alex"](x, y), atol=1e-6)


def test_batch_of_one_broadcasts_and_per_layer_terms_sum_to_the_distance(models, generator):
    goal = torch.rand(1, 3, 32, 32, generator=generator)
    frames = torch.rand(4, 3, 32, 32, generator=generator)
    model = models["alex"]
    with torch.no_grad():
        broadcast = model(goal, frames)
        explicit = model(goal.expand(4, -1, -1, -1), frames)
        terms = model.per_layer(goal, frames)
    # separate vs concatenated trunk passes: float32 rounding only
    assert torch.allclose(broadcast, explicit, atol=1e-6)
    assert terms.shape == (4, 5) and (terms >= 0).all()
    assert torch.allclose(terms.sum(dim=1), broadcast, atol=1e-7)  # float32 sum order


def test_spatial_map_is_local_and_averages_to_the_distance(models, generator):
    x = torch.rand(3, 3, 48, 48, generator=generator)
    y = x.clone()
    y[:, :, :, 32:] = torch.rand(3, 3, 48, 16, generator=generator)  # differ on the right only
    model = models["alex"]
    with torch.no_grad():
        spatial, distance = model.spatial(x, y), model(x, y)
        assert torch.equal(model.spatial(x, x), torch.zeros(3, 1, 48, 48))
        broadcast = model.spatial(x[:1], y)
    assert spatial.shape == (3, 1, 48, 48) and (spatial >= 0).all()
    assert (spatial[..., 36:].mean((1, 2, 3)) > 3 * spatial[..., :12].mean((1, 2, 3))).all()
    # bilinear upsampling weighs border cells a little differently from the plain mean
    torch.testing.assert_close(spatial.mean((1, 2, 3)), distance, rtol=0.02, atol=0)
    torch.testing.assert_close(broadcast[0], spatial[0], rtol=0, atol=1e-6)  # float32 order


def test_gradient_matches_a_finite_difference(generator):
    model = LPIPS("alex").double()
    x = torch.rand(1, 3, 40, 40, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    y = torch.rand(1, 3, 40, 40, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float64) * 0.01
    x.requires_grad_(True)
    model(x, y).sum().backward()
    analytic = (x.grad * direction).sum()
    eps = 1e-4
    with torch.no_grad():
        numeric = (model(x + eps * direction, y) - model(x - eps * direction, y)) / (2 * eps)
    # central differences in float64; ReLU kinks make it approximate
    assert torch.allclose(analytic, numeric.sum(), rtol=1e-3)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("x0", "x1", "match"),
    [
        (torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 40), "one size"),
        ((torch.rand(1, 3, 32, 32) * 255).byte(), torch.rand(1, 3, 32, 32), "uint8 images"),
        (torch.rand(1, 3, 32, 32) * 255, torch.rand(1, 3, 32, 32), r"must lie in \[0, 1\]"),
        (torch.full((1, 3, 32, 32), float("nan")), torch.rand(1, 3, 32, 32), "NaN"),
        (torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32), "batch sizes 2 and 3"),
        (torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32), r"\(B, 3, H, W\)"),
        (torch.rand(1, 3, 32, 32).double(), torch.rand(1, 3, 32, 32), "LPIPS weights are"),
    ],
)
def test_bad_inputs_raise(models, x0, x1, match):
    with pytest.raises(ValueError, match=match):
        models["alex"](x0, x1)


def test_bad_settings_and_missing_files_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown LPIPS network"):
        LPIPS("squeezenet")
    with pytest.raises(ValueError, match="input_range"):
        LPIPS(input_range=(0, 255))
    with pytest.raises(FileNotFoundError, match=r"setup\.sh"):
        LPIPS(head_weights=tmp_path / "missing.pth")
    assert lpips_head_path("alexnet") == lpips_head_path("alex")
    torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"lin0\.model\.1\.weight has shape"):
        LPIPS(head_weights=tmp_path / "bad.pth")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(models, generator):
    x, y = torch.rand(2, 4, 3, 64, 64, generator=generator)
    with torch.no_grad():
        cpu = models["vgg"](x, y)
        gpu = LPIPS("vgg").cuda()(x.cuda(), y.cuda()).cpu()
    # cuDNN may pick TF32-free but differently ordered convolutions
    assert torch.allclose(cpu, gpu, atol=1e-5)
