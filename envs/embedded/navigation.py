"""Navigation on the navigability grid: collisions, geodesics and an oracle follower.

The embedded simulator's counterpart of Habitat's path finder and shortest-path follower; the
grid itself is built by :mod:`envs.embedded.navmesh`.

Paths
    Geodesic distances come from Dijkstra's algorithm on the navigable cells with
    16-connectivity (steps to the 8 neighbours and the 8 knight's-move cells) and Euclidean step
    costs; a step is allowed only when every cell its straight line touches is navigable, so
    paths never cut a blocked corner. Cell paths are at most 2.7 % longer than straight lines;
    the distance field of a goal is computed once and cached (the oracle and per-step rewards
    query the same goal many times), after which a geodesic distance costs microseconds.
    :meth:`NavGrid.shortest_path` smooths the cell path by keeping only the points that cannot be
    seen from the previous kept point.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import trimesh
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from envs.embedded.navmesh import (
    NavConfig,
    _rasterise_centres,
    _rasterise_slab,
    _upward_faces,
    detect_floor_height,
)
from worldsim.simulator.collision import clearance_footprint

_EDGE_QUANTUM = 2.0**30
"""Path-graph edge lengths are whole multiples of 1 / this many metres (see _path_graph)."""
_MOVES = (
    ((0, 1), ()),
    ((1, 0), ()),
    ((1, 1), ((0, 1), (1, 0))),
    ((1, -1), ((0, -1), (1, 0))),
    ((1, 2), ((0, 1), (1, 1))),
    ((1, -2), ((0, -1), (1, -1))),
    ((2, 1), ((1, 0), (1, 1))),
    ((2, -1), ((1, 0), (1, -1))),
)
"""Steps of the path graph, ``(d_row, d_col)``, with the other cells that a straight line between
the two cells' centres touches (diagonals: the two side cells, as it passes their common corner),
which must be navigable too. With their opposites these are 16 directions 22.5 degrees apart at
most, so cell paths are at most 1 / cos(13.3 deg) - 1 = 2.7 % longer than straight lines."""


# ------------------------------------------------------------------------------- the grid
class NavGrid:
    """Navigable floor of a scene on a 2D grid, with collision, geodesics and paths.

    Build one with :meth:`from_mesh`. Points are world-frame ``(x, y, z)`` in metres with y the
    floor height; distances are horizontal (in the xz plane).

    Args:
        navigable: (H, W) bool mask of navigable cells (rows along +z, columns along +x).
        origin: world ``(x0, z0)`` of the corner of cell ``(0, 0)``, metres.
        config: the settings the grid was built with (cell size, floor height tolerance, cache).
        floor_height: world y of the floor, metres.
        occupancy: (H, W) bool mask of cells that geometry occupies inside the body's height slab;
            ``None`` if unknown (grids built by hand).
        floor: (H, W) bool mask of cells with floor under their centre; ``None`` if unknown.

    Raises:
        ValueError: for masks of the wrong shape or a grid without navigable cells.
    """

    def __init__(
        self,
        navigable: np.ndarray,
        origin: tuple[float, float],
        config: NavConfig,
        floor_height: float,
        occupancy: np.ndarray | None = None,
        floor: np.ndarray | None = None,
    ) -> None:
        navigable = np.asarray(navigable)
        if navigable.ndim != 2 or min(navigable.shape) < 2 or navigable.dtype != bool:
            raise ValueError(
                f"navigable must be a 2D bool mask of at least 2 x 2 cells, got shape "
                f"{navigable.shape} and dtype {navigable.dtype}"
            )
        if not navigable.any():
            raise ValueError(
                "the grid has no navigable cell: no floor under the agent, or no room for a body "
                f"of radius {config.agent_radius} m and height {config.agent_height} m "
                f"(floor at y = {floor_height:.3f} m); check the mesh's up axis and the NavConfig"
            )
        for name, mask in (("occupancy", occupancy), ("floor", floor)):
            if mask is not None and np.shape(mask) != navigable.shape:
                raise ValueError(
                    f"{name} must have the shape of navigable {navigable.shape}, got "
                    f"{np.shape(mask)}"
                )
        self.config = config
        self._navigable = navigable.copy()
        self._navigable.setflags(write=False)
        self._navigable_flat = self._navigable.ravel()
        self._origin = (float(origin[0]), float(origin[1]))
        self._cell = float(config.cell_size)
        self._floor_height = float(floor_height)
        self._occupancy = None if occupancy is None else np.array(occupancy, dtype=bool)
        self._floor = None if floor is None else np.array(floor, dtype=bool)
        self._height, self._width = navigable.shape
        # Node ids of the navigable cells for the path graph (-1 elsewhere).
        self._node = np.full(navigable.shape, -1, dtype=np.int64)
        self._node[navigable] = np.arange(int(navigable.sum()))
        self._node_cells = np.argwhere(navigable)  # (N, 2) (row, col) of each node
        self._graph: sparse.csr_matrix | None = None
        self._fields: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        # Unit directions away from the nearest non-navigable cell, (x, z), for sliding.
        clearance = ndimage.distance_transform_edt(navigable)
        grad_row, grad_col = np.gradient(clearance)
        norm = np.hypot(grad_row, grad_col)
        norm[norm == 0.0] = 1.0
        self._away_x = grad_col / norm
        self._away_z = grad_row / norm

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_mesh(cls, mesh: trimesh.Trimesh, config: NavConfig | None = None) -> NavGrid:
        """Build the grid of a world-frame mesh (y up, metres).

        Args:
            mesh: the whole scene as one triangle mesh (e.g. a ``trimesh.Scene`` flattened with
                ``scene.to_mesh()``).
            config: grid and agent settings; the default :class:`NavConfig` if ``None``.

        Returns:
            The grid.

        Raises:
            ValueError: for a mesh without triangles, with non-finite vertices, without an upward
                surface, or without any cell where the agent fits.
            TypeError: if ``mesh`` is not a ``trimesh.Trimesh``.
        """
        config = config or NavConfig()
        if not isinstance(mesh, trimesh.Trimesh):
            raise TypeError(
                f"mesh must be a trimesh.Trimesh, got {type(mesh).__name__}; flatten a "
                "trimesh.Scene with scene.to_mesh()"
            )
        if len(mesh.faces) == 0:
            raise ValueError("the mesh has no triangles")
        if not np.isfinite(mesh.vertices).all():
            raise ValueError("the mesh has NaN or infinite vertex coordinates")
        if config.floor_height is None:
            floor_height = detect_floor_height(mesh, config)
        else:
            floor_height = config.floor_height
        cell = config.cell_size
        bounds = mesh.bounds[:, [0, 2]]  # (2, 2) min/max of (x, z)
        origin = bounds[0] - cell
        width, height = (np.ceil((bounds[1] - bounds[0]) / cell).astype(int) + 2).tolist()
        shape = (height, width)
        triangles = mesh.triangles  # (F, 3, 3)

        upward, heights, _ = _upward_faces(mesh, config)
        on_floor = upward & (np.abs(heights - floor_height) <= config.floor_tolerance)
        floor = _rasterise_centres(triangles[on_floor][..., [0, 2]], origin, cell, shape)
        occupancy = _rasterise_slab(
            triangles,
            floor_height + config.step_height,
            floor_height + config.agent_height,
            origin,
            cell,
            shape,
        )
        footprint = clearance_footprint(cell, config.agent_radius)
        blocked = ndimage.binary_dilation(occupancy, structure=footprint)
        navigable = floor & ~blocked
        if config.keep_largest_component and navigable.any():
            # 4-connectivity: the path graph's diagonal steps need their 2x2 block navigable, so
            # its connected regions are exactly the 4-connected ones.
            labels, count = ndimage.label(navigable)
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            sizes[0] = 0
            navigable = labels == int(np.argmax(sizes))
        return cls(navigable, (origin[0], origin[1]), config, floor_height, occupancy, floor)

    # --------------------------------------------------------------------------- grid arrays
    @property
    def navigable(self) -> np.ndarray:
        """(H, W) bool, read-only: cells where the agent may stand."""
        return self._navigable

    @property
    def occupancy(self) -> np.ndarray | None:
        """(H, W) bool: cells that geometry occupies in the body's height slab (top-down map)."""
        return self._occupancy

    @property
    def floor(self) -> np.ndarray | None:
        """(H, W) bool: cells with floor under their centre."""
        return self._floor

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``: rows (along +z) and columns (along +x)."""
        return (self._height, self._width)

    @property
    def origin(self) -> tuple[float, float]:
        """World ``(x0, z0)`` of the corner of cell ``(0, 0)``, metres."""
        return self._origin

    @property
    def cell_size(self) -> float:
        """Cell edge, metres."""
        return self._cell

    @property
    def floor_height(self) -> float:
        """World y of the floor, metres."""
        return self._floor_height

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, z_max, z_min)``: matplotlib ``imshow`` extent of the grid (row 0 up)."""
        x0, z0 = self._origin
        return (x0, x0 + self._width * self._cell, z0 + self._height * self._cell, z0)

    def world_to_cell(self, points: np.ndarray) -> np.ndarray:
        """Grid cells containing world points.

        Args:
            points: (N, 3) or (3,) world points, metres (y is ignored).

        Returns:
            (N, 2) or (2,) int64 ``(row, col)``; may lie outside ``[0, H) x [0, W)``.
        """
        points, single = _as_points(points, "points")
        cells = self._cells(points[:, 0], points[:, 2])
        return cells[0] if single else cells

    def cell_to_world(self, cells: np.ndarray) -> np.ndarray:
        """World points at cell centres.

        Args:
            cells: (N, 2) or (2,) integer ``(row, col)``.

        Returns:
            (N, 3) or (3,) float64 points on the floor (y = :attr:`floor_height`).
        """
        cells = np.asarray(cells)
        single = cells.ndim == 1
        cells = np.atleast_2d(cells)
        if cells.shape[-1] != 2 or cells.ndim != 2:
            raise ValueError(f"cells must have shape (N, 2) or (2,), got {cells.shape}")
        points = self._centres(cells)
        return points[0] if single else points

    def _cells(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(N, 2) int64 ``(row, col)`` of xz coordinates."""
        col = np.floor((x - self._origin[0]) / self._cell).astype(np.int64)
        row = np.floor((z - self._origin[1]) / self._cell).astype(np.int64)
        return np.stack([row, col], axis=-1)

    def _centres(self, cells: np.ndarray) -> np.ndarray:
        """(N, 3) world centres of (N, 2) ``(row, col)`` cells."""
        x = self._origin[0] + (cells[:, 1] + 0.5) * self._cell
        z = self._origin[1] + (cells[:, 0] + 0.5) * self._cell
        return np.stack([x, np.full_like(x, self._floor_height), z], axis=-1)

    def _free_xz(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(N,) bool: whether xz coordinates fall in navigable cells (outside the grid: no)."""
        cells = self._cells(x, z)
        inside = (cells >= 0).all(axis=-1) & (cells[:, 0] < self._height)
        inside &= cells[:, 1] < self._width
        free = np.zeros(len(cells), dtype=bool)
        free[inside] = self._navigable[cells[inside, 0], cells[inside, 1]]
        return free

    def _free(self, x: float, z: float) -> bool:
        """Scalar version of :meth:`_free_xz`, without array overhead (the collision hot path)."""
        col = math.floor((x - self._origin[0]) / self._cell)
        row = math.floor((z - self._origin[1]) / self._cell)
        if 0 <= row < self._height and 0 <= col < self._width:
            return bool(self._navigable[row, col])
        return False

    # --------------------------------------------------------------------------- queries
    def is_navigable(self, points: np.ndarray) -> bool | np.ndarray:
        """Whether the agent can stand at the points.

        A point is navigable when its cell is navigable and its y lies within
        ``config.floor_tolerance`` of the floor height.

        Args:
            points: (N, 3) or (3,) world points, metres.

        Returns:
            A bool for one point, a (N,) bool array for many.

        Raises:
            ValueError: for a wrong shape or NaN / infinite coordinates.
        """
        points, single = _as_points(points, "points")
        if single:  # the simulator's per-step case, without array overhead
            x, y, z = points[0].tolist()
            level = abs(y - self._floor_height) <= self.config.floor_tolerance
            return level and self._free(x, z)
        level = np.abs(points[:, 1] - self._floor_height) <= self.config.floor_tolerance
        return level & self._free_xz(points[:, 0], points[:, 2])

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray:
        """A random navigable point, uniform over the navigable area.

        Args:
            rng: the source of randomness.

        Returns:
            (3,) float64 world point with y = :attr:`floor_height`.
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        node = int(rng.integers(len(self._node_cells)))
        row, col = self._node_cells[node]
        # Stay 0.1 % of a cell away from its edges so that rounding cannot move the point out.
        u, v = rng.uniform(0.001, 0.999, size=2)
        x = self._origin[0] + (col + u) * self._cell
        z = self._origin[1] + (row + v) * self._cell
        return np.array([x, self._floor_height, z])

    def _require_navigable(self, point: np.ndarray, name: str) -> np.ndarray:
        """Validate one point; return it as (3,) float64."""
        array = np.asarray(point, dtype=np.float64)
        if array.shape != (3,):
            raise ValueError(f"{name} must be one point (x, y, z) of shape (3,), got {array.shape}")
        x, y, z = array.tolist()
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            raise ValueError(f"{name} contains NaN or infinite coordinates: {array.tolist()}")
        level = abs(y - self._floor_height) <= self.config.floor_tolerance
        if not (level and self._free(x, z)):
            raise ValueError(
                f"{name} {np.round(array, 4).tolist()} is not on the navigable area (floor at "
                f"y = {self._floor_height:.3f} m within {self.config.floor_tolerance} m, agent "
                f"radius {self.config.agent_radius} m); test points with is_navigable() or draw "
                "them with sample_navigable_point()"
            )
        return array

    def _node_of(self, point: np.ndarray) -> int:
        """Path-graph node of a navigable point."""
        col = math.floor((point[0] - self._origin[0]) / self._cell)
        row = math.floor((point[2] - self._origin[1]) / self._cell)
        return int(self._node[row, col])

    # --------------------------------------------------------------------------- geodesics
    def _path_graph(self) -> sparse.csr_matrix:
        """Undirected 16-connected graph of the navigable cells, edge weights in metres."""
        if self._graph is None:
            nav = np.pad(self._navigable, 2)
            node = np.pad(self._node, 2, constant_values=-1)
            height, width = self.shape

            def shifted(array: np.ndarray, d_row: int, d_col: int) -> np.ndarray:
                """(H, W) view with entry [r, c] = array[r + d_row, c + d_col] (unpadded)."""
                return array[2 + d_row : 2 + d_row + height, 2 + d_col : 2 + d_col + width]

            sources, targets, weights = [], [], []
            for (d_row, d_col), crossed in _MOVES:
                mask = shifted(nav, 0, 0) & shifted(nav, d_row, d_col)
                for row, col in crossed:
                    mask = mask & shifted(nav, row, col)
                sources.append(shifted(node, 0, 0)[mask])
                targets.append(shifted(node, d_row, d_col)[mask])
                length = self._cell * math.hypot(d_row, d_col)
                # Whole multiples of 2^-30 m add up exactly in float64 (under 2^23 m), so a path's
                # length is the same summed from either end: a distance does not depend on which
                # end's field the cache happens to hold (1e-9 m from the true edge length).
                length = round(length * _EDGE_QUANTUM) / _EDGE_QUANTUM
                weights.append(np.full(int(mask.sum()), length))
            count = len(self._node_cells)
            self._graph = sparse.csr_matrix(
                (np.concatenate(weights), (np.concatenate(sources), np.concatenate(targets))),
                shape=(count, count),
            )
        return self._graph

    def _field(self, goal_node: int) -> tuple[np.ndarray, np.ndarray]:
        """(N,) grid distances to a goal node's centre, metres, and (N,) next node towards it."""
        if goal_node in self._fields:
            self._fields.move_to_end(goal_node)
            return self._fields[goal_node]
        distance, predecessor = csgraph.dijkstra(
            self._path_graph(), directed=False, indices=goal_node, return_predecessors=True
        )
        self._fields[goal_node] = (distance, predecessor)
        while len(self._fields) > self.config.distance_cache_size:
            self._fields.popitem(last=False)
        return distance, predecessor

    def distance_field(self, goal: np.ndarray) -> np.ndarray:
        """Grid geodesic distance from every cell centre to a goal (for maps and shaping).

        Args:
            goal: (3,) navigable world point, metres.

        Returns:
            (H, W) float64 metres along 16-connected cell paths (the goal's cell centre to the
            goal added as a straight line); ``inf`` at non-navigable or unreachable cells.

        Raises:
            ValueError: if the goal is not navigable.
        """
        goal = self._require_navigable(goal, "goal")
        goal_node = self._node_of(goal)
        distance, _ = self._field(goal_node)
        offset = np.hypot(*(goal[[0, 2]] - self._centres(self._node_cells[[goal_node]])[0, [0, 2]]))
        field = np.full(self.shape, np.inf)
        field[self._navigable] = distance + offset
        return field

    def _cell_path(self, start_node: int, goal_node: int, max_length: float = math.inf):
        """Node ids from ``start_node`` towards ``goal_node`` along the cached field.

        Stops after ``max_length`` metres of path (the goal node included when reached).

        Returns:
            List of node ids starting with ``start_node``, or ``None`` if the goal is unreachable.
        """
        if goal_node not in self._fields and start_node in self._fields and max_length == math.inf:
            # Fields are symmetric: reuse a cached field of the start and walk it backwards.
            path = self._cell_path(goal_node, start_node)
            return None if path is None else path[::-1]
        distance, predecessor = self._field(goal_node)
        if not math.isfinite(distance[start_node]):
            return None
        path, node = [start_node], start_node
        budget = distance[start_node] - max_length
        while node != goal_node and distance[node] > budget:
            node = int(predecessor[node])
            path.append(node)
        return path

    def _visible(self, start: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Whether straight lines from one xz point to others stay on navigable cells.

        Every cell a line passes through is checked: its end cell, and the two cells on either
        side of each crossing of a grid line (the start cell is taken as free).

        Args:
            start: (2,) ``(x, z)``, metres, inside the grid.
            ends: (M, 2) ``(x, z)``, metres, inside the grid (the cells checked lie in the
                bounding box of the end points' cells, so none is outside the grid).

        Returns:
            (M,) bool.
        """
        count, width = len(ends), self._width
        a = (start - self._origin) / self._cell  # (2,) in cells: (column, row) coordinates
        b = (ends - self._origin) / self._cell  # (M, 2)
        # Crossings of the lines "column = k" (first M pairs) and "row = k" (last M pairs).
        along = b.T.ravel()  # (2M,) end coordinate across the lines
        other = b[:, ::-1].T.ravel()  # (2M,) end coordinate along the lines
        a_along = np.repeat(a, count)
        a_other = np.repeat(a[::-1], count)
        low = np.floor(np.minimum(a_along, along)).astype(np.int64)
        crossings = np.floor(np.maximum(a_along, along)).astype(np.int64) - low
        pair = np.repeat(np.arange(2 * count), crossings)  # (C,) which pair each crossing is of
        line = np.arange(len(pair)) + np.repeat(
            low + 1 - (np.cumsum(crossings) - crossings), crossings
        )
        t = (line - a_along[pair]) / (along - a_along)[pair]
        across = np.floor(a_other[pair] + t * (other - a_other)[pair]).astype(np.int64)
        stride_line = np.where(pair < count, 1, width)  # flat index step across the line
        after = line * stride_line + across * (width + 1 - stride_line)  # (C,) flat cell index
        free = self._navigable_flat[after] & self._navigable_flat[after - stride_line]
        end_free = self._navigable_flat[
            np.floor(b[:, 1]).astype(np.int64) * width + np.floor(b[:, 0]).astype(np.int64)
        ]
        return end_free & (np.bincount(pair[~free] % count, minlength=count) == 0)

    def _farthest_visible(self, points: np.ndarray, anchor: int) -> int:
        """Index of a far point of the polyline that is in straight view of ``points[anchor]``.

        Probes evenly spaced points and narrows down to the last visible one before the first
        hidden one, assuming, as on a shortest path, that the points in view form a prefix; the
        next point ``anchor + 1`` (a neighbouring cell) is always taken as visible.
        """
        low, high = anchor + 1, len(points) - 1
        while low < high:
            probes = np.array(sorted({low + (high - low) * i // 16 for i in range(17)}))
            visible = self._visible(points[anchor], points[probes])
            if visible[-1]:
                return high
            hidden = max(int(np.argmin(visible)), 1)
            low, high = int(probes[hidden - 1]), int(probes[hidden])
            if high - low <= 1:
                return low
        return low

    def _pull(self, points: np.ndarray) -> np.ndarray:
        """Shorten a polyline of (n, 2) xz points by skipping points visible from earlier ones."""
        kept = [0]
        while kept[-1] < len(points) - 1:
            kept.append(self._farthest_visible(points, kept[-1]))
        return points[kept]

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Waypoints of a shortest walkable path.

        Args:
            start: (3,) navigable world point, metres.
            goal: (3,) navigable world point, metres.

        Returns:
            (K, 3) float64 waypoints from ``start`` to ``goal`` (both included, y =
            :attr:`floor_height`; a straight line between consecutive waypoints stays on the
            navigable area); (0, 3) if the goal is unreachable from the start.

        Raises:
            ValueError: if ``start`` or ``goal`` is not navigable (the message names it).
        """
        start = self._require_navigable(start, "start")
        goal = self._require_navigable(goal, "goal")
        if self._visible(start[[0, 2]], goal[None, [0, 2]])[0]:
            return np.stack([start, goal]) * [1.0, 0.0, 1.0] + [0.0, self._floor_height, 0.0]
        cells = self._cell_path(self._node_of(start), self._node_of(goal))
        if cells is None:
            return np.zeros((0, 3))
        centres = self._centres(self._node_cells[cells])[:, [0, 2]]  # (n, 2)
        points = self._pull(np.concatenate([start[None, [0, 2]], centres, goal[None, [0, 2]]]))
        return np.stack(
            [points[:, 0], np.full(len(points), self._floor_height), points[:, 1]], axis=-1
        )

    def geodesic_distance(self, start: np.ndarray, goal: np.ndarray) -> float:
        """Shortest walkable distance, horizontal metres.

        The straight-line distance when the goal is in straight view of the start; otherwise
        the cell-path distance between their cells' centres plus the straight lines from the start
        to its cell's centre and from the goal's cell centre to the goal. Cell paths overestimate a
        true shortest path by at most 2.7 % (16-connectivity); the result is never shorter than the
        straight line and never shorter than :meth:`shortest_path`, which smooths the cell path.

        Args:
            start: (3,) navigable world point, metres.
            goal: (3,) navigable world point, metres.

        Returns:
            Metres; ``inf`` if the goal is unreachable from the start.

        Raises:
            ValueError: if ``start`` or ``goal`` is not navigable (the message names it).
        """
        start = self._require_navigable(start, "start")
        goal = self._require_navigable(goal, "goal")
        straight = math.hypot(goal[0] - start[0], goal[2] - start[2])
        if self._visible(start[[0, 2]], goal[None, [0, 2]])[0]:
            return straight
        start_node, goal_node = self._node_of(start), self._node_of(goal)
        if goal_node not in self._fields and start_node in self._fields:
            cells = self._field(start_node)[0][goal_node]  # distances are symmetric
        else:
            cells = self._field(goal_node)[0][start_node]
        if not math.isfinite(cells):
            return math.inf
        centres = self._centres(self._node_cells[[start_node, goal_node]])
        return float(
            math.hypot(*(start - centres[0])[[0, 2]])
            + cells
            + math.hypot(*(goal - centres[1])[[0, 2]])
        )

    # --------------------------------------------------------------------------- motion
    def try_move(
        self, position: np.ndarray, displacement_xz: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        """Move the agent with collision: it slides along obstacles and never passes through them.

        The move is cut into sub-steps of at most half a cell. A sub-step that would leave the
        navigable area is replaced by its component along the obstacle (the part pointing into it
        removed), or else by its x or z part; if none of them is free the agent stops there.

        Args:
            position: (3,) navigable world point, metres.
            displacement_xz: (2,) intended horizontal move ``(dx, dz)``, metres.

        Returns:
            ``(new_position, collided)``: (3,) float64 navigable point (same y), and whether
            anything blocked the move (the agent slid or stopped).

        Raises:
            ValueError: for a non-navigable ``position`` or a malformed displacement.
        """
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (3,) or not np.isfinite(position).all():
            raise ValueError(f"position must be 3 finite numbers (x, y, z), got {position!r}")
        displacement = np.asarray(displacement_xz, dtype=np.float64)
        if displacement.shape != (2,) or not np.isfinite(displacement).all():
            raise ValueError(
                f"displacement_xz must be 2 finite numbers (dx, dz) in metres, got {displacement!r}"
            )
        x, y, z = position.tolist()
        if not (abs(y - self._floor_height) <= self.config.floor_tolerance and self._free(x, z)):
            self._require_navigable(position, "position")
        dx, dz = displacement.tolist()
        length = math.hypot(dx, dz)
        if length == 0.0:
            return position.copy(), False
        count = math.ceil(length / (0.5 * self._cell))
        step_x, step_z = dx / count, dz / count
        collided = False
        for _ in range(count):
            if self._free(x + step_x, z + step_z):
                x, z = x + step_x, z + step_z
                continue
            collided = True
            slide = self._slide(x, z, step_x, step_z)
            if slide is None:
                break
            x, z = slide
        return np.array([x, y, z]), collided

    def _slide(
        self, x: float, z: float, step_x: float, step_z: float
    ) -> tuple[float, float] | None:
        """The free position after a blocked sub-step slides, or ``None`` if it cannot."""
        col = math.floor((x - self._origin[0]) / self._cell)
        row = math.floor((z - self._origin[1]) / self._cell)
        away_x, away_z = float(self._away_x[row, col]), float(self._away_z[row, col])
        into = step_x * away_x + step_z * away_z
        options = []
        if into < 0.0:
            options.append((step_x - into * away_x, step_z - into * away_z))
        axis_parts = [(step_x, 0.0), (0.0, step_z)]
        if abs(step_z) > abs(step_x):
            axis_parts.reverse()
        options.extend(axis_parts)
        for move_x, move_z in options:
            if (move_x or move_z) and self._free(x + move_x, z + move_z):
                return x + move_x, z + move_z
        return None


def _as_points(points: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """Validate (N, 3) or (3,) finite points; return them as (N, 3) float64 and a single flag."""
    array = np.asarray(points, dtype=np.float64)
    single = array.ndim == 1
    if array.shape[-1:] != (3,) or array.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (3,) or (N, 3), got {array.shape}")
    array = array.reshape(-1, 3)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates: {array.tolist()[:4]}")
    return array, single
