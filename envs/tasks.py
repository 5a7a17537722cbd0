"""Planning tasks in the ground truth: image-goal episodes, their start states, the imagination.

An image-goal episode (:class:`ImageGoalEpisode`) is a start pose and a goal pose a few metres
apart in one house; :func:`episode_start` renders the start state and the goal picture with the
oracle; :func:`planning_simulator` gives the simulator a planning example imagines in (the
learned world model, or ``None`` for the oracle) with the frame size and turn step the ground
truth must then use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from envs.oracle import OracleRollout
from worldsim.memory import Memory
from worldsim.metrics.lpips import LPIPS
from worldsim.simulator.checkpoints import learned_planning_rollout
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.protocol import RolloutStart


@dataclass(frozen=True)
class ImageGoalEpisode:
    """A navigation episode towards an image goal, in the ground truth.

    Attributes:
        scene: scene id.
        start_position: (3,) float64 navigable floor position, metres.
        start_yaw: start heading, radians.
        goal_position: (3,) float64 goal floor position, metres.
        goal_yaw: heading of the goal view, radians: along the last segment of the shortest
            path, as an agent arriving there would look.
        geodesic_distance: shortest walkable start-to-goal distance, metres.
    """

    scene: str
    start_position: np.ndarray
    start_yaw: float
    goal_position: np.ndarray
    goal_yaw: float
    geodesic_distance: float


def episode_start(
    oracle: OracleRollout, episode: ImageGoalEpisode, num_frames: int = 1
) -> tuple[RolloutStart, Tensor]:
    """The start state of an image-goal episode and its goal image, rendered by the oracle.

    Args:
        oracle: the ground truth, at the frame size the planner works at.
        episode: the episode.
        num_frames: frames of the start (the start view repeated), >= 1.

    Returns:
        ``(start, goal)``: the one-row start and the (3, H, W) goal RGB in [0, 1].
    """
    start = oracle.start(
        episode.scene, episode.start_position, episode.start_yaw, num_frames=num_frames
    )
    goal = oracle.start(episode.scene, episode.goal_position, episode.goal_yaw).rgb[0, -1]
    return start, goal


def sample_image_goal_episode(
    oracle: OracleRollout,
    scene: str,
    rng: np.random.Generator,
    min_distance_m: float = 1.5,
    max_distance_m: float = 3.0,
    min_goal_depth_m: float = 1.0,
    max_tries: int = 1000,
) -> ImageGoalEpisode:
    """Draw an image-goal episode: a start and a goal pose a few metres apart.

    Start and goal are uniform on the navigable floor, kept when the geodesic distance lies in
    ``[min_distance_m, max_distance_m]`` and the goal view shows more than a nearby wall (its
    median depth is at least ``min_goal_depth_m``: a blank wall close up looks the same anywhere
    and makes no image goal). The start heading is uniform.

    Args:
        oracle: the ground truth (its simulator's state is restored).
        scene: scene id.
        rng: the random source.
        min_distance_m: smallest geodesic distance, metres, >= 0.
        max_distance_m: largest, metres, >= min_distance_m.
        min_goal_depth_m: smallest median depth of the goal view, metres.
        max_tries: draws before giving up, >= 1.

    Returns:
        The episode.

    Raises:
        ValueError: for bad distances, or when no episode qualifies in ``max_tries`` draws.
    """
    if not 0.0 <= min_distance_m <= max_distance_m:
        raise ValueError(
            f"need 0 <= min_distance_m <= max_distance_m, got {min_distance_m}, {max_distance_m}"
        )
    saved = oracle._save()
    try:
        oracle.sim.load_scene(scene)
        for _ in range(max_tries):
            start = oracle.sim.sample_navigable_point(rng)
            goal = oracle.sim.sample_navigable_point(rng)
            distance = oracle.sim.geodesic_distance(start, goal)
            if not min_distance_m <= distance <= max_distance_m:
                continue
            path = oracle.sim.shortest_path(start, goal)
            direction = path[-1] - path[-2]
            goal_yaw = math.atan2(-direction[0], -direction[2])  # yaw 0 looks along -z
            goal_view = oracle.start(scene, goal, goal_yaw)
            if float(goal_view.depth.median()) >= min_goal_depth_m:
                start_yaw = float(rng.uniform(-math.pi, math.pi))
                return ImageGoalEpisode(scene, start, start_yaw, goal, goal_yaw, distance)
    finally:
        oracle._restore(saved)
    raise ValueError(
        f"no start/goal pair in {scene!r} within {min_distance_m}-{max_distance_m} m with an "
        f"informative goal view after {max_tries} draws; widen the distance range"
    )


ORACLE_TURN_STEP_DEG = 30.0
"""Turn step of planning examples with the oracle when none is asked for (coarse turns keep the
ground-truth episodes short)."""


def planning_simulator(
    planner: str,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    memory: str | dict[str, Any] | Memory | None = None,
    turn_step_deg: float | None = None,
    num_inference_steps: int | None = None,
    size: int | None = None,
    collisions: bool = False,
) -> tuple[LearnedSimulator | None, int, float]:
    """What a planning example imagines in, at which frame size, turning by which angle.

    Args:
        planner: ``"oracle"`` (the ground truth imagines) or ``"world-model"``.
        checkpoint: the world model, as :func:`load_learned_simulator`; ``None``: the embedded
            checkpoint.
        device: as :func:`load_learned_simulator`.
        memory: as :func:`load_learned_simulator`.
        turn_step_deg: the turn step to act with; ``None``: the world model's own, or
            :data:`ORACLE_TURN_STEP_DEG` with the oracle.
        num_inference_steps: as :func:`learned_planning_rollout`.
        size: square frame size; ``None``: the world model's, or 64 with the oracle.
        collisions: as :func:`learned_planning_rollout` (the oracle always collides).

    Returns:
        ``(rollout, size, turn_step_deg)``: the learned rollout (``None`` for the oracle), the
        frame size and the turn step the ground truth must execute with.
    """
    if planner == "oracle":
        turn = ORACLE_TURN_STEP_DEG if turn_step_deg is None else turn_step_deg
        return None, size or 64, turn
    if planner != "world-model":
        raise ValueError(f"planner must be 'oracle' or 'world-model', got {planner!r}")
    rollout = learned_planning_rollout(
        checkpoint, device, memory, turn_step_deg, num_inference_steps, size, collisions=collisions
    )
    return rollout, rollout.image_size[0], rollout.model.action_spec.turn_step_deg


def sample_image_goal_episodes(
    oracle: OracleRollout,
    scenes: list[str] | tuple[str, ...],
    count: int,
    rng: np.random.Generator,
    min_distance_m: float = 1.5,
    max_distance_m: float = 3.0,
) -> list[ImageGoalEpisode]:
    """``count`` episodes (:func:`sample_image_goal_episode`), cycling through ``scenes``."""
    return [
        sample_image_goal_episode(
            oracle, scenes[i % len(scenes)], rng, min_distance_m, max_distance_m
        )
        for i in range(count)
    ]


def earlier_walks(
    oracle: OracleRollout,
    learned: LearnedSimulator | None,
    scenes: list[str] | tuple[str, ...],
    steps: int,
    seed: int,
) -> dict[str, Memory]:
    """One map per house of an earlier walk through it: what the agent saw there before.

    Args:
        oracle: the ground truth that walks (:meth:`~envs.oracle.OracleRollout.tour`).
        learned: the learned simulator whose memory kind the maps have; ``None`` (the oracle
            plans, it needs no map) gives no maps.
        scenes: the houses, each walked once (repeats ignored).
        steps: frames per walk, >= 0 (0: no maps).
        seed: the walks' seed; the house with index ``i`` in sorted order walks with
            ``np.random.default_rng([seed, i])``.

    Returns:
        ``{scene: one-row map}``, empty without a learned simulator with memory or walk.

    Raises:
        ValueError: for a negative ``steps``.
    """
    if steps < 0:
        raise ValueError(f"--tour-steps must be >= 0 (0: no earlier walk), got {steps}")
    if learned is None or learned.memory is None or steps == 0:
        return {}
    maps = {}
    for index, scene in enumerate(sorted(set(scenes))):
        walk = oracle.tour(scene, steps, np.random.default_rng([seed, index]))
        maps[scene] = learned.map_of(walk)
    return maps


@dataclass(frozen=True)
class DistinctGoals:
    """Goal pictures must not look like other places of the house.

    A goal view whose LPIPS to some view of the same house taken more than ``apart_m`` away is
    below ``min_lpips`` is rejected: a textureless corner looks like every other corner (one
    scored 0.05 from 3.66 m away), and an agent standing at the look-alike could never tell.

    Attributes:
        min_lpips: the least LPIPS to every view elsewhere, >= 0 (0 accepts every goal).
        views: views of each house compared with, at uniform navigable points and headings,
            >= 1.
        apart_m: views farther than this from the goal count as elsewhere, metres, > 0.
        max_rejections: rejected goals per episode after which the most distinctive of them is
            kept (small frames score lower LPIPS, and some houses have few distinct views),
            >= 1.
    """

    min_lpips: float = 0.15
    views: int = 64
    apart_m: float = 1.0
    max_rejections: int = 20

    def __post_init__(self) -> None:
        checks = (
            ("min_lpips", self.min_lpips >= 0.0, ">= 0"),
            ("views", self.views >= 1, ">= 1"),
            ("apart_m", self.apart_m > 0.0, "> 0"),
            ("max_rejections", self.max_rejections >= 1, ">= 1"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)}")


def house_views(
    oracle: OracleRollout, scene: str, count: int, rng: np.random.Generator
) -> tuple[Tensor, np.ndarray]:
    """``count`` views of a house at uniform navigable points and headings.

    Returns:
        ``(rgb, positions)``: (V, 3, H, W) float RGB in [0, 1] and (V, 3) floor positions.
    """
    saved = oracle._save()
    try:
        oracle.sim.load_scene(scene)
        positions = np.stack([oracle.sim.sample_navigable_point(rng) for _ in range(count)])
    finally:
        oracle._restore(saved)
    yaws = rng.uniform(-math.pi, math.pi, size=count)
    return oracle.start(scene, positions, yaws).rgb[:, -1], positions


def sample_distinct_image_goal_episodes(
    oracle: OracleRollout,
    scenes: list[str] | tuple[str, ...],
    count: int,
    rng: np.random.Generator,
    lpips: LPIPS,
    distinct: DistinctGoals,
    min_distance_m: float = 1.5,
    max_distance_m: float = 3.0,
) -> tuple[list[ImageGoalEpisode], int]:
    """``count`` episodes cycling through ``scenes`` whose goals look like no other place.

    Episodes are drawn as :func:`sample_image_goal_episodes`; each goal view is compared with
    ``distinct.views`` views of its house (drawn once per house from a generator seeded by
    the scene id, so the episodes' generator is not consumed by them) and redrawn while it
    looks like one of them (:class:`DistinctGoals`).

    Returns:
        ``(episodes, rejected)``: the episodes and how many goals were rejected.
    """
    device = next(lpips.parameters()).device
    views: dict[str, tuple[Tensor, np.ndarray]] = {}
    episodes, rejected = [], 0
    for index in range(count):
        scene = scenes[index % len(scenes)]
        if scene not in views and distinct.min_lpips > 0.0:
            seed = np.random.default_rng(list(str(scene).encode()))
            views[scene] = house_views(oracle, scene, distinct.views, seed)
        best, best_score = None, -1.0
        for _ in range(distinct.max_rejections):
            episode = sample_image_goal_episode(oracle, scene, rng, min_distance_m, max_distance_m)
            if distinct.min_lpips == 0.0:
                break
            rgb, positions = views[scene]
            elsewhere = (
                np.linalg.norm(positions[:, [0, 2]] - episode.goal_position[[0, 2]], axis=1)
                > distinct.apart_m
            )
            if not elsewhere.any():
                break
            goal = episode_start(oracle, episode)[1]
            others = rgb[torch.from_numpy(elsewhere)].to(device)
            with torch.no_grad():
                nearest = float(lpips(others, goal[None].expand_as(others).to(device)).min())
            if nearest >= distinct.min_lpips:
                break
            rejected += 1
            if nearest > best_score:
                best, best_score = episode, nearest
        else:
            episode = best  # every draw looked like another place: the least alike of them
        episodes.append(episode)
    return episodes, rejected
