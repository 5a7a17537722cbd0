"""Cross-entropy-method model-predictive control towards an image goal (paper §4.3, Fig. 6a).

Planning math (pure functions, seeded by a ``torch.Generator``):

1. sample N action sequences of L steps from a distribution;
2. roll each out in a simulator (:class:`worldsim.simulator.protocol.RolloutModel`) and score it
   with a goal cost (:class:`planners.costs.GoalCost`: LPIPS of the goal image against the last
   frame);
3. keep the E lowest-cost sequences (the elites, 30 % by default) and refit the distribution to
   them, blended with the previous one: ``new = smoothing * old + (1 - smoothing) * fit``;
4. repeat for a few iterations; the plan is the lowest-cost sequence seen in any iteration.

The discrete search also scores deterministic turn-then-walk probes (:func:`turn_and_walk`)
with its first iteration (``CEMConfig.primitives``); their elites shape the first refit. By
default a probe turns any number of times that fits in the horizon, ``k in -L..L``, then walks
any distance that is left: with the simulator's default 10-degree turns and the default
L = 16, one plan sees headings 160 degrees either way and every walk after them. Probes
bounded by ``L // 2`` turns (60 degrees at L = 12) left goals behind the agent unseen.
Probes that are a prefix of one another share a rollout (:func:`probe_parents`): only the
longest walk after each turn count is rolled out, and a shorter probe is scored on its frame at
the step it stops moving (with a one-frame cost; the waits after it do not move the agent). At
L = 16 that is 33 rollouts instead of 288.

Two distributions:

- *discrete*: an independent categorical over the allowed action ids at every step, (L, A)
  probabilities starting uniform; the fit is the elites' action frequencies. ``stop`` inside a
  sequence is a no-op (the agent waits), so sequences can be effectively shorter than L.
- *continuous*: an independent Gaussian over waypoints ``(dx, dz, dyaw)`` at every step, (L, 3)
  means and standard deviations; samples are clipped to the box ``[waypoint_low,
  waypoint_high]`` (the action bounds), and the fitted deviation is kept >= ``min_std`` so the
  search never collapses to a point.

The receding-horizon loop that executes plans is :mod:`planners.mpc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from planners.costs import GoalCost, check_goal_image
from worldsim.geometry import NUM_ACTIONS, Action
from worldsim.simulator.protocol import RolloutModel, RolloutStart

DistributionKind = Literal["discrete", "continuous"]


@dataclass(frozen=True)
class CEMConfig:
    """Settings of one CEM plan.

    Attributes:
        kind: ``"discrete"`` (action ids) or ``"continuous"`` (waypoints).
        num_samples: sequences sampled per iteration N, >= 1.
        elite_fraction: fraction of the samples kept as elites, in (0, 1].
        num_elites: elites E, overriding ``elite_fraction`` when set; in [1, num_samples].
        num_iterations: sample-score-refit rounds, >= 1.
        horizon: steps per sequence L, >= 1.
        smoothing: weight of the previous distribution in each refit, in [0, 1).
        allowed_actions: action ids the discrete distribution draws from (non-empty subset of
            ``0..3``; ``0 = stop`` acts as "wait" inside a sequence).
        initial_mean: ``(dx, dz, dyaw)`` mean of the first Gaussian, metres / radians.
        initial_std: its standard deviations, each > 0.
        min_std: floor of the refitted standard deviations, >= 0.
        waypoint_low: lower bounds of sampled waypoints ``(dx, dz, dyaw)``.
        waypoint_high: upper bounds, each > the lower bound.
        primitives: (discrete) also score the turn-then-walk sequences of
            :func:`turn_and_walk` in the first iteration, so that every heading and distance
            within reach is tried once, however unlikely under the sampling distribution.
        probe_turns: most turns in one probe, >= 0; ``None``: ``horizon``.
    """

    kind: DistributionKind = "discrete"
    num_samples: int = 60
    elite_fraction: float = 0.3
    num_elites: int | None = None
    # 2 iterations: the third changed few plans and costs a third more time per decision
    # (issue 26's sweep, README "Planning defaults").
    num_iterations: int = 2
    # 16 steps: along the true shortest path LPIPS to a goal behind a corner rises for the first
    # 10-25 actions, and 8 steps never saw progress (oracle on house-test-0010..0013: 9 / 12
    # at 8, 12 / 12 at 16 with 48 actions); 16 is four of the embedded model's 4-frame chunks,
    # and the probes turn 160 degrees either way.
    horizon: int = 16
    smoothing: float = 0.1
    allowed_actions: tuple[int, ...] = (0, 1, 2, 3)
    initial_mean: tuple[float, float, float] = (0.0, 0.15, 0.0)
    initial_std: tuple[float, float, float] = (0.05, 0.15, 0.3)
    min_std: float = 0.02
    waypoint_low: tuple[float, float, float] = (-0.1, -0.1, -math.pi / 6)
    waypoint_high: tuple[float, float, float] = (0.1, 0.3, math.pi / 6)
    primitives: bool = True
    probe_turns: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"kind must be 'discrete' or 'continuous', got {self.kind!r}")
        for name, low in (("num_samples", 1), ("num_iterations", 1), ("horizon", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 < self.elite_fraction <= 1.0:
            raise ValueError(f"elite_fraction must be in (0, 1], got {self.elite_fraction}")
        if self.num_elites is not None and not 1 <= self.num_elites <= self.num_samples:
            raise ValueError(
                f"num_elites must be in [1, num_samples = {self.num_samples}], got "
                f"{self.num_elites}: N must be at least the number of elites"
            )
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        allowed = self.allowed_actions
        if not allowed or len(set(allowed)) != len(allowed) or not set(allowed) <= set(Action):
            raise ValueError(
                f"allowed_actions must be distinct ids in 0..{NUM_ACTIONS - 1}, got {allowed}"
            )
        for name in ("initial_mean", "initial_std", "waypoint_low", "waypoint_high"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must have 3 entries (dx, dz, dyaw), got {name}")
        if self.probe_turns is not None and self.probe_turns < 0:
            raise ValueError(f"probe_turns must be >= 0 or None, got {self.probe_turns}")
        if min(self.initial_std) <= 0.0:
            raise ValueError(f"initial_std must be > 0, got {self.initial_std}")
        if self.min_std < 0.0:
            raise ValueError(f"min_std must be >= 0, got {self.min_std}")
        if any(lo >= hi for lo, hi in zip(self.waypoint_low, self.waypoint_high, strict=True)):
            raise ValueError(
                f"waypoint_low {self.waypoint_low} must be below waypoint_high {self.waypoint_high}"
            )

    @property
    def elites(self) -> int:
        """Elites E kept per iteration."""
        if self.num_elites is not None:
            return self.num_elites
        return max(1, round(self.elite_fraction * self.num_samples))


# ================================================================================= math
def initial_categorical(horizon: int, allowed_actions: tuple[int, ...]) -> Tensor:
    """Uniform per-step categorical over the allowed actions.

    Returns:
        (L, A) float32 probabilities, A = :data:`NUM_ACTIONS`, zero for disallowed ids.
    """
    probabilities = torch.zeros(horizon, NUM_ACTIONS)
    probabilities[:, list(allowed_actions)] = 1.0 / len(allowed_actions)
    return probabilities


def sample_categorical(
    probabilities: Tensor, num_samples: int, generator: torch.Generator
) -> Tensor:
    """Sample action sequences from per-step categoricals.

    Args:
        probabilities: (L, A) non-negative rows summing to 1.
        num_samples: N, >= 1.
        generator: the random source (on the probabilities' device).

    Returns:
        (N, L) int64 action ids.
    """
    draws = torch.multinomial(probabilities, num_samples, replacement=True, generator=generator)
    return draws.T.contiguous()  # (N, L)


def turn_and_walk(
    horizon: int, allowed_actions: tuple[int, ...], max_turns: int | None = None
) -> Tensor:
    """Deterministic probe sequences: turn ``k`` times, walk ``m`` steps, then wait.

    ``k`` runs over ``-K..K`` (negative: right turns) with ``K = min(max_turns, horizon)``, and
    ``m`` over ``0..horizon - |k|``: every heading within ``K`` turns and every distance after
    it, each once, so that a goal a few steps away in any direction is found even where LPIPS
    misleads the sampled search (look-alike views, goals out of view). Sequences needing an
    action outside ``allowed_actions`` are left out, as are duplicates and the all-wait
    sequence (it would end a stuck search on "stay"). There are ``(K + 1) ** 2 - 1 +
    (2 K + 1) (horizon - K)`` probes when every action is allowed.

    Args:
        horizon: L, >= 1.
        allowed_actions: the allowed action ids; ``stop`` pads even when not allowed (a no-op).
        max_turns: most turns K in one probe, >= 0; ``None``: ``horizon`` (every turn count
            that fits, so pure turns reach ``horizon`` turn steps either way).

    Returns:
        (P, L) int64 action ids, P >= 0, ordered by signed turn count, then walk length.

    Raises:
        ValueError: for ``horizon < 1`` or ``max_turns < 0``.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if max_turns is not None and max_turns < 0:
        raise ValueError(f"max_turns must be >= 0 or None, got {max_turns}")
    reach = horizon if max_turns is None else min(max_turns, horizon)
    sequences: list[list[int]] = []
    for turns in range(-reach, reach + 1):
        turn = Action.TURN_LEFT if turns > 0 else Action.TURN_RIGHT
        if turns and turn not in allowed_actions:
            continue
        remaining = horizon - abs(turns)
        walks = list(range(remaining + 1))
        if Action.MOVE_FORWARD not in allowed_actions:
            walks = [0]
        for walk in walks:
            sequence = [int(turn)] * abs(turns) + [int(Action.MOVE_FORWARD)] * walk
            sequence += [int(Action.STOP)] * (horizon - len(sequence))
            if walk + abs(turns) and sequence not in sequences:
                sequences.append(sequence)
    return torch.tensor(sequences, dtype=torch.int64).reshape(-1, horizon)


def select_elites(costs: Tensor, num_elites: int) -> Tensor:
    """Indices of the lowest costs, best first (ties: the earlier sample first).

    Args:
        costs: (N,) finite costs.
        num_elites: E, in [1, N].

    Returns:
        (E,) int64 indices into ``costs``.

    Raises:
        ValueError: for NaN or infinite costs, or E outside [1, N].
    """
    if costs.dim() != 1:
        raise ValueError(f"costs must be (N,), got {tuple(costs.shape)}")
    if not 1 <= num_elites <= costs.shape[0]:
        raise ValueError(
            f"cannot keep {num_elites} elites of {costs.shape[0]} samples: N must be at least "
            "the number of elites"
        )
    if not torch.isfinite(costs).all():
        bad = (~torch.isfinite(costs)).nonzero()[:, 0].tolist()
        raise ValueError(
            f"costs of samples {bad} are NaN or infinite; the simulator or the cost produced "
            "invalid values"
        )
    return torch.sort(costs, stable=True).indices[:num_elites]


def refit_categorical(elites: Tensor, previous: Tensor, smoothing: float) -> Tensor:
    """Refit per-step categoricals to elite sequences.

    Args:
        elites: (E, L) int64 elite action ids.
        previous: (L, A) probabilities of the distribution they were drawn from.
        smoothing: weight of ``previous``, in [0, 1).

    Returns:
        (L, A) ``smoothing * previous + (1 - smoothing) * frequencies``.
    """
    counts = torch.nn.functional.one_hot(elites, previous.shape[1]).sum(dim=0)  # (L, A)
    frequencies = counts.to(previous.dtype) / elites.shape[0]
    return smoothing * previous + (1.0 - smoothing) * frequencies


def sample_gaussian(
    mean: Tensor,
    std: Tensor,
    num_samples: int,
    generator: torch.Generator,
    low: Tensor,
    high: Tensor,
) -> Tensor:
    """Sample waypoint sequences from per-step Gaussians, clipped to the action box.

    Args:
        mean: (L, 3) means.
        std: (L, 3) standard deviations, >= 0.
        num_samples: N.
        generator: the random source (on the means' device).
        low: (3,) lower bounds of ``(dx, dz, dyaw)``.
        high: (3,) upper bounds.

    Returns:
        (N, L, 3) waypoints in ``[low, high]``.
    """
    noise = torch.randn(
        num_samples, *mean.shape, generator=generator, dtype=mean.dtype, device=mean.device
    )
    return torch.clamp(mean + std * noise, min=low, max=high)


def refit_gaussian(
    elites: Tensor, mean: Tensor, std: Tensor, smoothing: float, min_std: float
) -> tuple[Tensor, Tensor]:
    """Refit per-step Gaussians to elite waypoint sequences.

    Args:
        elites: (E, L, 3) elite waypoints.
        mean: (L, 3) previous means.
        std: (L, 3) previous standard deviations.
        smoothing: weight of the previous parameters, in [0, 1).
        min_std: floor of the new standard deviations.

    Returns:
        ``(mean, std)``, each (L, 3): blended elite mean and (population) deviation.
    """
    fit_mean = elites.mean(dim=0)
    fit_std = elites.std(dim=0, correction=0)
    new_mean = smoothing * mean + (1.0 - smoothing) * fit_mean
    new_std = (smoothing * std + (1.0 - smoothing) * fit_std).clamp(min=min_std)
    return new_mean, new_std


def initial_distribution(config: CEMConfig) -> dict[str, Tensor]:
    """The first distribution of a plan without warm start.

    Returns:
        ``{"probabilities": (L, A)}`` uniform over ``allowed_actions`` (discrete), or
        ``{"mean": (L, 3), "std": (L, 3)}`` from ``initial_mean`` / ``initial_std``.
    """
    if config.kind == "discrete":
        return {"probabilities": initial_categorical(config.horizon, config.allowed_actions)}
    return {
        "mean": torch.tensor(config.initial_mean).expand(config.horizon, 3).clone(),
        "std": torch.tensor(config.initial_std).expand(config.horizon, 3).clone(),
    }


def shift_plan(
    actions: Tensor,
    distribution: dict[str, Tensor],
    steps: int,
    config: CEMConfig,
    keep: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Warm start for the next decision after the first ``steps`` entries of a plan were used.

    The remaining actions are padded at the end with "stay" (``stop`` ids, or zero waypoints)
    and the distribution's rows are shifted the same way, the new last rows taken from
    :func:`initial_distribution`; the result is blended with the initial distribution,
    ``keep * shifted + (1 - keep) * initial``, so the new search explores again.

    Args:
        actions: (L,) or (L, 3) the previous plan.
        distribution: its final distribution.
        steps: entries of the plan consumed, in [0, L].
        config: the CEM settings (for the fresh rows).
        keep: weight of the shifted distribution, in [0, 1].

    Returns:
        ``(incumbent, initial)`` for :func:`plan_cem`.
    """
    if not 0 <= steps <= actions.shape[0]:
        raise ValueError(f"steps must be in [0, {actions.shape[0]}], got {steps}")
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep}")
    fresh = initial_distribution(config)
    stay = torch.zeros_like(actions[:steps])  # stop ids or zero waypoints
    incumbent = torch.cat([actions[steps:], stay])
    shifted = {
        name: keep * torch.cat([values[steps:], fresh[name][:steps]]) + (1.0 - keep) * fresh[name]
        for name, values in distribution.items()
    }
    return incumbent, shifted


# ================================================================================= one plan
@dataclass(frozen=True, eq=False)
class CEMPlan:
    """The outcome of one CEM plan.

    Attributes:
        actions: (L,) int64 ids or (L, 3) waypoints, the lowest-cost sequence seen.
        cost: its cost.
        best_costs: (I,) lowest cost seen up to and including each iteration.
        mean_costs: (I,) mean cost of each iteration's samples.
        final_pose: (4, 4) imagined camera pose after the plan.
        distribution: the last distribution: ``{"probabilities": (L, A)}`` or
            ``{"mean": (L, 3), "std": (L, 3)}``.
    """

    actions: Tensor
    cost: float
    best_costs: Tensor
    mean_costs: Tensor
    final_pose: Tensor
    distribution: dict[str, Tensor]


def probe_parents(probes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Which rollouts score a set of move-then-wait probes.

    A probe's moves are its actions before the first ``stop``; a probe whose moves begin
    another probe's moves is scored on that probe's rollout, at the step its own moves end.

    Args:
        probes: (P, L) int64 action ids, each some moves followed only by waits (``stop``),
            with at least one move.

    Returns:
        ``(parents, parent_of, step_of)``: (Q,) indices of the probes to roll out, and for
        every probe the (P,) row in ``parents`` whose rollout scores it and the (P,) index of
        the step (0-based) whose frame is its last.

    Raises:
        ValueError: for a probe with no move or with a move after a wait.
    """
    moving = probes != Action.STOP
    lengths = moving.sum(dim=1)
    prefix = torch.arange(probes.shape[1]) < lengths[:, None]  # (P, L) the first moves
    if (lengths == 0).any() or not torch.equal(moving, prefix):
        raise ValueError("every probe must be one or more moves followed only by waits")
    parents: list[int] = []
    parent_of = torch.empty(len(probes), dtype=torch.int64)
    for index in torch.argsort(lengths, descending=True, stable=True).tolist():
        length = int(lengths[index])
        for slot, parent in enumerate(parents):
            if torch.equal(probes[parent, :length], probes[index, :length]):
                parent_of[index] = slot
                break
        else:
            parent_of[index] = len(parents)
            parents.append(index)
    return torch.tensor(parents, dtype=torch.int64), parent_of, lengths - 1


def score_probes(
    model: RolloutModel,
    start: RolloutStart,
    probes: Tensor,
    goal: Tensor,
    cost: GoalCost,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """(P,) costs and (P, 4, 4) final poses of move-then-wait probes.

    With a one-frame cost a probe is scored in its parent's rollout (:func:`probe_parents`);
    a cost over several last frames needs each probe's own waits, so each is rolled out.
    """
    if cost.config.last_frames > 1:
        probed = model.rollout(
            start.repeat(len(probes)),
            probes,
            generator=generator,
            num_frames=cost.config.last_frames,
        )
        return cost(probed, goal), probed.cam_to_world[:, -1]
    parents, parent_of, step_of = probe_parents(probes)
    result = model.rollout(start.repeat(len(parents)), probes[parents], generator=generator)
    frames = result.rgb[parent_of, step_of][:, None]  # (P, 1, 3, H, W)
    poses = result.cam_to_world[parent_of, step_of]  # (P, 4, 4)
    return cost.score(frames, poses, goal), poses


def _check_single_start(start: RolloutStart) -> None:
    if start.batch_size != 1:
        raise ValueError(
            f"a plan starts from one state, got a start of {start.batch_size} rows; use "
            "start.select([row])"
        )


def plan_cem(
    model: RolloutModel,
    start: RolloutStart,
    goal: Tensor,
    cost: GoalCost,
    config: CEMConfig,
    generator: torch.Generator,
    initial: dict[str, Tensor] | None = None,
    incumbent: Tensor | None = None,
) -> CEMPlan:
    """Plan one action sequence towards an image goal with CEM.

    Args:
        model: the simulator to imagine in.
        start: one start state (B = 1).
        goal: (3, H, W) goal image in [0, 1] at the model's frame size.
        cost: the goal cost.
        config: CEM settings.
        generator: random source of the samples and of a stochastic model (CPU generator).
        initial: the first distribution (warm start, e.g. :func:`shift_plan` of the previous
            plan), as :attr:`CEMPlan.distribution`; ``None`` = uniform / ``initial_mean``.
        incumbent: (L,) or (L, 3) a sequence scored with the first iteration's samples (it
            replaces sample 0), so the plan is never worse than it.

    Returns:
        The plan.

    Raises:
        ValueError: for a start of several rows, a goal of the wrong size, a horizon beyond
            ``model.max_horizon``, or NaN costs.
    """
    _check_single_start(start)
    check_goal_image(goal, tuple(model.image_size))
    if model.max_horizon is not None and config.horizon > model.max_horizon:
        raise ValueError(
            f"horizon {config.horizon} is beyond what this model supports (max_horizon = "
            f"{model.max_horizon}); set CEMConfig.horizon <= {model.max_horizon}"
        )
    low, high = torch.tensor(config.waypoint_low), torch.tensor(config.waypoint_high)
    distribution = initial if initial is not None else initial_distribution(config)
    probabilities = distribution.get("probabilities")
    mean, std = distribution.get("mean"), distribution.get("std")
    best_actions, best_cost, best_pose = None, math.inf, None
    best_costs, mean_costs = [], []
    for iteration in range(config.num_iterations):
        if config.kind == "discrete":
            samples = sample_categorical(probabilities, config.num_samples, generator)
        else:
            samples = sample_gaussian(mean, std, config.num_samples, generator, low, high)
        if iteration == 0 and incumbent is not None:
            if incumbent.shape != samples.shape[1:]:
                raise ValueError(
                    f"incumbent must have shape {tuple(samples.shape[1:])}, got "
                    f"{tuple(incumbent.shape)}"
                )
            samples[0] = incumbent
        rows = start.repeat(samples.shape[0])
        result = model.rollout(
            rows, samples, generator=generator, num_frames=cost.config.last_frames
        )
        costs, final_poses = cost(result, goal), result.cam_to_world[:, -1]
        if iteration == 0 and config.kind == "discrete" and config.primitives:
            probes = turn_and_walk(config.horizon, config.allowed_actions, config.probe_turns)
            if len(probes):
                probe_costs, probe_poses = score_probes(model, start, probes, goal, cost, generator)
                samples = torch.cat([samples, probes])
                costs = torch.cat([costs, probe_costs])
                final_poses = torch.cat([final_poses, probe_poses])
        elites = select_elites(costs, config.elites)
        if float(costs[elites[0]]) < best_cost:
            best_cost = float(costs[elites[0]])
            best_actions = samples[elites[0]].clone()
            best_pose = final_poses[elites[0]].clone()
        if config.kind == "discrete":
            probabilities = refit_categorical(samples[elites], probabilities, config.smoothing)
        else:
            mean, std = refit_gaussian(samples[elites], mean, std, config.smoothing, config.min_std)
        best_costs.append(best_cost)
        mean_costs.append(float(costs.mean()))
    distribution = (
        {"probabilities": probabilities}
        if config.kind == "discrete"
        else {"mean": mean, "std": std}
    )
    return CEMPlan(
        actions=best_actions,
        cost=best_cost,
        best_costs=torch.tensor(best_costs),
        mean_costs=torch.tensor(mean_costs),
        final_pose=best_pose,
        distribution=distribution,
    )
