"""NoMaD's observation encoder: EfficientNet-B0-style image encoders and a goal-masked transformer.

An EfficientNet-B0-style encoder (MBConv blocks with squeeze-excitation, GroupNorm in place of
BatchNorm as upstream, TensorFlow "same" padding) turns each context frame into one token, a
second one the current view stacked with the goal image; sinusoidal position embeddings are
added and a transformer encoder mixes the tokens, with the goal token masked out for rows
without a goal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

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
