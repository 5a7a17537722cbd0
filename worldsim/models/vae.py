"""RGB-D video autoencoder: one CogVideoX 3D VAE that encodes RGB and depth separately.

The world model diffuses in the latent space of a causal 3D VAE (diffusers'
``AutoencoderKLCogVideoX``). RGB and depth are encoded *separately* by the same VAE and their
latents are concatenated along the channel axis (paper §3.2), so a pretrained CogVideoX VAE, which
only knows 3-channel images, can encode depth too.

Depth as an image
    Metric z-depth ``d`` in ``[0, max_depth_m]`` metres is mapped linearly to
    ``2 * d / max_depth_m - 1`` in ``[-1, 1]`` and repeated over three channels; decoding averages
    the three channels and maps back. ``d = 0`` (no hit) therefore encodes as black, like the
    nearest possible surface; decoded depths below ``0`` or above ``max_depth_m`` are clipped to
    that range (they are outside what the encoder can represent).

Latent scale
    Latents are multiplied by ``config.scaling_factor`` after encoding and divided by it before
    decoding. A VAE trained by this library sets it to ``1 / std`` of its latents
    (:meth:`RGBDAutoencoder.set_scaling_factor`); a pretrained CogVideoX VAE brings its own.

Frames
    With a temporal compression ratio ``r`` the VAE maps ``1 + r * k`` frames to ``1 + k``
    latent frames. Spatially, every down block but the last halves the resolution.

    With ``r = 1`` the VAE is an image autoencoder: each frame is coded on its own (time folded
    into the batch), so a frame's latent does not depend on the clip it was cut from. Rollouts
    can then re-encode any window of frames consistently, and training can encode every frame of
    a data set once and cache it (:mod:`worldsim.data.latents`). A one-frame input makes every
    causal 3D convolution of the VAE a 2D one (its causal padding repeats the frame over the
    temporal kernel), so per-frame coding runs 2D convolutions with the kernels summed over time
    (:func:`fold_single_frame_convolutions`): the same result for a third of the work.
"""

from __future__ import annotations

import math
import os
import types

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLCogVideoX
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d
from einops import rearrange
from torch import Tensor

from worldsim.geometry import DEFAULT_MAX_DEPTH_M
from worldsim.models.pretrained import ModelMixin


def _single_frame_forward(
    self: CogVideoXCausalConv3d, inputs: Tensor, conv_cache: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """``CogVideoXCausalConv3d.forward``, as a 2D convolution for one frame without a cache.

    Without a cache the causal padding repeats the first frame ``time_kernel_size - 1`` times,
    so for a one-frame input every temporal tap sees the same frame: the output is the 2D
    convolution of that frame with the kernel summed over time. Other inputs take the 3D path.
    """
    conv = self.conv
    if inputs.shape[2] != 1 or conv_cache is not None or conv.dilation[0] != 1:
        return CogVideoXCausalConv3d.forward(self, inputs, conv_cache)
    frame = inputs[:, :, 0]  # (N, C, H, W)
    if self.pad_mode == "replicate":
        pads = (self.width_pad, self.width_pad, self.height_pad, self.height_pad)
        frame, padding = F.pad(frame, pads, mode="replicate"), (0, 0)
    else:
        padding = tuple(conv.padding[1:])
    output = F.conv2d(
        frame, conv.weight.sum(dim=2), conv.bias, conv.stride[1:], padding, conv.dilation[1:]
    )
    if self.pad_mode == "replicate":
        cache = None
    else:  # what the 3D path hands the next frame batch: the padded input's last frames
        cache = inputs.expand(-1, -1, max(self.time_kernel_size - 1, 1), -1, -1).clone()
    return output[:, :, None], cache


def fold_single_frame_convolutions(vae: AutoencoderKLCogVideoX) -> int:
    """Make the causal 3D convolutions of a VAE run one-frame inputs as 2D convolutions.

    Exact up to floating-point rounding (see :func:`_single_frame_forward`); inputs of several
    frames are unaffected. Parameters are untouched, so training and saving work as before.

    Returns:
        The number of convolutions changed.
    """
    count = 0
    for module in vae.modules():
        if isinstance(module, CogVideoXCausalConv3d):
            module.forward = types.MethodType(_single_frame_forward, module)
            count += 1
    return count


class RGBDAutoencoder(ModelMixin, ConfigMixin):
    """A CogVideoX 3D VAE used for RGB and depth videos, latents concatenated (paper §3.2).

    Args:
        block_out_channels: channels of each encoder down block (and decoder up block); the
            spatial compression is ``2 ** (len(block_out_channels) - 1)``.
        latent_channels: latent channels per modality (RGB and depth each get this many).
        layers_per_block: ResNet layers per down / up block.
        norm_num_groups: group-norm groups; must divide every entry of ``block_out_channels``.
        temporal_compression_ratio: 1, 2 or 4 frames per latent frame (a power of two).
        scaling_factor: latents are multiplied by this after encoding (see module docstring).
        max_depth_m: depth range in metres mapped onto the image range ``[-1, 1]``.
        sample_height: nominal frame height in pixels (only used by the VAE's tiling heuristics).
        sample_width: nominal frame width in pixels.
    """

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        latent_channels: int = 4,
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        temporal_compression_ratio: int = 1,
        scaling_factor: float = 1.0,
        max_depth_m: float = DEFAULT_MAX_DEPTH_M,
        sample_height: int = 64,
        sample_width: int = 64,
    ):
        super().__init__()
        if len(block_out_channels) < 1:
            raise ValueError("block_out_channels must have at least one entry, got ()")
        for channels in block_out_channels:
            if channels % norm_num_groups:
                raise ValueError(
                    f"norm_num_groups={norm_num_groups} must divide every block_out_channels "
                    f"entry, got {tuple(block_out_channels)}"
                )
        if temporal_compression_ratio not in (1, 2, 4):
            raise ValueError(
                f"temporal_compression_ratio must be 1, 2 or 4, got {temporal_compression_ratio}"
            )
        if len(block_out_channels) - 1 < math.log2(temporal_compression_ratio):
            raise ValueError(
                f"temporal_compression_ratio={temporal_compression_ratio} needs at least "
                f"{int(math.log2(temporal_compression_ratio)) + 1} blocks, got "
                f"{len(block_out_channels)}"
            )
        if not max_depth_m > 0:
            raise ValueError(f"max_depth_m must be > 0 metres, got {max_depth_m}")
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {scaling_factor}")
        blocks = len(block_out_channels)
        self.vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * blocks,
            up_block_types=("CogVideoXUpBlock3D",) * blocks,
            block_out_channels=tuple(block_out_channels),
            latent_channels=latent_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            temporal_compression_ratio=temporal_compression_ratio,
            sample_height=sample_height,
            sample_width=sample_width,
            scaling_factor=scaling_factor,
        )
        if temporal_compression_ratio == 1:
            fold_single_frame_convolutions(self.vae)

    @classmethod
    def from_cogvideox(
        cls, path: str | os.PathLike, subfolder: str | None = "vae", max_depth_m: float = 10.0
    ) -> RGBDAutoencoder:
        """Wrap a pretrained CogVideoX VAE stored in a local folder.

        Args:
            path: a local CogVideoX model folder (e.g. a copy of ``THUDM/CogVideoX-2b``).
            subfolder: the VAE's subfolder inside ``path`` (``None`` if ``path`` is the VAE).
            max_depth_m: depth range in metres mapped onto ``[-1, 1]``.

        Returns:
            The wrapper, holding the pretrained weights and scaling factor.

        Raises:
            FileNotFoundError: if the folder or its ``config.json`` does not exist.
        """
        folder = os.path.join(path, subfolder) if subfolder else os.fspath(path)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(
                f"no CogVideoX VAE at {folder!r}: expected a folder with config.json and "
                "diffusion_pytorch_model.safetensors (the 'vae' subfolder of a CogVideoX model)"
            )
        pretrained = AutoencoderKLCogVideoX.from_pretrained(folder, local_files_only=True)
        config = pretrained.config
        if tuple(config.down_block_types) != ("CogVideoXDownBlock3D",) * len(
            config.block_out_channels
        ):
            raise ValueError(f"unsupported CogVideoX VAE blocks {config.down_block_types}")
        wrapper = cls(
            block_out_channels=tuple(config.block_out_channels),
            latent_channels=config.latent_channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            temporal_compression_ratio=int(config.temporal_compression_ratio),
            scaling_factor=float(config.scaling_factor),
            max_depth_m=max_depth_m,
            sample_height=config.sample_height,
            sample_width=config.sample_width,
        )
        wrapper.vae.load_state_dict(pretrained.state_dict())
        return wrapper

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent cell along each image axis."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def temporal_compression(self) -> int:
        """Frames per latent frame (after the first, which stands alone)."""
        return int(self.config.temporal_compression_ratio)

    @property
    def scaling_factor(self) -> float:
        """Multiplier applied to latents after encoding."""
        return float(self.vae.config.scaling_factor)

    def set_scaling_factor(self, value: float) -> None:
        """Record a new latent scaling factor (e.g. ``1 / std`` of freshly trained latents).

        Raises:
            ValueError: if ``value`` is not a finite positive number.
        """
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"scaling_factor must be finite and > 0, got {value}")
        self.register_to_config(scaling_factor=float(value))
        self.vae.register_to_config(scaling_factor=float(value))

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames of a video of ``num_frames`` frames.

        Raises:
            ValueError: if ``num_frames`` is not ``1 + r * k`` for the temporal ratio ``r``.
        """
        ratio = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % ratio:
            raise ValueError(
                f"this VAE compresses time by {ratio}: videos need 1 + {ratio} * k frames "
                f"(1, {1 + ratio}, {1 + 2 * ratio}, ...), got {num_frames}"
            )
        return 1 + (num_frames - 1) // ratio

    def depth_to_image(self, depth: Tensor) -> Tensor:
        """Map metric depth to a 3-channel image in ``[-1, 1]`` (see module docstring).

        Args:
            depth: (B, T, 1, H, W) metres in ``[0, max_depth_m]``.

        Returns:
            (B, T, 3, H, W) image values.

        Raises:
            ValueError: for NaN or depths outside ``[0, max_depth_m]``.
        """
        max_depth = self.config.max_depth_m
        if not torch.isfinite(depth).all():
            raise ValueError("depth contains NaN or infinite values")
        low, high = float(depth.min()), float(depth.max())
        if low < 0 or high > max_depth:
            raise ValueError(
                f"depth must lie in [0, {max_depth}] metres (0 = no hit), got [{low:.3f}, "
                f"{high:.3f}]; build the model with a larger max_depth_m if the sensor sees farther"
            )
        return (2.0 * depth / max_depth - 1.0).expand(-1, -1, 3, -1, -1)

    def image_to_depth(self, image: Tensor) -> Tensor:
        """Inverse of :meth:`depth_to_image`: (B, T, 3, H, W) -> (B, T, 1, H, W) metres."""
        depth = (image.mean(dim=2, keepdim=True) + 1.0) * 0.5 * self.config.max_depth_m
        return depth.clamp(0.0, self.config.max_depth_m)

    def _check_video(self, video: Tensor, name: str, channels: int) -> None:
        if video.dim() != 5 or video.shape[2] != channels:
            raise ValueError(
                f"{name} must have shape (B, T, {channels}, H, W), got {tuple(video.shape)}"
            )
        factor = self.spatial_compression
        height, width = video.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"{name} frames of {height}x{width} pixels: height and width must be multiples "
                f"of the VAE's spatial compression {factor}"
            )
        self.num_latent_frames(video.shape[1])

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Encode 3-channel videos in ``[-1, 1]`` to scaled latents.

        Args:
            images: (B, T, 3, H, W) float in ``[-1, 1]``.
            generator: if given, sample the posterior with it; otherwise take its mode.

        Returns:
            (B, F, C, h, w) latents times ``scaling_factor``; ``F`` from
            :meth:`num_latent_frames`, ``h = H / spatial_compression``, ``C = latent_channels``.
        """
        posterior = self._posterior(images)
        latents = posterior.sample(generator) if generator is not None else posterior.mode()
        return self._from_vae_layout(latents, images.shape[0]) * self.scaling_factor

    def decode_images(self, latents: Tensor) -> Tensor:
        """Decode scaled latents to 3-channel videos, roughly in ``[-1, 1]`` (not clipped).

        Args:
            latents: (B, F, C, h, w) as returned by :meth:`encode_images`.

        Returns:
            (B, T, 3, H, W) float.
        """
        video = self._to_vae_layout(latents / self.scaling_factor)
        return self._from_vae_layout(self.vae.decode(video).sample, latents.shape[0])

    @property
    def per_frame(self) -> bool:
        """Whether frames are coded one by one (temporal ratio 1; see module docstring)."""
        return self.temporal_compression == 1

    def _to_vae_layout(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> the (N, C, T', H, W) the diffusers VAE takes (T' = 1 per frame)."""
        if self.per_frame:
            return rearrange(video, "b t c h w -> (b t) c 1 h w")
        return rearrange(video, "b t c h w -> b c t h w")

    def _from_vae_layout(self, video: Tensor, batch_size: int) -> Tensor:
        """Inverse of :meth:`_to_vae_layout` for a batch of ``batch_size`` videos."""
        if self.per_frame:
            return rearrange(video, "(b t) c 1 h w -> b t c h w", b=batch_size)
        return rearrange(video, "b c t h w -> b t c h w")

    def _posterior(self, images: Tensor):
        """The VAE's posterior of (B, T, 3, H, W) images in ``[-1, 1]``."""
        return self.vae.encode(self._to_vae_layout(images)).latent_dist

    def encode(
        self,
        rgb: Tensor,
        depth: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Encode RGB and depth videos separately and concatenate their latents.

        Args:
            rgb: (B, T, 3, H, W) float in ``[0, 1]``.
            depth: (B, T, 1, H, W) metres in ``[0, max_depth_m]``, or ``None`` for RGB only.
            generator: sample the posteriors with it; ``None`` takes their modes.

        Returns:
            (B, F, C, h, w) scaled latents with ``C = latent_channels`` (RGB) or
            ``2 * latent_channels`` (RGB then depth).

        Raises:
            ValueError: for wrong shapes, NaN, or values outside their ranges.
        """
        self._check_video(rgb, "rgb", 3)
        if not torch.isfinite(rgb).all():
            raise ValueError("rgb contains NaN or infinite values")
        low, high = float(rgb.min()), float(rgb.max())
        if low < 0 or high > 1:
            raise ValueError(f"rgb must lie in [0, 1], got [{low:.3f}, {high:.3f}]")
        latents = [self.encode_images(rgb * 2.0 - 1.0, generator)]
        if depth is not None:
            self._check_video(depth, "depth", 1)
            if depth.shape[:2] != rgb.shape[:2] or depth.shape[-2:] != rgb.shape[-2:]:
                raise ValueError(
                    f"depth {tuple(depth.shape)} must match rgb {tuple(rgb.shape)} in batch, "
                    "frames and size"
                )
            latents.append(self.encode_images(self.depth_to_image(depth), generator))
        return torch.cat(latents, dim=2)

    def decode(self, latents: Tensor, with_depth: bool) -> tuple[Tensor, Tensor | None]:
        """Decode concatenated latents back to RGB (and depth).

        Args:
            latents: (B, F, C, h, w) from :meth:`encode`.
            with_depth: whether the second half of the channels holds depth latents.

        Returns:
            ``(rgb, depth)``: (B, T, 3, H, W) in ``[0, 1]`` (clipped) and (B, T, 1, H, W) metres in
            ``[0, max_depth_m]`` (clipped), or ``None`` without depth.
        """
        modalities = 2 if with_depth else 1
        expected = modalities * self.config.latent_channels
        if latents.dim() != 5 or latents.shape[2] != expected:
            raise ValueError(
                f"latents must have shape (B, F, {expected}, h, w) for "
                f"{'RGB-D' if with_depth else 'RGB'}, got {tuple(latents.shape)}"
            )
        parts = latents.chunk(modalities, dim=2)
        rgb = ((self.decode_images(parts[0]) + 1.0) * 0.5).clamp(0.0, 1.0)
        depth = self.image_to_depth(self.decode_images(parts[1])) if with_depth else None
        return rgb, depth

    def forward(
        self, rgb: Tensor, depth: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Reconstruct a clip through sampled latents, for training the VAE.

        Args:
            rgb: (B, T, 3, H, W) in ``[0, 1]``.
            depth: (B, T, 1, H, W) metres, or ``None``.
            generator: samples the posterior (reparameterisation).

        Returns:
            ``(reconstruction_loss, kl)``: scalars. The reconstruction is the mean squared error in
            the ``[-1, 1]`` image space of both modalities; ``kl`` is the mean KL divergence of the
            posterior from a unit Gaussian per latent element.
        """
        self._check_video(rgb, "rgb", 3)
        images = [rgb * 2.0 - 1.0]
        if depth is not None:
            self._check_video(depth, "depth", 1)
            images.append(self.depth_to_image(depth))
        losses, kls = [], []
        for image in images:
            posterior = self._posterior(image)
            latents = posterior.sample(generator)
            decoded = self._from_vae_layout(self.vae.decode(latents).sample, image.shape[0])
            losses.append(torch.mean((decoded - image) ** 2))
            kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar)
            kls.append(kl.mean())
        return torch.stack(losses).mean(), torch.stack(kls).mean()
