"""Collisions in a learned world, from what its map has observed.

A world model moves its camera wherever the actions say: it knows no walls. The ground truth
does, and an agent that plans to walk through a wall towards its goal stays stuck against it.
:class:`MapCollider` gives the learned world the body the ground truth has, drawn from the
memory's *observed* points (never from generated ones): a top-down grid of the cells that
geometry occupies inside the body's height slab, grown by the body's radius. A move is cut into
sub-steps of at most half a cell; a sub-step into a blocked cell slides along the obstacle (its
x or z part alone, the longer first) or, if neither is free, the agent stops there, much as
the ground truth's navigation does (which first slides along the obstacle's normal).

What the map has not seen is free: the collider only knows the walls the agent has observed.
A camera that already stands in a blocked cell (the map's points lie a little off the true
surfaces) may still take sub-steps that do not bring it nearer to the observed geometry, so a
start is never frozen in place, yet never walks on into a wall.

Poses follow :mod:`worldsim.geometry`: world y up, the camera looks along its -z, the floor
lies ``sensor_height`` below the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from worldsim.geometry import DEFAULT_SENSOR_HEIGHT_M


@dataclass(frozen=True)
class MapCollisionConfig:
    """Body and grid of :class:`MapCollider` (the defaults are the ground truth's).

    Attributes:
        cell_size: grid cell edge, metres, in (0, 1].
        agent_radius: radius of the agent's cylindrical body, metres, in [0, 2].
        agent_height: height of the body above the floor, metres, in (step_height, 10].
        step_height: points no higher than this above the floor never block, metres, in
            [0, agent_height).
        sensor_height: the camera's height above the floor, metres, in (0, agent_height].
    """

    cell_size: float = 0.05
    agent_radius: float = 0.1
    agent_height: float = 1.5
    step_height: float = 0.1
    sensor_height: float = DEFAULT_SENSOR_HEIGHT_M

    def __post_init__(self) -> None:
        checks = (
            ("cell_size", self.cell_size, 0.0 < self.cell_size <= 1.0, "(0, 1]"),
            ("agent_radius", self.agent_radius, 0.0 <= self.agent_radius <= 2.0, "[0, 2]"),
            (
                "agent_height",
                self.agent_height,
                self.step_height < self.agent_height <= 10.0,
                f"(step_height = {self.step_height}, 10]",
            ),
            ("step_height", self.step_height, 0.0 <= self.step_height, "[0, agent_height)"),
            (
                "sensor_height",
                self.sensor_height,
                0.0 < self.sensor_height <= self.agent_height,
                f"(0, agent_height = {self.agent_height}]",
            ),
        )
        for name, value, ok, interval in checks:
            if not (math.isfinite(value) and ok):
                raise ValueError(f"{name} must be in {interval} metres, got {value}")


class MapCollider:
    """Blocked cells of one map and the moves a body makes among them (module docstring).

    Args:
        points: (M, 3) world positions of the map's observed points, metres.
        floor_height: world y of the floor, metres.
        config: body and grid settings; the default :class:`MapCollisionConfig` if ``None``.

    Raises:
        ValueError: for points of the wrong shape, non-finite points or floor height.
    """

    def __init__(
        self,
        points: Tensor | np.ndarray,
        floor_height: float,
        config: MapCollisionConfig | None = None,
    ) -> None:
        self.config = config = config or MapCollisionConfig()
        xyz = torch.as_tensor(points).detach().cpu().double().numpy()
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"points must be (M, 3) world positions, got shape {xyz.shape}")
        if not np.isfinite(xyz).all():
            raise ValueError("points must be finite; drop NaN or infinite points first")
        if not math.isfinite(floor_height):
            raise ValueError(f"floor_height must be finite, got {floor_height}")
        self.floor_height = float(floor_height)
        height = xyz[:, 1] - self.floor_height
        slab = xyz[(height > config.step_height) & (height <= config.agent_height)][:, [0, 2]]
        self._cell = cell = config.cell_size
        reach = math.ceil(config.agent_radius / cell) + 1
        if len(slab) == 0:
            self._origin = np.zeros(2)
            self._blocked = np.zeros((1, 1), dtype=bool)
            self._clearance = np.full((1, 1), np.inf)
            return
        # The grid spans the obstacles and the footprint's reach around them; beyond it is free.
        self._origin = slab.min(axis=0) - (reach + 1) * cell
        cols, rows = np.floor((slab.max(axis=0) - self._origin) / cell).astype(int) + reach + 2
        occupied = np.zeros((rows, cols), dtype=bool)
        index = np.floor((slab - self._origin) / cell).astype(int)
        occupied[index[:, 1], index[:, 0]] = True
        self._blocked = ndimage.binary_dilation(
            occupied, structure=clearance_footprint(cell, config.agent_radius)
        )
        # Cells from the nearest occupied cell: a body in a blocked cell may not get nearer.
        self._clearance = ndimage.distance_transform_edt(~occupied)

    @classmethod
    def from_memory(
        cls, memory: object, row: int, floor_height: float, config: MapCollisionConfig | None = None
    ) -> MapCollider:
        """The collider of one row of a map's observed points.

        Args:
            memory: a :class:`~worldsim.memory.RenderedMemory` (any memory with ``points()``
                and ``select``).
            row: the map row.
            floor_height: world y of the floor, metres.
            config: as the constructor.

        Raises:
            ValueError: for a memory that keeps no points.
        """
        if not hasattr(memory, "points"):
            raise ValueError(
                f"map collisions need a memory of points (RenderedMemory), got "
                f"{type(memory).__name__}; leave collisions off for this memory kind"
            )
        points = memory.select(torch.tensor([row])).points()
        return cls(points.xyz[points.observed], floor_height, config)

    @property
    def blocked(self) -> np.ndarray:
        """(H, W) bool: cells the body may not enter (rows along +z, columns along +x)."""
        return self._blocked

    def is_blocked(self, x: float, z: float) -> bool:
        """Whether the body's centre may not stand at world ``(x, z)``."""
        cell = self._cell_of(x, z)
        return cell is not None and bool(self._blocked[cell])

    def _cell_of(self, x: float, z: float) -> tuple[int, int] | None:
        """``(row, col)`` of world ``(x, z)``, or ``None`` outside the grid (free)."""
        col = math.floor((x - self._origin[0]) / self._cell)
        row = math.floor((z - self._origin[1]) / self._cell)
        rows, cols = self._blocked.shape
        return (row, col) if 0 <= row < rows and 0 <= col < cols else None

    def _may_step(self, x: float, z: float, dx: float, dz: float) -> bool:
        """Whether a sub-step is free: into a free cell, or out of a blocked one, never nearer."""
        if not self.is_blocked(x + dx, z + dz):
            return True
        if not self.is_blocked(x, z):
            return False
        # Both cells blocked (a start in a blocked cell): only steps that do not approach.
        here, there = self._cell_of(x, z), self._cell_of(x + dx, z + dz)
        return bool(self._clearance[there] >= self._clearance[here])

    def move(self, x: float, z: float, dx: float, dz: float) -> tuple[float, float, bool]:
        """Move the body's centre by ``(dx, dz)`` with collision (module docstring).

        Returns:
            ``(x, z, collided)``: the end position and whether anything blocked the move.
        """
        length = math.hypot(dx, dz)
        if length == 0.0:
            return x, z, False
        count = math.ceil(length / (0.5 * self._cell))
        step_x, step_z = dx / count, dz / count
        collided = False
        for _ in range(count):
            if self._may_step(x, z, step_x, step_z):
                x, z = x + step_x, z + step_z
                continue
            collided = True
            slides = [(step_x, 0.0), (0.0, step_z)]
            if abs(step_z) > abs(step_x):
                slides.reverse()
            for slide_x, slide_z in slides:
                if (slide_x or slide_z) and self._may_step(x, z, slide_x, slide_z):
                    x, z = x + slide_x, z + slide_z
                    break
            else:
                break
        return x, z, collided

    def constrain(self, reference: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
        """Relative step poses of one camera path with every move made with collision.

        Args:
            reference: (4, 4) camera-to-world pose the path starts from.
            steps: (L, 4, 4) relative poses, each in the frame of the camera before it.

        Returns:
            ``(steps, collided)``: (L, 4, 4) the steps with their translations cut where a move
            is blocked (rotations kept), same dtype; (L,) bool, True where a move was blocked.
        """
        free = reference.double().cpu().clone()  # the corrected path's current camera
        out = torch.empty_like(steps, dtype=torch.float64)
        collided = torch.zeros(steps.shape[0], dtype=torch.bool)
        for index, step in enumerate(steps.double().cpu()):
            wanted = free @ step
            dx, dz = (wanted[[0, 2], 3] - free[[0, 2], 3]).tolist()
            x, z, hit = self.move(float(free[0, 3]), float(free[2, 3]), dx, dz)
            moved = wanted.clone()
            moved[0, 3], moved[2, 3] = x, z
            out[index] = torch.linalg.inv(free) @ moved
            collided[index] = hit
            free = moved
        return out.to(steps.dtype), collided


def clearance_footprint(cell_size: float, radius: float) -> np.ndarray:
    """Cell offsets whose square comes closer than ``radius`` to the centre cell's square.

    Returns:
        (2k+1, 2k+1) bool structuring element: dilating an obstacle mask by it blocks every cell
        that has some point nearer than ``radius`` to some point of an obstacle cell, and the
        obstacle cells themselves.
    """
    reach = math.ceil(radius / cell_size) + 1
    offsets = np.arange(-reach, reach + 1)
    gap = np.maximum(np.abs(offsets) - 1, 0) * cell_size  # distance between the squares per axis
    footprint = np.hypot(gap[:, None], gap[None, :]) < radius
    footprint[reach, reach] = True  # an obstacle's own cell blocks even a body of radius 0
    return footprint
