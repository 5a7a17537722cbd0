"""Waypoint actions (dx, dz, dyaw) on both envs: the same poses as the equivalent discrete ids."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the environments)
from envs.indoor_nav import WAYPOINT_BOUND, check_waypoint
from worldsim.geometry import Action, action_to_waypoint
from worldsim.simulator.checkpoints import TINY_UNTRAINED, load_learned_simulator

ACTIONS = [1, 2, 1, 1, 3, 3, 1, 2, 1]


def _pair(name, **settings):
    return (
        gym.make(name, action_type="waypoint", **settings),
        gym.make(name, **settings),
    )


@pytest.fixture(scope="module")
def tiny():
    """One untrained tiny model for both envs of a pair (two loads would differ in weights)."""
    simulator = load_learned_simulator(TINY_UNTRAINED)
    return dict(checkpoint=simulator.model, memory=simulator.memory, num_sampling_steps=1)


@pytest.mark.parametrize("name", ["IndoorNav-v0", "PersistentWorld-v0"])
def test_a_waypoint_reaches_the_pose_of_the_equivalent_discrete_action(name, tiny):
    settings = dict(width=32, height=32) if name == "IndoorNav-v0" else tiny
    waypoints, ids = _pair(name, **settings)
    assert waypoints.action_space.shape == (3,)
    waypoints.reset(seed=4)
    ids.reset(seed=4)
    for action in ACTIONS:
        by_waypoint = waypoints.step(action_to_waypoint(torch.tensor(action)).numpy())
        by_id = ids.step(action)
        # A float32 waypoint turns by the float32 step angle: 1e-8 rad from the id's float64 one.
        np.testing.assert_allclose(by_waypoint[0]["pose"], by_id[0]["pose"], atol=1e-6)
        np.testing.assert_allclose(by_waypoint[4]["position"], by_id[4]["position"], atol=1e-6)
        assert by_waypoint[1] == pytest.approx(by_id[1], abs=1e-6)  # the same reward
        difference = np.abs(by_waypoint[0]["rgb"].astype(int) - by_id[0]["rgb"])
        assert difference.mean() < 0.5  # the same view, up to a pixel at an edge
    stopped = waypoints.step(np.zeros(3, dtype=np.float32))
    assert stopped[2] and ids.step(Action.STOP)[2]  # the zero waypoint is stop


def test_a_waypoint_moves_sideways_and_turns_in_one_step():
    env = gym.make("IndoorNav-v0", action_type="waypoint", width=32, height=32)
    env.reset(seed=1, options={"scene": "house-train-0000"})
    sim = env.unwrapped.sim
    start, yaw = sim.position.copy(), sim.yaw
    _, _, _, _, info = env.step(np.array([0.1, 0.0, 0.5], dtype=np.float32))
    right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])  # the agent's right on the floor
    if not info["collided"]:
        np.testing.assert_allclose(info["position"] - start, 0.1 * right, atol=1e-9)
    assert info["yaw"] == pytest.approx(np.remainder(yaw + 0.5 + np.pi, 2 * np.pi) - np.pi)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ([0.0, 0.2], "3 finite numbers"),
        ([0.0, np.nan, 0.0], "3 finite numbers"),
        ([0.0, 1.5, 0.0], r"exceeds the bound"),
        ([0.0, 0.0, 1.2], r"exceeds the bound"),
    ],
)
def test_bad_waypoints_raise_naming_the_fix(action, message):
    with pytest.raises(ValueError, match=message):
        check_waypoint(action)
    assert check_waypoint(list(WAYPOINT_BOUND)).shape == (3,)


def test_unknown_action_type_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"action_type must be one of \('discrete', 'waypoint'\)"):
        gym.make("IndoorNav-v0", action_type="polar")
    with pytest.raises(ValueError, match=r"action_type must be one of"):
        gym.make("PersistentWorld-v0", checkpoint=TINY_UNTRAINED, action_type="polar")


def test_check_env_is_silent_with_waypoints(tiny):
    import warnings

    for env in (
        gym.make("IndoorNav-v0", action_type="waypoint", width=32, height=32),
        gym.make("PersistentWorld-v0", action_type="waypoint", **tiny),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env.unwrapped, skip_render_check=True)


def test_the_vector_env_takes_one_waypoint_per_row(tiny):
    vector = gym.make_vec("PersistentWorld-v0", num_envs=2, action_type="waypoint", **tiny)
    assert vector.action_space.shape == (2, 3)
    vector.reset(seed=0)
    actions = np.zeros((2, 3), dtype=np.float32)
    actions[1, 1] = 0.25  # row 1 walks, row 0 stops
    _, _, terminated, _, _ = vector.step(actions)
    assert terminated.tolist() == [True, False]
    with pytest.raises(ValueError, match=r"actions must be \(2, 3\) waypoints"):
        vector.step(np.zeros(2, dtype=np.int64))
