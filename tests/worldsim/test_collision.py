"""Collisions of a learned world's camera with the walls its map has observed."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from envs.embedded.simulator import Simulator
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from tests.worldsim.conftest import make_tiny
from worldsim.geometry import (
    DEFAULT_SENSOR_HEIGHT_M,
    action_to_relative_pose,
    pose_from_position_yaw,
)
from worldsim.memory import build_memory
from worldsim.simulator.chunks import insert_frames, step_poses
from worldsim.simulator.collision import MapCollider, MapCollisionConfig
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.sampler import SamplerConfig

FLOOR = 0.3  # world y of the floor in the hand-made scenes


def _wall(z=-1.0, x=(-2.0, 2.0), low=0.2, high=1.4, spacing=0.02):
    """Points of a wall across x at depth z, from ``low`` to ``high`` above the floor."""
    xs = np.arange(x[0], x[1], spacing)
    ys = FLOOR + np.arange(low, high, spacing)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    return np.column_stack([grid[:, 0], grid[:, 1], np.full(len(grid), z)])


def _camera(x=0.0, z=0.0, yaw=0.0):
    """Camera-to-world pose of an agent at ``(x, FLOOR, z)`` looking along -z turned left."""
    position = torch.tensor([x, FLOOR, z], dtype=torch.float64)
    return pose_from_position_yaw(position, torch.tensor(yaw))


def _forward(count):
    return action_to_relative_pose(torch.ones(count, dtype=torch.int64)).double()


def test_a_wall_stops_the_body_at_its_radius_and_turns_pass():
    collider = MapCollider(_wall(z=-1.0), FLOOR)
    steps = torch.cat([_forward(6), action_to_relative_pose(torch.tensor([2])).double()])
    constrained, collided = collider.constrain(_camera(), steps)
    pose, zs = _camera(), []
    for step in constrained:
        pose = pose @ step
        zs.append(float(pose[2, 3]))
    # Free steps 1-3 (to z = -0.75); step 4 would reach -1.0: the body stops one radius (plus
    # the cells' rounding) before the wall, and stays there.
    assert collided.tolist() == [False, False, False, True, True, True, False]
    assert zs[:3] == pytest.approx([-0.25, -0.5, -0.75])
    assert -1.0 + 0.1 <= zs[3] <= -1.0 + 0.1 + 2 * 0.05
    assert zs[3] == zs[4] == zs[5] == zs[6]
    # Rotations are never changed: the final turn is the free turn.
    torch.testing.assert_close(constrained[6], steps[6])
    torch.testing.assert_close(constrained[:, :3, :3], steps[:, :3, :3])


def test_a_blocked_diagonal_move_slides_along_the_wall():
    collider = MapCollider(_wall(z=-0.5), FLOOR)
    yaw = math.radians(45.0)  # -z turned left by 45 degrees: forward moves along (-x, -z)
    steps = _forward(8)
    constrained, collided = collider.constrain(_camera(yaw=yaw), steps)
    pose = _camera(yaw=yaw)
    for step in constrained:
        pose = pose @ step
    free = _camera(yaw=yaw)
    for step in steps:
        free = free @ step
    assert float(free[0, 3]) == pytest.approx(-math.sqrt(2.0), abs=1e-6)
    assert float(free[2, 3]) == pytest.approx(-math.sqrt(2.0), abs=1e-6)
    assert collided.any()
    assert float(pose[2, 3]) > -0.5 + 0.1  # never through the wall
    assert float(pose[0, 3]) == pytest.approx(-math.sqrt(2.0), abs=0.03)  # slid along it


def test_floor_and_ceiling_points_never_block_and_nothing_is_free_motion():
    xs, zs = np.meshgrid(np.arange(-2, 2, 0.05), np.arange(-3, 1, 0.05))
    flat = np.column_stack([xs.ravel(), np.zeros(xs.size), zs.ravel()])
    floor = flat + np.array([0.0, FLOOR + 0.05, 0.0])  # within the step height
    ceiling = flat + np.array([0.0, FLOOR + 2.0, 0.0])  # above the body
    steps = torch.cat([_forward(4), action_to_relative_pose(torch.tensor([2, 1, 1])).double()])
    for points in (np.concatenate([floor, ceiling]), np.zeros((0, 3))):
        constrained, collided = MapCollider(points, FLOOR).constrain(_camera(), steps)
        assert not collided.any()
        torch.testing.assert_close(constrained, steps, atol=1e-12, rtol=0)
    # Control: the same points lifted into the body's slab block it.
    body = flat + np.array([0.0, FLOOR + 0.5, 0.0])
    _, collided = MapCollider(body, FLOOR).constrain(_camera(x=10.0), steps)  # outside: free
    assert not collided.any()
    near = _wall(z=-0.3)
    _, collided = MapCollider(near, FLOOR).constrain(_camera(), steps)
    assert collided.any()


def test_a_body_inside_a_blocked_cell_walks_out_but_never_on_into_the_wall():
    collider = MapCollider(_wall(z=0.0), FLOOR)  # the camera stands on the wall's line
    assert collider.is_blocked(0.0, 0.0)
    constrained, collided = collider.constrain(_camera(), _forward(3))
    pose = _camera()
    for step in constrained:
        pose = pose @ step
    assert float(pose[2, 3]) == pytest.approx(-0.75)
    assert not collided.any()
    # One body radius before a wall (inside its grown cells): a move towards it stops at once.
    collider = MapCollider(_wall(z=-1.0), FLOOR)
    assert collider.is_blocked(0.0, -0.9)
    x, z, hit = collider.move(0.0, -0.9, 0.0, -1.0)
    assert hit and x == 0.0 and -0.9 - 0.05 <= z <= -0.9
    x, z, hit = collider.move(0.0, -0.9, 0.0, 0.5)  # away from it: free
    assert not hit and z == pytest.approx(-0.4)


def test_a_body_of_radius_zero_is_still_blocked_by_the_points_cells():
    config = MapCollisionConfig(agent_radius=0.0)
    collider = MapCollider(_wall(z=-1.0), FLOOR, config)
    assert collider.blocked.sum() > 0
    _, z, hit = collider.move(0.0, 0.0, 0.0, -2.0)
    assert hit and -1.0 < z <= -1.0 + 2 * 0.05  # the wall's cell, up to rounding


def test_bad_input_raises():
    with pytest.raises(ValueError, match="points must be"):
        MapCollider(np.zeros((4, 2)), FLOOR)
    with pytest.raises(ValueError, match="finite"):
        MapCollider(np.full((2, 3), np.nan), FLOOR)
    with pytest.raises(ValueError, match="floor_height must be finite"):
        MapCollider(np.zeros((2, 3)), float("nan"))
    with pytest.raises(ValueError, match="agent_radius must be in"):
        MapCollisionConfig(agent_radius=-1.0)
    with pytest.raises(ValueError, match="sensor_height must be in"):
        MapCollisionConfig(sensor_height=2.0)
    with pytest.raises(ValueError, match="map collisions need a memory of points"):
        MapCollider.from_memory(object(), 0, FLOOR)
    model = make_tiny(memory_token_dim=0, memory_render=True)
    with pytest.raises(ValueError, match="collisions need the walls of a map of points"):
        LearnedSimulator(model, None, collisions=MapCollisionConfig())


# ----------------------------------------------------------------------- against the truth
@pytest.fixture(scope="module")
def house():
    sim = Simulator(SimulatorConfig(width=32, height=32))
    scene = "house-train-0000"
    sim.load_scene(scene)
    return OracleRollout(sim), scene


def test_walls_of_a_walk_predict_the_ground_truths_collisions(house):
    """Random moves after an earlier walk: the map's walls stop the body where the truth's do."""
    oracle, scene = house
    rng = np.random.default_rng(0)
    walk = oracle.tour(scene, 300, rng)
    memory = build_memory("rendered", voxel_size=0.03)
    memory.reset(1)
    insert_frames(memory, walk.rgb, walk.depth, walk.intrinsics, walk.cam_to_world)
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=10.0)
    agree = total = blocked = 0
    error_map = error_free = 0.0
    for _ in range(12):
        start = oracle.start(
            scene, oracle.sim.sample_navigable_point(rng), float(rng.uniform(-math.pi, math.pi))
        )
        actions = torch.from_numpy(rng.choice([1, 2, 3], size=(1, 12), p=[0.6, 0.2, 0.2]))
        truth = oracle.rollout(start, actions)
        reference = start.cam_to_world[0, -1].double()
        collider = MapCollider.from_memory(
            memory, 0, float(reference[1, 3]) - DEFAULT_SENSOR_HEIGHT_M
        )
        steps = step_poses(actions, model).double()[0]
        constrained, collided = collider.constrain(reference, steps)
        ends = []
        for path in (constrained, steps):
            pose = reference.clone()
            for step in path:
                pose = pose @ step
            ends.append(pose[[0, 2], 3])
        goal = truth.cam_to_world[0, -1, [0, 2], 3].double()
        error_map += float((ends[0] - goal).norm())
        error_free += float((ends[1] - goal).norm())
        agree += int((collided == truth.collided[0]).sum())
        blocked += int(truth.collided[0].sum())
        total += collided.numel()
    assert blocked >= 10  # the truth does collide: the check can fail
    assert agree / total >= 0.9
    assert error_map <= 0.25 * error_free  # the control: free motion ends far from the truth


def test_a_rollout_with_collisions_stops_at_observed_walls_only(house):
    oracle, scene = house
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=10.0)
    start = oracle.start(scene, oracle.sim.sample_navigable_point(np.random.default_rng(1)), 0.0)
    camera = start.cam_to_world[0, -1].double()
    # A frame of a flat wall 1 m in front of the start's camera, as observed or as imagined.
    depth = torch.ones(1, 1, 1, 32, 32)
    rgb = torch.full((1, 1, 3, 32, 32), 0.5)
    k = start.intrinsics[:, None]
    actions = torch.ones(1, 8, dtype=torch.int64)  # 2 m forward
    ends = {}
    for source in ("observed", "generated", None):
        memory = build_memory("rendered", voxel_size=0.03)
        memory.reset(1)
        if source is not None:
            memory.update(rgb, depth, k, start.cam_to_world[:, -1:], source=source)
        rollout = LearnedSimulator(
            model,
            memory,
            sampler=SamplerConfig(num_inference_steps=1),
            insert_start_frames=False,  # only the wall is in the map
            collisions=MapCollisionConfig(),
        )
        result = rollout.rollout(
            replace(start, memory=memory), actions, generator=torch.Generator().manual_seed(0)
        )
        assert result.collided.shape == (1, 8)
        assert result.collided[0].any() == (source == "observed")
        ends[source] = float((result.cam_to_world[0, -1].double() - camera)[[0, 2], 3].norm())
    assert 0.75 - 1e-4 <= ends["observed"] <= 1.0 - 0.1  # stopped before the wall
    assert ends["generated"] == pytest.approx(2.0, abs=1e-4)  # imagined walls never block
    assert ends[None] == pytest.approx(2.0, abs=1e-4)
