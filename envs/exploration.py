"""Exploration policies that drive the ground-truth simulator through trajectories with revisits.

A policy is a generator of discrete actions (:class:`worldsim.geometry.Action` ids). It reads the
simulator's state (position, heading, oracle actions) between yields but never steps it: the
caller steps the simulator with each yielded action, records the observation, and stops the
generator when the episode is long enough. Yielding ``stop`` (0) ends the episode early; so does
returning. Every random choice comes from the ``np.random.Generator`` passed in, so an episode is
a deterministic function of the scene, the start pose and that generator's seed.

Policies (names used in policy mixes, :data:`POLICY_NAMES`):

- ``waypoint``: oracle shortest-path navigation through random waypoints, forever.
- ``out_and_back``: to a random goal, then home along another path (through a waypoint away
  from the outbound path), turn to the start heading, stop. The last frames see what the first
  ones saw.
- ``look_around``: turn in place a full circle, walk to another point (sometimes one visited
  before), turn again, forever.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from envs.simulator import GroundTruthSimulator
from worldsim.geometry import Action

POLICY_NAMES = ("waypoint", "out_and_back", "look_around")
"""Names of the exploration policies, as used in policy mixes."""


@dataclass(frozen=True)
class ExplorationConfig:
    """Settings shared by the exploration policies.

    Attributes:
        min_goal_distance_m: shortest geodesic distance to a new goal or waypoint, metres, > 0.
        max_goal_distance_m: longest geodesic distance to a new goal, metres, >= the minimum.
        goal_attempts: random points tried per goal before taking the best one found, >= 1.
        patience_steps: steps without getting geodesically closer after which a goal is
            abandoned (turns make no progress, so keep it above a half turn), >= 1.
        detour_factor: ``out_and_back`` returns through a waypoint only if the return is at most
            this many times the direct way home, >= 1.
        detour_separation_m: that waypoint lies at least this far from the outbound path,
            metres, >= 0.
        revisit_probability: chance that ``look_around`` walks to a point it has turned at
            before rather than a new one, in [0, 1].
    """

    min_goal_distance_m: float = 2.0
    max_goal_distance_m: float = 8.0
    goal_attempts: int = 32
    patience_steps: int = 60
    detour_factor: float = 2.5
    detour_separation_m: float = 1.0
    revisit_probability: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 < self.min_goal_distance_m <= self.max_goal_distance_m:
            raise ValueError(
                "need 0 < min_goal_distance_m <= max_goal_distance_m metres, got "
                f"{self.min_goal_distance_m} and {self.max_goal_distance_m}"
            )
        if self.goal_attempts < 1:
            raise ValueError(f"goal_attempts must be >= 1, got {self.goal_attempts}")
        if self.patience_steps < 1:
            raise ValueError(f"patience_steps must be >= 1, got {self.patience_steps}")
        if not self.detour_factor >= 1.0:
            raise ValueError(f"detour_factor must be >= 1, got {self.detour_factor}")
        if not self.detour_separation_m >= 0.0:
            raise ValueError(f"detour_separation_m must be >= 0, got {self.detour_separation_m}")
        if not 0.0 <= self.revisit_probability <= 1.0:
            raise ValueError(
                f"revisit_probability must be in [0, 1], got {self.revisit_probability}"
            )


class ExplorationPolicy(Protocol):
    """A generator of actions for one episode (see the module docstring)."""

    name: str

    def actions(self, sim: GroundTruthSimulator, rng: np.random.Generator) -> Iterator[int]:
        """Yield action ids for the episode that starts at the simulator's current pose."""
        ...


def sample_goal(
    sim: GroundTruthSimulator,
    rng: np.random.Generator,
    origin: np.ndarray,
    config: ExplorationConfig,
) -> np.ndarray | None:
    """A reachable navigable point at a random geodesic distance in the configured range.

    Draws a target distance uniformly in ``[min_goal_distance_m, max_goal_distance_m]``, tries
    ``config.goal_attempts`` random points and keeps the reachable one whose geodesic distance
    is closest to the target (stopping early within one forward step of it).

    Args:
        sim: simulator with a scene loaded.
        rng: the random source.
        origin: (3,) navigable floor position, metres.
        config: the distance range.

    Returns:
        (3,) float64 goal, or ``None`` if no sampled point is reachable and at least
        ``forward_step_m`` away.
    """
    target = rng.uniform(config.min_goal_distance_m, config.max_goal_distance_m)
    best, best_error = None, math.inf
    for _ in range(config.goal_attempts):
        candidate = sim.sample_navigable_point(rng)
        distance = sim.geodesic_distance(origin, candidate)
        if not math.isfinite(distance) or distance < sim.config.forward_step_m:
            continue
        error = abs(distance - target)
        if error < best_error:
            best, best_error = candidate, error
        if error <= sim.config.forward_step_m:
            break
    return best


def go_to(sim: GroundTruthSimulator, goal: np.ndarray, patience_steps: int) -> Iterator[int]:
    """Follow the oracle to ``goal``; returns when it stops there or makes no progress.

    Yields:
        Move and turn ids (never ``stop``).

    Returns:
        Whether the goal was reached (``False`` if abandoned after ``patience_steps`` steps
        without getting geodesically closer).
    """
    best = sim.geodesic_distance(sim.position, goal)
    idle = 0
    while True:
        action = sim.oracle_action(goal)
        if action == Action.STOP:
            return True
        yield action
        distance = sim.geodesic_distance(sim.position, goal)
        if distance < best - 1e-6:
            best, idle = distance, 0
        else:
            idle += 1
            if idle >= patience_steps:
                return False


def turn_in_place(sim: GroundTruthSimulator, degrees: float, left: bool) -> Iterator[int]:
    """Turn by ``degrees`` (rounded to whole turn steps) to the left or the right."""
    turns = round(degrees / sim.config.turn_step_deg)
    yield from [int(Action.TURN_LEFT if left else Action.TURN_RIGHT)] * turns


def turn_to(sim: GroundTruthSimulator, yaw: float) -> Iterator[int]:
    """Turn the shorter way until the heading is within half a turn step of ``yaw``."""
    half_step = 0.5 * math.radians(sim.config.turn_step_deg)
    while True:
        error = math.remainder(yaw - sim.yaw, 2.0 * math.pi)
        if abs(error) <= half_step + 1e-9:
            return
        yield int(Action.TURN_LEFT if error > 0.0 else Action.TURN_RIGHT)


def _distance_to_path(point: np.ndarray, path: np.ndarray) -> float:
    """Horizontal distance (metres) from a point (3,) to a polyline (N, 3)."""
    p = point[[0, 2]]
    vertices = path[:, [0, 2]]
    if len(vertices) == 1:
        return float(np.linalg.norm(p - vertices[0]))
    a, b = vertices[:-1], vertices[1:]
    segment = b - a
    length2 = np.maximum((segment**2).sum(axis=1), 1e-12)
    along = np.clip(((p - a) * segment).sum(axis=1) / length2, 0.0, 1.0)
    closest = a + along[:, None] * segment
    return float(np.linalg.norm(p - closest, axis=1).min())


@dataclass(frozen=True)
class WaypointPolicy:
    """Oracle navigation through random waypoints, until the episode's length limit."""

    config: ExplorationConfig = field(default_factory=ExplorationConfig)
    name: str = "waypoint"

    def actions(self, sim: GroundTruthSimulator, rng: np.random.Generator) -> Iterator[int]:
        """Yield moves towards one random waypoint after another."""
        while True:
            goal = sample_goal(sim, rng, sim.position, self.config)
            if goal is None:  # nowhere to go: look around instead of standing still
                yield from turn_in_place(sim, 360.0, left=bool(rng.integers(2)))
                continue
            yield from go_to(sim, goal, self.config.patience_steps)


@dataclass(frozen=True)
class OutAndBackPolicy:
    """To a goal and home again by another path, then face the start heading and stop.

    The way home passes through a waypoint at least ``detour_separation_m`` from the outbound
    path, if one is found whose detour is within ``detour_factor`` of the direct way home;
    otherwise the agent returns along the shortest path.
    """

    config: ExplorationConfig = field(default_factory=ExplorationConfig)
    name: str = "out_and_back"

    def actions(self, sim: GroundTruthSimulator, rng: np.random.Generator) -> Iterator[int]:
        """Yield the outbound walk, the return walk, the final turn and ``stop``."""
        home, home_yaw = sim.position, sim.yaw
        goal = sample_goal(sim, rng, home, self.config)
        if goal is not None:
            outbound = sim.shortest_path(home, goal)
            yield from go_to(sim, goal, self.config.patience_steps)
            via = self._detour(sim, rng, home, outbound)
            if via is not None:
                yield from go_to(sim, via, self.config.patience_steps)
            yield from go_to(sim, home, self.config.patience_steps)
        yield from turn_to(sim, home_yaw)
        yield int(Action.STOP)

    def _detour(
        self,
        sim: GroundTruthSimulator,
        rng: np.random.Generator,
        home: np.ndarray,
        outbound: np.ndarray,
    ) -> np.ndarray | None:
        here = sim.position
        direct = sim.geodesic_distance(here, home)
        for _ in range(self.config.goal_attempts):
            candidate = sim.sample_navigable_point(rng)
            if _distance_to_path(candidate, outbound) < self.config.detour_separation_m:
                continue
            length = sim.geodesic_distance(here, candidate) + sim.geodesic_distance(candidate, home)
            if math.isfinite(length) and length <= self.config.detour_factor * direct:
                return candidate
        return None


@dataclass(frozen=True)
class LookAroundPolicy:
    """Turn a full circle in place, walk elsewhere, turn again, until the length limit.

    The next point is one turned at before with probability ``revisit_probability`` (when
    there is one), else a new random goal.
    """

    config: ExplorationConfig = field(default_factory=ExplorationConfig)
    name: str = "look_around"

    def actions(self, sim: GroundTruthSimulator, rng: np.random.Generator) -> Iterator[int]:
        """Yield full turns at a sequence of points and the walks between them."""
        visited: list[np.ndarray] = []
        while True:
            yield from turn_in_place(sim, 360.0, left=bool(rng.integers(2)))
            visited.append(sim.position)
            goal = None
            if len(visited) > 1 and rng.random() < self.config.revisit_probability:
                goal = visited[int(rng.integers(len(visited) - 1))]
            if goal is None:
                goal = sample_goal(sim, rng, sim.position, self.config)
            if goal is not None:
                yield from go_to(sim, goal, self.config.patience_steps)


def make_policy(name: str, config: ExplorationConfig | None = None) -> ExplorationPolicy:
    """The exploration policy called ``name`` (one of :data:`POLICY_NAMES`).

    Raises:
        ValueError: for an unknown name.
    """
    config = config or ExplorationConfig()
    policies = {
        "waypoint": WaypointPolicy,
        "out_and_back": OutAndBackPolicy,
        "look_around": LookAroundPolicy,
    }
    if name not in policies:
        raise ValueError(f"unknown exploration policy {name!r}: allowed are {list(POLICY_NAMES)}")
    return policies[name](config)


@dataclass(frozen=True)
class PolicyMix:
    """Which policy each episode uses: drawn per episode with the given weights.

    Attributes:
        weights: policy name -> non-negative weight; names from :data:`POLICY_NAMES`, at least
            one weight > 0. Weights are normalised to probabilities.
    """

    weights: Mapping[str, float]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(POLICY_NAMES))
        if unknown:
            raise ValueError(
                f"policy mix names unknown policies {unknown}: allowed are {list(POLICY_NAMES)}"
            )
        bad = {k: v for k, v in self.weights.items() if not (math.isfinite(v) and v >= 0.0)}
        if bad:
            raise ValueError(f"policy mix weights must be finite and >= 0, got {bad}")
        if not any(v > 0 for v in self.weights.values()):
            raise ValueError(f"policy mix needs a weight > 0, got {dict(self.weights)}")

    @property
    def probabilities(self) -> dict[str, float]:
        """Policy name -> probability, in :data:`POLICY_NAMES` order, zero weights left out."""
        total = sum(self.weights.values())
        return {
            name: self.weights[name] / total
            for name in POLICY_NAMES
            if self.weights.get(name, 0.0) > 0
        }

    def choose(self, rng: np.random.Generator) -> str:
        """Draw a policy name."""
        names, probabilities = zip(*self.probabilities.items(), strict=True)
        return names[int(rng.choice(len(names), p=np.asarray(probabilities)))]
