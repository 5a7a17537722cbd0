"""Navigation grid, collision, geodesics and the oracle, checked against the mesh itself."""

import heapq
import math

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from envs.embedded.follower import ShortestPathFollower
from envs.embedded.navigation import NavGrid
from envs.embedded.navmesh import NavConfig, detect_floor_height
from worldsim.geometry import Action

RADIUS = NavConfig().agent_radius
CELL = NavConfig().cell_size
STEP = 0.25
TURN = math.radians(10.0)


# ----------------------------------------------------------------------------- test scenes
def _box(low, high) -> trimesh.Trimesh:
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    box = trimesh.creation.box(extents=high - low)
    box.apply_translation((low + high) / 2.0)
    return box


def _rotated_box(centre, extents, yaw_deg) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=extents)
    box.apply_transform(trimesh.transformations.rotation_matrix(math.radians(yaw_deg), [0, 1, 0]))
    box.apply_translation(centre)
    return box


def _shell(x0, x1, z0, z1, wall=0.1, height=2.5) -> list[trimesh.Trimesh]:
    """Floor slab (top at y = 0), ceiling slab and four walls around [x0, x1] x [z0, z1]."""
    return [
        _box([x0 - wall, -0.1, z0 - wall], [x1 + wall, 0.0, z1 + wall]),
        _box([x0 - wall, height, z0 - wall], [x1 + wall, height + 0.1, z1 + wall]),
        _box([x0 - wall, 0, z0], [x0, height, z1]),
        _box([x1, 0, z0], [x1 + wall, height, z1]),
        _box([x0 - wall, 0, z0 - wall], [x1 + wall, height, z0]),
        _box([x0 - wall, 0, z1], [x1 + wall, height, z1 + wall]),
    ]


def empty_room() -> trimesh.Trimesh:
    return trimesh.util.concatenate(_shell(-2, 2, -2, 2))


def two_rooms() -> trimesh.Trimesh:
    """8 x 6 m, split at x = 0 by a 0.1 m wall with a 1 m doorway at z in [-0.5, 0.5]."""
    legs = [_box([x, 0, z], [x + 0.05, 0.7, z + 0.05]) for x in (1.5, 2.45) for z in (-1.0, -0.05)]
    parts = [
        *_shell(-4, 4, -3, 3),
        _box([-0.05, 0, -3], [0.05, 2.5, -0.5]),
        _box([-0.05, 0, 0.5], [0.05, 2.5, 3]),
        _box([1.5, 0.7, -1.0], [2.5, 0.75, 0.0]),  # table top, inside the body's height slab
        *legs,
        _box([-3, 1.6, -2], [-2, 1.7, 2]),  # high shelf, above the body
        _box([-3, 0, 1], [-2, 0.05, 2]),  # rug, below the step height
        _rotated_box([2.5, 0.5, 2.0], [0.6, 1.0, 0.4], 30.0),  # cabinet at an angle
        trimesh.creation.cylinder(radius=0.2, height=2.5, transform=_pillar_transform()),
    ]
    return trimesh.util.concatenate(parts)


def _pillar_transform() -> np.ndarray:
    # trimesh's cylinder stands along z: turn it upright and stand it on the floor at (-1.5, -1).
    upright = trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0])
    upright[:3, 3] = [-1.5, 1.25, -1.0]
    return upright


def thin_wall_room() -> trimesh.Trimesh:
    """4 x 4 m room with a 1 cm thin wall along z = 0 from x = -2 to x = 1 (a gap beyond)."""
    return trimesh.util.concatenate([*_shell(-2, 2, -2, 2), _box([-2, 0, -0.005], [1, 2.5, 0.005])])


def split_rooms() -> trimesh.Trimesh:
    """8 x 6 m split by a solid wall at x = 2: a 6 m room and a 2 m room that never meet."""
    return trimesh.util.concatenate([*_shell(-4, 4, -3, 3), _box([1.95, 0, -3], [2.05, 2.5, 3])])


@pytest.fixture(scope="module")
def rooms():
    mesh = two_rooms()
    return mesh, NavGrid.from_mesh(mesh)


@pytest.fixture(scope="module")
def thin():
    mesh = thin_wall_room()
    return mesh, NavGrid.from_mesh(mesh)


@pytest.fixture(scope="module")
def empty():
    mesh = empty_room()
    return mesh, NavGrid.from_mesh(mesh)


# ----------------------------------------------------------------------------- mesh reference
def slab_shadow(mesh: trimesh.Trimesh, low: float, high: float) -> np.ndarray:
    """(T, 3, 2) xz shadows of the mesh clipped to low <= y <= high, clipped by trimesh."""
    vertices, faces = mesh.vertices, mesh.faces
    slicer = trimesh.intersections.slice_faces_plane
    vertices, faces, _ = slicer(vertices, faces, [0, 1, 0], [0, low, 0])
    vertices, faces, _ = slicer(vertices, faces, [0, -1, 0], [0, high, 0])
    return vertices[faces][..., [0, 2]]


def clearance(points_xz: np.ndarray, shadow: np.ndarray, cutoff: float = 0.5) -> np.ndarray:
    """Exact 2D distance from points to the union of triangles (0 inside), capped at ``cutoff``.

    Brute force over the triangles whose bounding box comes within ``cutoff`` of a chunk of
    nearby points.
    """
    order = np.lexsort((points_xz[:, 0], points_xz[:, 1]))
    low, high = shadow.min(axis=1), shadow.max(axis=1)  # (T, 2) bounding boxes
    result = np.full(len(points_xz), cutoff)
    for chunk in np.array_split(order, max(1, len(order) // 64)):
        p = points_xz[chunk]
        near = ((low <= p.max(0) + cutoff) & (high >= p.min(0) - cutoff)).all(-1)
        if not near.any():
            continue
        a = shadow[near][None]  # (1, T, 3, 2)
        edge = np.roll(shadow[near], -1, axis=1)[None] - a
        area = np.abs(edge[..., 0, 0] * edge[..., 1, 1] - edge[..., 0, 1] * edge[..., 1, 0])
        p = p[:, None, None, :]  # (P, 1, 1, 2)
        t = ((p - a) * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-300)
        nearest = a + np.clip(t, 0.0, 1.0)[..., None] * edge
        to_edges = np.linalg.norm(p - nearest, axis=-1).min(-1)  # (P, T)
        cross = edge[..., 0] * (p - a)[..., 1] - edge[..., 1] * (p - a)[..., 0]  # (P, T, 3)
        inside = ((cross >= 0).all(-1) | (cross <= 0).all(-1)) & (area > 0)
        result[chunk] = np.minimum(np.where(inside, 0.0, to_edges).min(-1), cutoff)
    return result


def body_clearance(mesh: trimesh.Trimesh, grid: NavGrid, points: np.ndarray) -> np.ndarray:
    """Horizontal distance from agent positions (N, 3) to the mesh inside the body's slab."""
    config = grid.config
    low = grid.floor_height + config.step_height
    shadow = slab_shadow(mesh, low, grid.floor_height + config.agent_height)
    return clearance(np.asarray(points)[:, [0, 2]], shadow)


def forward(yaw: float) -> np.ndarray:
    return STEP * np.array([-math.sin(yaw), -math.cos(yaw)])


def random_walk(grid: NavGrid, rng: np.random.Generator, steps: int) -> np.ndarray:
    """Positions after every forward move of a walk of random forward / left / right actions."""
    position, yaw, visited = grid.sample_navigable_point(rng), rng.uniform(-np.pi, np.pi), []
    for action in rng.integers(1, 4, size=steps):
        if action == Action.MOVE_FORWARD:
            position, _ = grid.try_move(position, forward(yaw))
            visited.append(position)
        else:
            yaw += TURN if action == Action.TURN_LEFT else -TURN
    return np.array(visited)


def run_follower(grid, follower, start, yaw, goal, max_steps=1000):
    """Drive the follower; return (final position, stopped, path length walked)."""
    position, walked = start, 0.0
    for _ in range(max_steps):
        action = follower.next_action(position, yaw, goal)
        if action == Action.STOP:
            return position, True, walked
        if action == Action.MOVE_FORWARD:
            moved, _ = grid.try_move(position, forward(yaw))
            walked += float(np.linalg.norm(moved - position))
            position = moved
        else:
            yaw += TURN if action == Action.TURN_LEFT else -TURN
    return position, False, walked


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cell_size", 0.0),
        ("cell_size", 1.5),
        ("agent_radius", -0.1),
        ("agent_height", float("nan")),
        ("step_height", 2.0),
        ("floor_height", float("inf")),
        ("floor_tolerance", 0.0),
        ("max_floor_slope_deg", 90.0),
        ("distance_cache_size", 0),
    ],
)
def test_config_rejects_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        NavConfig(**{field: value})


# ----------------------------------------------------------------------------- the grid
def test_floor_is_detected_below_an_equally_large_ceiling_and_on_raised_meshes(rooms):
    mesh, grid = rooms
    # The ceiling slab's top faces up and is as large as the floor slab's: the lowest wins.
    assert grid.floor_height == 0.0
    raised = mesh.copy()
    raised.apply_translation([0.0, 1.25, 0.0])
    # 1e-12 m: the translation rounds the vertices' y in the last bits.
    assert detect_floor_height(raised, NavConfig()) == pytest.approx(1.25, abs=1e-12)
    raised_grid = NavGrid.from_mesh(raised)
    np.testing.assert_array_equal(raised_grid.navigable, grid.navigable)
    assert raised_grid.is_navigable([-3.0, 1.25, 0.0])
    assert not raised_grid.is_navigable([-3.0, 0.0, 0.0])
    # An explicit floor height is used as given: nothing stands at y = 0.5.
    with pytest.raises(ValueError, match="no navigable cell"):
        NavGrid.from_mesh(mesh, NavConfig(floor_height=0.5))


def test_empty_room_free_space_matches_hand_computation(empty):
    _, grid = empty
    # Walls' inner faces at +-2 m lie on cell edges, so they touch the first interior cells; a
    # cell is blocked when its square comes nearer than 0.1 m to an obstacle cell's square, i.e.
    # the first three interior cells on each side: 4 m - 2 * 0.15 m = 3.7 m = 74 free cells.
    rows, cols = np.nonzero(grid.navigable)
    assert grid.navigable.sum() == 74 * 74
    x = grid.cell_to_world(np.stack([rows, cols], axis=-1))
    # 1e-9 m: cell centres are origin + (index + 0.5) * cell, rounded.
    np.testing.assert_allclose([x[:, 0].min(), x[:, 0].max()], [-1.825, 1.825], atol=1e-9)
    np.testing.assert_allclose([x[:, 2].min(), x[:, 2].max()], [-1.825, 1.825], atol=1e-9)


def test_body_slab_ignores_ceilings_shelves_above_and_rugs_below(rooms):
    mesh, grid = rooms
    assert grid.is_navigable([-2.5, 0.0, 0.0])  # under the shelf at 1.6 m
    assert grid.is_navigable([-2.5, 0.0, 1.5])  # on the 5 cm rug
    assert not grid.is_navigable([2.0, 0.0, -0.5])  # under the table top at 0.7 m
    assert not grid.is_navigable([-1.5, 0.0, -1.0])  # inside the pillar
    taller = NavGrid.from_mesh(mesh, NavConfig(agent_height=1.8))
    assert not taller.is_navigable([-2.5, 0.0, 0.0])
    no_step = NavGrid.from_mesh(mesh, NavConfig(step_height=0.0))
    assert not no_step.is_navigable([-2.5, 0.0, 1.5])


def test_occupancy_of_a_sloped_triangle_is_its_clipped_shadow():
    corners = np.array([[-2.0, 0.0, -2.0], [2.0, 2.0, -1.5], [-1.5, 3.0, 2.0]])
    slope = trimesh.Trimesh(corners, [[0, 1, 2]])
    mesh = trimesh.util.concatenate([_box([-3, -0.1, -3], [3, 0, 3]), slope])
    grid = NavGrid.from_mesh(mesh)
    # Reference: a dense barycentric sampling (1.25 cm apart) of the part with 0.1 < y <= 1.5.
    u, v = np.meshgrid(np.linspace(0, 1, 401), np.linspace(0, 1, 401))
    keep = u + v <= 1
    points = corners[0] + u[keep, None] * (corners[1] - corners[0])
    points = points + v[keep, None] * (corners[2] - corners[0])
    points = points[(points[:, 1] > 0.1) & (points[:, 1] <= 1.5)]
    sampled = np.zeros(grid.shape, dtype=bool)
    sampled[tuple(grid.world_to_cell(points).T)] = True
    assert (grid.occupancy >= sampled).all()  # every cell the clipped part reaches
    # ... and nothing beyond the cells next to those (the samples miss slightly touched cells).
    assert (grid.occupancy <= ndimage.binary_dilation(sampled, np.ones((3, 3)))).all()


@pytest.mark.parametrize("scene", [two_rooms, thin_wall_room])
def test_every_navigable_cell_keeps_the_body_clear_of_the_mesh(scene):
    mesh = scene()
    grid = NavGrid.from_mesh(mesh)
    rows, cols = np.nonzero(grid.navigable)
    # Corners, edge midpoints and centres of every navigable cell, on a half-cell lattice.
    lattice = np.unique(
        (
            2 * np.stack([rows, cols], axis=-1)[:, None, :] + np.mgrid[0:3, 0:3].reshape(2, -1).T
        ).reshape(-1, 2),
        axis=0,
    )
    x0, z0 = grid.origin
    points = np.stack(
        [x0 + lattice[:, 1] * CELL / 2, np.zeros(len(lattice)), z0 + lattice[:, 0] * CELL / 2], -1
    )
    distances = body_clearance(mesh, grid, points)
    # The grid's guarantee is exact (>= radius); 1e-9 m absorbs floating-point rounding.
    assert distances.min() >= RADIUS - 1e-9
    # ... and not wastefully conservative: a cell whose centre is farther than radius + 1.5
    # cell diagonals from the geometry (obstacle cells reach one diagonal beyond it, and the
    # centre is half a diagonal from the cell's edge) and that has floor is navigable.
    centres = grid.cell_to_world(np.argwhere(grid.floor))
    far = body_clearance(mesh, grid, centres) > RADIUS + 1.5 * math.sqrt(2) * CELL
    assert far.sum() > 0.5 * grid.navigable.sum()
    assert grid.is_navigable(centres[far]).all()


def test_keep_largest_component_or_all(rng):
    mesh = split_rooms()
    grid = NavGrid.from_mesh(mesh)
    assert grid.is_navigable([-2.0, 0.0, 0.0]) and not grid.is_navigable([3.0, 0.0, 0.0])
    both = NavGrid.from_mesh(mesh, NavConfig(keep_largest_component=False))
    assert ndimage.label(both.navigable)[1] == 2
    small, large = np.array([3.0, 0.0, 0.0]), np.array([-2.0, 0.0, 0.0])
    assert both.geodesic_distance(small, large) == math.inf
    assert both.shortest_path(small, large).shape == (0, 3)
    assert both.distance_field(large)[tuple(both.world_to_cell(small))] == math.inf
    with pytest.raises(ValueError, match="not reachable"):
        ShortestPathFollower(both).next_action(small, 0.0, large)


def test_mesh_errors_are_clear():
    with pytest.raises(TypeError, match="to_mesh"):
        NavGrid.from_mesh(trimesh.Scene(empty_room()))
    wall_only = _box([0, 0, 0], [1, 2, 0.1])
    wall_only.faces = wall_only.faces[np.abs(wall_only.face_normals[:, 1]) < 0.5]
    with pytest.raises(ValueError, match="upward-facing"):
        NavGrid.from_mesh(wall_only)
    cupboard = trimesh.util.concatenate(_shell(0, 0.15, 0, 0.15))  # floor narrower than the body
    with pytest.raises(ValueError, match="no navigable cell"):
        NavGrid.from_mesh(cupboard)
    broken = empty_room()
    broken.vertices[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        NavGrid.from_mesh(broken)


# ----------------------------------------------------------------------------- queries
def test_is_navigable_shapes_levels_and_bad_input(rooms):
    _, grid = rooms
    assert grid.is_navigable([-3.0, 0.0, 0.0]) is True
    result = grid.is_navigable(np.array([[-3.0, 0.0, 0.0], [-3.0, 0.3, 0.0], [50.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(result, [True, False, False])  # on, above the floor, outside
    with pytest.raises(ValueError, match="NaN"):
        grid.is_navigable([np.nan, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"\(3,\) or \(N, 3\)"):
        grid.is_navigable([1.0, 2.0])


def test_world_cell_round_trip(rooms, rng):
    _, grid = rooms
    cells = np.argwhere(grid.navigable)[:50]
    np.testing.assert_array_equal(grid.world_to_cell(grid.cell_to_world(cells)), cells)
    points = np.stack([grid.sample_navigable_point(rng) for _ in range(50)])
    centres = grid.cell_to_world(grid.world_to_cell(points))
    # A point lies within half a cell of its cell's centre along each axis (1e-12 m: rounding).
    assert np.abs(centres - points).max() <= CELL / 2 + 1e-12
    x_min, x_max, z_max, z_min = grid.extent
    # Default relative tolerance 1e-6: the extent is a sum of floats.
    assert (x_max - x_min, z_max - z_min) == pytest.approx(
        (grid.shape[1] * CELL, grid.shape[0] * CELL)
    )


def test_sampling_is_uniform_over_the_navigable_area_and_seeded(rooms):
    _, grid = rooms
    points = np.stack([grid.sample_navigable_point(np.random.default_rng(3)) for _ in range(2)])
    np.testing.assert_array_equal(points[0], points[1])
    rng = np.random.default_rng(0)
    samples = np.stack([grid.sample_navigable_point(rng) for _ in range(4000)])
    assert grid.is_navigable(samples).all() and (samples[:, 1] == grid.floor_height).all()
    cells = np.argwhere(grid.navigable)
    left_share = (grid.cell_to_world(cells)[:, 0] < 0).mean()
    observed = (samples[:, 0] < 0).mean()
    # Binomial standard error of a share over 4000 samples; 4 sigma.
    assert abs(observed - left_share) < 4 * math.sqrt(left_share * (1 - left_share) / 4000)
    with pytest.raises(TypeError, match="Generator"):
        grid.sample_navigable_point(0)


# ----------------------------------------------------------------------------- geodesics
def _touched_cells(d_row: int, d_col: int) -> set[tuple[int, int]]:
    """Cells whose closed square meets the line between the centres of (0, 0) and the step."""
    t = np.linspace(0.0, 1.0, 2001)
    rows, cols = 0.5 + t * d_row, 0.5 + t * d_col
    cells = set()
    for shift_row in (-1e-9, 1e-9):
        for shift_col in (-1e-9, 1e-9):
            r = np.floor(rows + shift_row).astype(int)
            c = np.floor(cols + shift_col).astype(int)
            cells |= set(zip(r.tolist(), c.tolist(), strict=True))
    return cells


def _reference_grid_distances(navigable: np.ndarray, goal: tuple[int, int], cell: float):
    """Plain Dijkstra over the 16 steps of length <= sqrt(5) cells that touch only free cells."""
    height, width = navigable.shape
    steps = [
        (dr, dc, _touched_cells(dr, dc))
        for dr in range(-2, 3)
        for dc in range(-2, 3)
        if 0 < dr * dr + dc * dc <= 5
    ]
    distance = np.full(navigable.shape, np.inf)
    distance[goal] = 0.0
    queue = [(0.0, goal)]
    while queue:
        d, (r, c) = heapq.heappop(queue)
        if d > distance[r, c]:
            continue
        for dr, dc, touched in steps:
            cells = [(r + tr, c + tc) for tr, tc in touched]
            if not all(0 <= a < height and 0 <= b < width and navigable[a, b] for a, b in cells):
                continue
            nd = d + cell * math.hypot(dr, dc)
            if nd < distance[r + dr, c + dc]:
                distance[r + dr, c + dc] = nd
                heapq.heappush(queue, (nd, (r + dr, c + dc)))
    return distance


def test_distance_field_matches_plain_dijkstra():
    rng = np.random.default_rng(1)
    navigable = rng.random((14, 17)) > 0.25
    navigable[7, :] = False  # a wall with one gap so that paths must detour
    navigable[7, 12] = True
    config = NavConfig(cell_size=0.1, keep_largest_component=False)
    grid = NavGrid(navigable, (1.0, -2.0), config, floor_height=0.0)
    goal_cell = tuple(np.argwhere(navigable)[5])
    goal = grid.cell_to_world(np.array(goal_cell))
    expected = _reference_grid_distances(navigable, goal_cell, 0.1)
    expected[~navigable] = np.inf
    # Same sums of the same edge lengths in a different order: 1e-9 m.
    np.testing.assert_allclose(grid.distance_field(goal), expected, atol=1e-9)


def test_geodesic_is_euclidean_in_the_open_and_bounded_through_a_doorway(rooms):
    _, grid = rooms
    start, goal = np.array([-3.5, 0.0, -2.5]), np.array([-0.5, 0.0, 2.5])
    # In straight view the geodesic is the straight line (default rel. 1e-6: float rounding).
    assert grid.geodesic_distance(start, goal) == pytest.approx(np.linalg.norm(goal - start))
    start, goal = np.array([-3.0, 0.0, -2.5]), np.array([3.0, 0.0, -2.5])
    # Any path crosses the 0.1 m wall through the doorway at z >= -0.5 + radius.
    lower = 2 * math.hypot(2.95, 2.1) + 0.1
    geodesic = grid.geodesic_distance(start, goal)
    # The grid's extra clearance (up to 1.5 cells) and 16 step directions add a few percent.
    assert lower <= geodesic <= 1.05 * lower
    path = grid.shortest_path(start, goal)
    assert lower <= np.linalg.norm(np.diff(path, axis=0), axis=1).sum() <= geodesic


def test_geodesic_is_at_least_euclidean_and_paths_stay_clear_of_the_mesh(rooms, rng):
    mesh, grid = rooms
    samples = []
    for _ in range(60):
        start, goal = grid.sample_navigable_point(rng), grid.sample_navigable_point(rng)
        path = grid.shortest_path(start, goal)
        np.testing.assert_array_equal(path[[0, -1]], np.stack([start, goal]))
        lengths = np.linalg.norm(np.diff(path, axis=0), axis=1)
        geodesic = grid.geodesic_distance(start, goal)
        # The smoothed path is no longer than the cell path, and no path beats the straight line
        # (1e-9 m: rounding of the sums).
        assert np.linalg.norm(goal - start) - 1e-9 <= lengths.sum() <= geodesic + 1e-9
        for a, b, length in zip(path[:-1], path[1:], lengths, strict=True):
            t = np.linspace(0.0, 1.0, max(2, math.ceil(length / 0.01) + 1))[:, None]
            samples.append(a + t * (b - a))
    # Every point along every path segment (sampled every 1 cm) keeps the body clear.
    assert body_clearance(mesh, grid, np.concatenate(samples)).min() >= RADIUS - 1e-9


def test_paths_and_geodesics_name_points_off_the_navigable_area(rooms):
    _, grid = rooms
    inside, in_wall = np.array([-3.0, 0.0, 0.0]), np.array([0.0, 0.0, -2.0])
    with pytest.raises(ValueError, match=r"goal \[0\.0, 0\.0, -2\.0\] is not on the navigable"):
        grid.shortest_path(inside, in_wall)
    with pytest.raises(ValueError, match="start"):
        grid.geodesic_distance(in_wall, inside)
    with pytest.raises(ValueError, match="shape"):
        grid.shortest_path(inside, np.zeros((2, 3)))


# ----------------------------------------------------------------------------- motion
def test_free_move_is_exact_and_zero_move_stays(empty):
    _, grid = empty
    position = np.array([0.1, 0.0, 0.2])
    moved, collided = grid.try_move(position, np.array([0.3, -0.25]))
    np.testing.assert_allclose(moved, [0.4, 0.0, -0.05], atol=1e-12)  # sub-step sums
    assert not collided
    moved, collided = grid.try_move(position, np.zeros(2))
    np.testing.assert_array_equal(moved, position)
    assert not collided


def test_move_into_a_wall_stops_at_it(empty):
    _, grid = empty
    moved, collided = grid.try_move(np.array([0.0, 0.0, 0.0]), np.array([0.0, -5.0]))
    assert collided and moved[0] == 0.0
    # It stops within one sub-step (half a cell) of the free-space edge.
    assert grid.is_navigable(moved) and not grid.is_navigable(moved - [0.0, 0.0, CELL / 2])
    assert moved[2] + 2.0 >= RADIUS  # the wall's inner face is at z = -2


def test_oblique_move_into_a_wall_slides_along_it(empty):
    _, grid = empty
    moved, collided = grid.try_move(np.array([0.0, 0.0, -1.5]), np.array([0.3, -1.0]))
    assert collided
    # The wall along x keeps the whole x component of the move and stops the z component.
    assert moved[0] == pytest.approx(0.3, abs=1e-12)  # sum of sub-steps, rounded
    assert grid.is_navigable(moved) and not grid.is_navigable(moved - [0.0, 0.0, CELL / 2])


def test_long_moves_never_pass_through_a_thin_wall(thin):
    _, grid = thin
    moved, collided = grid.try_move(np.array([-1.0, 0.0, -1.0]), np.array([0.0, 3.0]))
    assert collided and moved[2] < 0.0
    rng = np.random.default_rng(5)
    starts = np.stack([grid.sample_navigable_point(rng) for _ in range(300)])
    starts = starts[starts[:, 0] < 0.0]  # far from the gap at x > 1
    for start in starts:
        angle = rng.uniform(-np.pi, np.pi)
        moved, _ = grid.try_move(start, 1.0 * np.array([math.cos(angle), math.sin(angle)]))
        assert np.sign(moved[2]) == np.sign(start[2])


def test_try_move_rejects_bad_input(empty):
    _, grid = empty
    with pytest.raises(ValueError, match="position"):
        grid.try_move(np.array([0.0, 0.0, -1.99]), np.array([0.1, 0.0]))  # inside the wall
    with pytest.raises(ValueError, match="position"):
        grid.try_move(np.array([0.0, 1.0, 0.0]), np.array([0.1, 0.0]))  # 1 m above the floor
    with pytest.raises(ValueError, match="displacement_xz"):
        grid.try_move(np.zeros(3), np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="displacement_xz"):
        grid.try_move(np.zeros(3), np.zeros(3))


def _check_random_walks(scenes, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for mesh in scenes:
        grid = NavGrid.from_mesh(mesh)
        visited = np.unique(random_walk(grid, rng, steps), axis=0)
        assert grid.is_navigable(visited).all()
        # Exact geometry on both sides; 1e-9 m absorbs floating-point rounding.
        assert body_clearance(mesh, grid, visited).min() >= RADIUS - 1e-9


def test_random_walks_never_intersect_the_mesh():
    _check_random_walks([two_rooms(), thin_wall_room()], steps=2000, seed=0)


@pytest.mark.slow
def test_ten_thousand_random_steps_never_intersect_the_mesh():
    from envs.embedded.scenes import generate_house, scene_mesh

    houses = [scene_mesh(generate_house(f"house-{s}-0001")) for s in ("train", "val", "test")]
    _check_random_walks([two_rooms(), thin_wall_room(), *houses], steps=10_000, seed=1)


# ----------------------------------------------------------------------------- the oracle
def test_follower_turns_towards_the_goal_then_moves_and_stops_in_the_radius(empty):
    _, grid = empty
    follower = ShortestPathFollower(grid)
    here = np.zeros(3)
    assert follower.next_action(here, 0.0, np.array([0.0, 0.0, -1.0])) == Action.MOVE_FORWARD
    assert follower.next_action(here, 0.0, np.array([-1.0, 0.0, 0.0])) == Action.TURN_LEFT
    assert follower.next_action(here, 0.0, np.array([1.0, 0.0, 0.0])) == Action.TURN_RIGHT
    assert follower.next_action(here, 0.0, np.array([0.0, 0.0, 0.15])) == Action.STOP
    # Within half a turn step (5 degrees) of the goal's bearing it walks, beyond it turns.
    ahead = np.array([-math.sin(math.radians(4.0)), 0.0, -math.cos(math.radians(4.0))])
    assert follower.next_action(here, 0.0, ahead) == Action.MOVE_FORWARD
    aside = np.array([-math.sin(math.radians(6.0)), 0.0, -math.cos(math.radians(6.0))])
    assert follower.next_action(here, 0.0, aside) == Action.TURN_LEFT


def test_follower_aims_around_the_doorway(rooms):
    mesh, grid = rooms
    follower = ShortestPathFollower(grid)
    start, goal = np.array([-1.0, 0.0, -2.5]), np.array([1.0, 0.0, -2.5])
    target = follower.target(start, goal)
    # The goal is behind the wall: the aiming point lies towards the doorway, in straight view.
    assert target[2] > start[2] and target[0] > start[0]
    line = start + np.linspace(0.0, 1.0, 200)[:, None] * (target - start)
    assert body_clearance(mesh, grid, line).min() >= RADIUS - 1e-9  # rounding only


def test_follower_rejects_bad_input(rooms):
    _, grid = rooms
    follower = ShortestPathFollower(grid)
    with pytest.raises(ValueError, match=r"goal \[2\.0, 0\.0, -0\.5\]"):
        follower.next_action(np.array([-3.0, 0.0, 0.0]), 0.0, np.array([2.0, 0.0, -0.5]))
    with pytest.raises(ValueError, match="yaw"):
        follower.next_action(np.array([-3.0, 0.0, 0.0]), math.nan, np.array([-2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="goal_radius"):
        ShortestPathFollower(grid, goal_radius=0.0)
    with pytest.raises(ValueError, match="forward_step_m"):
        ShortestPathFollower(grid, forward_step_m=-1.0)


def _check_follower(grids, episodes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reached, ratios = 0, []
    for grid in grids:
        follower = ShortestPathFollower(grid, forward_step_m=STEP, turn_step_deg=10.0)
        for _ in range(episodes):
            start, goal = grid.sample_navigable_point(rng), grid.sample_navigable_point(rng)
            final, stopped, walked = run_follower(
                grid, follower, start, rng.uniform(-np.pi, np.pi), goal
            )
            success = stopped and np.linalg.norm(final - goal) <= follower.goal_radius
            reached += success
            geodesic = grid.geodesic_distance(start, goal)
            if success and geodesic > 1.0:
                ratios.append(walked / geodesic)
    assert reached >= 0.99 * episodes * len(grids)
    # The greedy walk is close to the shortest path (the discrete headings add a little).
    assert np.median(ratios) < 1.1


def test_follower_reaches_sampled_goals(rooms):
    _check_follower([rooms[1]], episodes=30, seed=0)


def test_follower_reaches_sampled_goals_in_a_generated_house():
    from envs.embedded.scenes import generate_house, scene_mesh

    grid = NavGrid.from_mesh(scene_mesh(generate_house("house-train-0000")))
    _check_follower([grid], episodes=20, seed=1)


@pytest.mark.slow
def test_follower_reaches_99_percent_of_goals_in_houses():
    from envs.embedded.scenes import generate_house, scene_mesh

    ids = [f"house-{split}-{index:04d}" for split in ("train", "val", "test") for index in (2, 3)]
    grids = [NavGrid.from_mesh(scene_mesh(generate_house(i))) for i in ids]
    _check_follower(grids, episodes=50, seed=2)


def test_a_geodesic_distance_does_not_depend_on_which_end_the_cache_holds(rooms):
    """Summed from the start's field or from the goal's, a path has one length, to the bit."""
    _, grid = rooms
    rng = np.random.default_rng(5)
    pairs = [
        (grid.sample_navigable_point(rng), grid.sample_navigable_point(rng)) for _ in range(40)
    ]
    around_a_wall = 0
    for start, goal in pairs:
        grid._fields.clear()
        grid._field(grid._node_of(start))  # only the start's field is cached
        from_start = grid.geodesic_distance(start, goal)
        grid._fields.clear()
        from_goal = grid.geodesic_distance(start, goal)  # the goal's field
        assert from_start == from_goal
        around_a_wall += from_start > math.dist(start[[0, 2]], goal[[0, 2]]) + 1e-6
    assert around_a_wall >= 5  # pairs whose distance comes from the fields, not a straight line


# ----------------------------------------------------------------------------- storeys
@pytest.fixture(scope="module")
def storeys():
    """A generated house stacked into two storeys (no stairs), its single storey, and the lift."""
    from envs.embedded.scenes import STOREY_SLAB_M, generate_layout, scene_mesh, storey_house

    layout = generate_layout("house-val-0003")
    single = scene_mesh(storey_house("house-val-0003", storeys=1))
    double = scene_mesh(storey_house("house-val-0003", storeys=2))
    return single, double, layout.ceiling_height + STOREY_SLAB_M


def test_each_storey_gets_its_own_grid_never_a_mix(storeys):
    single, double, lift = storeys
    alone = NavGrid.from_mesh(single)
    ground = NavGrid.from_mesh(double)  # detected: the lower of two equally large levels
    upper = NavGrid.from_mesh(double, NavConfig(floor_height=lift))
    assert ground.floor_height == pytest.approx(0.0, abs=1e-6)
    assert upper.floor_height == pytest.approx(lift)
    # Same xz bounds, so the same cells: each storey's grid is exactly the house's own, so the
    # other storey's triangles (all in the mesh) added no floor and no obstacle.
    for grid in (ground, upper):
        assert grid.origin == alone.origin
        np.testing.assert_array_equal(grid.navigable, alone.navigable)
        np.testing.assert_array_equal(grid.occupancy, alone.occupancy)


def test_floor_height_at_finds_the_storey_under_a_point(storeys):
    from envs.embedded.navmesh import floor_height_at

    _, double, lift = storeys
    grid = NavGrid.from_mesh(double)
    x, _, z = grid.sample_navigable_point(np.random.default_rng(1))
    config = NavConfig()
    assert floor_height_at(double, [x, 0.0, z], config) == pytest.approx(0.0, abs=1e-6)
    assert floor_height_at(double, [x, lift + 0.02, z], config) == pytest.approx(lift)
    assert floor_height_at(double, [x, lift / 2, z], config) is None  # mid-air
    assert floor_height_at(double, [1e3, 0.0, 1e3], config) is None  # outside the house
