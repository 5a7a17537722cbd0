"""Feature encoders: VGG16 against recorded NumPy references, DINOv2 loaders, the cheap encoder."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from worldsim.models.encoders import (
    DINOv2Encoder,
    DinoVisionTransformer,
    EncoderConfig,
    PooledColorEncoder,
    VGG16Encoder,
    build_encoder,
    feature_intrinsics,
    load_dinov2,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "vgg16" / "reference.npz"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.mark.parametrize("layer", ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"])
def test_vgg16_matches_numpy_reference(reference, layer):
    image = torch.from_numpy(reference["image"]).permute(2, 0, 1)[None].float() / 255
    encoder = VGG16Encoder(layer)
    features = encoder(image)[0]
    expected = torch.from_numpy(reference[layer])
    assert features.shape == expected.shape
    assert encoder.out_channels == expected.shape[0]
    assert encoder.stride == 32 // expected.shape[-1]
    # float32 sums of up to 4608 products against a float64 reference, activations up to ~100
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-5)


def test_vgg16_grid_size_for_sizes_not_divisible_by_stride():
    encoder = VGG16Encoder("relu3_3", weights=None, generator=torch.Generator().manual_seed(0))
    features = encoder(torch.rand(2, 3, 30, 37, generator=torch.Generator().manual_seed(1)))
    assert features.shape == (2, 256, 7, 9)
    assert encoder.feature_size(30, 37) == (7, 9)


def test_pooled_color_is_cell_mean_and_its_sinusoids():
    images = torch.rand(1, 3, 6, 9, generator=torch.Generator().manual_seed(0))
    encoder = PooledColorEncoder(stride=3, num_frequencies=2)
    features = encoder(images)
    assert features.shape == (1, 3 * 5, 2, 3)
    mean = images[0, :, 3:6, 6:9].mean(dim=(1, 2))  # cell (1, 2)
    expected = torch.cat(
        [
            mean,
            torch.sin(math.pi * mean),
            torch.cos(math.pi * mean),
            torch.sin(2 * math.pi * mean),
            torch.cos(2 * math.pi * mean),
        ]
    )
    # float32 averaging of nine values
    torch.testing.assert_close(features[0, :, 1, 2], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "uint8"),
        (torch.full((1, 3, 8, 8), 1.5), r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 4, 8, 8), "shape"),
        (torch.zeros(1, 3, 2, 8), "smaller than one feature cell"),
    ],
)
def test_encoders_reject_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        PooledColorEncoder(stride=4)(images)


def test_feature_intrinsics_scale_pixel_centres():
    k = torch.tensor([[100.0, 0, 32], [0, 90.0, 24], [0, 0, 1]])
    scaled = feature_intrinsics(k, 4)
    # The centre of cell (1, 2) (pixels 8..11 x 4..7, centre u = 10, v = 6) maps to (2.5, 1.5).
    assert torch.equal(scaled, torch.tensor([[25.0, 0, 8], [0, 22.5, 6], [0, 0, 1]]))


def test_encoder_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"EncoderConfig\.name"):
        EncoderConfig(name="resnet")
    with pytest.raises(ValueError, match=r"EncoderConfig\.layer"):
        EncoderConfig(layer="relu9")
    with pytest.raises(ValueError, match=r"EncoderConfig\.stride"):
        EncoderConfig(stride=0)
    assert isinstance(build_encoder("pooled_color"), PooledColorEncoder)
    assert build_encoder({"name": "vgg16", "layer": "relu2_2"}).stride == 2


# DINOv2 ------------------------------------------------------------------------------------


def tiny_vit(registers=0, swiglu=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = DinoVisionTransformer(
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_hidden=48,
        swiglu=swiglu,
        num_register_tokens=registers,
        pos_grid=3,
        interpolate_offset=0.0 if registers else 0.1,
        interpolate_antialias=bool(registers),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def reference_vit(state, pixels, patch, heads, registers, swiglu):
    """Slow, explicit DINOv2 forward at the native grid (no interpolation)."""
    b, _, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    patches = F.unfold(pixels, patch, stride=patch).transpose(1, 2)  # (B, N, 3*P*P)
    weight = state["patch_embed.proj.weight"].reshape(state["patch_embed.proj.weight"].shape[0], -1)
    x = patches @ weight.T + state["patch_embed.proj.bias"]
    x = torch.cat([state["cls_token"].expand(b, -1, -1), x], 1) + state["pos_embed"]
    if registers:
        x = torch.cat([x[:, :1], state["register_tokens"].expand(b, -1, -1), x[:, 1:]], 1)
    dim = x.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))

    def norm(v, prefix):
        return F.layer_norm(v, (dim,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-6)

    for i in range(depth):
        p = f"blocks.{i}."
        h = norm(x, p + "norm1")
        qkv = h @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]
        q, k, v = qkv.chunk(3, dim=-1)
        split = [t.reshape(b, -1, heads, dim // heads).transpose(1, 2) for t in (q, k, v)]
        scores = split[0] @ split[1].transpose(-1, -2) / math.sqrt(dim // heads)
        out = (scores.softmax(-1) @ split[2]).transpose(1, 2).reshape(b, -1, dim)
        out = out @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
        x = x + out * state[p + "ls1.gamma"]
        h = norm(x, p + "norm2")
        if swiglu:
            a = h @ state[p + "mlp.w12.weight"].T + state[p + "mlp.w12.bias"]
            gate, value = a.chunk(2, -1)
            h = (F.silu(gate) * value) @ state[p + "mlp.w3.weight"].T + state[p + "mlp.w3.bias"]
        else:
            h = F.gelu(h @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"])
            h = h @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"]
        x = x + h * state[p + "ls2.gamma"]
    x = norm(x, "norm")[:, 1 + registers :]
    return x.transpose(1, 2).reshape(b, dim, rows, cols)


@pytest.mark.parametrize(("registers", "swiglu"), [(0, False), (4, False), (0, True)])
def test_dinov2_official_pth_loads_and_matches_reference(tmp_path, registers, swiglu):
    state = tiny_vit(registers, swiglu).state_dict()
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(state, path)
    model = load_dinov2(path, num_heads=2)
    assert model.config.embed_dim == 32 and model.config.depth == 2
    assert model.config.num_register_tokens == registers and model.config.swiglu == swiglu
    pixels = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    expected = reference_vit(state, pixels, 4, 2, registers, swiglu)
    # float32, two blocks, different summation order from the fused SDPA kernel
    torch.testing.assert_close(model(pixels), expected, atol=1e-5, rtol=1e-4)


def official_to_hf(state):
    """The Hugging Face Dinov2Model key names, written out independently of the loader."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(2):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for param in ("weight", "bias"):
            q, k, v = state[src + f"attn.qkv.{param}"].chunk(3, dim=0)
            out[dst + f"attention.attention.query.{param}"] = q
            out[dst + f"attention.attention.key.{param}"] = k
            out[dst + f"attention.attention.value.{param}"] = v
            out[dst + f"attention.output.dense.{param}"] = state[src + f"attn.proj.{param}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[dst + f"{name}.{param}"] = state[src + f"{name}.{param}"]
        out[dst + "layer_scale1.lambda1"] = state[src + "ls1.gamma"]
        out[dst + "layer_scale2.lambda1"] = state[src + "ls2.gamma"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def test_dinov2_hugging_face_folder_gives_the_same_features(tmp_path):
    model = tiny_vit()
    folder = tmp_path / "dinov2-tiny-hf"
    folder.mkdir()
    save_file(official_to_hf(model.state_dict()), folder / "model.safetensors")
    config = {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "patch_size": 4,
    }
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_dinov2(folder)
    pixels = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(2))
    # same module, same weights: identical arithmetic
    torch.testing.assert_close(loaded(pixels), model(pixels), atol=0, rtol=0)


def test_dinov2_save_pretrained_round_trip_and_encoder_crop(tmp_path):
    model = tiny_vit()
    model.save_pretrained(tmp_path / "ours")
    encoder = DINOv2Encoder(tmp_path / "ours")
    # loaded tensors sit in fresh, 64-byte aligned memory: kernels take the same path as before
    assert all(t.data_ptr() % 64 == 0 for t in [*encoder.parameters(), *encoder.buffers()])
    assert (encoder.stride, encoder.out_channels) == (4, 32)
    images = torch.rand(1, 3, 14, 19, generator=torch.Generator().manual_seed(3))
    features = encoder(images)
    assert features.shape == (1, 32, 3, 4)
    cropped = (images[..., :12, :16] - IMAGENET_MEAN) / IMAGENET_STD
    # same module and weights; only the normalisation constants are rounded differently
    torch.testing.assert_close(features, model(cropped), atol=1e-5, rtol=1e-5)


def test_dinov2_position_embedding_interpolates_to_other_grids():
    model = tiny_vit()
    assert model.interpolate_pos_embed(3, 3) is model.pos_embed
    resized = model.interpolate_pos_embed(5, 2)
    assert resized.shape == (1, 1 + 10, 32)
    assert torch.equal(resized[:, :1], model.pos_embed[:, :1])
    assert model(torch.rand(1, 3, 20, 8)).shape == (1, 32, 5, 2)


def test_missing_dinov2_checkpoint_says_where_to_put_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dinov2_vits14_pretrain\.pth"):
        DINOv2Encoder(tmp_path / "nowhere.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a DINOv2"):
        load_dinov2(tmp_path / "bad.pth")
