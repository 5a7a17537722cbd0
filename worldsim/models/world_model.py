"""The world model: RGB-D VAE + memory-conditioned transformer + diffusion schedule, one folder.

:class:`WorldModel` owns the :class:`~worldsim.models.vae.RGBDAutoencoder`, the
:class:`~worldsim.models.transformer.WorldTransformer` and the settings of its noise schedule, and
turns raw observations into the transformer's inputs: latents of the conditioning frames, Plücker
ray images of the chunk's relative camera poses downsampled to the latent grid (paper eq. 1).

Diffusion
    diffusers' ``CogVideoXDDIMScheduler`` with **v-prediction**, zero terminal SNR and
    ``trailing`` timestep spacing (CogVideoX's recipe). The transformer predicts
    ``v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` for the latents ``x0`` of the future chunk.

Configurations (:func:`world_model_config`)
    ``tiny``: 32x32 frames, 2 layers of width 32, for tests. ``small``: 64x64 frames, the embedded
    default trained on CPU / one GPU. ``cogvideox``: CogVideoX-2B sizes (30 layers of width 1920,
    the 16-channel 8x spatial / 4x temporal VAE, 480x720 frames) for users with GPUs and the real
    weights (:meth:`WorldModel.from_cogvideox`).

The memory is not part of the model. It reaches the model in one of two ways: as map tokens
that memory blocks cross-attend to (the paper's variant: any :class:`worldsim.memory.Memory`
whose ``token_dim`` equals ``memory_token_dim``), or, with ``memory_render=True``, as the
:class:`~worldsim.memory.RenderedMemory` rendered into every future camera and read
pixel-aligned (:meth:`WorldModel.encode_render`): generating a chunk becomes "warp what is known,
inpaint what is not". ``memory_token_dim=0`` without a render is the no-memory (NWM) baseline,
``use_depth=False`` the "w/o depth" ablation (RGB latents only).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import CogVideoXDDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from einops import rearrange
from torch import Tensor

from worldsim.geometry import (
    DEFAULT_HFOV_DEG,
    DEFAULT_MAX_DEPTH_M,
    ActionSpec,
    intrinsics_from_hfov,
    plucker_rays,
)
from worldsim.models.pixel_denoiser import EDMSamplerConfig, PixelDenoiser, load_pixel_sampler
from worldsim.models.pretrained import ModelMixin, check_pretrained_folder
from worldsim.models.transformer import WorldTransformer
from worldsim.models.vae import RGBDAutoencoder

DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "world_model_small"
"""Folder of the embedded default checkpoint loaded by ``WorldModel.from_pretrained()``."""
PIXEL_GENERATOR_FOLDER = "pixel_generator"
"""Sub-folder of a checkpoint holding its pixel generator (:meth:`WorldModel.attach_pixel_generator`
writes it there): the :class:`PixelDenoiser`'s config, weights and ``sampler.json``."""
LEGACY_SAMPLER_KEYS = (
    "num_inference_steps",
    "render_init",
    "render_fill",
    "render_composite",
    "render_generated",
)
"""Sampler settings that ``config.json`` files written before
:class:`~worldsim.simulator.sampler.SamplerConfig` held; loading ignores them here and
:func:`~worldsim.simulator.sampler.load_sampler_config` reads them as the folder's sampler."""
MEMORY_FILE = "memory.json"
"""File in a checkpoint folder naming the memory the model was trained with: a JSON object
``{"name": ..., **fields}`` of :func:`worldsim.memory.build_memory` arguments."""

_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        n_context=1,
        n_future=2,
        height=32,
        width=32,
        vae_block_out_channels=(16, 32),
        vae_latent_channels=4,
        vae_layers_per_block=1,
        vae_norm_num_groups=8,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        time_embed_dim=32,
        patch_size=2,
        memory_token_dim=16,
    ),
    "small": dict(
        n_context=2,
        n_future=4,
        height=64,
        width=64,
        vae_block_out_channels=(16, 32, 32),
        vae_latent_channels=4,
        vae_layers_per_block=1,
        vae_norm_num_groups=8,
        num_layers=6,
        num_attention_heads=4,
        attention_head_dim=32,
        time_embed_dim=128,
        patch_size=2,
        memory_token_dim=128,
    ),
    "cogvideox": dict(
        n_context=1,
        n_future=9,
        height=480,
        width=720,
        vae_block_out_channels=(128, 256, 256, 512),
        vae_latent_channels=16,
        vae_layers_per_block=3,
        vae_norm_num_groups=32,
        vae_temporal_compression_ratio=4,
        vae_scaling_factor=1.15258426,
        num_layers=30,
        num_attention_heads=30,
        attention_head_dim=64,
        time_embed_dim=512,
        patch_size=2,
        memory_token_dim=1024,
        spatial_interpolation_scale=1.875,
        snr_shift_scale=3.0,
    ),
}


def world_model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of :class:`WorldModel` for a named configuration.

    Args:
        name: ``"tiny"`` (tests), ``"small"`` (the embedded default) or ``"cogvideox"``
            (CogVideoX-2B sizes).
        **overrides: settings to change, e.g. ``num_layers=1`` to test the CogVideoX layout at
            reduced size.

    Returns:
        A fresh dict of constructor keyword arguments.

    Raises:
        ValueError: for an unknown name or an override that is not a constructor argument.
    """
    if name not in _CONFIGS:
        raise ValueError(f"unknown world model config {name!r}; choose one of {sorted(_CONFIGS)}")
    config = dict(_CONFIGS[name])
    allowed = set(inspect.signature(WorldModel.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown WorldModel settings {unknown}; allowed are {sorted(allowed)}")
    config.update(overrides)
    return config


class WorldModel(ModelMixin, ConfigMixin):
    """Action-conditioned RGB-D video diffusion model with memory blocks.

    Args:
        n_context: conditioning frames per chunk (``1 + r * k`` for the VAE's temporal ratio r).
        n_future: frames generated per chunk, i.e. actions per chunk (``1 + r * k``).
        height: frame height in pixels; a multiple of the VAE compression times ``patch_size``.
        width: frame width in pixels; same constraint.
        hfov_deg: horizontal field of view of the camera the model was trained for, degrees
            (used when intrinsics are not given).
        use_depth: model RGB-D (True) or RGB only (the "w/o depth" ablation).
        forward_step_m: ``move_forward`` distance, metres (:class:`~worldsim.geometry.ActionSpec`).
        turn_step_deg: turn angle, degrees.
        max_depth_m: depth range of the sensor, metres.
        vae_block_out_channels: VAE block widths (spatial compression ``2 ** (len - 1)``).
        vae_latent_channels: VAE latent channels per modality.
        vae_layers_per_block: VAE ResNet layers per block.
        vae_norm_num_groups: VAE group-norm groups.
        vae_temporal_compression_ratio: frames per latent frame (1, 2 or 4).
        vae_scaling_factor: initial latent scale (replaced after the VAE is trained).
        num_layers: transformer blocks (each followed by a memory block with memory).
        num_attention_heads: attention heads.
        attention_head_dim: width per head.
        time_embed_dim: timestep-embedding width.
        patch_size: latent cells per token along each axis.
        memory_token_dim: width of the memory's map tokens; 0 for no memory blocks.
        memory_render: read the memory as a pixel-aligned render of every future camera
            (:meth:`encode_render`); needs ``use_depth`` (the render comes from RGB-D).
        spatial_interpolation_scale: spatial scale of the sin-cos position embedding.
        num_train_timesteps: diffusion steps of the training schedule.
        beta_schedule: diffusers beta schedule name.
        snr_shift_scale: CogVideoX SNR shift of the schedule (1.0 = none).
    """

    @register_to_config
    def __init__(
        self,
        n_context: int = 2,
        n_future: int = 4,
        height: int = 64,
        width: int = 64,
        hfov_deg: float = DEFAULT_HFOV_DEG,
        use_depth: bool = True,
        forward_step_m: float = 0.25,
        turn_step_deg: float = 10.0,
        max_depth_m: float = DEFAULT_MAX_DEPTH_M,
        vae_block_out_channels: tuple[int, ...] = (32, 64, 64),
        vae_latent_channels: int = 4,
        vae_layers_per_block: int = 1,
        vae_norm_num_groups: int = 8,
        vae_temporal_compression_ratio: int = 1,
        vae_scaling_factor: float = 1.0,
        num_layers: int = 6,
        num_attention_heads: int = 4,
        attention_head_dim: int = 32,
        time_embed_dim: int = 128,
        patch_size: int = 2,
        memory_token_dim: int = 128,
        memory_render: bool = False,
        spatial_interpolation_scale: float = 1.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        snr_shift_scale: float = 1.0,
    ):
        super().__init__()
        self.action_spec = ActionSpec(forward_step_m, turn_step_deg)
        self.vae = RGBDAutoencoder(
            block_out_channels=tuple(vae_block_out_channels),
            latent_channels=vae_latent_channels,
            layers_per_block=vae_layers_per_block,
            norm_num_groups=vae_norm_num_groups,
            temporal_compression_ratio=vae_temporal_compression_ratio,
            scaling_factor=vae_scaling_factor,
            max_depth_m=max_depth_m,
            sample_height=height,
            sample_width=width,
        )
        for name, frames in (("n_context", n_context), ("n_future", n_future)):
            try:
                self.vae.num_latent_frames(frames)
            except ValueError as error:
                raise ValueError(f"{name}={frames}: {error}") from None
        if memory_render and not use_depth:
            raise ValueError(
                "memory_render=True needs use_depth=True: the render is RGB-D, lifted from "
                "generated depth"
            )
        cell = self.vae.spatial_compression * patch_size
        if height % cell or width % cell or height < cell or width < cell:
            raise ValueError(
                f"height x width = {height}x{width} must be positive multiples of "
                f"{cell} (VAE compression {self.vae.spatial_compression} x patch {patch_size})"
            )
        self.transformer = WorldTransformer(
            latent_channels=vae_latent_channels * (2 if use_depth else 1),
            num_context_latent_frames=self.vae.num_latent_frames(n_context),
            ray_channels=self.ray_channels,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            num_layers=num_layers,
            time_embed_dim=time_embed_dim,
            patch_size=patch_size,
            memory_token_dim=memory_token_dim,
            render_channels=(2 * vae_latent_channels + 1) if memory_render else 0,
            spatial_interpolation_scale=spatial_interpolation_scale,
        )
        self.scheduler = self.make_scheduler()
        self.pixel_generator: PixelDenoiser | None = None
        self.pixel_sampler = EDMSamplerConfig()

    # ----------------------------------------------------------------------------- construction

    def attach_pixel_generator(
        self, generator: PixelDenoiser | None, sampler: EDMSamplerConfig | None = None
    ) -> WorldModel:
        """Generate chunks in pixel space with ``generator`` instead of the latent transformer.

        The chunk stepper then builds each future frame from the context frames and the map's
        render with the pixel denoiser (:func:`worldsim.simulator.sampler.generate_chunk`); the
        VAE and transformer stay for users who select the latent path (``generator=None``).
        :meth:`save_pretrained` writes it to ``pixel_generator/`` and :meth:`from_pretrained`
        attaches it again.

        Args:
            generator: the denoiser, or ``None`` to generate with the latent transformer.
            sampler: its sampler's settings (``None``: the defaults).

        Returns:
            The model itself.

        Raises:
            ValueError: a generator of another frame size, sensor range or more context frames.
        """
        if generator is not None:
            config, pixel = self.config, generator.config
            mismatches = [
                f"{name} {getattr(pixel, name)} (world model: {getattr(config, name)})"
                for name in ("height", "width", "max_depth_m")
                if getattr(pixel, name) != getattr(config, name)
            ]
            if not config.memory_render:
                mismatches.append("memory_render False (the pixel generator reads the render)")
            if pixel.n_context > config.n_context:
                mismatches.append(
                    f"n_context {pixel.n_context} (the world model keeps {config.n_context})"
                )
            if mismatches:
                raise ValueError(
                    "the pixel generator does not fit this world model: "
                    + ", ".join(mismatches)
                    + "; train one at the world model's frame size "
                    "(examples/train_pixel_generator.py)"
                )
            generator = generator.to(self.device).eval()
        self.pixel_generator = generator
        self.pixel_sampler = EDMSamplerConfig() if sampler is None else sampler
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Diffusers' ``save_pretrained``, with the pixel generator in its own sub-folder."""
        generator = self._modules.pop("pixel_generator", None)
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.pixel_generator = generator
        if generator is not None:
            folder = Path(save_directory) / PIXEL_GENERATOR_FOLDER
            generator.save_pretrained(folder)
            self.pixel_sampler.save(folder)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Diffusers' config parsing, minus the sampler settings of older checkpoints."""
        kept = {k: v for k, v in config_dict.items() if k not in LEGACY_SAMPLER_KEYS}
        return super().extract_init_dict(kept, **kwargs)

    @classmethod
    def from_config_name(cls, name: str, **overrides: Any) -> WorldModel:
        """A freshly initialised model of a named configuration (see :func:`world_model_config`)."""
        return cls(**world_model_config(name, **overrides))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs: Any
    ) -> WorldModel:
        """Load a model saved with :meth:`save_pretrained` from a local folder.

        Args:
            pretrained_model_name_or_path: the folder; ``None`` loads the embedded default
                checkpoint (``worldsim/checkpoints/world_model_small``).
            **kwargs: passed to diffusers' ``ModelMixin.from_pretrained`` (e.g. ``torch_dtype``).

        Returns:
            The model, in eval mode.

        Raises:
            FileNotFoundError: if the folder or its ``config.json`` is missing.
            ValueError: if the folder holds another kind of model.
        """
        folder = Path(pretrained_model_name_or_path or DEFAULT_CHECKPOINT)
        check_pretrained_folder(
            folder,
            cls.__name__,
            "world model",
            "the embedded default checkpoint is not installed; train one with "
            "examples/train_world_model.py and pass its folder"
            if pretrained_model_name_or_path is None
            else "expected a folder written by WorldModel.save_pretrained",
            " (for a CogVideoX model folder use WorldModel.from_cogvideox)",
        )
        kwargs.setdefault("local_files_only", True)
        model = super().from_pretrained(folder, **kwargs)
        pixel_folder = folder / PIXEL_GENERATOR_FOLDER
        if pixel_folder.is_dir():
            generator = PixelDenoiser.from_pretrained(pixel_folder, **kwargs)
            model.attach_pixel_generator(generator, load_pixel_sampler(pixel_folder))
        return model

    @classmethod
    def from_cogvideox(cls, path: str | os.PathLike, **overrides: Any) -> WorldModel:
        """Build the ``cogvideox`` configuration from a local CogVideoX model folder.

        The VAE is loaded as is. The transformer takes the pretrained blocks, timestep
        embedding and output layers; its widened patch embedding copies the pretrained weights
        into the channels of the noisy RGB latents (and, for an image-to-video model, of the last
        context frame's RGB latents), the others start at zero; the output layer's depth rows
        start as copies of its RGB rows. Memory blocks are new.

        Args:
            path: folder with ``vae/`` and ``transformer/`` subfolders in diffusers format.
            **overrides: WorldModel settings (e.g. ``height``, ``n_future``, ``memory_token_dim``).

        Returns:
            The model.

        Raises:
            FileNotFoundError: if a subfolder is missing.
            ValueError: for CogVideoX variants this layout does not support (rotary position
                embeddings, temporal patches, ``ofs`` embeddings).
        """
        from diffusers import CogVideoXTransformer3DModel

        folder = Path(path)
        if not (folder / "transformer" / "config.json").is_file():
            raise FileNotFoundError(
                f"no CogVideoX transformer at {str(folder / 'transformer')!r}: expected a "
                "diffusers CogVideoX folder with vae/ and transformer/ subfolders"
            )
        vae = RGBDAutoencoder.from_cogvideox(folder, "vae", overrides.get("max_depth_m", 10.0))
        pretrained = CogVideoXTransformer3DModel.from_pretrained(
            folder, subfolder="transformer", local_files_only=True
        )
        source = pretrained.config
        unsupported = {
            "use_rotary_positional_embeddings": bool(source.use_rotary_positional_embeddings),
            "patch_size_t": source.patch_size_t is not None,
            "ofs_embed_dim": bool(source.ofs_embed_dim),
        }
        if any(unsupported.values()):
            raise ValueError(
                "only CogVideoX 1.0 layouts with sin-cos position embeddings are supported; this "
                f"checkpoint uses {[k for k, v in unsupported.items() if v]}"
            )
        settings = world_model_config(
            "cogvideox",
            vae_block_out_channels=tuple(vae.config.block_out_channels),
            vae_latent_channels=vae.config.latent_channels,
            vae_layers_per_block=vae.config.layers_per_block,
            vae_norm_num_groups=vae.config.norm_num_groups,
            vae_temporal_compression_ratio=vae.temporal_compression,
            vae_scaling_factor=vae.scaling_factor,
            num_layers=source.num_layers,
            num_attention_heads=source.num_attention_heads,
            attention_head_dim=source.attention_head_dim,
            time_embed_dim=source.time_embed_dim,
            patch_size=source.patch_size,
            spatial_interpolation_scale=source.spatial_interpolation_scale,
        )
        settings.update(overrides)
        model = cls(**settings)
        model.vae.load_state_dict(vae.state_dict())
        model.transformer.copy_cogvideox_weights(pretrained, model.config.use_depth)
        return model

    def make_scheduler(self) -> CogVideoXDDIMScheduler:
        """A fresh scheduler of this model's noise schedule (schedulers keep per-run state)."""
        return CogVideoXDDIMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            prediction_type="v_prediction",
            clip_sample=False,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
            rescale_betas_zero_snr=True,
            snr_shift_scale=self.config.snr_shift_scale,
        )

    def set_latent_scaling_factor(self, value: float) -> None:
        """Record the VAE's latent scale in the VAE and in this model's config."""
        self.vae.set_scaling_factor(value)
        self.register_to_config(vae_scaling_factor=float(value))

    # ----------------------------------------------------------------------------- shapes

    @property
    def ray_channels(self) -> int:
        """Channels of the pixel-unshuffled Plücker rays per latent frame."""
        factor = self.vae.spatial_compression
        return 6 * self.vae.temporal_compression * factor * factor

    @property
    def latent_size(self) -> tuple[int, int]:
        """``(h, w)`` of the latent grid."""
        factor = self.vae.spatial_compression
        return self.config.height // factor, self.config.width // factor

    @property
    def latent_channels(self) -> int:
        """Channels of the diffused latents (RGB, plus depth with ``use_depth``)."""
        return self.transformer.config.latent_channels

    def future_latent_shape(self, batch_size: int) -> tuple[int, int, int, int, int]:
        """``(B, F, C, h, w)`` of the latents of one generated chunk."""
        frames = self.vae.num_latent_frames(self.config.n_future)
        return (batch_size, frames, self.latent_channels, *self.latent_size)

    def default_intrinsics(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Tensor:
        """(B, 3, 3) intrinsics of the model's frame size and field of view."""
        k = intrinsics_from_hfov(self.config.hfov_deg, self.config.width, self.config.height)
        return k.to(device).expand(batch_size, 3, 3).clone()

    def check_frames(
        self, frames: Tensor, name: str, channels: int, count: int | None = None
    ) -> None:
        """Raise unless ``frames`` is (B, T, channels, height, width) of this model, finite.

        Args:
            frames: the tensor to check.
            name: its name, for the message.
            channels: expected channels.
            count: expected ``T``, or ``None`` for any.
        """
        height, width = self.config.height, self.config.width
        if (
            frames.dim() != 5
            or frames.shape[2] != channels
            or tuple(frames.shape[-2:]) != (height, width)
            or (count is not None and frames.shape[1] != count)
        ):
            frames_text = "T" if count is None else str(count)
            raise ValueError(
                f"{name} must have shape (B, {frames_text}, {channels}, {height}, {width}) for "
                f"this model (frames of {height}x{width} pixels), got {tuple(frames.shape)}"
            )
        if not torch.isfinite(frames).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    # ----------------------------------------------------------------------------- inputs

    def encode(
        self, rgb: Tensor, depth: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Latents of observations (depth ignored without ``use_depth``).

        Args:
            rgb: (B, T, 3, H, W) in ``[0, 1]``.
            depth: (B, T, 1, H, W) metres, required with ``use_depth``.
            generator: sample the VAE posterior with it; ``None`` takes its mode.

        Returns:
            (B, F, C, h, w) scaled latents.
        """
        self.check_frames(rgb, "rgb", 3)
        if self.config.use_depth:
            if depth is None:
                raise ValueError("this model is RGB-D (use_depth=True): depth is required")
            self.check_frames(depth, "depth", 1, rgb.shape[1])
            return self.vae.encode(rgb, depth, generator)
        return self.vae.encode(rgb, None, generator)

    def decode(self, latents: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, F, C, h, w) latents -> RGB (B, T, 3, H, W) in [0, 1], depth (B, T, 1, H, W) m."""
        return self.vae.decode(latents, self.config.use_depth)

    def chunk_rays(self, intrinsics: Tensor, cam_to_ref: Tensor) -> Tensor:
        """Plücker rays of a chunk's cameras, pixel-unshuffled to the latent grid (eq. 1).

        The ray images are computed at full resolution; each ``s x s`` pixel block (``s`` the
        VAE's spatial compression) is folded into channels, and with a temporal compression
        ``r`` the ``r`` frames of each latent frame too (the first frame, which has a latent
        frame of its own, repeated ``r`` times).

        Args:
            intrinsics: (B, T, 3, 3) or (B, 3, 3) ``K`` in pixels of the model's frame size.
            cam_to_ref: (B, T, 4, 4) poses of the chunk's cameras in the frame of the last
                conditioning camera; ``T = n_future``.

        Returns:
            (B, F, ray_channels, h, w) float32.
        """
        batch, frames = cam_to_ref.shape[:2]
        if cam_to_ref.shape[1:] != (self.config.n_future, 4, 4):
            raise ValueError(
                f"cam_to_ref must have shape (B, {self.config.n_future}, 4, 4) (one pose per "
                f"future frame), got {tuple(cam_to_ref.shape)}"
            )
        if intrinsics.dim() == 3:
            intrinsics = intrinsics[:, None].expand(batch, frames, 3, 3)
        height, width = self.config.height, self.config.width
        rays = plucker_rays(
            intrinsics.reshape(-1, 3, 3).float(),
            cam_to_ref.reshape(-1, 4, 4).float(),
            height,
            width,
        )  # (B*T, 6, H, W)
        rays = rearrange(rays, "(b t) c h w -> b t c h w", b=batch)
        ratio = self.vae.temporal_compression
        rays = torch.cat([rays[:, :1].expand(-1, ratio - 1, -1, -1, -1), rays], dim=1)
        factor = self.vae.spatial_compression
        return rearrange(
            rays, "b (f r) c (h sh) (w sw) -> b f (r c sh sw) h w", r=ratio, sh=factor, sw=factor
        )

    def predict(
        self,
        noisy: Tensor,
        timestep: Tensor,
        context_latents: Tensor,
        rays: Tensor,
        memory_tokens: Tensor | None = None,
        memory_mask: Tensor | None = None,
        render: Tensor | None = None,
    ) -> Tensor:
        """Run the transformer; see :meth:`WorldTransformer.forward` for shapes."""
        return self.transformer(
            noisy, timestep, context_latents, rays, memory_tokens, memory_mask, render
        )

    def render_coverage(self, depth: Tensor, mask: Tensor) -> Tensor:
        """Where a memory render counts as covering a frame: drawn, within the sensor's range.

        Args:
            depth: (..., 1, H, W) rendered depth, metres.
            mask: (..., 1, H, W) bool, True where a point was drawn.

        Returns:
            (..., 1, H, W) bool.
        """
        return mask & (depth <= self.config.max_depth_m)

    def encode_render(self, rgb: Tensor, depth: Tensor, mask: Tensor) -> Tensor:
        """The memory rendered into a chunk's cameras, as the transformer reads it.

        The rendered RGB-D is encoded by the model's own VAE (uncovered pixels are mid-grey with
        no depth), so a covered cell arrives in the very space of the latents to generate; one
        more channel gives the share of each latent cell's pixels the render covers.

        Args:
            rgb: (B, F, 3, H, W) rendered colour in [0, 1].
            depth: (B, F, 1, H, W) rendered depth, metres.
            mask: (B, F, 1, H, W) bool, True where the render covers a pixel (within the
                sensor's range ``max_depth_m``).

        Returns:
            (B, F', 2C + 1, h, w) with F' latent frames: the render's latents and its coverage.
        """
        # A point seen from farther than the sensor's range reads as no hit, as the sensor would.
        covered = self.render_coverage(depth, mask).to(rgb.dtype)
        rgb = rgb * covered + 0.5 * (1 - covered)
        latents = self.encode(rgb, depth * covered)  # (B, F', 2C, h, w)
        factor = self.vae.spatial_compression
        coverage = torch.nn.functional.avg_pool2d(
            rearrange(covered, "b f c h w -> (b f) c h w"), factor
        )  # (B*F, 1, h, w)
        coverage = rearrange(coverage, "(b f) c h w -> b f c h w", b=rgb.shape[0])
        if coverage.shape[1] != latents.shape[1]:  # temporal compression: a frame per latent
            coverage = coverage[:, -latents.shape[1] :]
        return torch.cat([latents, coverage.to(latents.dtype)], dim=2)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Alias of :meth:`predict` (so wrappers such as DDP see the transformer call)."""
        return self.predict(*args, **kwargs)
