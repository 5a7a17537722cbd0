"""The map's cost-to-go: geodesic distances against a brute-force search, the goal's pose used."""

import heapq
import math

import numpy as np
import pytest
import torch

from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import episode_start, sample_image_goal_episode
from planners.cem import CEMConfig, plan_cem
from planners.costs import GoalCost
from planners.goal_map import GeodesicField, GoalMap, GoalMapConfig, MapGoalCost, map_of_frames
from planners.localisation import GoalEstimate
from worldsim.geometry import pose_from_position_yaw
from worldsim.memory import build_memory


@pytest.fixture(scope="module")
def cost():
    return GoalCost()


def _room(wall: bool) -> np.ndarray:
    """Observed points of a 4 x 4 m floor (y = 0) walled on all sides (0.5-1.0 m high) and,
    optionally, a wall along x = 2 m from z = 0 to z = 3 m, leaving a 1 m gap at z in (3, 4)."""
    grid = np.arange(0.0, 4.0, 0.05)
    x, z = np.meshgrid(grid, grid)
    floor = np.stack([x.ravel(), np.zeros(x.size), z.ravel()], axis=-1)
    along, ys = np.meshgrid(np.arange(-0.2, 4.2, 0.02), np.arange(0.5, 1.0, 0.1))
    along, ys = along.ravel(), ys.ravel()
    walls = [np.stack([np.full(along.size, edge), ys, along], axis=-1) for edge in (-0.2, 4.2)] + [
        np.stack([along, ys, np.full(along.size, edge)], axis=-1) for edge in (-0.2, 4.2)
    ]
    if wall:
        inside = along <= 3.0
        walls.append(np.stack([np.full(inside.sum(), 2.0), ys[inside], along[inside]], axis=-1))
    return np.concatenate([floor, *walls])


def _brute_force(factor: np.ndarray, source: tuple[int, int], cell: float) -> np.ndarray:
    """Plain Dijkstra over the 8-connected grid, one cell at a time (the obvious reference)."""
    distance = np.full(factor.shape, np.inf)
    distance[source] = 0.0
    queue = [(0.0, source)]
    while queue:
        d, (row, col) = heapq.heappop(queue)
        if d > distance[row, col]:
            continue
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = row + dr, col + dc
                if (dr, dc) == (0, 0) or not (
                    0 <= r < factor.shape[0] and 0 <= c < factor.shape[1]
                ):
                    continue
                step = cell * math.hypot(dr, dc) * 0.5 * (factor[row, col] + factor[r, c])
                if np.isfinite(step) and d + step < distance[r, c]:
                    distance[r, c] = d + step
                    heapq.heappush(queue, (d + step, (r, c)))
    return distance


def test_geodesic_field_equals_a_brute_force_search_and_goes_round_walls():
    config = GoalMapConfig()
    target = np.array([[3.0, 0.5]])
    field = GeodesicField(_room(wall=True), 0.0, target, config)
    source = field._cell(target[0])
    reference = _brute_force(field.factor, source, config.grid_cell_m)
    np.testing.assert_allclose(field.distance, reference, rtol=1e-12)  # same sums, other order
    # Round the wall through the gap, much longer than the straight line.
    start = np.array([[1.0, 0.5]])
    assert field(start)[0] > 6.0  # through the gap: twice the hypotenuse of 1 m and 3 m, 6.3 m
    open_field = GeodesicField(_room(wall=False), 0.0, target, config)
    # Open floor: along a row the distance is the cell count (cell centres 2.0 m apart).
    assert open_field(start)[0] == pytest.approx(2.0, abs=1e-9)
    # Unseen floor costs unknown_factor per metre: the same room without floor points.
    blind = GeodesicField(_room(wall=False)[:1], 0.0, target, config)
    # 0.2: this grid starts elsewhere, and positions snap to cells (one cell at factor 2)
    assert blind(start)[0] == pytest.approx(config.unknown_factor * 2.0, abs=0.2 + 1e-9)


def test_a_map_without_observed_points_is_refused_for_the_map_cost():
    with pytest.raises(ValueError, match="holds no observed points"):
        GeodesicField(np.zeros((0, 3)), 0.0, np.zeros((1, 2)), GoalMapConfig())
    memory = build_memory("rendered")
    memory.reset(1)
    goal_map = GoalMap(torch.zeros(3, 8, 8), torch.eye(3), 0.0, GoalMapConfig())
    with pytest.raises(ValueError, match="holds no observed points"):
        goal_map.update(memory, 0)
    with pytest.raises(ValueError, match="grid_cell_m must be"):
        GoalMapConfig(grid_cell_m=0.0)


def test_map_cost_and_arrival_by_hand():
    config = GoalMapConfig(metre_cost=0.1, heading_cost=0.2, heading_radius_m=1.0)
    goal_map = GoalMap(torch.zeros(3, 8, 8), torch.eye(3), 0.0, config)
    goal_map.estimate = GoalEstimate(np.array([3.0, 0.0, 0.5]), 0.0, 0.1, 1.0, 0.9, 1)
    goal_map._goal_field = GeodesicField(_room(False), 0.0, np.array([[3.0, 0.5]]), config)
    positions = torch.tensor(
        [[1.0, 0.0, 0.5], [3.0, 0.0, 0.5], [3.0, 0.0, 0.5]], dtype=torch.float64
    )
    yaws = torch.tensor([0.0, 0.0, math.pi], dtype=torch.float64)
    poses = pose_from_position_yaw(positions, yaws)
    costs = goal_map.cost(poses)
    assert costs[0] == pytest.approx(0.1 * 2.0, abs=1e-6)  # 2 m away, heading not counted
    assert costs[1] == pytest.approx(0.0, abs=1e-6)  # at the goal, facing its heading
    assert costs[2] == pytest.approx(0.2, abs=1e-6)  # at the goal, facing away
    assert goal_map.at_goal(poses[1], 0.3, 45.0) and not goal_map.at_goal(poses[2], 0.3, 45.0)
    assert not goal_map.at_goal(poses[0], 0.3, 45.0)
    goal_map.estimate = GoalEstimate(np.array([3.0, 0.0, 0.5]), 0.0, 0.1, 1.0, 0.01, 1)
    assert not goal_map.confident and torch.equal(goal_map.cost(poses), torch.zeros(3))


def test_the_map_cost_leads_to_the_goal_and_a_shuffled_goal_pose_does_worse(cost):
    """The control: the map cost of the true goal pose brings plans nearer the goal than the
    same cost with the goal pose of another episode."""
    oracle = OracleRollout(config=SimulatorConfig(width=32, height=32, turn_step_deg=30.0))
    scene = "house-test-0010"
    walk = oracle.tour(scene, 60, np.random.default_rng(0))
    memory = map_of_frames(walk)
    rng = np.random.default_rng(5)
    episodes = [sample_image_goal_episode(oracle, scene, rng) for _ in range(3)]
    config = CEMConfig(num_samples=12, num_iterations=1, horizon=6, probe_turns=3)
    oracle.sim.load_scene(scene)
    true_end, shuffled_end = [], []
    for index, episode in enumerate(episodes):
        start, goal = episode_start(oracle, episode)
        floor = float(episode.start_position[1])
        for pose_of, ends in ((episode, true_end), (episodes[index - 1], shuffled_end)):
            goal_map = GoalMap(goal, start.intrinsics[0], floor, GoalMapConfig(metre_cost=1.0))
            goal_map.estimate = GoalEstimate(pose_of.goal_position, pose_of.goal_yaw, 0, 1, 1, 1)
            goal_map.update(memory, 0)
            planning = MapGoalCost(cost, goal_map)
            plan = plan_cem(oracle, start, goal, planning, config, torch.Generator().manual_seed(0))
            end = plan.final_pose[:3, 3].double().numpy() - [0.0, 1.25, 0.0]
            ends.append(oracle.sim.geodesic_distance(end, episode.goal_position))
    assert np.mean(true_end) < np.mean(shuffled_end) - 0.5, (true_end, shuffled_end)
    assert np.mean(true_end) < np.mean([e.geodesic_distance for e in episodes])
