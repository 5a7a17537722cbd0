"""The navigability grid of a triangle mesh: floor detection and conservative rasterisation.

The embedded simulator's counterpart of Habitat's navmesh
(:class:`~envs.embedded.navigation.NavGrid` holds the result and answers queries).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import trimesh

_MAX_PAIRS_PER_CHUNK = 2_000_000
"""Bounds the memory of the vectorised rasteriser: (triangle, cell) pairs tested at once."""
_FLOOR_LEVEL_BIN_M = 0.01
"""Height resolution of the histogram that finds the dominant floor level, metres."""
_FLOOR_AREA_FRACTION = 0.5
"""A horizontal level is a floor candidate when its area is at least this share of the largest."""
_EDGE_EPSILON_M = 1e-9
"""Cells and triangles are grown by this much so that touching counts as intersecting."""


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
            higher, is not taken for the floor). Multi-storey meshes: the grid is that of one
            storey (floor cells within ``floor_tolerance`` of this height, obstacles within the
            body's slab above it); pass the storey's height, e.g. from :func:`floor_height_at`.
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


def floor_height_at(mesh: trimesh.Trimesh, point: np.ndarray, config: NavConfig) -> float | None:
    """The floor level under a point: the storey it stands on, in a mesh of several.

    Args:
        mesh: world-frame mesh, y up, metres.
        point: (3,) world point ``(x, y, z)`` with ``y`` on the floor (an agent's position).
        config: slope limit of floor surfaces and the height tolerance.

    Returns:
        The area-weighted mean height of the upward faces (no steeper than
        ``max_floor_slope_deg``) whose xz shadow holds ``(x, z)`` and whose height lies within
        ``floor_tolerance`` of ``y``, metres; ``None`` when there is none (the point floats or
        stands inside something).
    """
    x, y, z = np.asarray(point, dtype=np.float64)
    upward, heights, areas = _upward_faces(mesh, config)
    candidates = np.flatnonzero(upward & (np.abs(heights - y) <= config.floor_tolerance))
    corners = mesh.triangles[candidates][..., [0, 2]]  # (K, 3, 2)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    p = np.array([x, z])
    sides = np.stack([_cross(b - a, p - a), _cross(c - b, p - b), _cross(a - c, p - c)], axis=1)
    inside = (sides >= 0).all(axis=1) | (sides <= 0).all(axis=1)  # either winding, edges count
    under = candidates[inside]
    if not len(under):
        return None
    return float(np.average(heights[under], weights=areas[under]))


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


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The z component of the 2D cross product of (..., 2) vectors."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
