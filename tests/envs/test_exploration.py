"""Exploration policies, driven in the embedded simulator at 32x32."""

import math

import numpy as np
import pytest

from envs.embedded.simulator import Simulator
from envs.exploration import (
    POLICY_NAMES,
    ExplorationConfig,
    LookAroundPolicy,
    OutAndBackPolicy,
    PolicyMix,
    WaypointPolicy,
    make_policy,
    sample_goal,
)
from envs.simulator import SimulatorConfig
from worldsim.geometry import Action

SCENE = "house-train-0000"


@pytest.fixture(scope="module")
def sim():
    simulator = Simulator(SimulatorConfig(width=32, height=32))
    simulator.load_scene(SCENE)
    return simulator


def start(sim, seed):
    rng = np.random.default_rng(seed)
    sim.reset_agent(sim.sample_navigable_point(rng), float(rng.uniform(-math.pi, math.pi)))
    return rng


def drive(sim, policy, rng, limit):
    """Step the simulator with the policy's actions; the list ends with 0 if it stopped."""
    actions = []
    for action in policy.actions(sim, rng):
        actions.append(int(action))
        if action == Action.STOP or len(actions) == limit:
            break
        sim.step(action)
    return actions


def test_policies_are_deterministic_under_a_seed(sim):
    for name in POLICY_NAMES:
        runs = []
        for _ in range(2):
            rng = start(sim, 3)
            runs.append((drive(sim, make_policy(name), rng, 150), sim.position.tolist()))
        assert runs[0] == runs[1], name


def test_sample_goal_prefers_the_drawn_distance(sim):
    config = ExplorationConfig(min_goal_distance_m=2.0, max_goal_distance_m=4.0)
    rng = start(sim, 0)
    distances = []
    for _ in range(20):
        goal = sample_goal(sim, rng, sim.position, config)
        distances.append(sim.geodesic_distance(sim.position, goal))
    # Within one forward step of a target in [2, 4] when a candidate that close was found.
    inside = [2.0 - 0.25 <= d <= 4.0 + 0.25 for d in distances]
    assert sum(inside) >= 18, distances


def test_waypoint_policy_walks_and_never_stops(sim):
    rng = start(sim, 1)
    home = sim.position
    actions = drive(sim, WaypointPolicy(), rng, 300)
    assert len(actions) == 300 and Action.STOP not in actions
    assert actions.count(Action.MOVE_FORWARD) > 100
    assert np.linalg.norm(sim.position - home) > 0.5


def test_out_and_back_comes_home_facing_the_start_heading(sim):
    for seed in range(3):
        rng = start(sim, 10 + seed)
        home, home_yaw = sim.position, sim.yaw
        actions = drive(sim, OutAndBackPolicy(), rng, 2000)
        assert actions[-1] == Action.STOP
        assert actions.count(Action.MOVE_FORWARD) > 8  # it went somewhere (goals >= 2 m away)
        # The oracle stops within its 0.2 m goal radius; turning keeps the position.
        assert np.linalg.norm((sim.position - home)[[0, 2]]) <= 0.2 + 1e-9
        assert abs(math.remainder(sim.yaw - home_yaw, 2 * math.pi)) <= math.radians(5) + 1e-9


def test_out_and_back_returns_by_another_path(sim):
    config = ExplorationConfig(detour_separation_m=1.0)
    rng = start(sim, 21)
    home = sim.position
    positions = []
    policy = OutAndBackPolicy(config)
    for action in policy.actions(sim, rng):
        if action == Action.STOP:
            break
        sim.step(action)
        positions.append(sim.position)
    positions = np.array(positions)[:, [0, 2]]
    far = int(np.argmax(np.linalg.norm(positions - home[[0, 2]], axis=1)))
    outbound, inbound = positions[: far + 1], positions[far:]
    # Some point of the way back lies at least ~the separation away from the way out.
    gaps = np.linalg.norm(inbound[:, None] - outbound[None], axis=-1).min(axis=1)
    assert gaps.max() >= 0.5, gaps.max()


def test_look_around_turns_a_full_circle_first(sim):
    rng = start(sim, 5)
    yaw = sim.yaw
    actions = drive(sim, LookAroundPolicy(), rng, 36)
    assert len(set(actions)) == 1 and actions[0] in (Action.TURN_LEFT, Action.TURN_RIGHT)
    sim.step(actions[-1])  # drive() does not take the last action it returns
    # 36 turns of 10 degrees: back to the start heading up to float rounding.
    assert abs(math.remainder(sim.yaw - yaw, 2 * math.pi)) < 1e-9


def test_policy_mix_draws_with_its_weights():
    mix = PolicyMix({"waypoint": 1.0, "out_and_back": 3.0, "look_around": 0.0})
    assert mix.probabilities == {"waypoint": 0.25, "out_and_back": 0.75}
    rng = np.random.default_rng(0)
    draws = [mix.choose(rng) for _ in range(4000)]
    assert "look_around" not in draws
    # Binomial standard deviation sqrt(0.25 * 0.75 / 4000) = 0.007: allow 4 of them.
    assert abs(draws.count("waypoint") / 4000 - 0.25) < 0.028


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"teleport": 1.0}, "unknown policies"),
        ({"waypoint": -1.0}, "finite and >= 0"),
        ({"waypoint": 0.0}, "needs a weight > 0"),
    ],
)
def test_policy_mix_is_validated(weights, message):
    with pytest.raises(ValueError, match=message):
        PolicyMix(weights)


def test_exploration_config_and_names_are_validated():
    with pytest.raises(ValueError, match="min_goal_distance_m"):
        ExplorationConfig(min_goal_distance_m=5.0, max_goal_distance_m=1.0)
    with pytest.raises(ValueError, match="revisit_probability"):
        ExplorationConfig(revisit_probability=1.5)
    with pytest.raises(ValueError, match="unknown exploration policy 'spin'"):
        make_policy("spin")
