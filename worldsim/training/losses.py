"""The world model's training losses: the diffusion loss (paper eq. 3 / 4) and the VAE's.

:func:`diffusion_loss` predicts the future chunk's ``v`` from the noisy latents, the context
latents, the Plücker rays of the chunk's poses (from its actions, :func:`chunk_targets`, or the
recorded poses) and the memory: map tokens (:func:`memory_tokens_for_batch`) or, for a model
with ``memory_render``, the memory rendered into the chunk's cameras (:func:`render_for_batch`).
Context noise and the render's camera jitter are described in :mod:`worldsim.training.trainer`.

Training on several processes: each process holds a shard of the global batch, the rows
``index::count`` (``shard=(index, count)``), and every process holds the same generator. Every
random draw of :func:`diffusion_loss` is made for the whole global batch and the shard's rows kept
(:func:`shard_rows`), so the union of the shards' noise, timesteps and jitter is the one-process
draw of the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from worldsim.geometry import relative_pose, waypoint_to_relative_pose
from worldsim.simulator.chunks import (
    chain_poses,
    insert_clip_memory,
    insert_frames,
    step_poses,
)

if TYPE_CHECKING:
    from worldsim.memory import Memory
    from worldsim.models.world_model import WorldModel


def check_shard(shard: tuple[int, int]) -> None:
    """Refuse a shard that is not ``(index, count)`` with ``0 <= index < count``."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")


def shard_rows(
    draw: Callable[[tuple[int, ...]], Tensor],
    shape: tuple[int, ...],
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """Draw a random tensor for the global batch and keep one shard's rows.

    Args:
        draw: draws a tensor of a given shape (from the generator every process shares).
        shape: the shard's shape; ``shape[0]`` is its rows.
        shard: ``(index, count)``: this process holds the global rows ``index::count`` of a
            global batch of ``shape[0] * count`` rows.

    Returns:
        A tensor of ``shape``: the rows ``index::count`` of ``draw((shape[0] * count, ...))``
        (just ``draw(shape)`` for one process).
    """
    check_shard(shard)
    index, count = shard
    if count == 1:
        return draw(tuple(shape))
    rows = shape[0]
    return draw((rows * count, *shape[1:]))[index::count]  # (rows, ...)


def _check_batch(model: WorldModel, batch: dict[str, Tensor], with_memory: bool) -> None:
    n_context, n_future = model.config.n_context, model.config.n_future
    frames = n_context + n_future
    model.check_frames(batch["rgb"], "batch['rgb']", 3, frames)
    model.check_frames(batch["depth"], "batch['depth']", 1, frames)
    size = batch["rgb"].shape[0]
    expected = {
        "cam_to_world": (size, frames, 4, 4),
        "intrinsics": (size, frames, 3, 3),
        "actions": (size, frames - 1),
    }
    for key, shape in expected.items():
        if key not in batch:
            raise ValueError(f"batch has no {key!r}; expected shape {shape}")
        if tuple(batch[key].shape) != shape:
            raise ValueError(
                f"batch[{key!r}] must have shape {shape} (n_context={n_context} + "
                f"n_future={n_future} frames), got {tuple(batch[key].shape)}"
            )
    if with_memory:
        for key in (
            "memory_rgb",
            "memory_depth",
            "memory_cam_to_world",
            "memory_intrinsics",
            "memory_mask",
        ):
            if key not in batch:
                raise ValueError(f"stage 'memory' needs batch[{key!r}] (frames to build the map)")


def chunk_targets(
    model: WorldModel, batch: dict[str, Tensor], pose_source: str = "actions"
) -> tuple[Tensor, Tensor]:
    """Poses of a clip's future frames, relative to and in the world frame.

    Args:
        model: the world model.
        batch: a training batch (see :func:`diffusion_loss`).
        pose_source: ``"actions"`` (free-space poses of the actions) or ``"recorded"``.

    Returns:
        ``(cam_to_ref, cam_to_world)``: (B, n_future, 4, 4) each, relative to the last
        conditioning frame and in the world frame.
    """
    n_context, n_future = model.config.n_context, model.config.n_future
    poses = batch["cam_to_world"]
    reference = poses[:, n_context - 1]  # (B, 4, 4)
    if pose_source == "actions":
        actions = batch["actions"][:, n_context - 1 : n_context - 1 + n_future]
        cam_to_ref = chain_poses(step_poses(actions, model)).to(poses.dtype)
        return cam_to_ref, reference[:, None] @ cam_to_ref
    future = poses[:, n_context:]
    return relative_pose(reference[:, None], future), future


def memory_tokens_for_batch(
    model: WorldModel, memory: Memory, batch: dict[str, Tensor], targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Build B maps from the batch's memory frames and read tokens for the target cameras.

    Returns:
        ``(tokens, mask)``: (B, N, D_mem) and (B, N) bool.
    """
    n_context = model.config.n_context
    insert_clip_memory(memory, batch, batch["rgb"].device)
    image_size = (model.config.height, model.config.width)
    return memory.tokens(targets, batch["intrinsics"][:, n_context:], image_size)


def render_for_batch(
    model: WorldModel,
    memory: Memory,
    batch: dict[str, Tensor],
    targets: Tensor,
    generator: torch.Generator,
    pose_noise: tuple[float, float] = (0.0, 0.0),
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """Render the clips' memory into their future cameras, encoded for the transformer.

    The memory holds the clips' earlier frames and their context frames (observed).

    Args:
        model: a world model with ``memory_render``.
        memory: a :class:`~worldsim.memory.RenderedMemory` (reset here to B rows).
        batch: a training batch (see :func:`diffusion_loss`).
        targets: (B, F, 4, 4) ``cam_to_world`` of the future frames.
        generator: draws the camera jitter (CPU).
        pose_noise: standard deviations of the jitter: translation metres, yaw degrees.
        shard: ``(index, count)``: the batch is the rows ``index::count`` of a global batch; the
            jitter is drawn for the global batch (:func:`shard_rows`).

    Returns:
        (B, F', Cm, h, w) :meth:`WorldModel.encode_render` of the render.
    """
    n_context = model.config.n_context
    device = batch["rgb"].device
    insert_clip_memory(memory, batch, device)
    insert_frames(
        memory,
        batch["rgb"][:, :n_context],
        batch["depth"][:, :n_context],
        batch["intrinsics"][:, :n_context],
        batch["cam_to_world"][:, :n_context],
    )
    cameras = targets.float()
    metres, degrees = pose_noise
    if metres > 0 or degrees > 0:
        rows, frames = cameras.shape[:2]
        waypoints = shard_rows(
            lambda shape: torch.randn(shape, generator=generator), (rows, frames, 3), shard
        )  # (B, F, 3): (dx, dz, dyaw)
        waypoints *= torch.tensor([metres, metres, math.radians(degrees)])
        cameras = cameras @ waypoint_to_relative_pose(waypoints).to(cameras)
    size = (model.config.height, model.config.width)
    render = memory.render(cameras, batch["intrinsics"][:, n_context:].float(), size)
    return model.encode_render(render.rgb, render.depth, render.mask)


def diffusion_loss(
    model: WorldModel,
    batch: dict[str, Tensor],
    generator: torch.Generator,
    memory: Memory | None = None,
    pose_source: str = "actions",
    network: torch.nn.Module | None = None,
    context_noise: float = 0.0,
    render_pose_noise: tuple[float, float] = (0.0, 0.0),
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """Diffusion loss of a clip (paper eq. 3 without memory, eq. 4 with).

    Args:
        model: the world model.
        batch: ``rgb`` (B, T, 3, H, W) in [0, 1]; ``depth`` (B, T, 1, H, W) metres;
            ``cam_to_world`` (B, T, 4, 4); ``intrinsics`` (B, T, 3, 3); ``actions`` (B, T - 1)
            int64; with a memory also ``memory_rgb`` / ``memory_depth`` /
            ``memory_cam_to_world`` / ``memory_intrinsics`` (B, S, ...) and ``memory_mask``
            (B, S) bool. ``T = n_context + n_future``. Optionally ``latents`` (B, T, C, h, w):
            the frames' latents from a :class:`~worldsim.data.latents.LatentCache`, used instead of
            encoding (only for a VAE that codes frames one by one).
        generator: draws timesteps and noise (on the CPU, then moved).
        memory: the memory to read map tokens from, or ``None`` (stage 1).
        pose_source: ``"actions"`` or ``"recorded"``.
        network: the callable that runs ``model.predict`` (e.g. the model wrapped for
            distributed training); ``model`` itself if ``None``.
        context_noise: largest standard deviation of the conditioning-latent noise, >= 0.
        render_pose_noise: camera jitter of a memory render (:func:`render_for_batch`).
        shard: ``(index, count)``: ``batch`` is the rows ``index::count`` of a global batch of
            ``count`` equal shards (one per process); timesteps, noise and jitter are drawn for
            the global batch and this shard's rows kept (:func:`shard_rows`). ``(0, 1)``: the
            batch is the global batch.

    Returns:
        Scalar mean squared error between predicted and true ``v``, the mean over this shard
        (with equal shards, the mean of the shards' losses is the global batch's).
    """
    _check_batch(model, batch, memory is not None)
    check_shard(shard)
    n_context = model.config.n_context
    rgb, depth = batch["rgb"], batch["depth"]
    if "latents" in batch:  # encoded once by a LatentCache
        latents = batch["latents"]
        expected = (rgb.shape[0], rgb.shape[1], model.latent_channels, *model.latent_size)
        if tuple(latents.shape) != expected:
            raise ValueError(
                f"batch['latents'] must have shape {expected} (frames coded one by one), got "
                f"{tuple(latents.shape)}"
            )
        context, target = latents[:, :n_context], latents[:, n_context:]
    else:
        with torch.no_grad():
            context = model.encode(rgb[:, :n_context], depth[:, :n_context])
            target = model.encode(rgb[:, n_context:], depth[:, n_context:])  # (B, F, C, h, w)
    cam_to_ref, targets = chunk_targets(model, batch, pose_source)
    rays = model.chunk_rays(batch["intrinsics"][:, n_context:], cam_to_ref).to(target.dtype)
    tokens = mask = render = None
    if memory is not None and model.transformer.reads_render:
        with torch.no_grad():
            render = render_for_batch(
                model, memory, batch, targets, generator, render_pose_noise, shard
            ).to(target.dtype)
    elif memory is not None:
        with torch.no_grad():
            tokens, mask = memory_tokens_for_batch(model, memory, batch, targets)
        tokens = tokens.to(target.dtype)

    def normal(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=generator)

    def uniform(shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=generator)

    if context_noise > 0:
        level = shard_rows(uniform, tuple(context.shape[:1]), shard) * context_noise  # (B,)
        noise = shard_rows(normal, tuple(context.shape), shard) * level[:, None, None, None, None]
        context = context + noise.to(context)
    scheduler = model.scheduler
    size = target.shape[0]
    levels = scheduler.config.num_train_timesteps
    timesteps = shard_rows(
        lambda shape: torch.randint(0, levels, shape, generator=generator), (size,), shard
    )  # (B,)
    noise = shard_rows(normal, tuple(target.shape), shard).to(target)
    timesteps = timesteps.to(target.device)
    noisy = scheduler.add_noise(target, noise, timesteps)
    velocity = scheduler.get_velocity(target, noise, timesteps)
    network = network if network is not None else model
    prediction = network(noisy, timesteps, context, rays, tokens, mask, render)
    return torch.mean((prediction.float() - velocity.float()) ** 2)


def vae_loss(
    model: WorldModel,
    batch: dict[str, Tensor],
    generator: torch.Generator,
    kl_weight: float,
    network: torch.nn.Module | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """VAE-stage loss of a batch of clips: reconstruction + ``kl_weight`` x KL.

    Args:
        model: the world model.
        batch: ``rgb`` (B, T, 3, H, W) in [0, 1] and ``depth`` (B, T, 1, H, W) metres.
        generator: samples the VAE posterior.
        kl_weight: weight of the KL term.
        network: the callable that runs ``model.vae`` (e.g. wrapped for distributed
            training); ``model.vae`` itself if ``None``.

    Returns:
        ``(loss, parts)``: the scalar loss and its parts as floats.
    """
    model.check_frames(batch["rgb"], "batch['rgb']", 3)
    depth = batch["depth"] if model.config.use_depth else None
    network = network if network is not None else model.vae
    reconstruction, kl = network(batch["rgb"], depth, generator)
    loss = reconstruction + kl_weight * kl
    return loss, {"reconstruction": float(reconstruction.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def latent_std(model: WorldModel, batch: dict[str, Tensor]) -> float:
    """Standard deviation of the unscaled latents of a batch (to set the VAE's scale)."""
    depth = batch["depth"] if model.config.use_depth else None
    latents = model.vae.encode(batch["rgb"], depth) / model.vae.scaling_factor
    return float(latents.float().std())
