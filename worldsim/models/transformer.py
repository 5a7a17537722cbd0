"""CogVideoX-style denoising transformer with memory blocks (paper §3.2-3.3, eq. 1-2).

Inputs of one denoising call, all on the latent grid of the future chunk (``F`` latent frames of
``h x w`` cells):

- the noisy RGB-D latents of the chunk, ``(B, F, C, h, w)``;
- the clean latents of the conditioning observation (the context frames), ``(B, Fc, C, h, w)``,
  stacked along channels and repeated for every future latent frame, so each future cell sees
  the context at the same image location;
- the Plücker ray images of the chunk's cameras relative to the last context frame,
  pixel-unshuffled to the latent grid (paper eq. 1), ``(B, F, Cr, h, w)``;
- optionally the memory *rendered* into each future camera, pixel-aligned on the latent grid,
  ``(B, F, Cm, h, w)`` (:meth:`worldsim.models.world_model.WorldModel.encode_render`: the VAE
  latents of the rendered RGB-D and the share of each cell the render covers).

The first three are concatenated along channels and patch-embedded by one widened patch
embedding (the CogVideoX image-to-video recipe, widened further for the rays); the render has a
patch embedding of its own, added to those tokens and zero-initialised, so a render branch added
to a trained backbone leaves its output unchanged until it is trained. CogVideoX blocks (joint
expert-adaLN attention over the video tokens; the text stream is empty) follow, each optionally
followed by a :class:`MemoryBlock` that lets the video tokens read the 3D map tokens (eq. 2).

A memory block's gates start at zero, so a freshly added memory branch leaves the stage-1
backbone's output unchanged, bit for bit; a batch row without any map token skips the memory
blocks entirely, so an empty memory gives exactly the backbone output.

The model predicts the diffusion target of its scheduler (``v`` for the world model's
v-prediction schedule) for the future chunk, shape ``(B, F, C, h, w)``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_3d_sincos_pos_embed
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from einops import rearrange, repeat
from torch import Tensor, nn

from worldsim.models.pretrained import ModelMixin


class ExpertAdaLayerNorm(nn.Module):
    """Adaptive layer norms with separate experts for video tokens and map tokens.

    From the timestep embedding, the video expert regresses ``(shift, scale, gate)`` for the
    cross-attention and for the feed-forward, and the map expert ``(shift, scale, gate)`` for the
    map tokens; the map gate scales the map tokens entering the attention as keys and values.
    The two residual gates of the video tokens start at zero (the memory branch starts switched
    off); the map gate starts at one (weights zero, bias one), so the attention sees the map
    from the first step.

    Args:
        conditioning_dim: width of the timestep embedding.
        dim: width of the tokens.
        eps: layer-norm epsilon.
    """

    def __init__(self, conditioning_dim: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.silu = nn.SiLU()
        self.video = nn.Linear(conditioning_dim, 6 * dim)
        self.map = nn.Linear(conditioning_dim, 3 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        with torch.no_grad():
            for gate in (2, 5):
                self.video.weight[gate * dim : (gate + 1) * dim].zero_()
                self.video.bias[gate * dim : (gate + 1) * dim].zero_()
            self.map.weight[2 * dim :].zero_()
            self.map.bias[2 * dim :].fill_(1.0)

    def video_modulation(self, temb: Tensor) -> tuple[Tensor, ...]:
        """Six (B, 1, D) tensors: attention shift, scale, gate; feed-forward shift, scale, gate."""
        return tuple(x[:, None] for x in self.video(self.silu(temb)).chunk(6, dim=1))

    def modulate_map(self, tokens: Tensor, temb: Tensor) -> Tensor:
        """Normalise, modulate and gate map tokens: (B, N, D) -> (B, N, D)."""
        shift, scale, gate = (x[:, None] for x in self.map(self.silu(temb)).chunk(3, dim=1))
        return gate * (self.norm(tokens) * (1 + scale) + shift)


class MemoryBlock(nn.Module):
    """Video tokens read the map tokens: expert adaLN, cross-attention, feed-forward (eq. 2).

    ``h = h + g_a * CrossAttn([adaLN(h), c], adaLN_map(m))`` then
    ``h = h + g_f * FF(adaLN(h))``, where ``c`` is the camera (Plücker) embedding of each video
    token, concatenated to the queries' input, and every ``g`` comes from the timestep
    embedding and starts at zero.

    Args:
        dim: token width ``D``.
        num_attention_heads: attention heads.
        attention_head_dim: width per head; ``heads * head_dim == D``.
        time_embed_dim: width of the timestep embedding.
        activation_fn: feed-forward activation (diffusers name).
        norm_eps: layer-norm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        time_embed_dim: int,
        activation_fn: str = "gelu-approximate",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm = ExpertAdaLayerNorm(time_embed_dim, dim, norm_eps)
        self.attn = Attention(
            query_dim=2 * dim,
            cross_attention_dim=dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            out_dim=dim,
            qk_norm="layer_norm",
            eps=1e-6,
            bias=True,
            processor=AttnProcessor2_0(),
        )
        self.ff = FeedForward(dim, activation_fn=activation_fn)

    def forward(
        self,
        hidden_states: Tensor,
        map_tokens: Tensor,
        map_mask: Tensor,
        camera: Tensor,
        temb: Tensor,
    ) -> Tensor:
        """Update video tokens from map tokens.

        Args:
            hidden_states: (B, N, D) video tokens.
            map_tokens: (B, M, D) map tokens, already projected to width ``D``; ``M >= 1``.
            map_mask: (B, M) bool, True for real tokens; every row has at least one.
            camera: (B, N, D) camera embedding of each video token.
            temb: (B, Dt) timestep embedding.

        Returns:
            (B, N, D) updated video tokens.
        """
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.norm.video_modulation(temb)
        keys = self.norm.modulate_map(map_tokens, temb)
        queries = torch.cat([self.norm.norm(hidden_states) * (1 + scale_a) + shift_a, camera], -1)
        attended = self.attn(queries, encoder_hidden_states=keys, attention_mask=map_mask[:, None])
        hidden_states = hidden_states + gate_a * attended
        ff_input = self.norm.norm(hidden_states) * (1 + scale_f) + shift_f
        return hidden_states + gate_f * self.ff(ff_input)


class WorldTransformer(ModelMixin, ConfigMixin):
    """Action- and memory-conditioned video denoiser in the CogVideoX layout.

    Submodule names follow diffusers' ``CogVideoXTransformer3DModel`` (``patch_embed.proj``,
    ``time_embedding``, ``transformer_blocks``, ``norm_final``, ``norm_out``, ``proj_out``) so a
    CogVideoX checkpoint's weights can be copied in; the memory branch lives in
    ``memory_blocks``, ``memory_proj`` and ``camera_embed``.

    Args:
        latent_channels: channels ``C`` of the noisy latents (RGB latents, plus depth latents).
        num_context_latent_frames: latent frames ``Fc`` of the conditioning observation.
        ray_channels: channels ``Cr`` of the pixel-unshuffled Plücker rays per latent frame.
        num_attention_heads: heads of every attention layer.
        attention_head_dim: width per head; the model width is ``D = heads * head_dim``.
        num_layers: CogVideoX blocks.
        time_embed_dim: width of the timestep embedding.
        patch_size: latent cells per token along each axis.
        memory_token_dim: width of the memory's tokens; ``0`` builds no memory blocks (the NWM
            baseline, or a model that reads its memory only as a render).
        render_channels: channels ``Cm`` of the pixel-aligned memory render per latent frame;
            ``0`` builds no render input.
        activation_fn: feed-forward activation.
        norm_eps: layer-norm epsilon.
        flip_sin_to_cos: timestep-embedding layout (CogVideoX: True).
        freq_shift: timestep-embedding frequency shift (CogVideoX: 0).
        spatial_interpolation_scale: spatial scale of the 3D sin-cos position embedding.
        temporal_interpolation_scale: temporal scale of the 3D sin-cos position embedding.
        attention_bias: bias in the self-attention projections.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        num_context_latent_frames: int = 1,
        ray_channels: int = 96,
        num_attention_heads: int = 4,
        attention_head_dim: int = 32,
        num_layers: int = 4,
        time_embed_dim: int = 128,
        patch_size: int = 2,
        memory_token_dim: int = 0,
        render_channels: int = 0,
        activation_fn: str = "gelu-approximate",
        norm_eps: float = 1e-5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        spatial_interpolation_scale: float = 1.0,
        temporal_interpolation_scale: float = 1.0,
        attention_bias: bool = True,
    ):
        super().__init__()
        for name, value, low in (
            ("latent_channels", latent_channels, 1),
            ("num_context_latent_frames", num_context_latent_frames, 1),
            ("ray_channels", ray_channels, 1),
            ("num_attention_heads", num_attention_heads, 1),
            ("attention_head_dim", attention_head_dim, 2),
            ("num_layers", num_layers, 1),
            ("time_embed_dim", time_embed_dim, 1),
            ("patch_size", patch_size, 1),
            ("memory_token_dim", memory_token_dim, 0),
            ("render_channels", render_channels, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        dim = num_attention_heads * attention_head_dim
        if dim % 4:
            raise ValueError(
                f"num_attention_heads * attention_head_dim = {dim} must be a multiple of 4 "
                "(3D sin-cos position embeddings)"
            )
        in_channels = latent_channels * (1 + num_context_latent_frames) + ray_channels
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.time_proj = Timesteps(dim, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(dim, time_embed_dim, "silu")
        self.transformer_blocks = nn.ModuleList(
            [
                CogVideoXBlock(
                    dim=dim,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    time_embed_dim=time_embed_dim,
                    activation_fn=activation_fn,
                    attention_bias=attention_bias,
                    norm_eps=norm_eps,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_final = nn.LayerNorm(dim, norm_eps)
        self.norm_out = AdaLayerNorm(
            embedding_dim=time_embed_dim,
            output_dim=2 * dim,
            norm_elementwise_affine=True,
            norm_eps=norm_eps,
            chunk_dim=1,
        )
        self.proj_out = nn.Linear(dim, patch_size * patch_size * latent_channels)
        if memory_token_dim:
            self.memory_proj = nn.Linear(memory_token_dim, dim)
            self.camera_embed = nn.Conv2d(ray_channels, dim, patch_size, stride=patch_size)
            self.memory_blocks = nn.ModuleList(
                [
                    MemoryBlock(
                        dim,
                        num_attention_heads,
                        attention_head_dim,
                        time_embed_dim,
                        activation_fn,
                        norm_eps,
                    )
                    for _ in range(num_layers)
                ]
            )
        if render_channels:
            self.render_embed = nn.Conv2d(render_channels, dim, patch_size, stride=patch_size)
            nn.init.zeros_(self.render_embed.weight)  # a new render branch starts switched off
            nn.init.zeros_(self.render_embed.bias)
        self.gradient_checkpointing = False

    @property
    def has_memory(self) -> bool:
        """Whether the model has memory blocks that read map tokens (``memory_token_dim > 0``)."""
        return self.config.memory_token_dim > 0

    @property
    def reads_render(self) -> bool:
        """Whether the model reads a pixel-aligned memory render (``render_channels > 0``)."""
        return self.config.render_channels > 0

    def memory_parameters(self) -> list[nn.Parameter]:
        """Parameters of the memory branch (trained in stage 2); empty without one."""
        modules: list[nn.Module] = []
        if self.has_memory:
            modules += [self.memory_proj, self.camera_embed, self.memory_blocks]
        if self.reads_render:
            modules.append(self.render_embed)
        return [p for module in modules for p in module.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of everything but the memory branch (trained in stage 1)."""
        memory = {id(p) for p in self.memory_parameters()}
        return [p for p in self.parameters() if id(p) not in memory]

    def _patchify(self, conv: nn.Conv2d, images: Tensor) -> Tensor:
        """(B, F, C, h, w) -> (B, F * h/p * w/p, D) tokens, frame-major then row-major."""
        batch = images.shape[0]
        tokens = conv(rearrange(images, "b f c h w -> (b f) c h w"))  # (B*F, D, h/p, w/p)
        return rearrange(tokens, "(b f) d y x -> b (f y x) d", b=batch)

    def _check_inputs(
        self,
        noisy: Tensor,
        context: Tensor,
        rays: Tensor,
        memory_tokens: Tensor | None,
        memory_mask: Tensor | None,
        render: Tensor | None = None,
    ) -> None:
        config = self.config
        batch, frames, channels, height, width = noisy.shape
        if channels != config.latent_channels:
            raise ValueError(
                f"noisy latents have {channels} channels, the model expects "
                f"{config.latent_channels}: shape (B, F, {config.latent_channels}, h, w)"
            )
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(
                f"latent grid {height}x{width} must be a multiple of patch_size {config.patch_size}"
            )
        expected = (batch, config.num_context_latent_frames, channels, height, width)
        if tuple(context.shape) != expected:
            raise ValueError(
                f"context latents must have shape {expected}, got {tuple(context.shape)}"
            )
        expected = (batch, frames, config.ray_channels, height, width)
        if tuple(rays.shape) != expected:
            raise ValueError(f"ray images must have shape {expected}, got {tuple(rays.shape)}")
        if render is not None:
            if not self.reads_render:
                raise ValueError(
                    "this transformer reads no memory render (render_channels=0); pass render=None"
                )
            expected = (batch, frames, config.render_channels, height, width)
            if tuple(render.shape) != expected:
                raise ValueError(
                    f"the memory render must have shape {expected}, got {tuple(render.shape)}"
                )
        if memory_tokens is None:
            return
        if not self.has_memory:
            raise ValueError(
                "this transformer has no memory branch (memory_token_dim=0); pass "
                "memory_tokens=None"
            )
        if (
            memory_tokens.dim() != 3
            or memory_tokens.shape[0] != batch
            or memory_tokens.shape[2] != config.memory_token_dim
        ):
            raise ValueError(
                f"memory tokens must have shape (B={batch}, N, {config.memory_token_dim}), got "
                f"{tuple(memory_tokens.shape)}"
            )
        if memory_mask is None or tuple(memory_mask.shape) != tuple(memory_tokens.shape[:2]):
            got = None if memory_mask is None else tuple(memory_mask.shape)
            raise ValueError(
                f"memory_mask must be a bool tensor of shape {tuple(memory_tokens.shape[:2])}, "
                f"got {got}"
            )

    def forward(
        self,
        noisy: Tensor,
        timestep: Tensor,
        context: Tensor,
        rays: Tensor,
        memory_tokens: Tensor | None = None,
        memory_mask: Tensor | None = None,
        render: Tensor | None = None,
    ) -> Tensor:
        """Predict the diffusion target of the future chunk.

        Args:
            noisy: (B, F, C, h, w) noisy latents of the future chunk.
            timestep: (B,) or scalar diffusion timesteps (integers in ``[0, T_train)``).
            context: (B, Fc, C, h, w) clean latents of the conditioning observation.
            rays: (B, F, Cr, h, w) pixel-unshuffled Plücker rays of the chunk's cameras.
            memory_tokens: (B, N, D_mem) map tokens, or ``None`` for no memory (N may be 0).
            memory_mask: (B, N) bool, True for real tokens; required with ``memory_tokens``.
            render: (B, F, Cm, h, w) the memory rendered into the chunk's cameras, or ``None``
                (no memory: the render branch adds nothing).

        Returns:
            (B, F, C, h, w) prediction (``v`` under v-prediction).
        """
        self._check_inputs(noisy, context, rays, memory_tokens, memory_mask, render)
        batch, frames, channels, height, width = noisy.shape
        patch = self.config.patch_size
        grid_h, grid_w = height // patch, width // patch

        timestep = torch.as_tensor(timestep, device=noisy.device).reshape(-1).expand(batch)
        temb = self.time_embedding(self.time_proj(timestep).to(noisy.dtype))  # (B, Dt)

        context_stack = repeat(context, "b fc c h w -> b f (fc c) h w", f=frames)
        inputs = torch.cat([noisy, context_stack, rays], dim=2)  # (B, F, C_in, h, w)
        hidden = self._patchify(self.patch_embed.proj, inputs)  # (B, F*gh*gw, D)
        if render is not None:
            hidden = hidden + self._patchify(self.render_embed, render)  # (B, F*gh*gw, D)
        position = get_3d_sincos_pos_embed(
            hidden.shape[-1],
            (grid_w, grid_h),
            frames,
            self.config.spatial_interpolation_scale,
            self.config.temporal_interpolation_scale,
            device=hidden.device,
            output_type="pt",
        )  # (F, gh*gw, D)
        hidden = hidden + position.flatten(0, 1)[None].to(hidden.dtype)
        text = hidden.new_zeros(batch, 0, hidden.shape[-1])  # no text stream

        use_memory = memory_tokens is not None and memory_tokens.shape[1] > 0
        if use_memory:
            memory_mask = memory_mask.bool()
            has_memory = memory_mask.any(dim=1)  # (B,)
            # Rows without any real token attend to their padding (to avoid an all-masked
            # softmax) and are then reset to the backbone output below.
            attend_mask = memory_mask | ~has_memory[:, None]
            map_tokens = self.memory_proj(memory_tokens)  # (B, N, D)
            camera = self._patchify(self.camera_embed, rays)  # (B, F*gh*gw, D)

        for index, block in enumerate(self.transformer_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden, text = self._gradient_checkpointing_func(block, hidden, text, temb)
            else:
                hidden, text = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb)
            if use_memory:
                memory_block = self.memory_blocks[index]
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    updated = self._gradient_checkpointing_func(
                        memory_block, hidden, map_tokens, attend_mask, camera, temb
                    )
                else:
                    updated = memory_block(hidden, map_tokens, attend_mask, camera, temb)
                hidden = torch.where(has_memory[:, None, None], updated, hidden)

        hidden = self.norm_out(self.norm_final(hidden), temb=temb)
        out = self.proj_out(hidden)  # (B, F*gh*gw, p*p*C)
        return rearrange(
            out,
            "b (f y x) (c py px) -> b f c (y py) (x px)",
            f=frames,
            y=grid_h,
            x=grid_w,
            py=patch,
            px=patch,
            c=channels,
        )

    @torch.no_grad()
    def copy_cogvideox_weights(self, pretrained: nn.Module, use_depth: bool) -> None:
        """Initialise from a diffusers ``CogVideoXTransformer3DModel`` of the same width.

        Blocks, timestep embedding and output norms are copied as they are. The widened patch
        embedding takes the pretrained kernel on the noisy RGB latent channels (and, for an
        image-to-video model with twice the input channels, on the last context frame's RGB
        latents); its other input channels start at zero. The output projection's depth rows
        (with ``use_depth``) start as copies of its RGB rows. The memory branch is untouched.

        Args:
            pretrained: the CogVideoX transformer.
            use_depth: whether this model's latents are RGB then depth.

        Raises:
            ValueError: if widths, patch size or latent channels do not match.
        """
        source = pretrained.state_dict()
        target = self.state_dict()
        modalities = 2 if use_depth else 1
        channels = self.config.latent_channels // modalities
        copied = {}
        for name, value in source.items():
            if not name.startswith(
                ("transformer_blocks.", "time_embedding.", "norm_final.", "norm_out.")
            ):
                continue
            if name not in target or target[name].shape != value.shape:
                got = None if name not in target else tuple(target[name].shape)
                raise ValueError(
                    f"CogVideoX weight {name} {tuple(value.shape)} does not fit this model "
                    f"({got}); build it with the checkpoint's width, heads and layers"
                )
            copied[name] = value
        kernel = source["patch_embed.proj.weight"]  # (D, C_pre, p, p)
        widened = torch.zeros_like(target["patch_embed.proj.weight"])  # (D, C_in, p, p)
        if kernel.shape[0] != widened.shape[0] or kernel.shape[2:] != widened.shape[2:]:
            raise ValueError(
                f"CogVideoX patch embedding {tuple(kernel.shape)} does not match this model's "
                f"width and patch size {tuple(widened.shape)}"
            )
        if kernel.shape[1] not in (channels, 2 * channels):
            raise ValueError(
                f"CogVideoX patch embedding takes {kernel.shape[1]} channels; expected "
                f"{channels} (text-to-video) or {2 * channels} (image-to-video) for "
                f"{channels} latent channels per modality"
            )
        widened[:, :channels] = kernel[:, :channels]
        if kernel.shape[1] == 2 * channels:
            last_context = self.config.latent_channels * self.config.num_context_latent_frames
            widened[:, last_context : last_context + channels] = kernel[:, channels:]
        copied["patch_embed.proj.weight"] = widened
        copied["patch_embed.proj.bias"] = source["patch_embed.proj.bias"]
        rows = source["proj_out.weight"].shape[0]  # p * p * channels, ordered (c, py, px)
        if rows * modalities != target["proj_out.weight"].shape[0]:
            raise ValueError(
                f"CogVideoX output projection has {rows} rows; this model needs "
                f"{target['proj_out.weight'].shape[0] // modalities} per modality"
            )
        copied["proj_out.weight"] = source["proj_out.weight"].repeat(modalities, 1)
        copied["proj_out.bias"] = source["proj_out.bias"].repeat(modalities)
        self.load_state_dict(copied, strict=False)
