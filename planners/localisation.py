"""Where a goal picture was taken, found in the persistent map by render-and-compare.

An image-goal planner that scores imagined frames against the goal picture (LPIPS) sees no
progress while the goal lies behind it or around a corner. A persistent map of the house can say
where the picture was taken: every candidate camera on the map's observed floor is rendered from
the map's points (:meth:`worldsim.memory.RenderedMemory.render`) and compared with the picture,
coarse to fine.

Candidates
    Floor cells of ``cell_m`` metres that hold observed floor points (the map's points within
    ``floor_tolerance_m`` of the floor height) and that the body may stand in (the walls of the
    map's observed points, grown by the body's radius, block them:
    :class:`worldsim.simulator.collision.MapCollider`), each at ``headings`` headings. The camera
    stands ``sensor_height`` above the floor.

Score
    The picture and each render are compared at ``render_size`` pixels: the mean absolute colour
    difference over the pixels the render draws, a render that draws less than
    ``min_coverage`` of its view being skipped; with the goal's depth, plus the mean absolute
    depth difference in metres. The best few distinct candidates (more than ``distinct_m``
    apart) are refined on a grid a quarter cell and half a heading step fine.

Confidence
    ``1 - best / runner_up``, where the runner-up is the best candidate more than
    ``distinct_m`` from the best: 0 when another place of the house matches as well (a
    textureless corner), towards 1 when only one place does. A planner should trust the
    estimate above a threshold calibrated on validation episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldsim.geometry import pose_from_position_yaw
from worldsim.memory import Memory
from worldsim.simulator.collision import MapCollider, MapCollisionConfig


@dataclass(frozen=True)
class LocalisationConfig:
    """Settings of :func:`localise_goal`.

    Attributes:
        cell_m: spacing of the candidate positions, metres, in (0, 2].
        headings: candidate headings per position, >= 4.
        render_size: side of the renders compared with the picture, pixels, >= 8.
        min_coverage: least share of a candidate's view the map must draw, in (0, 1].
        distinct_m: candidates farther apart than this count as other places, metres, > 0.
        refine: candidates refined around the best (each a distinct place), >= 0.
        floor_tolerance_m: map points this close to the floor height are floor, metres, > 0.
        batch: cameras rendered per call, >= 1.
        coarse_pool: the coarse stage compares means of this many pixels a side, >= 1.
        empty_cost: the score of a pixel the render leaves empty, >= 0 (a colour difference
            of 0.25 on average).
        level_of_detail: the map is drawn at this level of detail (``None``: every point;
            coarser is several times faster, :class:`worldsim.memory.RenderedMemoryConfig`).
        body: the body whose walls block candidate positions (its sensor height places the
            camera).
    """

    cell_m: float = 0.5
    headings: int = 24
    render_size: int = 32
    min_coverage: float = 0.5
    distinct_m: float = 1.0
    refine: int = 3
    floor_tolerance_m: float = 0.05
    batch: int = 256
    level_of_detail: float | None = 2.0
    coarse_pool: int = 4
    empty_cost: float = 0.25
    body: MapCollisionConfig = field(default_factory=MapCollisionConfig)

    def __post_init__(self) -> None:
        checks = (
            ("cell_m", 0.0 < self.cell_m <= 2.0, "(0, 2]"),
            ("headings", self.headings >= 4, ">= 4"),
            ("render_size", self.render_size >= 8, ">= 8"),
            ("min_coverage", 0.0 < self.min_coverage <= 1.0, "(0, 1]"),
            ("distinct_m", self.distinct_m > 0.0, "> 0"),
            ("refine", self.refine >= 0, ">= 0"),
            ("floor_tolerance_m", self.floor_tolerance_m > 0.0, "> 0"),
            ("batch", self.batch >= 1, ">= 1"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)}")


@dataclass(frozen=True)
class GoalEstimate:
    """Where :func:`localise_goal` places a goal picture.

    Attributes:
        position: (3,) float64 floor position (x, floor height, z), metres.
        yaw: heading, radians (:mod:`worldsim.geometry`'s convention).
        error: the best candidate's score (module docstring), lower is better.
        runner_up: the best score of a candidate more than ``distinct_m`` away (inf if none).
        confidence: ``1 - error / runner_up`` in [0, 1].
        candidates: cameras scored (coarse and fine).
    """

    position: np.ndarray
    yaw: float
    error: float
    runner_up: float
    confidence: float
    candidates: int


def candidate_positions(
    memory: Memory, floor_height: float, config: LocalisationConfig
) -> np.ndarray:
    """(P, 2) floor ``(x, z)`` centres of the cells a camera may stand in (module docstring).

    Raises:
        ValueError: for a memory that gives no points, or a map without observed floor.
    """
    if not memory.gives_render:
        raise ValueError(
            f"goal localisation renders the map: it needs a memory that gives a render "
            f"('rendered'), got {type(memory).__name__}"
        )
    points = memory.select(torch.tensor([0])).points()
    xyz = points.xyz[points.observed].double().cpu().numpy()
    floor = xyz[np.abs(xyz[:, 1] - floor_height) <= config.floor_tolerance_m][:, [0, 2]]
    if len(floor) == 0:
        raise ValueError(
            f"the map holds no observed floor at y = {floor_height:.3f} m: walk through the "
            "house first (an earlier walk, or the episode's own views)"
        )
    cells = np.unique(np.floor(floor / config.cell_m).astype(np.int64), axis=0)
    centres = (cells + 0.5) * config.cell_m  # (P, 2)
    collider = MapCollider(torch.from_numpy(xyz), floor_height, config.body)
    free = np.array([not collider.is_blocked(x, z) for x, z in centres])
    return centres[free]


def _score(
    memory: Memory,
    goal: Tensor,
    goal_depth: Tensor | None,
    poses: Tensor,
    intrinsics: Tensor,
    config: LocalisationConfig,
    pool: int = 1,
) -> Tensor:
    """(K,) scores of K cameras (inf where the render draws too little).

    With ``pool > 1`` picture and renders are compared as means of ``pool x pool`` pixel
    blocks (of the drawn pixels), which tolerates the misalignment of a coarse candidate grid.
    A pixel the render leaves empty scores ``empty_cost``: a view into unmapped space is no
    match.
    """
    size = (config.render_size, config.render_size)
    goal_blocks = F.avg_pool2d(goal[None], pool)  # (1, 3, s', s')
    depth_blocks = None if goal_depth is None else F.avg_pool2d(goal_depth[None], pool)
    scores = []
    for first in range(0, poses.shape[0], config.batch):
        part = poses[first : first + config.batch]
        k = intrinsics.expand(part.shape[0], 3, 3)
        render = memory.render(part[None].float(), k[None], size)
        drawn = render.mask[0].float()  # (K, 1, s, s)
        coverage = drawn.mean(dim=(1, 2, 3))
        weight = F.avg_pool2d(drawn, pool)  # (K, 1, s', s') drawn share of each block
        safe = weight.clamp_min(1e-6)
        rgb = F.avg_pool2d(render.rgb[0] * drawn, pool) / safe  # mean of the drawn pixels
        error = (rgb - goal_blocks).abs().mean(1, keepdim=True)  # (K, 1, s', s')
        if depth_blocks is not None:
            depth = F.avg_pool2d(render.depth[0] * drawn, pool) / safe
            error = error + (depth - depth_blocks).abs() / memory.config.max_depth
        score = (error * weight + config.empty_cost * (1 - weight)).mean(dim=(1, 2, 3))
        scores.append(torch.where(coverage >= config.min_coverage, score, torch.inf))
    return torch.cat(scores)


def _poses(xz: np.ndarray, yaws: np.ndarray, floor_height: float, sensor: float) -> Tensor:
    """(K, 4, 4) float64 cameras at every (position, heading) pair, position-major."""
    count = len(yaws)
    position = np.repeat(xz, count, axis=0)  # (K, 2)
    yaw = np.tile(yaws, len(xz))
    floor = np.stack([position[:, 0], np.full(len(yaw), floor_height), position[:, 1]], axis=-1)
    return pose_from_position_yaw(
        torch.from_numpy(floor), torch.from_numpy(yaw), sensor
    ).double()  # (K, 4, 4)


def localise_goal(
    memory: Memory,
    goal_rgb: Tensor,
    intrinsics: Tensor,
    floor_height: float,
    config: LocalisationConfig | None = None,
    goal_depth: Tensor | None = None,
) -> GoalEstimate:
    """Find where a goal picture was taken in a one-row map (module docstring).

    Args:
        memory: a one-row memory that gives a render (a :class:`worldsim.memory.RenderedMemory`).
        goal_rgb: (3, H, W) the picture, float in [0, 1].
        intrinsics: (3, 3) its ``K`` in pixels, for (H, W).
        floor_height: world y of the floor the goal stands on, metres.
        config: settings; the default :class:`LocalisationConfig` if ``None``.
        goal_depth: (1, H, W) the picture's depth in metres, if the goal has one.

    Returns:
        The estimate and its confidence.

    Raises:
        ValueError: for a picture of the wrong shape, a memory that cannot render or holds no
            observed floor, or a map in which no candidate sees enough of its view.
    """
    config = config or LocalisationConfig()
    if memory.gives_render and hasattr(memory, "with_level_of_detail"):
        memory = memory.with_level_of_detail(config.level_of_detail)
    if goal_rgb.dim() != 3 or goal_rgb.shape[0] != 3:
        raise ValueError(f"goal_rgb must be (3, H, W), got {tuple(goal_rgb.shape)}")
    height, width = goal_rgb.shape[1:]
    if memory.batch_size != 1:
        raise ValueError(f"localise the goal in a one-row map, got {memory.batch_size} rows")
    size = config.render_size
    scale = torch.tensor([[size / width, 0.0, 0.0], [0.0, size / height, 0.0], [0.0, 0.0, 1.0]])
    k = (scale @ intrinsics.double().cpu().float()).to(memory.device)
    goal = F.interpolate(goal_rgb[None].float(), (size, size), mode="area")[0].to(memory.device)
    depth = None
    if goal_depth is not None:  # nearest: a mean of depths across an edge is no surface
        depth = F.interpolate(goal_depth[None].float(), (size, size), mode="nearest")[0]
        depth = depth.to(memory.device)
    sensor = config.body.sensor_height
    xz = candidate_positions(memory, floor_height, config)
    yaws = np.arange(config.headings) * (2 * math.pi / config.headings)
    coarse = _poses(xz, yaws, floor_height, sensor)
    scores = _score(memory, goal, depth, coarse, k, config, config.coarse_pool)
    if not bool(torch.isfinite(scores).any()):
        raise ValueError(
            f"no candidate view of the map draws {config.min_coverage:.0%} of its pixels: the "
            "map is too sparse to localise the goal in"
        )
    places = np.repeat(xz, len(yaws), axis=0)
    headings = np.tile(yaws, len(xz))
    values = scores.cpu().numpy()
    candidates = len(values)
    # Refine the best distinct places: a quarter cell and half a heading step finer.
    step, turn = config.cell_m / 4, math.pi / config.headings
    offsets = np.arange(-2, 3) * step
    for index in _distinct_best(places, values, config.refine, config.distinct_m):
        around = places[index] + np.stack(np.meshgrid(offsets, offsets), -1).reshape(-1, 2)
        turns = headings[index] + np.array([-turn, 0.0, turn])
        fine = _score(memory, goal, depth, _poses(around, turns, floor_height, sensor), k, config)
        places = np.concatenate([places, np.repeat(around, len(turns), axis=0)])
        headings = np.concatenate([headings, np.tile(turns, len(around))])
        values = np.concatenate([values, fine.cpu().numpy()])
        candidates += len(fine)
    best = int(np.argmin(values))
    far = np.linalg.norm(places - places[best], axis=1) > config.distinct_m
    runner_up = float(values[far].min()) if far.any() else math.inf
    error = float(values[best])
    confidence = 1.0 - error / runner_up if math.isfinite(runner_up) and runner_up > 0 else 1.0
    yaw = math.remainder(float(headings[best]), 2 * math.pi)
    return GoalEstimate(
        position=np.array([places[best][0], floor_height, places[best][1]]),
        yaw=yaw,
        error=error,
        runner_up=runner_up,
        confidence=float(np.clip(confidence, 0.0, 1.0)),
        candidates=candidates,
    )


def _distinct_best(places: np.ndarray, values: np.ndarray, count: int, apart: float) -> list[int]:
    """Indices of the ``count`` best finite scores, each more than ``apart`` from the others."""
    chosen: list[int] = []
    for index in np.argsort(values, kind="stable"):
        if len(chosen) == count or not np.isfinite(values[index]):
            break
        if all(np.linalg.norm(places[index] - places[other]) > apart for other in chosen):
            chosen.append(int(index))
    return chosen
