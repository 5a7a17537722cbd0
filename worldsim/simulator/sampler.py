"""Sampling one chunk: the sampler's settings, the composite with the render, the denoising loop.

The model's ``config.json`` holds its architecture only; how a chunk is sampled from it is a
:class:`SamplerConfig`, as diffusers keeps a scheduler's settings apart from the model's. A
checkpoint folder may hold its measured best settings in ``sampler_config.json``
(:func:`load_sampler_config`); without one, the defaults apply.

One chunk
    :func:`generate_chunk` encodes the conditioning frames, reads the memory (map tokens, or the
    pixel-aligned render of a ``memory_render`` model), denoises the chunk's latents with the
    model's DDIM schedule (:func:`sample_chunk`; from pure noise, or with ``render_init`` from the
    reprojection's guess, SDEdit), decodes them and, for a model that reads a render, keeps the
    render's pixels where it shows an observed point (:func:`composite_render`): warp what is
    known, inpaint what is not. The chunk stepper (:mod:`worldsim.simulator.chunks`) calls it.
    A model with a pixel generator (:meth:`WorldModel.attach_pixel_generator`) generates in pixel
    space instead (:func:`generate_pixel_chunk`): each future frame is one row of the
    :class:`~worldsim.models.pixel_denoiser.PixelDenoiser`, conditioned on the context frames and
    the map's render at its camera, sampled with the generator's own EDM settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from worldsim.memory.splatting import MemoryRender, grow_into_holes
from worldsim.models.pixel_denoiser import sample_frames
from worldsim.models.pretrained import read_config
from worldsim.models.world_model import LEGACY_SAMPLER_KEYS

if TYPE_CHECKING:
    from worldsim.models.world_model import WorldModel

SAMPLER_FILE = "sampler_config.json"
"""File in a checkpoint folder holding the :class:`SamplerConfig` measured best for it."""


@dataclass(frozen=True)
class SamplerConfig:
    """How a chunk is sampled from the world model (not part of the model's config).

    The defaults are the settings measured best for the shipped checkpoint (its model card):
    4 DDIM steps, one of which runs, from the reprojection's guess.

    Attributes:
        num_inference_steps: DDIM steps of the schedule, in ``[1, num_train_timesteps]``.
        render_init: for a model that reads a render, the share in ``[0, 1]`` of the steps that
            a guess of the chunk replaces (SDEdit): the reprojection baseline's frames
            (:func:`render_guess`), whose latents are noised to the timestep after the first
            ``render_init * steps`` (rounded half up, at least one step left below 1); only the
            remaining steps run. 0 starts from pure noise; 1 decodes the guess. Ignored for a
            model that reads map tokens.
        render_fill: for a model that reads a render, rings of empty pixels next to drawn ones
            that take the mean of their drawn neighbours' render before the generated pixels
            are used (splat holes, silhouette edges); 0 for none, at most 16.
        render_composite: for a model that reads a render, a generated frame keeps the render's
            pixels where it shows an *observed* point (its colour at any distance, its depth
            within the sensor's range) and the generated ones elsewhere. Points the model
            generated are never pasted back (that would freeze its mistakes into later frames).
        render_generated: the render the network reads also shows points the model generated
            (``True``), or only observed ones (``False``, what the shipped model was trained on).
    """

    num_inference_steps: int = 4
    render_init: float = 0.75
    render_fill: int = 2
    render_composite: bool = True
    render_generated: bool = False

    def __post_init__(self) -> None:
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {steps!r}")
        share = self.render_init
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise ValueError(f"render_init must be a number in [0, 1], got {share!r}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"render_init must be a share of the steps in [0, 1], got {share}")
        fill = self.render_fill
        if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 16:
            raise ValueError(f"render_fill must be an int in [0, 16] rings of pixels, got {fill!r}")
        for name in ("render_composite", "render_generated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def check_model(self, model: WorldModel) -> None:
        """Raise unless ``model``'s schedule has ``num_inference_steps`` steps to give."""
        limit = model.config.num_train_timesteps
        if self.num_inference_steps > limit:
            raise ValueError(
                f"num_inference_steps must be in [1, {limit}] (the model's training steps), got "
                f"{self.num_inference_steps}"
            )

    def with_steps(self, num_inference_steps: int | None) -> SamplerConfig:
        """This config with another step count (``None``: unchanged), as scripts override it."""
        if num_inference_steps is None:
            return self
        return dataclasses.replace(self, num_inference_steps=num_inference_steps)

    def save(self, folder: str | Path) -> Path:
        """Write ``sampler_config.json`` into ``folder``; returns its path."""
        path = Path(folder) / SAMPLER_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path


def load_sampler_config(folder: str | Path | None) -> SamplerConfig:
    """The sampler settings of a checkpoint folder.

    ``sampler_config.json`` when the folder has one; else the sampler settings that a
    ``config.json`` written before :class:`SamplerConfig` held (converted, the rest of the
    defaults kept); else the defaults. ``None`` (a model built in code) gives the defaults.

    Raises:
        ValueError: for a file that is not valid JSON, an unknown field or a value out of range;
            the message names the file.
    """
    if folder is None:
        return SamplerConfig()
    folder = Path(folder)
    path = folder / SAMPLER_FILE
    if path.is_file():
        fields = read_config(path)
    else:
        config = folder / "config.json"
        old = read_config(config) if config.is_file() else {}
        fields = {key: old[key] for key in LEGACY_SAMPLER_KEYS if key in old}
    known = {field.name for field in dataclasses.fields(SamplerConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"{str(path)!r}: unknown sampler settings {unknown}; known are {sorted(known)}"
        )
    try:
        return SamplerConfig(**fields)
    except ValueError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


# ------------------------------------------------------------------------------ the composite


def composite_render(
    render: MemoryRender,
    rgb: Tensor,
    depth: Tensor,
    max_depth_m: float,
    fill_rings: int = 0,
) -> tuple[Tensor, Tensor]:
    """Frames with the render's observed points pasted over them: the one composite.

    A drawn observed point gives its colour at any distance, as a camera sees a far wall, and
    its depth only within the sensor's range, beyond which depth reads 0 as the sensor's does.
    The generated chunk (:func:`generate_chunk`), the reprojection's guess (:func:`render_guess`),
    the map's answers to planners and the evaluation's reprojection baseline all use it.

    Args:
        render: the memory rendered into the frames' cameras (fields (B, F, C, H, W)); only its
            *observed* points are pasted.
        rgb: (B, F, 3, H, W) colour under the render, in [0, 1].
        depth: (B, F, 1, H, W) depth under the render, metres.
        max_depth_m: the sensor's range, metres.
        fill_rings: rings of empty pixels next to drawn ones that take their drawn neighbours'
            mean render (``render_fill``).

    Returns:
        ``(rgb, depth)`` in ``rgb``'s device and dtype.
    """
    device, dtype = rgb.device, rgb.dtype
    render_rgb = render.rgb.to(device, dtype)
    render_depth = render.depth.to(device, dtype)
    drawn = (render.mask & render.observed).to(device)  # never paste generated points back
    covered = drawn & (render_depth <= max_depth_m)  # within the sensor's range
    render_depth = torch.where(drawn & ~covered, torch.zeros_like(render_depth), render_depth)
    drawn_rgb, drawn_depth = drawn, drawn
    if fill_rings:
        render_rgb, drawn_rgb = grow_into_holes(render_rgb, drawn, fill_rings)
        grown_depth, grown = grow_into_holes(render_depth, covered, fill_rings)
        render_depth = torch.where(drawn, render_depth, grown_depth)
        drawn_depth = drawn | grown
    return (
        torch.where(drawn_rgb, render_rgb, rgb),
        torch.where(drawn_depth, render_depth, depth.to(device, dtype)),
    )


def render_guess(
    model: WorldModel, context_rgb: Tensor, context_depth: Tensor, render: MemoryRender | None
) -> tuple[Tensor, Tensor]:
    """A chunk's frames as the reprojection baseline guesses them, where ``render_init`` starts.

    The render's observed points (:func:`composite_render`, without fill) over the last context
    frame.

    Args:
        model: the world model (its sensor range decides coverage).
        context_rgb: (B, n_context, 3, H, W) conditioning RGB in [0, 1].
        context_depth: (B, n_context, 1, H, W) conditioning depth, metres.
        render: the memory rendered into the chunk's cameras, or ``None`` (covers nothing).

    Returns:
        ``(rgb, depth)``: (B, n_future, 3, H, W) in [0, 1] and (B, n_future, 1, H, W) metres,
        in ``context_rgb``'s device and dtype.
    """
    batch, frames = context_rgb.shape[0], model.config.n_future
    last_rgb = context_rgb[:, -1:].expand(batch, frames, -1, -1, -1)  # (B, F, 3, H, W)
    last_depth = context_depth[:, -1:].expand(batch, frames, -1, -1, -1)  # (B, F, 1, H, W)
    if render is None:
        return last_rgb, last_depth
    return composite_render(render, last_rgb, last_depth, model.config.max_depth_m)


# ------------------------------------------------------------------------------ denoising


@torch.no_grad()
def sample_chunk(
    model: WorldModel,
    sampler: SamplerConfig,
    context_latents: Tensor,
    rays: Tensor,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    memory_tokens: Tensor | None = None,
    memory_mask: Tensor | None = None,
    render: Tensor | None = None,
    init_latents: Tensor | None = None,
) -> Tensor:
    """Denoise the latents of one future chunk, from pure noise or from a guess (SDEdit).

    With a guess, the first ``render_init * steps`` DDIM timesteps (rounded half up) are
    skipped, as in diffusers' image-to-image pipelines, but at least one step runs unless the
    share is 1: the guess's latents are noised to the first timestep left (the same noise as
    without a guess, ``scheduler.add_noise``) and denoised from there.

    Args:
        model: the world model.
        sampler: the steps and ``render_init``.
        context_latents: (B, Fc, C, h, w) latents of the conditioning frames.
        rays: (B, F, Cr, h, w) pixel-unshuffled Plücker rays of the chunk.
        generator: draws the initial noise (one generator, or one per batch row).
        memory_tokens: (B, N, D_mem) map tokens, or ``None``.
        memory_mask: (B, N) bool, True for real tokens.
        render: (B, F, Cm, h, w) encoded memory render (:meth:`WorldModel.encode_render`), or
            ``None``.
        init_latents: (B, F, C, h, w) latents of a guess of the chunk (:func:`render_guess`), or
            ``None`` to start from pure noise.

    Returns:
        (B, F, C, h, w) denoised latents (``init_latents`` itself when the share skips every
        step).
    """
    sampler.check_model(model)
    steps = sampler.num_inference_steps
    batch = context_latents.shape[0]
    shape = model.future_latent_shape(batch)
    if init_latents is not None and tuple(init_latents.shape) != shape:
        raise ValueError(
            f"init_latents must have shape {shape} (the chunk's latents), got "
            f"{tuple(init_latents.shape)}"
        )
    scheduler = model.make_scheduler()
    scheduler.set_timesteps(steps, device=context_latents.device)
    skipped = _skipped_steps(sampler.render_init, steps) if init_latents is not None else 0
    if skipped == steps:
        return init_latents
    noise = randn_tensor(
        shape, generator=generator, device=context_latents.device, dtype=context_latents.dtype
    )
    timesteps = scheduler.timesteps[skipped:]
    if skipped:
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1])
    else:
        latents = noise * scheduler.init_noise_sigma
    for timestep in timesteps:
        prediction = model.predict(
            latents,
            timestep.expand(batch),
            context_latents,
            rays,
            memory_tokens,
            memory_mask,
            render,
        )
        latents = scheduler.step(prediction, timestep, latents).prev_sample
    return latents


def _skipped_steps(share: float, steps: int) -> int:
    """DDIM steps a guess replaces: ``share * steps`` rounded half up, at least one left below 1.

    Rounding half up keeps the count monotone in ``steps`` (Python's ``round`` takes 1.5 to 2 and
    2.5 to 2).
    """
    if share >= 1.0:
        return steps
    return min(math.floor(share * steps + 0.5), steps - 1)


@torch.no_grad()
def generate_chunk(
    model: WorldModel,
    sampler: SamplerConfig,
    context_rgb: Tensor,
    context_depth: Tensor | None,
    cam_to_ref: Tensor,
    intrinsics: Tensor,
    *,
    generators: torch.Generator | list[torch.Generator] | None,
    memory_tokens: Tensor | None = None,
    memory_mask: Tensor | None = None,
    render: MemoryRender | None = None,
    render_age: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Generate the frames of one chunk for B rows in one model call.

    Args:
        model: the world model (inputs are moved to its device and dtype).
        sampler: how to sample (steps, ``render_init``, the composite).
        context_rgb: (B, n_context, 3, H, W) conditioning RGB in [0, 1].
        context_depth: (B, n_context, 1, H, W) conditioning depth, metres (ignored, and may be
            ``None``, for an RGB-only model).
        cam_to_ref: (B, n_future, 4, 4) poses of the chunk's cameras in the frame of the last
            conditioning camera.
        intrinsics: (B, 3, 3) ``K`` in pixels.
        generators: noise generator(s): one, or one per row.
        memory_tokens: (B, N, D) map tokens, or ``None`` for no memory.
        memory_mask: (B, N) bool, True for real tokens.
        render: the memory rendered into the chunk's cameras (a model with ``memory_render``);
            ``None`` for a model that reads tokens.
        render_age: (B, n_future, 1, H, W) frames since each drawn point was last seen (read by
            a pixel generator; ``None`` reads every drawn point as fresh).

    Returns:
        ``(rgb, depth)``: (B, n_future, 3, H, W) float32 in [0, 1] and (B, n_future, 1, H, W)
        float32 metres (``None`` for an RGB-only model), on the model's device.
    """
    if model.pixel_generator is not None:
        return generate_pixel_chunk(
            model,
            sampler,
            context_rgb,
            context_depth,
            cam_to_ref,
            intrinsics,
            generators=generators,
            render=render,
            render_age=render_age,
        )
    batch, frames = cam_to_ref.shape[:2]
    device, dtype = model.device, model.dtype
    chunk_k = intrinsics.to(device)[:, None].expand(batch, frames, 3, 3)
    rays = model.chunk_rays(chunk_k, cam_to_ref.to(device)).to(dtype)
    depth = context_depth.to(device, dtype) if model.config.use_depth else None
    context_latents = model.encode(context_rgb.to(device, dtype), depth)
    if memory_tokens is not None:
        memory_tokens = memory_tokens.to(device, dtype)
        memory_mask = memory_mask.to(device)
    encoded = init_latents = None
    if render is not None:
        encoded = model.encode_render(
            render.rgb.to(device, dtype), render.depth.to(device, dtype), render.mask.to(device)
        )
    reads_render = model.transformer.reads_render
    if reads_render and sampler.render_init:  # SDEdit from the reprojection baseline's frames
        guess_rgb, guess_depth = render_guess(model, context_rgb.to(device, dtype), depth, render)
        init_latents = model.encode(guess_rgb, guess_depth)
    latents = sample_chunk(
        model,
        sampler,
        context_latents,
        rays,
        generator=generators,
        memory_tokens=memory_tokens,
        memory_mask=memory_mask,
        render=encoded,
        init_latents=init_latents,
    )
    rgb, new_depth = model.decode(latents)
    if render is not None and sampler.render_composite:  # warp what is known, inpaint the rest
        rgb, new_depth = composite_render(
            render, rgb, new_depth, model.config.max_depth_m, sampler.render_fill
        )
    return rgb.float(), None if new_depth is None else new_depth.float()


@torch.no_grad()
def generate_pixel_chunk(
    model: WorldModel,
    sampler: SamplerConfig,
    context_rgb: Tensor,
    context_depth: Tensor,
    cam_to_ref: Tensor,
    intrinsics: Tensor,
    *,
    generators: torch.Generator | list[torch.Generator] | None,
    render: MemoryRender | None,
    render_age: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generate one chunk with the model's pixel generator: its F frames are F rows of one call.

    Every future frame reads the last ``n_context`` context frames and the map's render at its
    own camera (known where drawn, observed and within the sensor's range, as in training,
    :func:`worldsim.data.pixel_index.render_clips`); the generator's EDM sampler
    (``model.pixel_sampler``) spends at most 4 network evaluations on the chunk. With
    ``render_composite`` the render's observed points are pasted over the result as in the
    latent path; without, every pixel is the network's own ("generated only"). Arguments as
    :func:`generate_chunk` (``render=None`` is an empty map).

    Returns:
        ``(rgb, depth)``: (B, F, 3, H, W) in [0, 1] and (B, F, 1, H, W) metres, float32.
    """
    generator_model = model.pixel_generator
    batch, frames = cam_to_ref.shape[:2]
    height, width = model.config.height, model.config.width
    device = model.device
    if render is None:
        render = MemoryRender.empty(batch, frames, (height, width), device)
    n_context = generator_model.config.n_context
    rows = batch * frames

    def per_frame(tensor: Tensor) -> Tensor:  # (B, ...) -> (B * F, ...), each row F times
        return tensor.to(device).repeat_interleave(frames, dim=0)

    known = render.mask & render.observed & (render.depth <= model.config.max_depth_m)
    age = torch.zeros_like(render.depth) if render_age is None else render_age.to(device)
    conditions = generator_model.conditions(
        per_frame(context_rgb[:, -n_context:]),
        per_frame(context_depth[:, -n_context:]),
        (render.rgb * known).flatten(0, 1).to(device),
        (render.depth * known).flatten(0, 1).to(device),
        known.flatten(0, 1).to(device),
        age.flatten(0, 1).float(),
        per_frame(intrinsics),
        cam_to_ref.to(device).flatten(0, 1),
    )
    if isinstance(generators, list):  # one generator per row of the chunk: F noises from it
        noise_source = [generators[row // frames] for row in range(rows)]
    else:
        noise_source = generators
    pixels = sample_frames(
        generator_model,
        conditions,
        model.pixel_sampler,
        noise_source,
        keep_known=sampler.render_composite,
    )
    rgb, depth = generator_model.from_pixels(pixels.float())
    rgb = rgb.reshape(batch, frames, 3, height, width)
    depth = depth.reshape(batch, frames, 1, height, width)
    if sampler.render_composite:
        rgb, depth = composite_render(render, rgb, depth, model.config.max_depth_m)
    return rgb.float(), depth.float()
