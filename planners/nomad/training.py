"""Training the NoMaD-style policy on recorded trajectories (NoMaD's objective).

Each training example comes from a clip of consecutive frames (:class:`worldsim.data.ClipDataset`
with ``n_context = context_size + 1`` and ``n_future = max_goal_distance``): the first
``context_size + 1`` frames are the context (the last of them the current view ``c``), the goal is
the frame ``c + d`` with ``d`` drawn uniformly from ``[min_goal_distance, max_goal_distance]``, and
the action target is the next ``len_traj_pred`` positions in the current frame
(:func:`planners.nomad.future_positions`, normalised by :func:`planners.nomad.normalize_waypoints`).

The loss, as NoMaD::

    loss = alpha * mean_{goal shown} (d_pred - d)^2
         + (1 - alpha) * mean_{action rows} |eps_pred - eps|^2

with the goal hidden (goal masking) with probability ``goal_mask_probability``, the distance term
over rows whose goal is shown, and the diffusion term over rows whose goal distance lies in
``[min_action_distance, max_action_distance]`` (NoMaD trains actions only towards goals at a
sensible range; its defaults are 3 and 20 frames).

With ``stop_at_goal`` the action target of a row whose goal is shown ends at the goal: waypoints
of frames after the goal frame repeat the goal's position, so the policy learns to reach the goal
and stay there instead of copying whatever the recorded agent did next (hindsight fine-tuning,
:mod:`planners.hindsight`, where the goal is a frame the rollout reached).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import Tensor
from tqdm.auto import tqdm

from planners.nomad.policy import NoMaDPolicy
from planners.nomad.waypoints import future_positions, normalize_waypoints


@dataclass(frozen=True)
class NoMaDTrainingConfig:
    """Settings of policy training.

    Attributes:
        min_goal_distance: smallest goal distance d, frames, >= 1.
        max_goal_distance: largest goal distance, frames, >= max(min_goal_distance, 1); the
            clips need ``n_future >= max(max_goal_distance, len_traj_pred)``.
        min_action_distance: smallest goal distance whose rows train the actions, frames.
        max_action_distance: largest, frames, >= min_action_distance.
        goal_mask_probability: chance a row's goal is hidden, in [0, 1].
        alpha: weight of the distance loss, in [0, 1].
        learning_rate: AdamW learning rate, > 0.
        weight_decay: AdamW weight decay, >= 0.
        steps: optimiser steps, >= 1.
        batch_size: clips per step, >= 1.
        max_grad_norm: gradient clipping norm, > 0, or ``None`` for none.
        stop_at_goal: action targets end at the goal: the waypoints of frames after the goal
            frame are the goal's position (reach it, then stay), for rows whose goal is shown;
            ``False``: the next ``len_traj_pred`` frames whatever the goal distance (NoMaD).
    """

    min_goal_distance: int = 1
    max_goal_distance: int = 20
    min_action_distance: int = 3
    max_action_distance: int = 20
    goal_mask_probability: float = 0.5
    alpha: float = 1e-4
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    steps: int = 10_000
    batch_size: int = 64
    max_grad_norm: float | None = 1.0
    stop_at_goal: bool = False

    def __post_init__(self) -> None:
        if self.min_goal_distance < 1:
            raise ValueError(f"min_goal_distance must be >= 1 frame, got {self.min_goal_distance}")
        if self.max_goal_distance < self.min_goal_distance:
            raise ValueError(
                f"max_goal_distance must be >= min_goal_distance = {self.min_goal_distance}, got "
                f"{self.max_goal_distance}"
            )
        if not 0 <= self.min_action_distance <= self.max_action_distance:
            raise ValueError(
                f"action distances must satisfy 0 <= min <= max, got {self.min_action_distance}, "
                f"{self.max_action_distance}"
            )
        if self.min_action_distance > self.max_goal_distance:
            raise ValueError(
                f"min_action_distance = {self.min_action_distance} exceeds max_goal_distance = "
                f"{self.max_goal_distance}: no goal would ever train the actions; lower it or "
                "raise max_goal_distance"
            )
        for name in ("goal_mask_probability", "alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


def policy_batch(
    clips: Mapping[str, Any],
    policy: NoMaDPolicy,
    config: NoMaDTrainingConfig,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Cut a batch of clips into policy training examples.

    Args:
        clips: a batch of :func:`worldsim.data.collate_clips`: ``rgb`` (B, T, 3, H, W) in
            [0, 1] and ``cam_to_world`` (B, T, 4, 4), T >= ``context_size + 1 +
            max(max_goal_distance, len_traj_pred)``.
        policy: the policy (for its context size, horizon and waypoint spacing).
        config: training settings.
        generator: random source of goal distances and goal masks.

    Returns:
        ``context`` (B, context_size + 1, 3, H, W), ``goal`` (B, 3, H, W), ``goal_mask`` (B,)
        bool, ``distance`` (B,) float frames, ``deltas`` (B, L, 2) normalised waypoint deltas,
        ``action_mask`` (B,) bool.

    Raises:
        ValueError: if the clips are too short.
    """
    rgb, poses = clips["rgb"], clips["cam_to_world"]
    batch, frames = rgb.shape[:2]
    current = policy.config.context_size
    horizon = policy.config.len_traj_pred
    needed = current + 1 + max(config.max_goal_distance, horizon)
    if frames < needed:
        raise ValueError(
            f"clips of {frames} frames are too short: context_size + 1 + max(max_goal_distance, "
            f"len_traj_pred) = {needed}; use ClipConfig(n_context={current + 1}, "
            f"n_future={needed - current - 1})"
        )
    distance = torch.randint(
        config.min_goal_distance, config.max_goal_distance + 1, (batch,), generator=generator
    )
    goal = rgb[torch.arange(batch), current + distance]  # (B, 3, H, W)
    goal_mask = torch.rand(batch, generator=generator) < config.goal_mask_probability
    positions = future_positions(poses, current, horizon)  # (B, L, 2) metres
    if config.stop_at_goal:
        # frame current + 1 + k is waypoint k; the goal frame current + d is waypoint d - 1
        last = torch.where(goal_mask, horizon - 1, (distance - 1).clamp(max=horizon - 1))
        index = torch.minimum(torch.arange(horizon)[None], last[:, None])  # (B, L)
        positions = torch.gather(positions, 1, index[..., None].expand(-1, -1, 2))
    deltas = normalize_waypoints(positions, policy.config.metric_waypoint_spacing)
    action_mask = (distance >= config.min_action_distance) & (
        distance <= config.max_action_distance
    )
    return {
        "context": rgb[:, : current + 1],
        "goal": goal,
        "goal_mask": goal_mask,
        "distance": distance.float(),
        "deltas": deltas.float(),
        "action_mask": action_mask,
    }


def policy_loss(
    policy: NoMaDPolicy,
    scheduler: DDPMScheduler,
    batch: Mapping[str, Tensor],
    config: NoMaDTrainingConfig,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    """NoMaD's loss on one batch of :func:`policy_batch` (module docstring).

    Args:
        policy: the policy.
        scheduler: its noise schedule.
        batch: training examples, on the policy's device.
        config: training settings (``alpha``).
        generator: random source of the noise and the diffusion steps (CPU generator).

    Returns:
        ``(loss, parts)``: the scalar loss and its ``distance`` and ``diffusion`` parts as
        floats (NaN when no row contributes to a part).
    """
    device = batch["context"].device
    condition = policy.encode(batch["context"], batch["goal"], batch["goal_mask"])
    shown = (~batch["goal_mask"]).float()
    distance_error = (policy.predict_distance(condition) - batch["distance"]).square()
    distance_loss = (distance_error * shown).sum() / shown.sum().clamp(min=1.0)
    deltas = batch["deltas"]
    noise = torch.randn(deltas.shape, generator=generator).to(device)
    steps = torch.randint(
        0, scheduler.config.num_train_timesteps, (deltas.shape[0],), generator=generator
    ).to(device)
    noisy = scheduler.add_noise(deltas, noise, steps)
    error = (policy.predict_noise(noisy, steps, condition) - noise).square().mean(dim=(1, 2))
    rows = batch["action_mask"].float()
    diffusion_loss = (error * rows).sum() / rows.sum().clamp(min=1.0)
    loss = config.alpha * distance_loss + (1.0 - config.alpha) * diffusion_loss
    parts = {
        "distance": float(distance_loss.detach()) if shown.sum() > 0 else float("nan"),
        "diffusion": float(diffusion_loss.detach()) if rows.sum() > 0 else float("nan"),
    }
    return loss, parts


def train_policy(
    policy: NoMaDPolicy,
    scheduler: DDPMScheduler,
    loader: Any,
    config: NoMaDTrainingConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train the policy with AdamW for ``config.steps`` steps.

    Args:
        policy: the policy (trained in place, on its device).
        scheduler: its noise schedule.
        loader: an iterable of clip batches (:func:`worldsim.data.collate_clips`), cycled.
        config: training settings.
        generator: random source of goals, masks, noise and steps.
        progress: show a progress bar.

    Returns:
        Per step: ``loss``, ``distance`` and ``diffusion``.
    """
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    device = next(policy.parameters()).device
    history: list[dict[str, float]] = []
    policy.train()
    iterator = iter(loader)
    for _ in tqdm(range(config.steps), desc="training policy", disable=not progress):
        try:
            clips = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            clips = next(iterator)
        batch = {k: v.to(device) for k, v in policy_batch(clips, policy, config, generator).items()}
        loss, parts = policy_loss(policy, scheduler, batch, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        optimizer.step()
        history.append({"loss": float(loss.detach()), **parts})
    policy.eval()
    return history
