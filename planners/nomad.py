"""A NoMaD-style goal-conditioned diffusion policy over future waypoints (Sridhar et al. 2023).

Architecture (module names follow the upstream ``visualnav-transformer`` code, so an upstream
state dict loads by :func:`load_upstream_state_dict`):

- ``vision_encoder``: an EfficientNet-B0-style encoder (MBConv blocks with squeeze-excitation,
  GroupNorm in place of BatchNorm as upstream, TensorFlow "same" padding) for each of the
  ``context_size + 1`` RGB context frames (the last one is the current view), and a second one
  for the current view stacked with the goal image (6 channels). Each gives one token of width
  ``encoding_size``; sinusoidal position embeddings are added and a transformer encoder
  (``nn.TransformerEncoder``, pre-norm, GELU) mixes the ``context_size + 2`` tokens. **Goal
  masking**: with ``goal_mask`` true for a row, the goal token is hidden from attention and left
  out of the average, so the same policy explores without a goal. The tokens' (masked) average is
  the observation context, (B, D).
- ``noise_pred_net``: a 1-D conditional U-Net (Diffusion Policy's): residual Conv1d-GroupNorm-Mish
  blocks FiLM-conditioned on the context and a sinusoidal diffusion-step embedding, predicting
  the noise added to a (B, L, 2) sequence of normalised waypoint deltas.
- ``dist_pred_net``: an MLP predicting the temporal distance (in frames) from the current view to
  the goal.

Sampling uses a diffusers ``DDPMScheduler`` with ``num_diffusion_iters`` (10) steps
(:func:`make_scheduler`, :func:`sample_waypoints`).

Waypoints and their normalisation, as NoMaD defines it. The policy predicts ``L`` future
positions in the current camera's floor frame, NoMaD's axes: ``x`` forward, ``y`` left (so
``x = dz`` and ``y = -dx`` of :mod:`worldsim.geometry`'s local waypoints), in units of
``metric_waypoint_spacing`` metres (the distance between consecutive waypoints, one forward step
by default). The diffusion model works on the *deltas* between consecutive positions (the first
from the origin), each mapped to [-1, 1] with the fixed ``action_stats`` box
``[min, max] = [(-2.5, -4), (5, 4)]``: ``n = 2 (d - min) / (max - min) - 1``. Positions are the
cumulative sum of the unnormalised deltas (:func:`normalize_waypoints`,
:func:`unnormalize_deltas`).

Images enter in [0, 1] and are resized to ``image_size`` and ImageNet-normalised inside the model
(as upstream's data transform does).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from einops import rearrange
from torch import Tensor, nn

from worldsim.geometry import Action, ActionSpec, relative_pose
from worldsim.pretrained import ModelMixin, check_pretrained_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet channel means, the normalisation upstream NoMaD trains with."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet channel standard deviations."""
ACTION_STATS_MIN = (-2.5, -4.0)
"""NoMaD's lower bounds of normalised waypoint deltas (forward, left), waypoint spacings."""
ACTION_STATS_MAX = (5.0, 4.0)
"""NoMaD's upper bounds of normalised waypoint deltas (forward, left), waypoint spacings."""

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, input filters, output filters).
_B0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_B0_STEM, _B0_HEAD, _SE_RATIO = 32, 1280, 0.25


POLICY_PRESETS: dict[str, dict] = {
    "tiny": dict(
        image_size=(32, 32),
        context_size=1,
        encoding_size=32,
        width_coefficient=0.25,
        depth_coefficient=0.34,
        attention_heads=2,
        attention_layers=1,
        len_traj_pred=4,
        down_dims=(16, 32),
        step_embed_dim=16,
        unet_groups=4,
    ),
    "small": dict(
        image_size=(64, 64),
        context_size=3,
        encoding_size=128,
        width_coefficient=0.5,
        depth_coefficient=0.5,
        attention_heads=4,
        attention_layers=2,
        len_traj_pred=8,
        down_dims=(32, 64, 128),
        step_embed_dim=64,
    ),
    "upstream": {},
}
"""Keyword arguments of :class:`NoMaDPolicy` by size: ``tiny`` (tests), ``small`` (trains on a
CPU), ``upstream`` (NoMaD's own settings, the defaults)."""

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "nomad_small"
"""The embedded policy: the ``small`` preset trained by ``examples/train_nomad.py`` on the
embedded simulator's training houses (its ``README.md`` is the model card)."""


# ================================================================================= encoder
def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """EfficientNet's channel scaling: ``filters * width`` rounded to a multiple of ``divisor``."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10 %
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """EfficientNet's depth scaling: ``ceil(repeats * depth)``."""
    return math.ceil(depth_coefficient * repeats)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of 16 channels per group as upstream (fewer groups if 16 does not divide)."""
    groups = max(1, channels // 16)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (output size ``ceil(input / stride)``).

    The padding is computed from the input size, the extra pixel going right and bottom; for
    inputs divisible by 32 this equals upstream EfficientNet's static padding.
    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        height, width = x.shape[-2:]
        pads = []
        for size, kernel, stride, dilation in zip(
            (width, height),
            self.kernel_size[::-1],
            self.stride[::-1],
            self.dilation[::-1],
            strict=True,
        ):
            total = max(
                (math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0
            )
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (EfficientNet's block).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        expand_ratio: channel expansion of the inner layers.
        drop_connect: probability of dropping the residual branch in training (stochastic
            depth).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_connect: float,
    ) -> None:
        super().__init__()
        inner = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, inner, 1, bias=False)
            self._bn0 = _group_norm(inner)
        self._depthwise_conv = SameConv2d(
            inner, inner, kernel_size, stride=stride, groups=inner, bias=False
        )
        self._bn1 = _group_norm(inner)
        squeezed = max(1, int(in_channels * _SE_RATIO))
        self._se_reduce = SameConv2d(inner, squeezed, 1)
        self._se_expand = SameConv2d(squeezed, inner, 1)
        self._project_conv = SameConv2d(inner, out_channels, 1, bias=False)
        self._bn2 = _group_norm(out_channels)
        self.skip = stride == 1 and in_channels == out_channels
        self.drop_connect = drop_connect

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        y = F.silu(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.silu(self._bn1(self._depthwise_conv(y)))
        squeeze = F.silu(self._se_reduce(F.adaptive_avg_pool2d(y, 1)))  # (B, S, 1, 1)
        y = torch.sigmoid(self._se_expand(squeeze)) * y
        y = self._bn2(self._project_conv(y))
        if not self.skip:
            return y
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
            y = y * mask / keep
        return y + x


class EfficientNetEncoder(nn.Module):
    """EfficientNet-B0-style image encoder with GroupNorm, configurable width and depth.

    Args:
        in_channels: input channels (3 for an image, 6 for an image pair).
        width_coefficient: channel multiplier (1.0 = B0).
        depth_coefficient: block-repeat multiplier (1.0 = B0).
        drop_connect_rate: stochastic-depth rate of the last block (linear in block index).

    Attributes:
        out_channels: channels of the pooled feature.
    """

    def __init__(
        self,
        in_channels: int,
        width_coefficient: float = 1.0,
        depth_coefficient: float = 1.0,
        drop_connect_rate: float = 0.2,
    ) -> None:
        super().__init__()
        stem = round_filters(_B0_STEM, width_coefficient)
        self._conv_stem = SameConv2d(in_channels, stem, 3, stride=2, bias=False)
        self._bn0 = _group_norm(stem)
        specs = []
        for repeats, kernel, stride, expand, filters_in, filters_out in _B0_STAGES:
            channels_in = round_filters(filters_in, width_coefficient)
            channels_out = round_filters(filters_out, width_coefficient)
            for index in range(round_repeats(repeats, depth_coefficient)):
                first = index == 0
                specs.append(
                    (
                        channels_in if first else channels_out,
                        channels_out,
                        kernel,
                        stride if first else 1,
                        expand,
                    )
                )
        self._blocks = nn.ModuleList(
            MBConvBlock(*spec, drop_connect=drop_connect_rate * i / len(specs))
            for i, spec in enumerate(specs)
        )
        self.out_channels = round_filters(_B0_HEAD, width_coefficient)
        self._conv_head = SameConv2d(specs[-1][1], self.out_channels, 1, bias=False)
        self._bn1 = _group_norm(self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) images -> (B, out_channels) average-pooled features."""
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.silu(self._bn1(self._conv_head(x)))
        return x.mean(dim=(-2, -1))


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal position embeddings added to a token sequence (as upstream ViNT)."""

    def __init__(self, width: int, max_tokens: int) -> None:
        super().__init__()
        position = torch.arange(max_tokens, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, width, 2).float() * (-math.log(10000.0) / width))
        table = torch.zeros(max_tokens, width)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: width // 2])
        self.register_buffer("pos_enc", table[None])  # (1, N, D)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D) with the embeddings of positions 0..N-1 added."""
        return tokens + self.pos_enc[:, : tokens.shape[1]]


class NoMaDEncoder(nn.Module):
    """Context frames + (current view, goal) -> one goal-maskable observation context.

    Args:
        context_size: past frames besides the current view.
        encoding_size: token width D.
        width_coefficient: EfficientNet channel multiplier.
        depth_coefficient: EfficientNet depth multiplier.
        attention_heads: heads of the transformer.
        attention_layers: layers of the transformer.
        ff_dim_factor: feed-forward width as a multiple of D.
        dropout: dropout of the transformer layers.
    """

    def __init__(
        self,
        context_size: int,
        encoding_size: int,
        width_coefficient: float,
        depth_coefficient: float,
        attention_heads: int,
        attention_layers: int,
        ff_dim_factor: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.context_size = context_size
        self.obs_encoder = EfficientNetEncoder(3, width_coefficient, depth_coefficient)
        self.goal_encoder = EfficientNetEncoder(6, width_coefficient, depth_coefficient)
        self.compress_obs_enc = nn.Linear(self.obs_encoder.out_channels, encoding_size)
        self.compress_goal_enc = nn.Linear(self.goal_encoder.out_channels, encoding_size)
        self.positional_encoding = PositionalEncoding(encoding_size, context_size + 2)
        layer = nn.TransformerEncoderLayer(
            d_model=encoding_size,
            nhead=attention_heads,
            dim_feedforward=ff_dim_factor * encoding_size,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.sa_encoder = nn.TransformerEncoder(
            layer, num_layers=attention_layers, enable_nested_tensor=False
        )

    def forward(self, context: Tensor, goal: Tensor, goal_mask: Tensor) -> Tensor:
        """Encode normalised images.

        Args:
            context: (B, T, 3, H, W) normalised frames, T = context_size + 1, current last.
            goal: (B, 3, H, W) normalised goal images.
            goal_mask: (B,) bool, true where the goal is hidden.

        Returns:
            (B, D) observation context.
        """
        batch, frames = context.shape[:2]
        flat = rearrange(context, "b t c h w -> (b t) c h w")
        obs_tokens = self.compress_obs_enc(self.obs_encoder(flat))  # (B*T, D)
        obs_tokens = rearrange(obs_tokens, "(b t) d -> b t d", b=batch)
        pair = torch.cat([context[:, -1], goal], dim=1)  # (B, 6, H, W)
        goal_token = self.compress_goal_enc(self.goal_encoder(pair))[:, None]  # (B, 1, D)
        tokens = self.positional_encoding(torch.cat([obs_tokens, goal_token], dim=1))
        padding = torch.zeros(batch, frames + 1, dtype=torch.bool, device=context.device)
        padding[:, -1] = goal_mask
        tokens = self.sa_encoder(tokens, src_key_padding_mask=padding)  # (B, T + 1, D)
        keep = (~padding).to(tokens.dtype)[..., None]  # (B, T + 1, 1)
        return (tokens * keep).sum(dim=1) / keep.sum(dim=1)


# ================================================================================= U-Net
class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of diffusion steps, (B,) -> (B, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, steps: Tensor) -> Tensor:  # noqa: D102
        half = self.dim // 2
        frequency = torch.exp(
            torch.arange(half, device=steps.device) * (-math.log(10000.0) / (half - 1))
        )
        angles = steps.float()[:, None] * frequency[None]  # (B, half)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.block(x)


class Downsample1d(nn.Module):
    """Halve a sequence's length with a strided Conv1d, (B, C, L) -> (B, C, L / 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.conv(x)


class Upsample1d(nn.Module):
    """Double a sequence's length with a ConvTranspose1d, (B, C, L) -> (B, C, 2 L)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(channels, channels, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.conv(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1d blocks with FiLM conditioning in between and a residual connection.

    With ``predict_scale`` the condition gives a per-channel scale and bias
    (``scale * h + bias``), otherwise a bias only (``h + bias``), as NoMaD's default.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int,
        groups: int,
        predict_scale: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, groups),
            ]
        )
        self.predict_scale = predict_scale
        self.out_channels = out_channels
        film = out_channels * 2 if predict_scale else out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film))
        self.residual_conv = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """(B, C_in, L), (B, cond_dim) -> (B, C_out, L)."""
        out = self.blocks[0](x)
        film = self.cond_encoder(cond)[..., None]  # (B, C or 2C, 1)
        if self.predict_scale:
            scale, bias = film.chunk(2, dim=1)
            out = scale * out + bias
        else:
            out = out + film
        return self.blocks[1](out) + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's 1-D U-Net noise predictor over waypoint sequences.

    Args:
        input_dim: per-step values (2 for (forward, left) deltas).
        global_cond_dim: width of the observation context.
        step_embed_dim: width of the diffusion-step embedding.
        down_dims: channels of the resolution levels; all but the last halve the length.
        kernel_size: Conv1d kernel size.
        groups: GroupNorm groups.
        predict_scale: FiLM with scale and bias (else bias only).
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        step_embed_dim: int,
        down_dims: tuple[int, ...],
        kernel_size: int,
        groups: int,
        predict_scale: bool,
    ) -> None:
        super().__init__()
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(step_embed_dim),
            nn.Linear(step_embed_dim, step_embed_dim * 4),
            nn.Mish(),
            nn.Linear(step_embed_dim * 4, step_embed_dim),
        )
        cond_dim = step_embed_dim + global_cond_dim
        dims = [input_dim, *down_dims]
        pairs = list(itertools.pairwise(dims))

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                c_in, c_out, cond_dim, kernel_size, groups, predict_scale
            )

        self.down_modules = nn.ModuleList(
            nn.ModuleList(
                [
                    block(c_in, c_out),
                    block(c_out, c_out),
                    Downsample1d(c_out) if i < len(pairs) - 1 else nn.Identity(),
                ]
            )
            for i, (c_in, c_out) in enumerate(pairs)
        )
        self.mid_modules = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        self.up_modules = nn.ModuleList(
            nn.ModuleList(
                [
                    block(c_out * 2, c_in),
                    block(c_in, c_in),
                    Upsample1d(c_in),
                ]
            )
            for c_in, c_out in reversed(pairs[1:])
        )
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, groups),
            nn.Conv1d(down_dims[0], input_dim, 1),
        )

    def forward(self, sample: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        """Predict the noise of noisy sequences.

        Args:
            sample: (B, L, input_dim) noisy sequences; L divisible by ``2 ** (levels - 1)``.
            timestep: (B,) diffusion steps.
            global_cond: (B, global_cond_dim) observation context.

        Returns:
            (B, L, input_dim) predicted noise.
        """
        x = rearrange(sample, "b l c -> b c l")
        cond = torch.cat([self.diffusion_step_encoder(timestep), global_cond], dim=-1)
        skips = []
        for res_a, res_b, down in self.down_modules:
            x = res_b(res_a(x, cond), cond)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, cond)
        for res_a, res_b, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2C, L')
            x = up(res_b(res_a(x, cond), cond))
        return rearrange(self.final_conv(x), "b c l -> b l c")


class DenseNetwork(nn.Module):
    """Temporal-distance head: D -> D/4 -> D/16 -> 1 with ReLUs."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(width, width // 4),
            nn.ReLU(),
            nn.Linear(width // 4, width // 16),
            nn.ReLU(),
            nn.Linear(width // 16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> (B,) predicted distance in frames."""
        return self.network(x)[:, 0]


# ================================================================================= policy
class NoMaDPolicy(ModelMixin, ConfigMixin):
    """Goal-conditioned diffusion policy over future waypoints (see the module docstring).

    Args:
        image_size: ``(H, W)`` the images are resized to, pixels (upstream: 96 x 96).
        context_size: past frames besides the current view (upstream: 3).
        encoding_size: token and context width D (upstream: 256).
        width_coefficient: EfficientNet channel multiplier (1.0 = B0).
        depth_coefficient: EfficientNet depth multiplier (1.0 = B0).
        attention_heads: transformer heads (upstream: 4).
        attention_layers: transformer layers (upstream: 4).
        ff_dim_factor: transformer feed-forward width / D (upstream: 4).
        dropout: transformer dropout.
        len_traj_pred: predicted waypoints L (upstream: 8); divisible by
            ``2 ** (len(down_dims) - 1)``.
        down_dims: U-Net channels per level (upstream: (64, 128, 256)).
        step_embed_dim: U-Net diffusion-step embedding width (upstream: 256).
        kernel_size: U-Net kernel size (upstream: 5).
        unet_groups: U-Net GroupNorm groups (upstream: 8), dividing every ``down_dims`` entry.
        cond_predict_scale: FiLM with scale and bias (upstream: False, bias only).
        num_diffusion_iters: DDPM steps for training and sampling (upstream: 10).
        metric_waypoint_spacing: metres per waypoint unit (one forward step: 0.25).
    """

    @register_to_config
    def __init__(
        self,
        image_size: tuple[int, int] = (96, 96),
        context_size: int = 3,
        encoding_size: int = 256,
        width_coefficient: float = 1.0,
        depth_coefficient: float = 1.0,
        attention_heads: int = 4,
        attention_layers: int = 4,
        ff_dim_factor: int = 4,
        dropout: float = 0.1,
        len_traj_pred: int = 8,
        down_dims: tuple[int, ...] = (64, 128, 256),
        step_embed_dim: int = 256,
        kernel_size: int = 5,
        unet_groups: int = 8,
        cond_predict_scale: bool = False,
        num_diffusion_iters: int = 10,
        metric_waypoint_spacing: float = 0.25,
    ) -> None:
        super().__init__()
        if len(image_size) != 2 or min(image_size) < 8:
            raise ValueError(f"image_size must be (H, W) of at least 8 pixels, got {image_size}")
        if context_size < 0:
            raise ValueError(f"context_size must be >= 0, got {context_size}")
        if encoding_size < 16 or encoding_size % attention_heads:
            raise ValueError(
                f"encoding_size must be >= 16 and divisible by attention_heads = "
                f"{attention_heads}, got {encoding_size}"
            )
        if not down_dims or len_traj_pred < 1 or len_traj_pred % 2 ** (len(down_dims) - 1):
            raise ValueError(
                f"len_traj_pred must be a positive multiple of 2 ** (len(down_dims) - 1) = "
                f"{2 ** (len(down_dims) - 1)}, got {len_traj_pred}"
            )
        if any(d % unet_groups for d in down_dims):
            raise ValueError(f"unet_groups = {unet_groups} must divide every down_dims {down_dims}")
        if num_diffusion_iters < 1:
            raise ValueError(f"num_diffusion_iters must be >= 1, got {num_diffusion_iters}")
        if not metric_waypoint_spacing > 0:
            raise ValueError(
                f"metric_waypoint_spacing must be > 0 m, got {metric_waypoint_spacing}"
            )
        self.vision_encoder = NoMaDEncoder(
            context_size,
            encoding_size,
            width_coefficient,
            depth_coefficient,
            attention_heads,
            attention_layers,
            ff_dim_factor,
            dropout,
        )
        self.noise_pred_net = ConditionalUnet1D(
            2,
            encoding_size,
            step_embed_dim,
            tuple(down_dims),
            kernel_size,
            unet_groups,
            cond_predict_scale,
        )
        self.dist_pred_net = DenseNetwork(encoding_size)
        self.register_buffer(
            "image_mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False
        )
        self.register_buffer(
            "image_std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False
        )

    def _prepare(self, images: Tensor, name: str) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> resized, ImageNet-normalised."""
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"{name} must be float (N, 3, H, W) in [0, 1], got {tuple(images.shape)}"
            )
        if not torch.isfinite(images).all():
            raise ValueError(f"{name} contain NaN or infinite values")
        size = tuple(self.config.image_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return (images - self.image_mean) / self.image_std

    def encode(
        self, context: Tensor, goal: Tensor | None = None, goal_mask: Tensor | None = None
    ) -> Tensor:
        """The observation context of context frames and (optionally) a goal image.

        Args:
            context: (B, T, 3, H, W) RGB in [0, 1], T = ``context_size + 1``, current view last.
            goal: (B, 3, H, W) goal RGB in [0, 1], or ``None`` to explore (goal masked).
            goal_mask: (B,) bool, true to hide the goal of a row; ``None`` = all false when a
                goal is given.

        Returns:
            (B, D) context.

        Raises:
            ValueError: for wrong shapes, NaN, or a goal mask that reveals a missing goal.
        """
        expected = self.config.context_size + 1
        if context.dim() != 5 or context.shape[1] != expected:
            raise ValueError(
                f"context must be (B, {expected}, 3, H, W) (context_size + 1 frames, current "
                f"last), got {tuple(context.shape)}"
            )
        batch = context.shape[0]
        frames = self._prepare(rearrange(context, "b t c h w -> (b t) c h w"), "context frames")
        frames = rearrange(frames, "(b t) c h w -> b t c h w", b=batch)
        if goal is None:
            if goal_mask is not None and not goal_mask.all():
                raise ValueError("goal_mask reveals a goal for some rows but no goal was given")
            goal_images = frames[:, -1]  # placeholder, never attended to
            goal_mask = torch.ones(batch, dtype=torch.bool, device=context.device)
        else:
            if goal.shape[0] != batch:
                raise ValueError(f"goal has {goal.shape[0]} rows, the context {batch}")
            goal_images = self._prepare(goal, "goal images")
            if goal_mask is None:
                goal_mask = torch.zeros(batch, dtype=torch.bool, device=context.device)
        if goal_mask.shape != (batch,):
            raise ValueError(f"goal_mask must be ({batch},) bool, got {tuple(goal_mask.shape)}")
        return self.vision_encoder(frames, goal_images, goal_mask.to(context.device))

    def predict_noise(self, noisy: Tensor, timestep: Tensor, condition: Tensor) -> Tensor:
        """(B, L, 2) noisy normalised deltas, (B,) steps, (B, D) context -> (B, L, 2) noise."""
        return self.noise_pred_net(noisy, timestep, condition)

    def predict_distance(self, condition: Tensor) -> Tensor:
        """(B, D) context -> (B,) predicted temporal distance to the goal, frames."""
        return self.dist_pred_net(condition)

    def forward(self, noisy: Tensor, timestep: Tensor, condition: Tensor) -> Tensor:
        """Alias of :meth:`predict_noise` (the denoiser call)."""
        return self.predict_noise(noisy, timestep, condition)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs: Any
    ) -> NoMaDPolicy:
        """Load a policy saved with ``save_pretrained`` from a local folder.

        Args:
            pretrained_model_name_or_path: the folder; ``None`` loads the embedded policy
                (:data:`DEFAULT_CHECKPOINT`). An upstream ``nomad.pth`` is not a folder: build
                ``NoMaDPolicy()`` and use :func:`load_upstream_state_dict`.
            **kwargs: passed to diffusers' ``ModelMixin.from_pretrained``.

        Returns:
            The policy, in eval mode.

        Raises:
            FileNotFoundError: if the folder or its ``config.json`` is missing.
            ValueError: if the folder holds another kind of model.
        """
        folder = Path(pretrained_model_name_or_path or DEFAULT_CHECKPOINT)
        if folder.is_file():
            hint = (
                "a single file is an upstream checkpoint: build NoMaDPolicy() and call "
                "planners.nomad.load_upstream_state_dict(policy, path)"
            )
        elif pretrained_model_name_or_path is None:
            hint = (
                "the embedded policy is not installed; train one with examples/train_nomad.py "
                "and pass its folder"
            )
        else:
            hint = "expected a folder written by NoMaDPolicy.save_pretrained"
        check_pretrained_folder(folder, cls.__name__, "NoMaD policy", hint)
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(folder, **kwargs)


UNTRAINED = "untrained"
"""Policy name of a freshly initialised policy of a preset, for smoke tests."""


def load_policy(
    policy: str | os.PathLike | None = None,
    preset: str = "small",
    image_size: int | None = None,
    device: str | torch.device | None = None,
) -> NoMaDPolicy:
    """The policy of a planning example, in eval mode.

    Args:
        policy: a ``save_pretrained`` folder; ``None``: the embedded policy
            (:data:`DEFAULT_CHECKPOINT`); :data:`UNTRAINED`: an untrained ``preset`` policy.
        preset: a :data:`POLICY_PRESETS` name, for :data:`UNTRAINED` only.
        image_size: square image size of an untrained policy; ``None``: the preset's.
        device: where to put the policy.

    Raises:
        ValueError: for an unknown preset.
    """
    if str(policy) == UNTRAINED:
        if preset not in POLICY_PRESETS:
            raise ValueError(f"unknown policy preset {preset!r}; one of {sorted(POLICY_PRESETS)}")
        settings = dict(POLICY_PRESETS[preset])
        if image_size is not None:
            settings["image_size"] = (image_size, image_size)
        model = NoMaDPolicy(**settings)
    else:
        model = NoMaDPolicy.from_pretrained(policy)
    if device is not None:
        model = model.to(device)
    return model.eval()


def make_scheduler(policy: NoMaDPolicy) -> DDPMScheduler:
    """NoMaD's noise schedule: DDPM, squared-cosine betas, clipped samples, epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=policy.config.num_diffusion_iters,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        prediction_type="epsilon",
    )


# ================================================================================= waypoints
def _stats(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    low = torch.tensor(ACTION_STATS_MIN, device=device, dtype=dtype)
    high = torch.tensor(ACTION_STATS_MAX, device=device, dtype=dtype)
    return low, high


def normalize_waypoints(positions: Tensor, spacing: float) -> Tensor:
    """Metric waypoint positions -> the normalised deltas the diffusion model works on.

    Args:
        positions: (..., L, 2) positions ``(forward, left)`` in metres in the current frame.
        spacing: metres per waypoint unit (``metric_waypoint_spacing``).

    Returns:
        (..., L, 2) deltas in [-1, 1] inside the ``action_stats`` box (outside it they exceed
        [-1, 1]; the scheduler's sample clipping bounds what the model can produce).
    """
    units = positions / spacing
    deltas = torch.diff(units, dim=-2, prepend=torch.zeros_like(units[..., :1, :]))
    low, high = _stats(positions.device, positions.dtype)
    return 2.0 * (deltas - low) / (high - low) - 1.0


def unnormalize_deltas(normalized: Tensor, spacing: float) -> Tensor:
    """Inverse of :func:`normalize_waypoints`: (..., L, 2) deltas -> (..., L, 2) metres."""
    low, high = _stats(normalized.device, normalized.dtype)
    deltas = (normalized + 1.0) / 2.0 * (high - low) + low
    return torch.cumsum(deltas, dim=-2) * spacing


def future_positions(cam_to_world: Tensor, current: int, count: int) -> Tensor:
    """Positions of the next frames in the current frame's floor plane, NoMaD axes.

    Args:
        cam_to_world: (B, T, 4, 4) camera poses of consecutive frames.
        current: index of the current frame.
        count: L, future frames ``current + 1 .. current + L`` (must exist).

    Returns:
        (B, L, 2) ``(forward, left)`` metres.
    """
    if current + count >= cam_to_world.shape[1]:
        raise ValueError(
            f"need frames up to {current + count}, the trajectory has {cam_to_world.shape[1]}"
        )
    reference = cam_to_world[:, current : current + 1].double()
    future = cam_to_world[:, current + 1 : current + 1 + count].double()
    local = relative_pose(reference, future)[..., :3, 3]  # (B, L, 3) camera x right, z fwd
    return torch.stack([local[..., 2], -local[..., 0]], dim=-1).to(cam_to_world.dtype)


def waypoints_to_actions(positions: Tensor, spec: ActionSpec | None = None) -> Tensor:
    """Discrete simulator actions that follow waypoints (turn towards each, then walk to it).

    For each waypoint in turn: if it lies at least half a forward step from where the agent
    will be, turn towards it (the heading change rounded to whole turn steps, the shorter way
    round) and move forward ``round(distance / forward_step)`` times; the agent's assumed pose
    follows these discrete moves (free space), so rounding errors do not accumulate. Waypoints
    closer than half a step are skipped.

    Args:
        positions: (L, 2) ``(forward, left)`` metres in the current frame (NoMaD axes).
        spec: step sizes; the default :class:`ActionSpec` if ``None``.

    Returns:
        (S,) int64 ids of ``move_forward`` / ``turn_left`` / ``turn_right`` (possibly empty).
    """
    spec = spec or ActionSpec()
    if positions.dim() != 2 or positions.shape[1] != 2 or not torch.isfinite(positions).all():
        raise ValueError(
            f"positions must be finite (L, 2) (forward, left), got {tuple(positions.shape)}"
        )
    x, y, heading = 0.0, 0.0, 0.0
    actions: list[int] = []
    for forward, left in positions.double().tolist():
        dx, dy = forward - x, left - y
        distance = math.hypot(dx, dy)
        if distance < spec.forward_step_m / 2:
            continue
        turn = math.remainder(math.atan2(dy, dx) - heading, 2 * math.pi)
        turns = round(turn / spec.turn_step_rad)
        actions += [Action.TURN_LEFT if turns > 0 else Action.TURN_RIGHT] * abs(turns)
        heading += turns * spec.turn_step_rad
        moves = round(distance / spec.forward_step_m)
        actions += [Action.MOVE_FORWARD] * moves
        x += moves * spec.forward_step_m * math.cos(heading)
        y += moves * spec.forward_step_m * math.sin(heading)
    return torch.tensor([int(a) for a in actions], dtype=torch.int64)


def waypoints_to_local(positions: Tensor) -> Tensor:
    """Waypoint positions -> the rollout interface's local waypoints ``(dx, dz, dyaw)``.

    Each step moves straight to the next position and turns to face along that move (a step
    shorter than 1 mm keeps the heading).

    Args:
        positions: (..., L, 2) ``(forward, left)`` metres in the current frame.

    Returns:
        (..., L, 3) per-step ``(dx right, dz forward, dyaw left)`` in the agent's frame at the
        start of each step (:mod:`worldsim.geometry`).
    """
    deltas = torch.diff(positions, dim=-2, prepend=torch.zeros_like(positions[..., :1, :]))
    moving = deltas.norm(dim=-1) > 1e-3
    direction = torch.atan2(deltas[..., 1], deltas[..., 0])  # heading of each move, left +
    out = torch.zeros(*positions.shape[:-1], 3, dtype=positions.dtype, device=positions.device)
    current = torch.zeros_like(direction[..., 0])
    for step in range(positions.shape[-2]):
        target = torch.where(moving[..., step], direction[..., step], current)
        c, s = torch.cos(current), torch.sin(current)
        forward = c * deltas[..., step, 0] + s * deltas[..., step, 1]  # into the agent frame
        left = -s * deltas[..., step, 0] + c * deltas[..., step, 1]
        turn = torch.remainder(target - current + math.pi, 2 * math.pi) - math.pi
        out[..., step, 0], out[..., step, 1], out[..., step, 2] = -left, forward, turn
        current = current + turn
    return out


@torch.no_grad()
def sample_waypoints(
    policy: NoMaDPolicy,
    scheduler: DDPMScheduler,
    context: Tensor,
    goal: Tensor | None,
    num_samples: int,
    generator: torch.Generator,
) -> Tensor:
    """Sample waypoint trajectories from the policy by DDPM.

    Args:
        policy: the policy.
        scheduler: its noise schedule (:func:`make_scheduler`).
        context: (B, T, 3, H, W) RGB in [0, 1], T = ``context_size + 1``.
        goal: (B, 3, H, W) goal RGB in [0, 1], or ``None`` to explore.
        num_samples: K trajectories per row.
        generator: random source of the initial noise and the DDPM steps.

    Returns:
        (B, K, L, 2) positions ``(forward, left)`` in metres in each row's current frame.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch = context.shape[0]
    condition = policy.encode(context, goal)  # (B, D)
    condition = condition.repeat_interleave(num_samples, dim=0)  # (B*K, D)
    length = policy.config.len_traj_pred
    sample = torch.randn(
        batch * num_samples,
        length,
        2,
        generator=generator,
        device=condition.device,
        dtype=condition.dtype,
    )
    scheduler.set_timesteps(policy.config.num_diffusion_iters)
    for t in scheduler.timesteps:
        steps = torch.full((sample.shape[0],), int(t), device=sample.device, dtype=torch.int64)
        noise = policy.predict_noise(sample, steps, condition)
        sample = scheduler.step(noise, t, sample, generator=generator).prev_sample
    positions = unnormalize_deltas(sample, policy.config.metric_waypoint_spacing)
    return positions.reshape(batch, num_samples, length, 2)  # (B, K, L, 2)


# ================================================================================= upstream
UPSTREAM_IGNORED_SUFFIXES = ("_fc.weight", "_fc.bias")
"""Keys of upstream checkpoints that NoMaD never uses (EfficientNet's ImageNet classifier)."""


def load_upstream_state_dict(
    policy: NoMaDPolicy, path: str | Path, map_location: str | torch.device = "cpu"
) -> None:
    """Load an upstream NoMaD checkpoint (``nomad.pth`` of ``visualnav-transformer``) in place.

    The upstream file is a state dict of ``NoMaD(vision_encoder, noise_pred_net,
    dist_pred_net)`` (optionally wrapped as ``{"model": state_dict}`` or saved from
    ``nn.DataParallel`` with a ``module.`` prefix). The EfficientNet classifier (``_fc``) is
    dropped; the U-Net's ``cond_encoder`` Rearrange layer has no parameters, so the Linear keeps
    index 1 in both. Build the policy with the upstream settings (``NoMaDPolicy()`` defaults:
    96 x 96, context 3, width 256, 4 heads, 4 layers, B0) so the architecture matches.

    Args:
        policy: the policy to fill.
        path: local path of the checkpoint.
        map_location: device the file is read to.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a state dict, or keys are missing / unexpected / of the
            wrong shape (the message lists them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NoMaD checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    mapped = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.endswith(UPSTREAM_IGNORED_SUFFIXES):
            continue
        mapped[key] = value
    own = policy.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(mapped)
        if mapped[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match this NoMaDPolicy's architecture ({policy.config}):\n"
            f"missing keys ({len(missing)}): {missing[:20]}\n"
            f"unexpected keys ({len(unexpected)}): {unexpected[:20]}\n"
            f"shape mismatches ({len(wrong)}): {wrong[:20]}"
        )
    policy.load_state_dict(mapped, strict=True)
