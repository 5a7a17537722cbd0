"""Navigation on a triangle mesh: navigability grid, collisions, geodesics and an oracle follower.

The embedded simulator's counterpart of Habitat's navmesh, path finder and shortest-path follower.

Grid
    A 2D grid over the world's xz plane (y is up, see :mod:`worldsim.geometry`). Cell
    ``(row, col)`` covers ``x in [x0 + col * s, x0 + (col + 1) * s]`` and
    ``z in [z0 + row * s, z0 + (row + 1) * s]`` with ``(x0, z0)`` the grid's :attr:`NavGrid.origin`
    and ``s`` its cell size, so rows grow along +z and columns along +x; an image of the grid
    shown with row 0 at the top is the scene seen from above (x to the right).

Navigable cells
    The agent is a vertical cylinder of radius ``agent_radius`` standing on the floor; its body
    spans the *height slab* ``(floor + step_height, floor + agent_height]`` (lower geometry is
    stepped over, higher geometry such as ceilings never blocks). Every triangle is clipped to the
    slab and its shadow on the xz plane is rasterised *conservatively* (every cell the shadow
    touches is an obstacle). A cell is navigable when floor lies under its centre and every
    point of the cell is at least ``agent_radius`` away from every obstacle cell, so an agent whose
    position lies anywhere in a navigable cell has its whole body clear of the mesh: the grid is a
    conservative free space, never an optimistic one.

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
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from worldsim.geometry import Action, ActionSpec

_MAX_PAIRS_PER_CHUNK = 2_000_000
"""Bounds the memory of the vectorised rasteriser: (triangle, cell) pairs tested at once."""
_FLOOR_LEVEL_BIN_M = 0.01
"""Height resolution of the histogram that finds the dominant floor level, metres."""
_FLOOR_AREA_FRACTION = 0.5
"""A horizontal level is a floor candidate when its area is at least this share of the largest."""
_EDGE_EPSILON_M = 1e-9
"""Cells and triangles are grown by this much so that touching counts as intersecting."""


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


@dataclass(frozen=True)
class NavConfig:
    """Settings of the navigability grid.

    Attributes:
        cell_size: grid cell edge, metres, in (0, 1]. Smaller cells give a less conservative free
            space and finer paths at a quadratic cost in memory and time.
        agent_radius: radius of the agent's cylindrical body, metres, in [0, 2].
        agent_height: height of the agent's body above the floor, metres, in
            (step_height, 10]. Geometry above it (ceilings, high shelves) never blocks.
        step_height: geometry no higher than this above the floor (rugs, thresholds) is stepped
            over, metres, in [0, agent_height); with 0 only the floor surface itself is.
        floor_height: world y of the floor, metres; ``None`` detects the dominant floor level:
            among the heights of upward-facing surfaces, the lowest level whose total area is at
            least half the largest level's area (so a ceiling's top face, as large as the floor but
            higher, is not taken for the floor). Multi-storey meshes: pass the storey's height.
        floor_tolerance: how far an upward surface may lie from ``floor_height`` and still count
            as floor, and how far a queried point's y may lie from it, metres, in (0, 1].
        max_floor_slope_deg: steepest surface that counts as floor, degrees, in [0, 90).
        keep_largest_component: keep only the largest connected navigable region, so that every
            navigable point reaches every other (as oracle goals must); ``False`` keeps all regions
            and unreachable pairs get an infinite geodesic distance.
        distance_cache_size: number of per-goal distance fields kept, >= 1.
    """

    cell_size: float = 0.05
    agent_radius: float = 0.1
    agent_height: float = 1.5
    step_height: float = 0.1
    floor_height: float | None = None
    floor_tolerance: float = 0.05
    max_floor_slope_deg: float = 10.0
    keep_largest_component: bool = True
    distance_cache_size: int = 16

    def __post_init__(self) -> None:
        def check(name: str, value: float, low: float, high: float, closed_low: bool) -> None:
            ok = math.isfinite(value) and (low <= value if closed_low else low < value)
            if not (ok and value <= high):
                bracket = "[" if closed_low else "("
                raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")

        check("cell_size", self.cell_size, 0.0, 1.0, closed_low=False)
        check("agent_radius", self.agent_radius, 0.0, 2.0, closed_low=True)
        check("agent_height", self.agent_height, 0.0, 10.0, closed_low=False)
        if not (math.isfinite(self.step_height) and 0.0 <= self.step_height < self.agent_height):
            raise ValueError(
                f"step_height must be in [0, agent_height = {self.agent_height}) metres, "
                f"got {self.step_height}"
            )
        if self.floor_height is not None and not math.isfinite(self.floor_height):
            raise ValueError(
                f"floor_height must be a finite height or None, got {self.floor_height}"
            )
        check("floor_tolerance", self.floor_tolerance, 0.0, 1.0, closed_low=False)
        if not (0.0 <= self.max_floor_slope_deg < 90.0):
            raise ValueError(
                f"max_floor_slope_deg must be in [0, 90) degrees, got {self.max_floor_slope_deg}"
            )
        if self.distance_cache_size < 1:
            raise ValueError(f"distance_cache_size must be >= 1, got {self.distance_cache_size}")


# ------------------------------------------------------------------------------- rasterisation
def detect_floor_height(mesh: trimesh.Trimesh, config: NavConfig) -> float:
    """The dominant floor level of a mesh (see :attr:`NavConfig.floor_height`).

    Args:
        mesh: world-frame mesh, y up, metres.
        config: slope limit of floor surfaces.

    Returns:
        Floor height in metres: the area-weighted mean height of the upward faces of that level.

    Raises:
        ValueError: if the mesh has no upward-facing surface.
    """
    upward, heights, areas = _upward_faces(mesh, config)
    if not upward.any():
        raise ValueError(
            "the mesh has no upward-facing surface to stand on (is it y-up? triangles wound "
            "counter-clockwise seen from outside?); pass NavConfig(floor_height=...) explicitly"
        )
    heights, areas = heights[upward], areas[upward]
    bins = np.round(heights / _FLOOR_LEVEL_BIN_M).astype(np.int64)
    levels, inverse = np.unique(bins, return_inverse=True)
    level_areas = np.bincount(inverse, weights=areas)
    floor_level = np.flatnonzero(level_areas >= _FLOOR_AREA_FRACTION * level_areas.max())[0]
    near = np.abs(heights - levels[floor_level] * _FLOOR_LEVEL_BIN_M) <= _FLOOR_LEVEL_BIN_M
    return float(np.average(heights[near], weights=areas[near]))


def _upward_faces(
    mesh: trimesh.Trimesh, config: NavConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F,) mask of upward faces no steeper than the slope limit, (F,) centroid y, (F,) areas."""
    normals = mesh.face_normals
    upward = normals[:, 1] >= math.cos(math.radians(config.max_floor_slope_deg))
    upward &= mesh.area_faces > 0.0
    return upward, mesh.triangles_center[:, 1], mesh.area_faces


def _cell_pairs(row_lo: np.ndarray, row_hi: np.ndarray, col_lo: np.ndarray, col_hi: np.ndarray):
    """Yield ``(triangle, row, col)`` index arrays of every cell in each triangle's cell range.

    The inclusive ranges may be empty (``hi < lo``). Pairs come in chunks of bounded size.
    """
    rows = np.maximum(row_hi - row_lo + 1, 0)
    cols = np.maximum(col_hi - col_lo + 1, 0)
    counts = rows * cols
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        done = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, done + _MAX_PAIRS_PER_CHUNK, side="right"))
        stop = max(stop, start + 1)
        chunk = np.arange(start, stop)
        chunk_counts = counts[chunk]
        triangle = np.repeat(chunk, chunk_counts)
        offsets = np.repeat(np.cumsum(chunk_counts) - chunk_counts, chunk_counts)
        local = np.arange(int(chunk_counts.sum())) - offsets
        yield (
            triangle,
            row_lo[triangle] + local // cols[triangle],
            col_lo[triangle] + local % cols[triangle],
        )
        start = stop


def _rasterise_centres(
    triangles_xz: np.ndarray, origin: np.ndarray, cell_size: float, shape: tuple[int, int]
) -> np.ndarray:
    """Cells whose centre lies in (or on the edge of) any of the 2D triangles.

    Args:
        triangles_xz: (T, 3, 2) triangle corners ``(x, z)``, metres.
        origin: (2,) world ``(x0, z0)`` of the grid corner.
        cell_size: metres.
        shape: ``(H, W)``.

    Returns:
        (H, W) bool mask.
    """
    mask = np.zeros(shape, dtype=bool)
    if len(triangles_xz) == 0:
        return mask
    a, b, c = triangles_xz[:, 0], triangles_xz[:, 1], triangles_xz[:, 2]
    area2 = _cross(b - a, c - a)
    keep = np.abs(area2) > 0.0
    a, b, c, area2 = a[keep], b[keep], c[keep], area2[keep]
    low = (np.minimum(np.minimum(a, b), c) - origin) / cell_size - 0.5
    high = (np.maximum(np.maximum(a, b), c) - origin) / cell_size - 0.5
    col_lo = np.maximum(np.ceil(low[:, 0]).astype(np.int64), 0)
    col_hi = np.minimum(np.floor(high[:, 0]).astype(np.int64), shape[1] - 1)
    row_lo = np.maximum(np.ceil(low[:, 1]).astype(np.int64), 0)
    row_hi = np.minimum(np.floor(high[:, 1]).astype(np.int64), shape[0] - 1)
    sign = np.sign(area2)
    for triangle, row, col in _cell_pairs(row_lo, row_hi, col_lo, col_hi):
        centre = origin + (np.stack([col, row], axis=-1) + 0.5) * cell_size  # (P, 2)
        s = sign[triangle]
        ta, tb, tc = a[triangle], b[triangle], c[triangle]
        # Edge functions, scaled by the orientation so that inside is >= 0 for both windings.
        tolerance = _EDGE_EPSILON_M * np.abs(area2[triangle])
        inside = s * _cross(tb - ta, centre - ta) >= -tolerance
        inside &= s * _cross(tc - tb, centre - tb) >= -tolerance
        inside &= s * _cross(ta - tc, centre - tc) >= -tolerance
        mask[row[inside], col[inside]] = True
    return mask


def _rasterise_slab(
    triangles: np.ndarray,
    low: float,
    high: float,
    origin: np.ndarray,
    cell_size: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Cells touched by the xz shadow of the triangles' parts inside the slab ``low < y <= high``.

    Each triangle is clipped to the slab (its part inside is the convex hull of its corners inside
    the slab and its edges' crossings of the two planes), and a cell is marked when the separating
    axis test finds no axis that separates the cell's square from that hull's shadow. The shadow's
    edges run along the triangle's projected edges or along its horizontal direction, so the
    normals of those four directions plus x and z are a complete set of axes.

    Args:
        triangles: (T, 3, 3) world-frame corners, metres.
        low: bottom of the slab, metres.
        high: top of the slab, metres.
        origin: (2,) world ``(x0, z0)`` of the grid corner.
        cell_size: metres.
        shape: ``(H, W)``.

    Returns:
        (H, W) bool mask, conservative: every cell that the clipped geometry touches is set.
    """
    mask = np.zeros(shape, dtype=bool)
    if len(triangles) == 0:
        return mask
    y = triangles[..., 1]
    # Strictly above the bottom: a surface lying at the step height (the floor, when it is 0) is
    # stood on, not bumped into.
    triangles = triangles[(y.max(axis=1) > low) & (y.min(axis=1) <= high)]
    if len(triangles) == 0:
        return mask
    # Candidate corners of each clipped polygon: 3 corners + 3 edges x 2 planes crossings.
    start = triangles
    end = np.roll(triangles, -1, axis=1)  # edge i runs from corner i to corner i + 1
    points, valid = [start[..., [0, 2]]], [(start[..., 1] >= low) & (start[..., 1] <= high)]
    for plane in (low, high):
        y0, y1 = start[..., 1], end[..., 1]
        crosses = (y0 - plane) * (y1 - plane) < 0.0
        t = np.where(crosses, (plane - y0) / np.where(crosses, y1 - y0, 1.0), 0.0)
        points.append(start[..., [0, 2]] + t[..., None] * (end[..., [0, 2]] - start[..., [0, 2]]))
        valid.append(crosses)
    candidates = np.concatenate(points, axis=1)  # (T, 9, 2)
    is_valid = np.concatenate(valid, axis=1)  # (T, 9)
    hit = is_valid.any(axis=1)
    candidates, is_valid, triangles = candidates[hit], is_valid[hit], triangles[hit]
    # Separating axes: normals of the projected edges, and the face normal's xz part.
    edges = np.roll(triangles, -1, axis=1)[..., [0, 2]] - triangles[..., [0, 2]]  # (T, 3, 2)
    edge_normals = np.stack([-edges[..., 1], edges[..., 0]], axis=-1)
    face_normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    axes = np.concatenate([edge_normals, face_normals[:, None, [0, 2]]], axis=1)  # (T, 4, 2)
    projections = np.einsum("tpc,tac->tap", candidates, axes)  # (T, 4, 9)
    poly_min = np.where(is_valid[:, None, :], projections, np.inf).min(axis=-1)  # (T, 4)
    poly_max = np.where(is_valid[:, None, :], projections, -np.inf).max(axis=-1)
    xz_min = np.where(is_valid[..., None], candidates, np.inf).min(axis=1)  # (T, 2)
    xz_max = np.where(is_valid[..., None], candidates, -np.inf).max(axis=1)
    lo_cell = np.floor((xz_min - _EDGE_EPSILON_M - origin) / cell_size).astype(np.int64)
    hi_cell = np.floor((xz_max + _EDGE_EPSILON_M - origin) / cell_size).astype(np.int64)
    col_lo, row_lo = np.maximum(lo_cell[:, 0], 0), np.maximum(lo_cell[:, 1], 0)
    col_hi = np.minimum(hi_cell[:, 0], shape[1] - 1)
    row_hi = np.minimum(hi_cell[:, 1], shape[0] - 1)
    half = 0.5 * cell_size + _EDGE_EPSILON_M
    for triangle, row, col in _cell_pairs(row_lo, row_hi, col_lo, col_hi):
        centre = origin + (np.stack([col, row], axis=-1) + 0.5) * cell_size  # (P, 2)
        axis = axes[triangle]  # (P, 4, 2)
        centre_projection = np.einsum("pc,pac->pa", centre, axis)
        reach = half * np.abs(axis).sum(axis=-1)  # (P, 4) half-width of the square on each axis
        separated = (centre_projection + reach < poly_min[triangle]) | (
            centre_projection - reach > poly_max[triangle]
        )
        touched = ~separated.any(axis=-1)
        mask[row[touched], col[touched]] = True
    return mask


def _clearance_footprint(cell_size: float, radius: float) -> np.ndarray:
    """Cell offsets whose square comes closer than ``radius`` to the centre cell's square.

    Returns:
        (2k+1, 2k+1) bool structuring element: dilating an obstacle mask by it blocks every cell
        that has some point nearer than ``radius`` to some point of an obstacle cell.
    """
    reach = math.ceil(radius / cell_size) + 1
    offsets = np.arange(-reach, reach + 1)
    gap = np.maximum(np.abs(offsets) - 1, 0) * cell_size  # distance between the squares per axis
    return np.hypot(gap[:, None], gap[None, :]) < radius


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The z component of the 2D cross product of (..., 2) vectors."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


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
        footprint = _clearance_footprint(cell, config.agent_radius)
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
                weights.append(np.full(int(mask.sum()), self._cell * math.hypot(d_row, d_col)))
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


# ------------------------------------------------------------------------------- the oracle
class ShortestPathFollower:
    """Greedy oracle that walks the geodesic path with the discrete actions.

    At each call it looks ahead along the grid's shortest path from the agent to the goal and
    aims at the farthest path point within ``lookahead_m`` that is in straight view; it turns
    towards it until the heading error is at most half a turn step, then moves forward. It stops
    when the goal is within ``goal_radius`` and in straight view. Give it the step sizes of the
    simulator it drives.

    Args:
        grid: the scene's navigation grid.
        forward_step_m: length of ``move_forward``, metres, in (0, 5].
        turn_step_deg: angle of ``turn_left`` / ``turn_right``, degrees, in (0, 180].
        goal_radius: stop within this distance of the goal, metres, > 0 (success radius of the
            metrics; keep it above about ``forward_step_m / 2`` or the discrete steps may keep
            stepping over the goal).
        lookahead_m: how far along the path to look for an aiming point, metres, > 0; ``None``
            looks four forward steps ahead.

    Raises:
        ValueError: for step sizes or radii out of range.
    """

    def __init__(
        self,
        grid: NavGrid,
        forward_step_m: float = 0.25,
        turn_step_deg: float = 10.0,
        goal_radius: float = 0.2,
        lookahead_m: float | None = None,
    ) -> None:
        self.spec = ActionSpec(forward_step_m=forward_step_m, turn_step_deg=turn_step_deg)
        if lookahead_m is None:
            lookahead_m = 4.0 * forward_step_m
        if not (math.isfinite(goal_radius) and goal_radius > 0.0):
            raise ValueError(f"goal_radius must be > 0 metres, got {goal_radius}")
        if not (math.isfinite(lookahead_m) and lookahead_m > 0.0):
            raise ValueError(f"lookahead_m must be > 0 metres, got {lookahead_m}")
        self.grid = grid
        self.goal_radius = float(goal_radius)
        self.lookahead_m = float(lookahead_m)

    def target(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The point the follower aims at.

        Args:
            position: (3,) navigable agent position, metres.
            goal: (3,) navigable goal, metres.

        Returns:
            (3,) float64 world point on the path ahead (the goal once it is in view and near).

        Raises:
            ValueError: for non-navigable points or an unreachable goal.
        """
        position = self.grid._require_navigable(position, "position")
        goal = self.grid._require_navigable(goal, "goal")
        return self._target(position, goal)

    def _target(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """:meth:`target` for validated points."""
        grid = self.grid
        start_node, goal_node = grid._node_of(position), grid._node_of(goal)
        cells = grid._cell_path(start_node, goal_node, max_length=self.lookahead_m)
        if cells is None:
            raise ValueError(
                f"goal {np.round(goal, 4).tolist()} is not reachable from position "
                f"{np.round(position, 4).tolist()} (they lie on separate navigable regions)"
            )
        candidates = grid._centres(grid._node_cells[cells[1:]])[:, [0, 2]]
        if cells[-1] == goal_node:
            candidates = np.concatenate([candidates, goal[None, [0, 2]]])
        visible = np.flatnonzero(grid._visible(position[[0, 2]], candidates))
        chosen = candidates[visible[-1] if len(visible) else 0]
        return np.array([chosen[0], grid.floor_height, chosen[1]])

    def next_action(self, position: np.ndarray, yaw: float, goal: np.ndarray) -> int:
        """The next discrete action towards the goal.

        Args:
            position: (3,) navigable agent position, metres.
            yaw: agent heading, radians (0 looks along world -z, positive turns left).
            goal: (3,) navigable goal, metres.

        Returns:
            An :class:`worldsim.geometry.Action` id: 0 stop, 1 forward, 2 turn left, 3 turn right.

        Raises:
            ValueError: for non-navigable points, an unreachable goal or a non-finite yaw.
        """
        if not math.isfinite(yaw):
            raise ValueError(f"yaw must be a finite angle in radians, got {yaw!r}")
        grid = self.grid
        position = grid._require_navigable(position, "position")
        goal = grid._require_navigable(goal, "goal")
        offset = goal[[0, 2]] - position[[0, 2]]
        if (
            math.hypot(*offset) <= self.goal_radius
            and grid._visible(position[[0, 2]], goal[None, [0, 2]])[0]
        ):
            return int(Action.STOP)
        target = self._target(position, goal)
        dx, dz = (target - position)[[0, 2]]
        # Forward is (-sin yaw, -cos yaw) in (x, z), so the heading that faces (dx, dz) is:
        heading = math.atan2(-dx, -dz)
        error = math.remainder(heading - yaw, 2.0 * math.pi)
        if abs(error) <= 0.5 * self.spec.turn_step_rad + 1e-9:
            return int(Action.MOVE_FORWARD)
        return int(Action.TURN_LEFT if error > 0.0 else Action.TURN_RIGHT)
