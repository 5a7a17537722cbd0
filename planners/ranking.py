"""Trajectory ranking: imagine a policy's sampled trajectories and keep the best (paper §4.3).

A policy (e.g. the NoMaD-style policy) samples N candidate action sequences from the current
view towards an image goal; each is rolled out in a simulator (the learned world model, or the
oracle) and scored by the goal cost (LPIPS between the goal image and the last imagined frame);
the lowest-cost candidate is executed in the ground truth. Paper Table 2 compares NoMaD alone
(first sample), ranked by a no-memory world model, and ranked by the memory world model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from planners.costs import GoalCost, check_goal_image
from planners.nomad import NoMaDPolicy, make_scheduler, sample_waypoints, waypoints_to_actions
from worldsim.geometry import Action, ActionSpec
from worldsim.simulator.protocol import RolloutModel, RolloutResult, RolloutStart, action_kind


@runtime_checkable
class TrajectorySampler(Protocol):
    """Anything that proposes candidate action sequences for one start state."""

    def sample(
        self,
        start: RolloutStart,
        goal: Tensor | None,
        num_samples: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Propose N action sequences.

        Args:
            start: one start state (B = 1).
            goal: (3, H, W) goal RGB in [0, 1], or ``None`` to explore.
            num_samples: N.
            generator: the random source.

        Returns:
            (N, L) int64 action ids or (N, L, 3) waypoints.
        """
        ...


class NoMaDSampler:
    """Candidate sequences from a NoMaD-style policy, as discrete simulator actions.

    Waypoints are converted by :func:`planners.nomad.waypoints_to_actions`; sequences of
    different lengths are padded at the end with ``stop`` (a no-op inside a rollout) to the
    longest. The context is the start's last ``context_size + 1`` frames (the first frame
    repeated when the start has fewer).

    Args:
        policy: the trained policy.
        spec: the simulator's step sizes.
    """

    def __init__(self, policy: NoMaDPolicy, spec: ActionSpec | None = None) -> None:
        self.policy = policy
        self.scheduler = make_scheduler(policy)
        self.spec = spec or ActionSpec()

    def _inputs(self, start: RolloutStart, goal: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The (1, context_size + 1, 3, H, W) context and the (1, 3, H, W) goal, on the device."""
        needed = self.policy.config.context_size + 1
        frames = start.rgb[:1]
        if frames.shape[1] < needed:
            pad = frames[:, :1].expand(-1, needed - frames.shape[1], -1, -1, -1)
            frames = torch.cat([pad, frames], dim=1)
        device = next(self.policy.parameters()).device
        context = frames[:, -needed:].to(device)
        goal_batch = None if goal is None else check_goal_image(goal, start.image_size).to(device)
        return context, goal_batch

    def waypoints(
        self, start: RolloutStart, goal: Tensor | None, num_samples: int, generator: torch.Generator
    ) -> Tensor:
        """(N, L, 2) sampled positions ``(forward, left)`` in metres (see :mod:`planners.nomad`)."""
        context, goal_batch = self._inputs(start, goal)
        return sample_waypoints(
            self.policy, self.scheduler, context, goal_batch, num_samples, generator
        )[0].cpu()

    @torch.no_grad()
    def distance(self, start: RolloutStart, goal: Tensor) -> float:
        """The policy's predicted temporal distance from the start's current view to the goal.

        Args:
            start: one start state (B = 1).
            goal: (3, H, W) goal RGB in [0, 1].

        Returns:
            Frames (actions) to the goal, as the policy's distance head estimates them.
        """
        context, goal_batch = self._inputs(start, goal)
        return float(self.policy.predict_distance(self.policy.encode(context, goal_batch))[0])

    def sample(
        self,
        start: RolloutStart,
        goal: Tensor | None,
        num_samples: int,
        generator: torch.Generator,
    ) -> Tensor:
        """(N, L) int64 action ids following each sampled trajectory (stop-padded)."""
        waypoints = self.waypoints(start, goal, num_samples, generator)
        sequences = [waypoints_to_actions(w, self.spec) for w in waypoints]
        length = max(1, max(len(s) for s in sequences))
        actions = torch.full((num_samples, length), int(Action.STOP), dtype=torch.int64)
        for row, sequence in enumerate(sequences):
            actions[row, : len(sequence)] = sequence
        return actions


@dataclass(frozen=True, eq=False)
class Ranking:
    """Candidates scored by imagination.

    Attributes:
        candidates: (N, L) int64 or (N, L, 3) candidate actions.
        costs: (N,) goal cost of each candidate's imagined rollout.
        best: index of the lowest cost (the first one on ties).
        imagined: the N imagined rollouts.
    """

    candidates: Tensor
    costs: Tensor
    best: int
    imagined: RolloutResult

    @property
    def best_actions(self) -> Tensor:
        """(L,) or (L, 3) actions of the chosen candidate."""
        return self.candidates[self.best]


def rank_candidates(
    model: RolloutModel,
    start: RolloutStart,
    candidates: Tensor,
    goal: Tensor,
    cost: GoalCost,
    generator: torch.Generator,
    batch_size: int | None = None,
) -> Ranking:
    """Roll every candidate out from one start and rank them by goal cost.

    Args:
        model: the simulator to imagine in.
        start: one start state (B = 1).
        candidates: (N, L) int64 ids or (N, L, 3) waypoints.
        goal: (3, H, W) goal RGB in [0, 1] at the model's frame size.
        cost: the goal cost.
        generator: random source of a stochastic model.
        batch_size: most rows per model call.

    Returns:
        The ranking.

    Raises:
        ValueError: for a start of several rows, a goal of the wrong size, a horizon beyond the
            model's, or NaN costs.
    """
    if start.batch_size != 1:
        raise ValueError(f"ranking starts from one state, got {start.batch_size} rows")
    action_kind(candidates)
    check_goal_image(goal, tuple(model.image_size))
    imagined = model.rollout(
        start.repeat(candidates.shape[0]),
        candidates,
        generator=generator,
        batch_size=batch_size,
        num_frames=cost.config.last_frames,
    )
    costs = cost(imagined, goal)
    if not torch.isfinite(costs).all():
        bad = (~torch.isfinite(costs)).nonzero()[:, 0].tolist()
        raise ValueError(f"costs of candidates {bad} are NaN or infinite")
    best = int(torch.argmin(costs))
    return Ranking(candidates=candidates, costs=costs, best=best, imagined=imagined)


def ranked_decision(
    sampler: TrajectorySampler,
    model: RolloutModel,
    start: RolloutStart,
    goal: Tensor,
    cost: GoalCost,
    num_samples: int,
    generator: torch.Generator,
) -> Ranking:
    """Sample N candidates from a policy and rank them by imagination (one decision).

    Args:
        sampler: the policy.
        model: the simulator to imagine in.
        start: one start state (B = 1).
        goal: (3, H, W) goal RGB in [0, 1].
        cost: the goal cost.
        num_samples: N, >= 1 (the paper uses 8 and 16).
        generator: random source of the samples and of a stochastic model.

    Returns:
        The ranking of the N candidates.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    check_goal_image(goal, tuple(model.image_size))
    candidates = sampler.sample(start, goal, num_samples, generator)
    if candidates.shape[0] != num_samples:
        raise ValueError(
            f"the sampler returned {candidates.shape[0]} candidates, not {num_samples}"
        )
    return rank_candidates(model, start, candidates, goal, cost, generator)
