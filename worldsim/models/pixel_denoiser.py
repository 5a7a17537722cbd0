"""A pixel-space EDM denoiser of one future RGB-D frame, conditioned on the map's render.

The latent world model (:mod:`worldsim.models.world_model`) cannot hold detail at 64x64: its VAE
reconstructs at 24.8 dB. This model generates in pixel space instead, as DIAMOND does: a
diffusers ``UNet2DModel`` under the preconditioning of Karras et al. 2022 (EDM), generating
**one** future frame's RGB-D per row. A chunk of F frames is F rows of one batch.

Pixels
    4 channels in ``[-1, 1]``: RGB ``2 * rgb - 1`` and depth ``2 * depth / max_depth_m - 1``
    (clamped; 0 m, the sensor's no-hit, reads -1). :meth:`PixelDenoiser.to_pixels` and
    :meth:`PixelDenoiser.from_pixels` convert.

Conditioning, concatenated to the noisy frame as channels (:meth:`PixelDenoiser.conditions`)
    - the ``n_context`` last frames, RGB-D pixels (``4 * n_context`` channels);
    - the map's render at this camera: RGB-D pixels where it covers (0 elsewhere), its coverage
      mask, and its freshness ``exp(-age / age_scale_frames)`` (0 where it does not cover);
    - the *prefill*: the render's holes filled classically (:mod:`worldsim.memory.fills`, method
      ``prefill``); where the render covers nothing at all, the last context frame;
    - the Plücker rays of this camera in the frame of the last context camera (6 channels,
      :func:`worldsim.geometry.plucker_rays`).

EDM preconditioning (Karras et al. 2022, Table 1)
    ``D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))`` with ``c_skip = sd^2 / (s^2 +
    sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = ln(s)
    / 4`` and ``sd = sigma_data``. With ``residual=True`` the diffusion runs on the difference
    from the prefill: ``D(x; s) = p + c_skip (x - p) + c_out F(c_in (x - p), ...)`` for prefill
    ``p``, so the network learns what the classical fill gets wrong. The noise level enters the
    U-Net's sinusoidal timestep embedding as ``TIME_SCALE * c_noise``.

Sampling (:func:`sample_frames`) is a separate function with its own settings
(:class:`EDMSamplerConfig`: steps, noise range, Euler or Heun), as diffusers keeps schedulers
apart from models: nothing about sampling is saved in the model's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from torch import Tensor

from worldsim.geometry import DEFAULT_MAX_DEPTH_M, plucker_rays
from worldsim.memory.fills import FILLS, fill_holes
from worldsim.models.pretrained import ModelMixin, read_config

TIME_SCALE = 1000.0
"""``c_noise`` is multiplied by this before the sinusoidal embedding (frequencies 1 to 1e-4), so
the noise levels of sampling (``c_noise`` in about [-1.6, 0.4]) spread over its periods."""

RAY_CHANNELS = 6
"""Plücker ray channels (moment, direction)."""

MAX_EVALUATIONS = 4
"""Most network evaluations a sampler may spend on a frame (issue 29: <= 4 per chunk)."""

SOLVERS = ("euler", "heun", "mean")
"""Values of :attr:`EDMSamplerConfig.solver`."""
SAMPLER_FILE = "sampler.json"
"""An :class:`EDMSamplerConfig` beside a generator's weights (:meth:`EDMSamplerConfig.save`)."""

_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        n_context=1,
        height=32,
        width=32,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
    ),
    "small": dict(
        n_context=2,
        height=64,
        width=64,
        block_out_channels=(16, 32, 64, 128),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=32,
    ),
}


def pixel_denoiser_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of :class:`PixelDenoiser` for a named configuration.

    Args:
        name: ``"tiny"`` (tests, 32x32) or ``"small"`` (the embedded 64x64 default).
        **overrides: settings to change.

    Returns:
        A fresh dict of constructor keyword arguments.

    Raises:
        ValueError: for an unknown name or an override that is not a constructor argument.
    """
    if name not in _CONFIGS:
        raise ValueError(
            f"unknown pixel denoiser config {name!r}; choose one of {sorted(_CONFIGS)}"
        )
    allowed = set(inspect.signature(PixelDenoiser.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown PixelDenoiser settings {unknown}; allowed are {sorted(allowed)}")
    return {**_CONFIGS[name], **overrides}


class PixelConditions(NamedTuple):
    """What :class:`PixelDenoiser` reads besides the noisy frame, built by its ``conditions``.

    Attributes:
        channels: (B, Cc, H, W) the conditioning channels (module docstring).
        prefill: (B, 4, H, W) the classical fill of the render, pixels in [-1, 1].
        known: (B, 1, H, W) bool, where the render covers (its pixels are the observed scene).
        render: (B, 4, H, W) the render's pixels (0 where not ``known``).
    """

    channels: Tensor
    prefill: Tensor
    known: Tensor
    render: Tensor


class PixelDenoiser(ModelMixin, ConfigMixin):
    """EDM-preconditioned pixel-space U-Net that denoises one RGB-D frame (module docstring).

    Args:
        n_context: context frames read, >= 1.
        height: frame height, pixels; divisible by ``2 ** (len(block_out_channels) - 1)``.
        width: frame width, pixels; same constraint.
        max_depth_m: depth that maps to pixel value 1, metres (the sensor's range).
        sigma_data: standard deviation of the data EDM's preconditioning assumes, > 0.
        residual: diffuse the difference from the prefill (True) or the frame itself.
        prefill: the classical fill of the render's holes, one of
            :data:`worldsim.memory.fills.FILLS`.
        age_scale_frames: the render's freshness channel is ``exp(-age / age_scale_frames)``,
            frames, > 0.
        block_out_channels: U-Net widths per resolution level (one ``DownBlock2D`` /
            ``UpBlock2D`` each).
        layers_per_block: ResNet layers per down block (up blocks have one more).
        norm_num_groups: GroupNorm groups; divides every width.
        mid_attention: self-attention in the mid block, at the lowest resolution only.
        attention_head_dim: width per attention head.
    """

    @register_to_config
    def __init__(
        self,
        n_context: int = 2,
        height: int = 64,
        width: int = 64,
        max_depth_m: float = DEFAULT_MAX_DEPTH_M,
        sigma_data: float = 0.5,
        residual: bool = True,
        prefill: str = "harmonic",
        age_scale_frames: float = 100.0,
        block_out_channels: tuple[int, ...] = (16, 32, 64, 128),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        mid_attention: bool = True,
        attention_head_dim: int = 32,
    ) -> None:
        super().__init__()
        if n_context < 1:
            raise ValueError(f"n_context must be >= 1, got {n_context}")
        factor = 2 ** (len(block_out_channels) - 1)
        if height % factor or width % factor or height < 1 or width < 1:
            raise ValueError(
                f"height and width must be positive multiples of {factor} (2 ** (levels - 1) for "
                f"{len(block_out_channels)} levels), got {height}x{width}"
            )
        if not max_depth_m > 0:
            raise ValueError(f"max_depth_m must be > 0 metres, got {max_depth_m}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if prefill not in FILLS:
            raise ValueError(f"prefill must be one of {FILLS}, got {prefill!r}")
        if not age_scale_frames > 0:
            raise ValueError(f"age_scale_frames must be > 0 frames, got {age_scale_frames}")
        if any(channels % norm_num_groups for channels in block_out_channels):
            raise ValueError(
                f"norm_num_groups={norm_num_groups} must divide every block width "
                f"{tuple(block_out_channels)}"
            )
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            sample_size=(height, width),
            in_channels=4 + self.condition_channels,
            out_channels=4,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            add_attention=mid_attention,
            attention_head_dim=attention_head_dim,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
        )

    @classmethod
    def from_config_name(cls, name: str, **overrides: Any) -> PixelDenoiser:
        """A freshly initialised model of a named configuration (:func:`pixel_denoiser_config`)."""
        return cls(**pixel_denoiser_config(name, **overrides))

    @property
    def condition_channels(self) -> int:
        """Cc: context RGB-D, render RGB-D + mask + freshness, prefill RGB-D, rays."""
        return 4 * self.config.n_context + 6 + 4 + RAY_CHANNELS

    # ----------------------------------------------------------------------------- pixels

    def to_pixels(self, rgb: Tensor, depth: Tensor) -> Tensor:
        """RGB in [0, 1] and depth in metres, (..., 3 | 1, H, W), to (..., 4, H, W) in [-1, 1]."""
        scaled = (depth / self.config.max_depth_m).clamp(0.0, 1.0)
        return torch.cat([rgb * 2 - 1, scaled * 2 - 1], dim=-3)

    def from_pixels(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """(..., 4, H, W) pixels to ``(rgb, depth)``: [0, 1] and metres in [0, max_depth_m]."""
        unit = ((pixels + 1) / 2).clamp(0.0, 1.0)
        return unit[..., :3, :, :], unit[..., 3:, :, :] * self.config.max_depth_m

    # ----------------------------------------------------------------------------- conditions

    def conditions(
        self,
        context_rgb: Tensor,
        context_depth: Tensor,
        render_rgb: Tensor,
        render_depth: Tensor,
        render_known: Tensor,
        render_age: Tensor,
        intrinsics: Tensor,
        cam_to_ref: Tensor,
    ) -> PixelConditions:
        """The conditioning of B target cameras (module docstring).

        Args:
            context_rgb: (B, n_context, 3, H, W) the last frames before the target, in [0, 1].
            context_depth: (B, n_context, 1, H, W) their depth, metres.
            render_rgb: (B, 3, H, W) the map rendered at the target camera, in [0, 1].
            render_depth: (B, 1, H, W) its depth, metres.
            render_known: (B, 1, H, W) bool, where the render shows the observed scene (drawn,
                observed, within the sensor's range; the caller decides).
            render_age: (B, 1, H, W) frames since the drawn point was last seen (any value where
                not ``render_known``).
            intrinsics: (B, 3, 3) the target's ``K`` in pixels.
            cam_to_ref: (B, 4, 4) the target camera in the frame of the last context camera.

        Returns:
            The :class:`PixelConditions`, in the model's dtype and on its device.

        Raises:
            ValueError: for shapes that do not fit the model, or a NaN / infinite input.
        """
        config = self.config
        batch = context_rgb.shape[0]
        height, width = config.height, config.width
        expected = {
            "context_rgb": (context_rgb, (batch, config.n_context, 3, height, width)),
            "context_depth": (context_depth, (batch, config.n_context, 1, height, width)),
            "render_rgb": (render_rgb, (batch, 3, height, width)),
            "render_depth": (render_depth, (batch, 1, height, width)),
            "render_known": (render_known, (batch, 1, height, width)),
            "render_age": (render_age, (batch, 1, height, width)),
            "intrinsics": (intrinsics, (batch, 3, 3)),
            "cam_to_ref": (cam_to_ref, (batch, 4, 4)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(
                    f"{name} holds NaN or infinite values; a render marks what it does not "
                    "show with render_known = False (and any finite value), not with NaN"
                )
        device, dtype = self.device, self.dtype
        known = render_known.to(device=device, dtype=torch.bool)
        context = self.to_pixels(context_rgb.to(device, dtype), context_depth.to(device, dtype))
        context = rearrange(context, "b t c h w -> b (t c) h w")  # (B, 4 n_context, H, W)
        render = self.to_pixels(render_rgb.to(device, dtype), render_depth.to(device, dtype))
        render = render * known  # (B, 4, H, W), 0 where unknown
        age = render_age.to(device, dtype).clamp_min(0)
        freshness = torch.exp(-age / config.age_scale_frames) * known  # (B, 1, H, W)
        last = context[:, -4:]  # (B, 4, H, W) the last context frame
        filled = fill_holes(render, known, config.prefill)
        covers_any = known.flatten(1).any(dim=1)[:, None, None, None]  # (B, 1, 1, 1)
        prefill = torch.where(covers_any, filled, last)
        rays = plucker_rays(
            intrinsics.to(device).float(), cam_to_ref.to(device).float(), height, width
        ).to(dtype)  # (B, 6, H, W)
        channels = torch.cat([context, render, known.to(dtype), freshness, prefill, rays], dim=1)
        return PixelConditions(channels, prefill, known, render)

    # ----------------------------------------------------------------------------- denoising

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """EDM's ``(c_skip, c_out, c_in, c_noise)`` of noise levels ``sigma`` (B,), each (B,)."""
        sigma_data = self.config.sigma_data
        total = sigma**2 + sigma_data**2
        return (
            sigma_data**2 / total,
            sigma * sigma_data / total.sqrt(),
            1 / total.sqrt(),
            sigma.log() / 4,
        )

    def forward(self, noisy: Tensor, sigma: Tensor, conditions: PixelConditions) -> Tensor:
        """The denoised frame ``D(x; sigma)`` (module docstring).

        Args:
            noisy: (B, 4, H, W) the frame plus noise of standard deviation ``sigma``, pixels.
            sigma: (B,) or scalar noise levels, > 0.
            conditions: from :meth:`conditions`, for the same B rows.

        Returns:
            (B, 4, H, W) the denoised frame, pixels (not clamped).
        """
        batch = noisy.shape[0]
        sigma = torch.as_tensor(sigma, device=noisy.device, dtype=noisy.dtype).reshape(-1)
        sigma = sigma.expand(batch)  # (B,)
        c_skip, c_out, c_in, c_noise = (
            value[:, None, None, None] for value in self.preconditioning(sigma)
        )  # (B, 1, 1, 1) each
        base = conditions.prefill if self.config.residual else torch.zeros_like(noisy)
        offset = noisy - base  # (B, 4, H, W) what is diffused
        inputs = torch.cat([c_in * offset, conditions.channels], dim=1)  # (B, 4 + Cc, H, W)
        if self.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            # A model moved to channels_last (about 1.3x faster to train on a CPU) wants its
            # input so too; mixed layouts are slower than either.
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        output = self.unet(inputs, TIME_SCALE * c_noise.flatten()).sample  # (B, 4, H, W)
        return base + c_skip * offset + c_out * output


@dataclass(frozen=True)
class EDMSamplerConfig:
    """Settings of :func:`sample_frames` (Karras et al. 2022, Algorithm 1, deterministic).

    Attributes:
        num_steps: noise levels visited, in [1, 4]; Heun spends 2 evaluations on every step but
            the last, and the total is at most :data:`MAX_EVALUATIONS`.
        sigma_min: the last non-zero noise level, in (0, sigma_max).
        sigma_max: the first noise level, in (sigma_min, 1000].
        rho: the schedule's curvature (EDM's 7), in [1, 100].
        solver: ``"euler"`` (first order), ``"heun"`` (second order), or ``"mean"``: the
            average of ``num_steps`` one-step estimates ``D(p + sigma_max n_k; sigma_max)`` from
            independent noises, an estimate of the posterior mean (the PSNR-optimal output;
            it has no sample's structure). The mean of 4 was 0.34 dB above the harmonic fill on
            validation holes where one Euler step was 0.07 below (docs/pixel_generator.md).
    """

    num_steps: int = 3
    sigma_min: float = 0.002
    sigma_max: float = 5.0
    rho: float = 7.0
    solver: str = "euler"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.solver not in SOLVERS:
            raise ValueError(f"{owner}.solver must be one of {SOLVERS}, got {self.solver!r}")
        if not 1 <= self.num_steps <= MAX_EVALUATIONS:
            raise ValueError(
                f"{owner}.num_steps must be in [1, {MAX_EVALUATIONS}], got {self.num_steps}"
            )
        if self.evaluations > MAX_EVALUATIONS:
            raise ValueError(
                f"{owner}: {self.num_steps} Heun steps take {self.evaluations} network "
                f"evaluations, more than {MAX_EVALUATIONS}; use num_steps <= 2 with heun, or euler"
            )
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"{owner}.sigma_min must be in (0, sigma_max = {self.sigma_max}), "
                f"got {self.sigma_min}"
            )
        if not self.sigma_max <= 1000:
            raise ValueError(f"{owner}.sigma_max must be <= 1000, got {self.sigma_max}")
        if not 1 <= self.rho <= 100:
            raise ValueError(f"{owner}.rho must be in [1, 100], got {self.rho}")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the settings to ``folder/sampler.json`` (:func:`load_pixel_sampler` reads it)."""
        path = Path(folder) / SAMPLER_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @property
    def evaluations(self) -> int:
        """Network evaluations per frame."""
        return 2 * self.num_steps - 1 if self.solver == "heun" else self.num_steps

    def sigmas(self) -> Tensor:
        """(num_steps + 1,) float64 noise levels, ``sigma_max`` down to ``sigma_min``, then 0."""
        if self.num_steps == 1:
            return torch.tensor([self.sigma_max, 0.0], dtype=torch.float64)
        ramp = torch.linspace(0, 1, self.num_steps, dtype=torch.float64)
        low, high = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        levels = (high + ramp * (low - high)) ** self.rho
        return torch.cat([levels, levels.new_zeros(1)])


@torch.no_grad()
def sample_frames(
    model: PixelDenoiser,
    conditions: PixelConditions,
    config: EDMSamplerConfig,
    generator: torch.Generator | list[torch.Generator] | None,
    keep_known: bool = True,
) -> Tensor:
    """Sample B frames with EDM's deterministic Euler / Heun solver (or estimate their mean).

    The start is ``p + sigma_max * n`` (``p`` the prefill for a residual model, else 0) with
    ``n`` drawn from ``generator`` (one generator per row makes each row independent of the
    others).

    Args:
        model: the denoiser (eval mode).
        conditions: :meth:`PixelDenoiser.conditions` of the B target cameras.
        config: the sampler's settings.
        generator: the initial noise's source(s).
        keep_known: return the render's pixels where it covers (warp what is known, generate
            what is not); ``False`` returns the generated pixels everywhere.

    Returns:
        (B, 4, H, W) pixels in [-1, 1] (:meth:`PixelDenoiser.from_pixels` converts).
    """
    prefill = conditions.prefill

    def draw() -> Tensor:
        shape = tuple(prefill.shape)
        return randn_tensor(shape, generator=generator, device=prefill.device, dtype=prefill.dtype)

    noise = draw()
    sigmas = config.sigmas().tolist()
    base = prefill if model.config.residual else torch.zeros_like(prefill)
    if config.solver == "mean":  # num_steps one-step estimates from independent noises
        top = torch.tensor(config.sigma_max)
        x = model(base + config.sigma_max * noise, top, conditions)
        for _ in range(config.num_steps - 1):
            x = x + model(base + config.sigma_max * draw(), top, conditions)
        return _finish(x / config.num_steps, conditions, keep_known)
    x = base + sigmas[0] * noise
    for index, (sigma, following) in enumerate(itertools.pairwise(sigmas)):
        denoised = model(x, torch.tensor(sigma), conditions)
        slope = (x - denoised) / sigma  # dx / dsigma of the probability-flow ODE
        step = x + (following - sigma) * slope
        if config.solver == "heun" and index < len(sigmas) - 2:  # no correction to sigma = 0
            corrected = model(step, torch.tensor(following), conditions)
            slope = 0.5 * (slope + (step - corrected) / following)
            step = x + (following - sigma) * slope
        x = step
    return _finish(x, conditions, keep_known)


def _finish(x: Tensor, conditions: PixelConditions, keep_known: bool) -> Tensor:
    """Clamp to the pixel range; with ``keep_known``, the render's pixels where it covers."""
    x = x.clamp(-1.0, 1.0)
    if keep_known:
        x = torch.where(conditions.known, conditions.render, x)
    return x


def edm_training_sigmas(
    batch: int, generator: torch.Generator, mean: float = -1.2, std: float = 1.2
) -> Tensor:
    """Training noise levels ``exp(N(mean, std^2))`` (EDM's log-normal), (B,) float32 on the CPU."""
    return torch.exp(mean + std * torch.randn(batch, generator=generator))


def edm_loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's loss weight ``(sigma^2 + sd^2) / (sigma sd)^2``, which evens the loss over levels."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters of a model."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def load_pixel_sampler(folder: str | os.PathLike) -> EDMSamplerConfig:
    """The :class:`EDMSamplerConfig` in ``folder/sampler.json`` (the defaults without one).

    Raises:
        ValueError: a malformed file or setting, naming the file.
    """
    path = Path(folder) / SAMPLER_FILE
    if not path.is_file():
        return EDMSamplerConfig()
    values = read_config(path)
    try:
        allowed = {field.name for field in dataclasses.fields(EDMSamplerConfig)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; allowed are {sorted(allowed)}")
        return EDMSamplerConfig(**values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{str(path)!r}: {error}") from None
