"""The oracle rollout returns exactly the ground-truth simulator's frames."""

import math

import numpy as np
import pytest
import torch

from envs.embedded.simulator import Simulator
from envs.oracle import OracleRollout, apply_waypoint
from envs.simulator import SimulatorConfig
from envs.tasks import sample_image_goal_episode
from worldsim.geometry import relative_pose, waypoint_to_relative_pose
from worldsim.simulator.protocol import RolloutModel, RolloutStart

SCENE = "house-train-0000"


@pytest.fixture(scope="module")
def sim():
    simulator = Simulator(SimulatorConfig(width=32, height=32))
    simulator.load_scene(SCENE)
    return simulator


@pytest.fixture
def oracle(sim):
    return OracleRollout(sim)


def _start_pose(sim, seed):
    rng = np.random.default_rng(seed)
    return sim.sample_navigable_point(rng), float(rng.uniform(-math.pi, math.pi))


def test_oracle_is_a_rollout_model(oracle):
    assert isinstance(oracle, RolloutModel)
    assert oracle.image_size == (32, 32)
    assert oracle.max_horizon is None


def test_discrete_rollout_equals_stepping_the_simulator(sim, oracle):
    generator = torch.Generator().manual_seed(0)
    starts = [_start_pose(sim, seed) for seed in range(3)]
    actions = torch.randint(0, 4, (3, 12), generator=generator)
    start = oracle.start(SCENE, np.stack([p for p, _ in starts]), np.array([y for _, y in starts]))
    result = oracle.rollout(start, actions)
    assert result.rgb.shape == (3, 12, 3, 32, 32)
    assert result.depth.shape == (3, 12, 1, 32, 32)
    assert result.cam_to_world.shape == (3, 12, 4, 4)
    for row, (position, yaw) in enumerate(starts):
        sim.reset_agent(position, yaw)
        for step in range(12):
            collided = sim.step(int(actions[row, step]))
            observation = sim.observe()
            # exact: the same renderer on the same pose gives the same bytes
            assert torch.equal(
                result.rgb[row, step], torch.from_numpy(observation["rgb"]).permute(2, 0, 1) / 255
            )
            assert torch.equal(
                result.depth[row, step], torch.from_numpy(observation["depth"]).permute(2, 0, 1)
            )
            assert torch.equal(
                result.cam_to_world[row, step], torch.from_numpy(observation["pose"])
            )
            assert bool(result.collided[row, step]) == collided
            assert np.array_equal(result.agent_state[row, step, :3].numpy(), sim.position)
            assert result.agent_state[row, step, 3].item() == sim.yaw


def test_rollout_restores_the_simulator_state(sim, oracle):
    position, yaw = _start_pose(sim, 7)
    sim.reset_agent(position, yaw)
    start = oracle.start(SCENE, _start_pose(sim, 8)[0], 0.3)
    oracle.rollout(start, torch.ones(1, 5, dtype=torch.int64))
    assert sim.scene_id == SCENE
    assert np.array_equal(sim.position, position)
    assert sim.yaw == yaw


def test_last_frames_only_equal_the_tail_of_all_frames(sim, oracle):
    start = oracle.start(SCENE, *_start_pose(sim, 1)).repeat(2)
    actions = torch.tensor([[1, 1, 2, 1, 3, 1], [2, 2, 1, 1, 1, 0]])
    full = oracle.rollout(start, actions)
    last = oracle.rollout(start, actions, num_frames=2)
    assert last.rgb.shape == (2, 2, 3, 32, 32)
    assert torch.equal(last.rgb, full.rgb[:, -2:])
    assert torch.equal(last.depth, full.depth[:, -2:])
    # unrendered steps' poses come from the same pose function as rendered ones
    assert torch.equal(last.cam_to_world, full.cam_to_world)


def test_start_from_poses_only_matches_exact_state(sim, oracle):
    exact = oracle.start(SCENE, *_start_pose(sim, 2))
    from_pose = RolloutStart(
        exact.rgb, exact.depth, exact.cam_to_world, exact.intrinsics, scene=exact.scene
    )
    actions = torch.tensor([[1, 1, 1, 2, 1]])
    a, b = oracle.rollout(exact, actions), oracle.rollout(from_pose, actions)
    # float32 poses recover the float64 state to ~1e-6 m; the rendered view is the same
    assert torch.allclose(a.agent_state, b.agent_state, atol=1e-5)
    assert (a.rgb - b.rgb).abs().mean() < 1e-3


def test_waypoints_in_free_space_follow_the_geometry_convention(sim, oracle):
    start = oracle.start(SCENE, *_start_pose(sim, 3))
    waypoints = torch.tensor([[[0.0, 0.0, 0.4], [0.02, 0.03, -0.2], [0.0, 0.0, 0.1]]])
    result = oracle.rollout(start, waypoints)
    assert not result.collided.any()
    previous = start.cam_to_world[0, -1].double()
    for step in range(3):
        current = result.cam_to_world[0, step].double()
        expected = waypoint_to_relative_pose(waypoints[0, step].double())
        # float32 storage of world poses of a few metres: about 1e-6 relative error
        assert torch.allclose(relative_pose(previous, current), expected, atol=1e-5)
        previous = current


def test_waypoint_into_a_wall_slides_or_stops_and_stays_navigable(sim):
    position, _ = _start_pose(sim, 4)
    sim.reset_agent(position, 0.0)
    blocked = False
    for _ in range(40):
        blocked |= apply_waypoint(sim, np.array([0.0, 0.5, 0.0]))
        assert sim.is_navigable(sim.position)
    assert blocked  # 20 m straight ahead in a house always meets a wall


def test_bad_requests_raise(sim, oracle):
    start = oracle.start(SCENE, *_start_pose(sim, 5))
    with pytest.raises(ValueError, match="unknown action id 4"):
        oracle.rollout(start, torch.tensor([[1, 4]]))
    with pytest.raises(ValueError, match="actions have 2 rows"):
        oracle.rollout(start, torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        oracle.rollout(start, torch.full((1, 2, 3), float("nan")))
    with pytest.raises(ValueError, match="num_frames"):
        oracle.rollout(start, torch.ones(1, 3, dtype=torch.int64), num_frames=4)
    no_scene = RolloutStart(start.rgb, start.depth, start.cam_to_world, start.intrinsics)
    with pytest.raises(ValueError, match="ground-truth scene"):
        oracle.rollout(no_scene, torch.ones(1, 3, dtype=torch.int64))
    small = RolloutStart(
        start.rgb[..., :16, :16],
        start.depth[..., :16, :16],
        start.cam_to_world,
        start.intrinsics,
        scene=start.scene,
    )
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        oracle.rollout(small, torch.ones(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="not on the navigable"):
        oracle.start(SCENE, np.array([100.0, 0.0, 100.0]), 0.0)


def test_image_goal_episodes_are_in_range_and_informative(sim, oracle):
    position, yaw = _start_pose(sim, 9)
    sim.reset_agent(position, yaw)
    rng = np.random.default_rng(0)
    for _ in range(3):
        episode = sample_image_goal_episode(oracle, SCENE, rng, 1.0, 2.0)
        assert 1.0 <= episode.geodesic_distance <= 2.0
        assert episode.geodesic_distance == sim.geodesic_distance(
            episode.start_position, episode.goal_position
        )
        view = oracle.start(SCENE, episode.goal_position, episode.goal_yaw)
        assert view.depth.median() >= 1.0
    assert np.array_equal(sim.position, position) and sim.yaw == yaw
    with pytest.raises(ValueError, match="no start/goal pair"):
        sample_image_goal_episode(oracle, SCENE, rng, 50.0, 60.0, max_tries=5)
