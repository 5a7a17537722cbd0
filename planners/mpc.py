"""Receding-horizon control towards an image goal: plan by CEM, execute, observe, replan.

:func:`run_mpc` plans (:func:`planners.cem.plan_cem`) in one simulator (learned, or the oracle),
executes the first ``execute_steps`` actions of the plan in the ground truth, observes and replans,
warm-starting from the previous plan (its distribution shifted, and its remaining actions as one
sample). The episode ends when no imagined sequence is expected to lower the cost of the current
view by more than ``stop_margin`` while that cost is at most ``explore_above`` (the agent believes
it is at the goal; above it, the agent is stuck and executes its best plan anyway), when the plan is
all ``stop``, or after ``max_steps`` executed actions. Waits (``stop`` ids) are dropped from a
discrete plan before execution, so each decision executes the plan's first ``execute_steps`` real
moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from planners.cem import (
    CEMConfig,
    CEMPlan,
    DistributionKind,
    _check_single_start,
    plan_cem,
    shift_plan,
)
from planners.costs import GoalCost
from worldsim.geometry import Action
from worldsim.memory import Memory
from worldsim.simulator.protocol import (
    PersistentRolloutModel,
    RolloutModel,
    RolloutResult,
    RolloutStart,
)


# ================================================================================= MPC
@dataclass(frozen=True)
class MPCConfig:
    """Settings of receding-horizon execution.

    Attributes:
        cem: settings of each plan.
        execute_steps: actions of each plan executed before replanning, in [1, cem.horizon].
        max_steps: most actions executed per episode, >= 1.
        stop_margin: stop when the best plan lowers the current view's cost by no more than
            this, >= 0 (LPIPS units).
        explore_above: when no plan improves the current view but its cost is above this
            (LPIPS units; ``None``: never), the agent is stuck far from the goal rather than at
            it: execute the best plan anyway and replan from there.
        warm_start: start each plan from the previous one, shifted by what was executed
            (:func:`shift_plan`): its distribution, and its remaining actions as an incumbent
            sample, so that in a deterministic simulator no plan is worse than finishing the
            previous one.
        record_imagined: also roll the executed actions out in the planning model, for
            imagined-vs-executed videos (one extra rollout per decision).
    """

    cem: CEMConfig = field(default_factory=CEMConfig)
    execute_steps: int = 3
    # 100 actions: a goal 3 m away takes 12 moves plus up to 18 turns of 10 degrees to face it,
    # and detours and re-orientations on the way about double that.
    max_steps: int = 100
    stop_margin: float = 0.01
    warm_start: bool = True
    # 0.15: with the oracle, arrivals at the goal end at LPIPS <= 0.11, while an agent stuck at
    # 0.19 beside a wall (its best plan 0.18) took itself for arrived under the former 0.2.
    explore_above: float | None = 0.15
    record_imagined: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.execute_steps <= self.cem.horizon:
            raise ValueError(
                f"execute_steps must be in [1, horizon = {self.cem.horizon}], got "
                f"{self.execute_steps}"
            )
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not self.stop_margin >= 0.0:
            raise ValueError(f"stop_margin must be >= 0, got {self.stop_margin}")
        if self.explore_above is not None and not self.explore_above >= 0.0:
            raise ValueError(f"explore_above must be >= 0 or None, got {self.explore_above}")


@dataclass(frozen=True, eq=False)
class MPCEpisode:
    """One receding-horizon episode.

    Attributes:
        actions: (S,) int64 or (S, 3) executed actions.
        poses: (S + 1, 4, 4) ground-truth camera poses, the start's first.
        agent_states: (S + 1, 4) float64 ground-truth ``(x, y, z, yaw)`` where the truth
            reports them, else ``None``.
        frames: (S + 1, 3, H, W) ground-truth RGB seen, the start view first.
        imagined: (S + 1, 3, H, W) the planning model's RGB of the executed actions (the start
            view first), or ``None`` unless ``record_imagined``.
        costs: (D + 1,) goal cost of the current view before each of the D decisions and at the
            end.
        plans: the D plans.
        memory: the planner's episode map after the episode (every executed observation in
            it), or ``None`` for a planner without one.
        stop_reason: ``"at_goal"``, ``"plan_stays"`` (the plan is all waits) or
            ``"max_steps"``.
    """

    actions: Tensor
    poses: Tensor
    agent_states: Tensor | None
    frames: Tensor
    imagined: Tensor | None
    costs: Tensor
    plans: list[CEMPlan]
    stop_reason: str
    memory: Memory | None = None


def _next_chunk(actions: Tensor, kind: DistributionKind, count: int) -> tuple[Tensor, int]:
    """The plan's first ``count`` real moves, and how many plan entries they consume.

    ``stop`` ids are waits (no-ops) when planning; dropping them keeps the plan's end pose while
    executing real moves sooner.
    """
    if kind == "continuous":
        chunk = actions[:count]
        return chunk, len(chunk)
    moves = (actions != Action.STOP).nonzero()[:, 0]
    if len(moves) == 0:
        return actions[:0], 0
    chosen = moves[:count]
    return actions[chosen], int(chosen[-1]) + 1


def run_mpc(
    planner: RolloutModel,
    truth: RolloutModel,
    start: RolloutStart,
    goal: Tensor,
    cost: GoalCost,
    config: MPCConfig,
    generator: torch.Generator,
    progress: bool = False,
    prior_memory: Memory | None = None,
) -> MPCEpisode:
    """Navigate to an image goal by CEM, imagining in ``planner`` and acting in ``truth``.

    A planner with a persistent memory
    (:class:`~worldsim.simulator.protocol.PersistentRolloutModel`, the learned simulator) keeps one
    map for the episode: the start's frames and every executed observation go into it as observed,
    and every decision imagines from it; plans copy it, so nothing imagined enters it. The map can
    start from ``prior_memory``, what the agent saw of the house before the episode.

    Args:
        planner: the simulator plans are imagined in (the learned one, or the oracle).
        truth: the simulator actions are executed in (the ground-truth oracle).
        start: the one start state (B = 1), valid for both simulators.
        goal: (3, H, W) goal image in [0, 1].
        cost: the goal cost.
        config: MPC and CEM settings.
        generator: random source of every plan.
        progress: show a progress bar over executed steps.
        prior_memory: a one-row map of the house from before the episode (e.g.
            ``planner.map_of(truth.tour(...))``), copied; only for a persistent planner.

    Returns:
        The episode.

    Raises:
        ValueError: as :func:`plan_cem`.
    """
    _check_single_start(start)
    persistent = isinstance(planner, PersistentRolloutModel)
    if prior_memory is not None and not persistent:
        raise ValueError(
            f"a prior memory needs a planner with a persistent memory, got "
            f"{type(planner).__name__}; leave prior_memory out"
        )
    # One map for the episode: what is executed is observed and goes in; plans only copy it.
    state = planner.with_episode_memory(start, prior_memory) if persistent else start
    current_cost = float(cost.frames(state.rgb[:, -1:], goal)[0])
    costs, plans, chunks = [current_cost], [], []
    poses, frames = [state.cam_to_world[0, -1]], [state.rgb[0, -1]]
    agent_states = None if state.agent_state is None else [state.agent_state[0]]
    imagined = [state.rgb[0, -1]] if config.record_imagined else None
    steps, stop_reason = 0, "max_steps"
    initial, incumbent = None, None
    bar = tqdm(total=config.max_steps, desc="MPC steps", disable=not progress, leave=False)
    while steps < config.max_steps:
        plan = plan_cem(planner, state, goal, cost, config.cem, generator, initial, incumbent)
        plans.append(plan)
        stuck = plan.cost > current_cost - config.stop_margin
        if stuck and (config.explore_above is None or current_cost <= config.explore_above):
            stop_reason = "at_goal"
            break
        count = min(config.execute_steps, config.max_steps - steps)
        chunk, consumed = _next_chunk(plan.actions, config.cem.kind, count)
        if len(chunk) == 0 and stuck and incumbent is not None:
            # Stuck far from the goal, the warm start's "stay" won: search afresh once.
            plan = plan_cem(planner, state, goal, cost, config.cem, generator)
            plans.append(plan)
            chunk, consumed = _next_chunk(plan.actions, config.cem.kind, count)
        if len(chunk) == 0:
            stop_reason = "plan_stays"
            break
        if config.warm_start:
            incumbent, initial = shift_plan(plan.actions, plan.distribution, consumed, config.cem)
        if imagined is not None:
            dream = planner.rollout(state, chunk[None], generator=generator)
            imagined.extend(dream.rgb[0])
        executed: RolloutResult = truth.rollout(state, chunk[None], generator=generator)
        if persistent:
            planner.observe(state, executed)
        state = state.advance(executed)
        chunks.append(chunk)
        poses.extend(executed.cam_to_world[0])
        frames.extend(executed.rgb[0])
        if agent_states is not None and executed.agent_state is not None:
            agent_states.extend(executed.agent_state[0])
        steps += len(chunk)
        bar.update(len(chunk))
        current_cost = float(cost.frames(state.rgb[:, -1:], goal)[0])
        costs.append(current_cost)
    bar.close()
    empty = (
        torch.zeros(0, dtype=torch.int64) if config.cem.kind == "discrete" else torch.zeros(0, 3)
    )
    return MPCEpisode(
        actions=torch.cat(chunks) if chunks else empty,
        poses=torch.stack(poses),
        agent_states=None if agent_states is None else torch.stack(agent_states),
        frames=torch.stack(frames),
        imagined=None if imagined is None else torch.stack(imagined),
        costs=torch.tensor(costs),
        plans=plans,
        memory=state.memory,
        stop_reason=stop_reason,
    )
