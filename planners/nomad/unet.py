"""NoMaD's noise predictor: Diffusion Policy's 1-D conditional U-Net, and the distance head.

Residual Conv1d-GroupNorm-Mish blocks FiLM-conditioned on the observation context and a
sinusoidal diffusion-step embedding predict the noise added to a (B, L, 2) sequence of
normalised waypoint deltas; an MLP (:class:`DenseNetwork`) predicts the temporal distance to the
goal.
"""

from __future__ import annotations

import itertools
import math

import torch
from einops import rearrange
from torch import Tensor, nn


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
