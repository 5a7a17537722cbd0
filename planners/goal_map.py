"""The goal in the episode's map: a geodesic cost-to-go to where the goal picture was taken.

LPIPS between an imagined frame and the goal picture sees no progress while the goal lies behind
the agent or around a corner. Once the goal picture is found in the episode's persistent map
(:func:`planners.localisation.localise_goal`, with a confidence), the map also says how far each
imagined end pose is from it, along the floor and around the walls it has observed:

Grid
    Square cells of ``grid_cell_m`` metres over the map's observed points (and the goal), each:
    *blocked* where observed geometry stands in the body's height slab, grown by the body's
    radius (as :class:`worldsim.simulator.collision.MapCollider`); *free* where observed floor
    lies and nothing blocks; *unknown* otherwise (never seen: passable, but ``unknown_factor``
    times dearer per metre, so known floor is preferred where it is about as short).

Cost-to-go
    Dijkstra over the 8-connected grid from the goal's cell (edge length times the mean factor of
    its two cells), so ``distance(x, z)`` is the geodesic length in metres from ``(x, z)`` to the
    goal. A pose in a blocked or outside cell takes the nearest reachable cell's distance plus the
    straight line to it. The map cost of a pose is::

        cost = metre_cost * distance + heading_cost * (1 - cos(yaw - goal_yaw)) / 2
               * max(0, 1 - distance / heading_radius_m)

    (the heading only counts near the goal), added to the LPIPS cost by :class:`MapGoalCost`.

Frontiers
    Where the goal is not localised with ``min_confidence``, the map term is
    ``explore_cost * distance to the nearest frontier`` (free cells beside unknown ones), so
    the agent walks towards what it has not seen (0: LPIPS alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from torch import Tensor

from planners.costs import GoalCost
from planners.localisation import GoalEstimate, LocalisationConfig, localise_goal
from worldsim.geometry import position_yaw_from_pose
from worldsim.memory import Memory, build_memory
from worldsim.simulator.chunks import insert_frames
from worldsim.simulator.collision import MapCollisionConfig, clearance_footprint
from worldsim.simulator.protocol import RolloutStart


def _fast_localisation() -> LocalisationConfig:
    # 0.75 m cells, 16 headings, 16-pixel renders of a coarse map: about 7 s on one thread for
    # a 300-frame walk of a test house (45 s at the localiser's own defaults), within 0.4 m on
    # the goals of a walk whose confidence passed 0.1.
    return LocalisationConfig(
        cell_m=0.75, headings=16, render_size=16, coarse_pool=2, level_of_detail=4.0
    )


@dataclass(frozen=True)
class GoalMapConfig:
    """Settings of :class:`GoalMap` and of the map cost (module docstring).

    Attributes:
        localisation: how the goal picture is found in the map.
        min_confidence: the estimate is trusted from this confidence on, in [0, 1].
        relocalise_every: decisions between localisations while none is trusted, >= 1.
        relocalise_growth: ... and the least growth of the map's observed points since the
            last try, as a fraction, >= 0.
        grid_cell_m: cell of the cost-to-go grid, metres, in (0, 1].
        unknown_factor: cost per metre of unseen cells relative to seen floor, >= 1.
        metre_cost: map cost per metre of geodesic distance, LPIPS units, >= 0.
        heading_cost: map cost of facing opposite the goal's heading at the goal, >= 0.
        heading_radius_m: the heading counts within this distance of the goal, metres, > 0.
        explore_cost: cost per metre to the nearest frontier while the goal is not localised,
            >= 0 (0: the LPIPS cost alone).
    """

    localisation: LocalisationConfig = field(default_factory=_fast_localisation)
    min_confidence: float = 0.1
    relocalise_every: int = 3
    # 10 %: a map of an earlier walk barely grows during an episode, and each localisation takes
    # seconds; a map of the episode's own views grows by a tenth within a few decisions.
    relocalise_growth: float = 0.1
    grid_cell_m: float = 0.1
    unknown_factor: float = 2.0
    # 0.1 per metre: a goal 3 m away weighs 0.3, about the LPIPS between a far and a near view
    # of one goal, so LPIPS still decides the last metre and the final view.
    metre_cost: float = 0.1
    heading_cost: float = 0.1
    heading_radius_m: float = 1.0
    explore_cost: float = 0.0

    def __post_init__(self) -> None:
        checks = (
            ("min_confidence", 0.0 <= self.min_confidence <= 1.0, "[0, 1]"),
            ("relocalise_every", self.relocalise_every >= 1, ">= 1"),
            ("relocalise_growth", self.relocalise_growth >= 0.0, ">= 0"),
            ("grid_cell_m", 0.0 < self.grid_cell_m <= 1.0, "(0, 1]"),
            ("unknown_factor", self.unknown_factor >= 1.0, ">= 1"),
            ("metre_cost", self.metre_cost >= 0.0, ">= 0"),
            ("heading_cost", self.heading_cost >= 0.0, ">= 0"),
            ("heading_radius_m", self.heading_radius_m > 0.0, "> 0"),
            ("explore_cost", self.explore_cost >= 0.0, ">= 0"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)}")

    @property
    def body(self) -> MapCollisionConfig:
        """The body whose walls block cells (the localiser's)."""
        return self.localisation.body


class GeodesicField:
    """Geodesic distance over a map's floor grid to a set of target positions (module docstring).

    Args:
        points: (M, 3) observed world points, metres.
        floor_height: world y of the floor, metres.
        targets: (T, 2) world ``(x, z)`` of the targets, T >= 1.
        config: grid and body settings.

    Raises:
        ValueError: for a map without observed points or targets of the wrong shape.
    """

    def __init__(
        self, points: np.ndarray, floor_height: float, targets: np.ndarray, config: GoalMapConfig
    ) -> None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        targets = np.asarray(targets, dtype=np.float64).reshape(-1, 2)
        if len(points) == 0:
            raise ValueError(
                "the map holds no observed points: a map cost needs a map of what the agent saw "
                "(an earlier walk or the episode's own views); use --cost lpips without one"
            )
        if len(targets) == 0:
            raise ValueError("a geodesic field needs at least one target")
        body, cell = config.body, config.grid_cell_m
        self.cell = cell
        height = points[:, 1] - floor_height
        xz = points[:, [0, 2]]
        pad = 1.0 + body.agent_radius
        low = np.minimum(xz.min(axis=0), targets.min(axis=0)) - pad
        high = np.maximum(xz.max(axis=0), targets.max(axis=0)) + pad
        self.origin = low
        cols, rows = np.ceil((high - low) / cell).astype(int) + 1
        self.shape = (int(rows), int(cols))
        slab = xz[(height > body.step_height) & (height <= body.agent_height)]
        floor = xz[np.abs(height) <= config.localisation.floor_tolerance_m]
        occupied = self._mask(slab)
        self.blocked = ndimage.binary_dilation(
            occupied, structure=clearance_footprint(cell, body.agent_radius)
        )
        self.floor = self._mask(floor) & ~self.blocked  # (H, W) seen, free floor
        factor = np.where(self.floor, 1.0, config.unknown_factor)
        factor[self.blocked] = np.inf
        self.factor = factor
        # A target in a blocked cell (the map's walls lie a little off the true surfaces) moves
        # to the nearest passable cell.
        passable = np.isfinite(factor)
        if not passable.any():
            raise ValueError("the map's walls block every cell of its grid")
        _, nearest_passable = ndimage.distance_transform_edt(~passable, return_indices=True)
        target_cells = sorted(
            {tuple(int(v) for v in nearest_passable[:, r, c]) for r, c in map(self._cell, targets)}
        )
        self.distance = _dijkstra(factor, target_cells, cell)  # (H, W) metres, inf unreachable
        # Blocked or unreachable cells: the nearest reachable cell, plus the way to it.
        unreachable = ~np.isfinite(self.distance)
        if unreachable.all():
            self._nearest = None
        else:
            _, nearest = ndimage.distance_transform_edt(unreachable, return_indices=True)
            self._nearest = nearest  # (2, H, W) row / column of the nearest reachable cell

    def _mask(self, xz: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        if len(xz):
            index = np.floor((xz - self.origin) / self.cell).astype(int)
            inside = (index >= 0).all(axis=1) & (index < self.shape[::-1]).all(axis=1)
            mask[index[inside, 1], index[inside, 0]] = True
        return mask

    def _cell(self, xz: np.ndarray) -> tuple[int, int]:
        col, row = np.floor((np.asarray(xz) - self.origin) / self.cell).astype(int)
        return int(np.clip(row, 0, self.shape[0] - 1)), int(np.clip(col, 0, self.shape[1] - 1))

    def centre(self, row: int, col: int) -> np.ndarray:
        """World ``(x, z)`` of a cell's centre."""
        return self.origin + (np.array([col, row]) + 0.5) * self.cell

    def __call__(self, xz: np.ndarray) -> np.ndarray:
        """(K,) float64 geodesic metres from world ``(x, z)`` positions (K, 2) to the targets.

        A position whose cell is blocked, unreachable or outside the grid takes the nearest
        reachable cell's distance plus the straight line to that cell's centre; inf when no
        cell reaches the targets.
        """
        xz = np.asarray(xz, dtype=np.float64).reshape(-1, 2)
        out = np.empty(len(xz))
        for index, point in enumerate(xz):
            row, col = self._cell(point)
            col_raw, row_raw = np.floor((point - self.origin) / self.cell).astype(int)
            inside = (row, col) == (row_raw, col_raw)
            value = self.distance[row, col]
            if inside and np.isfinite(value):
                out[index] = value
            elif self._nearest is None:
                out[index] = np.inf
            else:
                near_row, near_col = self._nearest[:, row, col]
                gap = np.linalg.norm(point - self.centre(near_row, near_col))
                out[index] = self.distance[near_row, near_col] + gap
        return out

    def frontier_cells(self) -> np.ndarray:
        """(F, 2) world ``(x, z)`` of free seen cells beside an unknown (unseen, unblocked) one."""
        unknown = ~self.floor & ~self.blocked
        beside = ndimage.binary_dilation(unknown, structure=np.ones((3, 3), dtype=bool))
        rows, cols = np.nonzero(self.floor & beside)
        return self.origin + (np.stack([cols, rows], axis=-1) + 0.5) * self.cell


def _dijkstra(factor: np.ndarray, sources: list[tuple[int, int]], cell: float) -> np.ndarray:
    """(H, W) shortest 8-connected path lengths (metres) from the source cells.

    An edge between neighbours costs its length times the mean ``factor`` of its two cells;
    cells of infinite factor are never entered (nor left, unless a source).
    """
    rows, cols = factor.shape
    ids = np.arange(rows * cols).reshape(rows, cols)
    heads, tails, weights = [], [], []
    for d_row, d_col in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each undirected edge once
        a_cols = slice(0, cols - d_col) if d_col >= 0 else slice(-d_col, cols)
        b_cols = slice(d_col, cols) if d_col >= 0 else slice(0, cols + d_col)
        a, b = ids[: rows - d_row, a_cols], ids[d_row:, b_cols]  # neighbours (a, b)
        mean = 0.5 * (factor.flat[a.ravel()] + factor.flat[b.ravel()])
        keep = np.isfinite(mean)
        length = cell * math.hypot(d_row, d_col)
        heads.append(a.ravel()[keep])
        tails.append(b.ravel()[keep])
        weights.append(length * mean[keep])
    head, tail, weight = np.concatenate(heads), np.concatenate(tails), np.concatenate(weights)
    graph = sparse.coo_matrix((weight, (head, tail)), shape=(rows * cols, rows * cols)).tocsr()
    starts = [row * cols + col for row, col in sources]
    distance = csgraph.dijkstra(graph, directed=False, indices=starts, min_only=True)
    return distance.reshape(rows, cols)


def map_of_frames(walk: RolloutStart, memory: Memory | None = None) -> Memory:
    """A one-row rendered map of observed frames (an earlier walk), for a planner without one.

    Args:
        walk: one row of frames (e.g. :meth:`envs.oracle.OracleRollout.tour`).
        memory: the map to insert into (one row); ``None``: a new ``"rendered"`` memory.

    Returns:
        The map, every point observed.
    """
    if memory is None:
        memory = build_memory("rendered")
        memory.reset(1)
    insert_frames(memory, walk.rgb, walk.depth, walk.intrinsics, walk.cam_to_world)
    return memory


class GoalMap:
    """Where the goal picture is in the episode's map, and how far each pose is from it.

    Args:
        goal: (3, H, W) the goal picture in [0, 1].
        intrinsics: (3, 3) its ``K``.
        floor_height: world y of the floor, metres.
        config: settings.
    """

    def __init__(
        self, goal: Tensor, intrinsics: Tensor, floor_height: float, config: GoalMapConfig
    ) -> None:
        self.goal, self.intrinsics = goal, intrinsics
        self.floor_height, self.config = float(floor_height), config
        self.estimate: GoalEstimate | None = None
        self.localisations = 0
        self._last_try: int | None = None
        self._last_size = 0
        self._goal_field: GeodesicField | None = None
        self._frontier_field: GeodesicField | None = None

    @property
    def confident(self) -> bool:
        """Whether the goal's estimate is trusted (its confidence >= ``min_confidence``)."""
        estimate = self.estimate
        return estimate is not None and estimate.confidence >= self.config.min_confidence

    def update(self, memory: Memory, decision: int, need_field: bool = True) -> None:
        """Localise the goal in ``memory`` (one row) if due, and rebuild the cost-to-go.

        Localises at the first call, and again while no estimate is trusted once
        ``relocalise_every`` decisions have passed and the map has grown by ``relocalise_growth``
        of its observed points since (the same map would give the same answer); a trusted
        estimate is kept. A map too sparse to localise in leaves the estimate untrusted.

        Raises:
            ValueError: when a field is needed and the map holds no observed points.
        """
        points = memory.select(torch.tensor([0])).points()
        xyz = points.xyz[points.observed].double().cpu().numpy()
        config = self.config
        due = self._last_try is None or (
            decision - self._last_try >= config.relocalise_every
            and len(xyz) >= (1.0 + config.relocalise_growth) * self._last_size
        )
        if not self.confident and due:
            self._last_try, self._last_size = decision, len(xyz)
            self.localisations += 1
            try:
                self.estimate = localise_goal(
                    memory, self.goal, self.intrinsics, self.floor_height, config.localisation
                )
            except ValueError:  # no observed floor, or no view drawn enough: not yet
                self.estimate = None
        if not need_field:
            return
        if self.confident:
            target = self.estimate.position[[0, 2]][None]
            self._goal_field = GeodesicField(xyz, self.floor_height, target, self.config)
        elif self.config.explore_cost > 0.0:
            probe = GeodesicField(xyz, self.floor_height, xyz[:1, [0, 2]], self.config)
            frontier = probe.frontier_cells()
            self._frontier_field = (
                GeodesicField(xyz, self.floor_height, frontier, self.config)
                if len(frontier)
                else None
            )
        elif len(xyz) == 0:
            GeodesicField(xyz, self.floor_height, np.zeros((1, 2)), self.config)  # the error

    def distance(self, poses: Tensor) -> np.ndarray:
        """(K,) geodesic metres from camera poses (K, 4, 4) to the trusted goal estimate."""
        if not self.confident or self._goal_field is None:
            raise ValueError("the goal is not localised with confidence; call update first")
        position, _ = position_yaw_from_pose(poses.double().cpu(), self.config.body.sensor_height)
        return self._goal_field(position[:, [0, 2]].numpy())

    def cost(self, poses: Tensor) -> Tensor:
        """(K,) float32 map cost of camera poses (K, 4, 4) (module docstring); 0 without one."""
        config = self.config
        if self.confident and self._goal_field is not None:
            distance = self.distance(poses)
            _, yaw = position_yaw_from_pose(poses.double().cpu(), config.body.sensor_height)
            facing = (1.0 - np.cos(yaw.numpy() - self.estimate.yaw)) / 2.0
            near = np.clip(1.0 - distance / config.heading_radius_m, 0.0, 1.0)
            total = config.metre_cost * distance + config.heading_cost * facing * near
            return torch.from_numpy(total).float()
        if config.explore_cost > 0.0 and self._frontier_field is not None:
            position, _ = position_yaw_from_pose(poses.double().cpu(), config.body.sensor_height)
            distance = self._frontier_field(position[:, [0, 2]].numpy())
            return torch.from_numpy(config.explore_cost * distance).float()
        return torch.zeros(poses.shape[0])

    def at_goal(self, pose: Tensor, radius_m: float, heading_deg: float) -> bool:
        """Whether a camera pose (4, 4) is at the trusted goal estimate.

        At: within ``radius_m`` of it (floor straight line), facing its heading within
        ``heading_deg``.
        """
        if not self.confident:
            return False
        position, yaw = position_yaw_from_pose(pose.double().cpu(), self.config.body.sensor_height)
        offset = position.numpy()[[0, 2]] - self.estimate.position[[0, 2]]
        turn = abs(math.remainder(float(yaw) - self.estimate.yaw, 2 * math.pi))
        return bool(np.hypot(*offset) <= radius_m and turn <= math.radians(heading_deg))


class MapGoalCost(GoalCost):
    """LPIPS to the goal picture plus the map's cost-to-go of the end pose (module docstring).

    :meth:`frames` stays LPIPS alone (what the stopping rule reads); :meth:`score` and calling
    it on a rollout add the map cost.

    Args:
        lpips: the LPIPS goal cost (its ``config`` and module are shared).
        goal_map: the episode's goal map; its cost is 0 until it localises the goal (or, with
            ``explore_cost``, finds frontiers).
    """

    def __init__(self, lpips: GoalCost, goal_map: GoalMap) -> None:
        super().__init__(lpips.config, lpips.lpips)
        self.goal_map = goal_map

    def score(self, frames: Tensor, poses: Tensor, goal: Tensor) -> Tensor:
        """(B,) LPIPS of ``frames`` (B, F, 3, H, W) plus the map cost of ``poses`` (B, 4, 4)."""
        return self.frames(frames, goal) + self.goal_map.cost(poses)
