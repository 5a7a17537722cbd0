"""A NoMaD-style goal-conditioned diffusion policy over future waypoints (Sridhar et al. 2023).

Architecture (module names follow the upstream ``visualnav-transformer`` code, so an upstream
state dict loads by :func:`planners.nomad.upstream.load_upstream_state_dict`):

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

Images enter in [0, 1] and are resized to ``image_size`` and ImageNet-normalised inside the model
(as upstream's data transform does). Sampling: :mod:`planners.nomad.waypoints`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from einops import rearrange
from torch import Tensor

from planners.nomad.encoder import NoMaDEncoder
from planners.nomad.unet import ConditionalUnet1D, DenseNetwork
from worldsim.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from worldsim.models.pretrained import ModelMixin, check_pretrained_folder

ACTION_STATS_MIN = (-2.5, -4.0)
"""NoMaD's lower bounds of normalised waypoint deltas (forward, left), waypoint spacings."""
ACTION_STATS_MAX = (5.0, 4.0)
"""NoMaD's upper bounds of normalised waypoint deltas (forward, left), waypoint spacings."""


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

DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "nomad_small"
"""The embedded policy: the ``small`` preset trained by ``examples/train_nomad.py`` on the
embedded simulator's training houses (its ``README.md`` is the model card)."""


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
                ``NoMaDPolicy()`` and use :func:`planners.nomad.upstream.load_upstream_state_dict`.
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
