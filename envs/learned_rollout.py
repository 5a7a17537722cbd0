"""The learned rollout: the world model behind the planners' rollout protocol.

:class:`WorldModelRollout` implements :class:`planners.rollout.RolloutModel` with a
:class:`~worldsim.world_model.WorldModel` and a :class:`~worldsim.memory.Memory`, so every planner
that runs against the ground-truth oracle (:class:`envs.rollout.OracleRollout`) runs unchanged
against the learned simulator.

Chunks
    The model generates ``n_future`` frames per call, one per action (paper Algorithm 1a). A
    sequence of ``L`` actions is cut into ``ceil(L / n_future)`` chunks; the last chunk is padded
    with ``stop`` (no motion) and the padded frames are discarded: they are neither returned nor
    written into the memory. Each chunk is conditioned on the last ``n_context`` frames (start
    frames, then generated ones) and on the memory's tokens for the chunk's cameras; its generated
    RGB-D is unprojected into the memory before the next chunk.

Actions
    Discrete ids become relative camera poses through
    :func:`worldsim.geometry.action_to_relative_pose` (with the model's step sizes) and waypoints
    through :func:`worldsim.geometry.waypoint_to_relative_pose`. Motion is free-space: a learned
    world knows no collisions (``RolloutResult.collided`` is ``None``).

Batching and randomness
    All rows of a chunk go through one model call, ``batch_size`` rows at a time. Each row gets
    its own noise generator, seeded from the caller's generator before any row is processed, so
    a row's rollout does not depend on ``batch_size`` or on the other rows (up to floating-point
    rounding of batched matrix products).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from planners.rollout import RolloutResult, RolloutStart, check_rollout_request
from worldsim.geometry import action_to_relative_pose, waypoint_to_relative_pose
from worldsim.memory import Memory
from worldsim.sampling import sample_chunk

if TYPE_CHECKING:
    from worldsim.world_model import WorldModel

_SEED_HIGH = 2**62
"""Row seeds are drawn uniformly from ``[0, _SEED_HIGH)``."""


def row_generators(
    count: int, generator: torch.Generator | np.random.Generator | None = None
) -> list[torch.Generator]:
    """Independent CPU noise generators, one per row, seeded from one random source.

    CPU generators make the noise identical on every device (diffusers draws it on the CPU and
    moves it).

    Args:
        count: number of rows, >= 0.
        generator: the source of the seeds; ``None`` draws them from fresh OS entropy (without
            touching any global random state).

    Returns:
        ``count`` seeded ``torch.Generator`` objects.
    """
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(
            0, _SEED_HIGH, (count,), generator=generator, device=generator.device
        ).tolist()
    else:
        rng = generator if generator is not None else np.random.default_rng()
        seeds = rng.integers(0, _SEED_HIGH, size=count).tolist()
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def step_poses(actions: Tensor, model: WorldModel) -> Tensor:
    """Relative camera pose of every step, each in the frame of the camera before it.

    Args:
        actions: (B, L) integer ids or (B, L, 3) float waypoints ``(dx, dz, dyaw)``.
        model: gives the step sizes of discrete actions.

    Returns:
        (B, L, 4, 4) float32 free-space motions.
    """
    if actions.is_floating_point():
        return waypoint_to_relative_pose(actions.float())
    return action_to_relative_pose(actions, model.action_spec).float()


def chain_poses(steps: Tensor) -> Tensor:
    """Poses after each step relative to the camera before the first one.

    Args:
        steps: (B, L, 4, 4) relative poses (:func:`step_poses`).

    Returns:
        (B, L, 4, 4) ``steps[:, 0] @ ... @ steps[:, l]`` for each ``l``.
    """
    poses, current = [], torch.eye(4, dtype=steps.dtype, device=steps.device)
    current = current.expand(steps.shape[0], 4, 4)
    for index in range(steps.shape[1]):
        current = current @ steps[:, index]
        poses.append(current)
    return torch.stack(poses, dim=1)


@torch.no_grad()
def generate_chunk(
    model: WorldModel,
    context_rgb: Tensor,
    context_depth: Tensor | None,
    cam_to_ref: Tensor,
    intrinsics: Tensor,
    memory_tokens: Tensor | None,
    memory_mask: Tensor | None,
    generators: list[torch.Generator],
    num_inference_steps: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Generate the frames of one action chunk for B rows in one model call.

    Args:
        model: the world model.
        context_rgb: (B, n_context, 3, H, W) conditioning RGB in [0, 1].
        context_depth: (B, n_context, 1, H, W) conditioning depth, metres (``None`` for an
            RGB-only model).
        cam_to_ref: (B, n_future, 4, 4) poses of the chunk's cameras in the frame of the last
            conditioning camera.
        intrinsics: (B, 3, 3) ``K`` in pixels.
        memory_tokens: (B, N, D) map tokens, or ``None`` for no memory.
        memory_mask: (B, N) bool, True for real tokens.
        generators: B noise generators, one per row.
        num_inference_steps: DDIM steps; the model's default if ``None``.

    Returns:
        ``(rgb, depth)``: (B, n_future, 3, H, W) float32 in [0, 1] and (B, n_future, 1, H, W)
        float32 metres (``None`` for an RGB-only model), on the model's device.
    """
    batch, frames = cam_to_ref.shape[:2]
    device, dtype = model.device, model.dtype
    chunk_k = intrinsics.to(device)[:, None].expand(batch, frames, 3, 3)
    rays = model.chunk_rays(chunk_k, cam_to_ref.to(device)).to(dtype)
    depth = None
    if model.config.use_depth:
        depth = context_depth.to(device, dtype)
    context_latents = model.encode(context_rgb.to(device, dtype), depth)
    if memory_tokens is not None:
        memory_tokens = memory_tokens.to(device, dtype)
        memory_mask = memory_mask.to(device)
    latents = sample_chunk(
        model,
        context_latents,
        rays,
        memory_tokens,
        memory_mask,
        num_inference_steps,
        generators,
    )
    rgb, new_depth = model.decode(latents)
    return rgb.float(), None if new_depth is None else new_depth.float()


def check_memory_fits(model: WorldModel, memory: Memory | None) -> None:
    """Raise unless ``memory`` can condition ``model``.

    Args:
        model: the world model.
        memory: a memory, or ``None`` (always fits).

    Raises:
        TypeError: for an object that is not a :class:`~worldsim.memory.Memory`.
        ValueError: for a model without memory branch, an RGB-only model, or a token width that
            differs from the model's ``memory_token_dim``.
    """
    if memory is None:
        return
    if not isinstance(memory, Memory):
        raise TypeError(
            f"memory must be a worldsim.memory.Memory or None, got {type(memory).__name__}"
        )
    if not model.transformer.has_memory:
        raise ValueError(
            "this world model has no memory branch (memory_token_dim=0): use no memory"
        )
    if not model.config.use_depth:
        raise ValueError(
            "an RGB-only world model (use_depth=False) generates no depth to unproject into a "
            "memory: use no memory"
        )
    expected = model.transformer.config.memory_token_dim
    if memory.token_dim != expected:
        raise ValueError(
            f"the memory gives tokens of width {memory.token_dim} but the world model expects "
            f"memory_token_dim={expected}: use the memory (name, encoder, position encoding) the "
            "model was trained with"
        )


class WorldModelRollout:
    """Rollouts imagined by the world model, batched, with its persistent memory.

    Memory of a rollout: a copy of ``start.memory`` when the start has one (for example the
    memory of a ``PersistentWorld-v0`` episode), otherwise a fresh memory like ``memory``; with
    ``insert_start_frames`` the start's frames are unprojected into it first (harmless for the
    3D feature map, whose max-pooling ignores frames it has already seen). ``start.memory`` is
    never modified; the memory after the rollout is ``RolloutResult.memory``. Without any memory
    the model is conditioned on its context frames only.

    Args:
        model: the world model (its device and dtype are used).
        memory: prototype of fresh memories for starts without one, or ``None`` for no memory
            (it is reset by every rollout that uses it; its rows are copied, so results never
            share storage with it).
        num_inference_steps: DDIM steps per chunk; the model's default if ``None``.
        insert_start_frames: unproject every start frame into the rollout's memory first.

    Attributes:
        image_size: ``(H, W)`` of the model's frames.
        max_horizon: ``None``: the model rolls out autoregressively without a limit.

    Raises:
        ValueError: for a memory that does not fit the model (:func:`check_memory_fits`) or a
            number of steps outside ``[1, num_train_timesteps]``.
    """

    max_horizon: int | None = None

    def __init__(
        self,
        model: WorldModel,
        memory: Memory | None = None,
        *,
        num_inference_steps: int | None = None,
        insert_start_frames: bool = True,
    ) -> None:
        check_memory_fits(model, memory)
        limit = model.config.num_train_timesteps
        if num_inference_steps is not None and not 1 <= num_inference_steps <= limit:
            raise ValueError(
                f"num_inference_steps must be in [1, {limit}] or None, got {num_inference_steps}"
            )
        self.model = model
        self.memory = memory
        self.num_inference_steps = num_inference_steps
        self.insert_start_frames = insert_start_frames
        self.image_size = (model.config.height, model.config.width)

    def rollout(
        self,
        start: RolloutStart,
        actions: Tensor,
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        num_frames: int | None = None,
    ) -> RolloutResult:
        """Imagine what each row sees while taking its actions (see :class:`RolloutModel`).

        Args:
            start: B start states at the model's frame size; with fewer than ``n_context``
                frames the oldest is repeated (the agent stood still before).
            actions: (B, L) int64 ids or (B, L, 3) float waypoints.
            generator: seeds one noise generator per row; ``None`` seeds them from OS entropy.
            batch_size: most rows per model call; ``None`` = all B.
            num_frames: return the frames of only the last this many steps (all are generated).

        Returns:
            ``rgb`` (B, F, 3, H, W) and ``depth`` (B, F, 1, H, W) float32 on the CPU (depth is 0
            for an RGB-only model), ``cam_to_world`` (B, L, 4, 4) float32 integrated from the
            start's last pose, ``collided`` and ``agent_state`` ``None``, ``memory`` the updated
            memory (``None`` without one).

        Raises:
            ValueError: for an invalid request (:func:`check_rollout_request`) or a start memory
                that does not fit the model or the start.
        """
        check_rollout_request(self, start, actions, batch_size, num_frames)
        model = self.model
        rows, horizon = actions.shape[:2]
        num_frames = horizon if num_frames is None else num_frames
        batch_size = rows if batch_size is None else min(batch_size, rows)
        n_context, n_future = model.config.n_context, model.config.n_future
        generators = row_generators(rows, generator)
        memory = self._rollout_memory(start)

        context_rgb = _context(start.rgb, n_context)  # (B, n_context, 3, H, W)
        context_depth = _context(start.depth, n_context)  # (B, n_context, 1, H, W)
        intrinsics = start.intrinsics.float()
        reference = start.cam_to_world[:, -1].double()  # (B, 4, 4) last start camera
        chunks = math.ceil(horizon / n_future)
        steps = step_poses(actions.cpu(), model)  # (B, L, 4, 4)
        padding = torch.eye(4).expand(rows, chunks * n_future - horizon, 4, 4)
        steps = torch.cat([steps, padding], dim=1)  # (B, chunks * n_future, 4, 4)

        out_rgb, out_depth, out_poses = [], [], []
        for chunk in range(chunks):
            real = min(n_future, horizon - chunk * n_future)  # frames not padding
            cam_to_ref = chain_poses(steps[:, chunk * n_future : (chunk + 1) * n_future].double())
            targets = reference[:, None] @ cam_to_ref  # (B, n_future, 4, 4) cam_to_world, f64
            tokens = mask = None
            if memory is not None:
                chunk_k = intrinsics[:, None].expand(rows, n_future, 3, 3)
                tokens, mask = memory.tokens(
                    targets.float().to(memory.device), chunk_k.to(memory.device), self.image_size
                )
            rgb, depth = self._generate(
                context_rgb,
                context_depth,
                cam_to_ref.float(),
                intrinsics,
                (tokens, mask),
                generators,
                batch_size,
            )
            rgb, depth = rgb[:, :real], depth[:, :real]  # (B, real, C, H, W): padding dropped
            poses = targets[:, :real].float()
            if memory is not None:
                _update_in_parts(memory, rgb, depth, intrinsics, poses, batch_size)
            context_rgb = torch.cat([context_rgb, rgb], dim=1)[:, -n_context:]
            context_depth = torch.cat([context_depth, depth], dim=1)[:, -n_context:]
            reference = targets[:, real - 1]
            out_rgb.append(rgb)
            out_depth.append(depth)
            out_poses.append(poses)
        return RolloutResult(
            rgb=torch.cat(out_rgb, dim=1)[:, horizon - num_frames :],
            depth=torch.cat(out_depth, dim=1)[:, horizon - num_frames :],
            cam_to_world=torch.cat(out_poses, dim=1),
            memory=memory,
        )

    def _generate(
        self,
        context_rgb: Tensor,
        context_depth: Tensor,
        cam_to_ref: Tensor,
        intrinsics: Tensor,
        memory: tuple[Tensor | None, Tensor | None],
        generators: list[torch.Generator],
        batch_size: int,
    ) -> tuple[Tensor, Tensor]:
        """One chunk for all B rows, ``batch_size`` rows per model call; CPU float32 frames."""
        tokens, mask = memory
        rgb_parts, depth_parts = [], []
        for first in range(0, context_rgb.shape[0], batch_size):
            part = slice(first, first + batch_size)
            rgb, depth = generate_chunk(
                self.model,
                context_rgb[part],
                context_depth[part],
                cam_to_ref[part],
                intrinsics[part],
                None if tokens is None else tokens[part],
                None if mask is None else mask[part],
                generators[part],
                self.num_inference_steps,
            )
            if depth is None:
                depth = torch.zeros_like(rgb[:, :, :1])  # an RGB-only model: no depth (0)
            rgb_parts.append(rgb.cpu())
            depth_parts.append(depth.cpu())
        return torch.cat(rgb_parts), torch.cat(depth_parts)

    def _rollout_memory(self, start: RolloutStart) -> Memory | None:
        """The memory a rollout from ``start`` updates: a copy of the start's or a fresh one."""
        rows = start.batch_size
        if start.memory is not None:
            check_memory_fits(self.model, start.memory)
            held = start.memory.batch_size
            if held != rows:
                raise ValueError(
                    f"start.memory holds {held} rows but the start has {rows}; build starts with "
                    "RolloutStart.select / repeat, which select the memory's rows too"
                )
            memory = start.memory.select(torch.arange(rows))
        elif self.memory is not None:
            self.memory.reset(1, self.model.device)
            memory = self.memory.select(torch.zeros(rows, dtype=torch.int64))
        else:
            return None
        if self.insert_start_frames:
            frames = start.num_frames
            memory.update(
                start.rgb.to(memory.device),
                start.depth.to(memory.device),
                start.intrinsics[:, None].expand(rows, frames, 3, 3).to(memory.device),
                start.cam_to_world.to(memory.device),
            )
        return memory


def _update_in_parts(
    memory: Memory,
    rgb: Tensor,
    depth: Tensor,
    intrinsics: Tensor,
    cam_to_world: Tensor,
    batch_size: int,
) -> None:
    """Write (B, T, ...) frames into the memory, encoding ``batch_size`` rows at a time."""
    rows, frames = rgb.shape[:2]
    device = memory.device
    frames_k = intrinsics[:, None].expand(rows, frames, 3, 3)
    for first in range(0, rows, batch_size):
        valid = torch.zeros(rows, frames, dtype=torch.bool)
        valid[first : first + batch_size] = True  # the other rows are skipped, not read
        memory.update(
            rgb.to(device),
            depth.to(device),
            frames_k.to(device),
            cam_to_world.to(device),
            valid=valid.to(device),
        )


def _context(frames: Tensor, count: int) -> Tensor:
    """The last ``count`` frames (B, count, C, H, W), the oldest repeated if there are fewer."""
    if frames.shape[1] < count:
        repeats = frames[:, :1].expand(-1, count - frames.shape[1], -1, -1, -1)
        frames = torch.cat([repeats, frames], dim=1)
    return frames[:, -count:].float()
