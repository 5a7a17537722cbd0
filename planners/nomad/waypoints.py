"""Waypoints of the NoMaD policy: their normalisation, conversions to actions, and sampling.

Sampling uses a diffusers ``DDPMScheduler`` with ``num_diffusion_iters`` (10) steps
(:func:`make_scheduler`, :func:`sample_waypoints`).

Waypoints and their normalisation, as NoMaD defines it. The policy predicts ``L`` future
positions in the current camera's floor frame, NoMaD's axes: ``x`` forward, ``y`` left (so
``x = dz`` and ``y = -dx`` of :mod:`worldsim.geometry`'s local waypoints), in units of
``metric_waypoint_spacing`` metres (the distance between consecutive waypoints, one forward step
by default). The diffusion model works on the *deltas* between consecutive positions (the first
from the origin), each mapped to [-1, 1] with the fixed ``action_stats`` box
``[min, max] = [(-2.5, -4), (5, 4)]``: ``n = 2 (d - min) / (max - min) - 1``. Positions are the
cumulative sum of the unnormalised deltas (:func:`normalize_waypoints`,
:func:`unnormalize_deltas`).
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from planners.nomad.policy import ACTION_STATS_MAX, ACTION_STATS_MIN, NoMaDPolicy
from worldsim.geometry import Action, ActionSpec, relative_pose


# ================================================================================= waypoints
def _stats(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    low = torch.tensor(ACTION_STATS_MIN, device=device, dtype=dtype)
    high = torch.tensor(ACTION_STATS_MAX, device=device, dtype=dtype)
    return low, high


def normalize_waypoints(positions: Tensor, spacing: float) -> Tensor:
    """Metric waypoint positions -> the normalised deltas the diffusion model works on.

    Args:
        positions: (..., L, 2) positions ``(forward, left)`` in metres in the current frame.
        spacing: metres per waypoint unit (``metric_waypoint_spacing``).

    Returns:
        (..., L, 2) deltas in [-1, 1] inside the ``action_stats`` box (outside it they exceed
        [-1, 1]; the scheduler's sample clipping bounds what the model can produce).
    """
    units = positions / spacing
    deltas = torch.diff(units, dim=-2, prepend=torch.zeros_like(units[..., :1, :]))
    low, high = _stats(positions.device, positions.dtype)
    return 2.0 * (deltas - low) / (high - low) - 1.0


def unnormalize_deltas(normalized: Tensor, spacing: float) -> Tensor:
    """Inverse of :func:`normalize_waypoints`: (..., L, 2) deltas -> (..., L, 2) metres."""
    low, high = _stats(normalized.device, normalized.dtype)
    deltas = (normalized + 1.0) / 2.0 * (high - low) + low
    return torch.cumsum(deltas, dim=-2) * spacing


def future_positions(cam_to_world: Tensor, current: int, count: int) -> Tensor:
    """Positions of the next frames in the current frame's floor plane, NoMaD axes.

    Args:
        cam_to_world: (B, T, 4, 4) camera poses of consecutive frames.
        current: index of the current frame.
        count: L, future frames ``current + 1 .. current + L`` (must exist).

    Returns:
        (B, L, 2) ``(forward, left)`` metres.
    """
    if current + count >= cam_to_world.shape[1]:
        raise ValueError(
            f"need frames up to {current + count}, the trajectory has {cam_to_world.shape[1]}"
        )
    reference = cam_to_world[:, current : current + 1].double()
    future = cam_to_world[:, current + 1 : current + 1 + count].double()
    local = relative_pose(reference, future)[..., :3, 3]  # (B, L, 3) camera x right, z fwd
    return torch.stack([local[..., 2], -local[..., 0]], dim=-1).to(cam_to_world.dtype)


def waypoints_to_actions(positions: Tensor, spec: ActionSpec | None = None) -> Tensor:
    """Discrete simulator actions that follow waypoints (turn towards each, then walk to it).

    For each waypoint in turn: if it lies at least half a forward step from where the agent
    will be, turn towards it (the heading change rounded to whole turn steps, the shorter way
    round) and move forward ``round(distance / forward_step)`` times; the agent's assumed pose
    follows these discrete moves (free space), so rounding errors do not accumulate. Waypoints
    closer than half a step are skipped.

    Args:
        positions: (L, 2) ``(forward, left)`` metres in the current frame (NoMaD axes).
        spec: step sizes; the default :class:`ActionSpec` if ``None``.

    Returns:
        (S,) int64 ids of ``move_forward`` / ``turn_left`` / ``turn_right`` (possibly empty).
    """
    spec = spec or ActionSpec()
    if positions.dim() != 2 or positions.shape[1] != 2 or not torch.isfinite(positions).all():
        raise ValueError(
            f"positions must be finite (L, 2) (forward, left), got {tuple(positions.shape)}"
        )
    x, y, heading = 0.0, 0.0, 0.0
    actions: list[int] = []
    for forward, left in positions.double().tolist():
        dx, dy = forward - x, left - y
        distance = math.hypot(dx, dy)
        if distance < spec.forward_step_m / 2:
            continue
        turn = math.remainder(math.atan2(dy, dx) - heading, 2 * math.pi)
        turns = round(turn / spec.turn_step_rad)
        actions += [Action.TURN_LEFT if turns > 0 else Action.TURN_RIGHT] * abs(turns)
        heading += turns * spec.turn_step_rad
        moves = round(distance / spec.forward_step_m)
        actions += [Action.MOVE_FORWARD] * moves
        x += moves * spec.forward_step_m * math.cos(heading)
        y += moves * spec.forward_step_m * math.sin(heading)
    return torch.tensor([int(a) for a in actions], dtype=torch.int64)


def waypoints_to_local(positions: Tensor) -> Tensor:
    """Waypoint positions -> the rollout interface's local waypoints ``(dx, dz, dyaw)``.

    Each step moves straight to the next position and turns to face along that move (a step
    shorter than 1 mm keeps the heading).

    Args:
        positions: (..., L, 2) ``(forward, left)`` metres in the current frame.

    Returns:
        (..., L, 3) per-step ``(dx right, dz forward, dyaw left)`` in the agent's frame at the
        start of each step (:mod:`worldsim.geometry`).
    """
    deltas = torch.diff(positions, dim=-2, prepend=torch.zeros_like(positions[..., :1, :]))
    moving = deltas.norm(dim=-1) > 1e-3
    direction = torch.atan2(deltas[..., 1], deltas[..., 0])  # heading of each move, left +
    out = torch.zeros(*positions.shape[:-1], 3, dtype=positions.dtype, device=positions.device)
    current = torch.zeros_like(direction[..., 0])
    for step in range(positions.shape[-2]):
        target = torch.where(moving[..., step], direction[..., step], current)
        c, s = torch.cos(current), torch.sin(current)
        forward = c * deltas[..., step, 0] + s * deltas[..., step, 1]  # into the agent frame
        left = -s * deltas[..., step, 0] + c * deltas[..., step, 1]
        turn = torch.remainder(target - current + math.pi, 2 * math.pi) - math.pi
        out[..., step, 0], out[..., step, 1], out[..., step, 2] = -left, forward, turn
        current = current + turn
    return out


@torch.no_grad()
def sample_waypoints(
    policy: NoMaDPolicy,
    scheduler: DDPMScheduler,
    context: Tensor,
    goal: Tensor | None,
    num_samples: int,
    generator: torch.Generator,
) -> Tensor:
    """Sample waypoint trajectories from the policy by DDPM.

    Args:
        policy: the policy.
        scheduler: its noise schedule (:func:`make_scheduler`).
        context: (B, T, 3, H, W) RGB in [0, 1], T = ``context_size + 1``.
        goal: (B, 3, H, W) goal RGB in [0, 1], or ``None`` to explore.
        num_samples: K trajectories per row.
        generator: random source of the initial noise and the DDPM steps.

    Returns:
        (B, K, L, 2) positions ``(forward, left)`` in metres in each row's current frame.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch = context.shape[0]
    condition = policy.encode(context, goal)  # (B, D)
    condition = condition.repeat_interleave(num_samples, dim=0)  # (B*K, D)
    length = policy.config.len_traj_pred
    sample = torch.randn(
        batch * num_samples,
        length,
        2,
        generator=generator,
        device=condition.device,
        dtype=condition.dtype,
    )
    scheduler.set_timesteps(policy.config.num_diffusion_iters)
    for t in scheduler.timesteps:
        steps = torch.full((sample.shape[0],), int(t), device=sample.device, dtype=torch.int64)
        noise = policy.predict_noise(sample, steps, condition)
        sample = scheduler.step(noise, t, sample, generator=generator).prev_sample
    positions = unnormalize_deltas(sample, policy.config.metric_waypoint_spacing)
    return positions.reshape(batch, num_samples, length, 2)  # (B, K, L, 2)
