"""CEM planning math against hand-computed cases, and CEM MPC against the ground-truth oracle."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from envs.embedded.scenes import scene_ids
from envs.embedded.simulator import Simulator
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import earlier_walks, episode_start, sample_image_goal_episode
from planners.cem import (
    CEMConfig,
    initial_categorical,
    plan_cem,
    probe_parents,
    refit_categorical,
    refit_gaussian,
    sample_categorical,
    sample_gaussian,
    score_probes,
    select_elites,
    shift_plan,
    turn_and_walk,
)
from planners.costs import GoalCost, GoalCostConfig
from planners.metrics import success
from planners.mpc import MPCConfig, run_mpc
from worldsim.geometry import Action
from worldsim.memory import build_memory
from worldsim.models.world_model import WorldModel
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.sampler import SamplerConfig

SCENE = "house-train-0000"


def test_categorical_samples_follow_the_probabilities():
    probabilities = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]])
    samples = sample_categorical(probabilities, 20_000, torch.Generator().manual_seed(0))
    assert samples.shape == (20_000, 2) and samples.dtype == torch.int64
    frequencies = torch.nn.functional.one_hot(samples, 4).float().mean(dim=0)
    # binomial standard error at n = 20000 is <= 0.0036; 0.015 is four of them
    assert torch.allclose(frequencies, probabilities, atol=0.015)
    assert (samples[:, 0] != 3).all()  # probability 0 is never drawn
    again = sample_categorical(probabilities, 20_000, torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_initial_categorical_is_uniform_over_allowed():
    probabilities = initial_categorical(3, (1, 2, 3))
    assert torch.equal(probabilities, torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3]] * 3))


def test_turn_and_walk_by_hand():
    probes = turn_and_walk(3, (0, 1, 2, 3)).tolist()
    right = [[3, 3, 3], [3, 3, 0], [3, 3, 1], [3, 0, 0], [3, 1, 0], [3, 1, 1]]
    ahead = [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    left = [[2, 0, 0], [2, 1, 0], [2, 1, 1], [2, 2, 0], [2, 2, 1], [2, 2, 2]]
    assert probes == right + ahead + left  # every turn count that fits; no all-wait sequence
    one_turn = [[3, 0, 0], [3, 1, 0], [3, 1, 1], *ahead, [2, 0, 0], [2, 1, 0], [2, 1, 1]]
    assert turn_and_walk(3, (0, 1, 2, 3), max_turns=1).tolist() == one_turn
    assert turn_and_walk(3, (1, 2), max_turns=1).tolist() == ahead + one_turn[6:]  # no right
    assert turn_and_walk(4, (2, 3)).tolist() == [
        [3, 3, 3, 3],
        [3, 3, 3, 0],
        [3, 3, 0, 0],
        [3, 0, 0, 0],
        [2, 0, 0, 0],
        [2, 2, 0, 0],
        [2, 2, 2, 0],
        [2, 2, 2, 2],
    ]
    # (K + 1)^2 - 1 + (2K + 1)(L - K) probes: L = 12, K = 12 -> 168; K = 6 -> 48 + 78
    assert turn_and_walk(12, (0, 1, 2, 3)).shape == (168, 12)
    assert turn_and_walk(12, (0, 1, 2, 3), max_turns=6).shape == (126, 12)
    assert turn_and_walk(12, (0, 1, 2, 3), max_turns=20).shape == (168, 12)  # capped at L
    with pytest.raises(ValueError, match="max_turns must be >= 0"):
        turn_and_walk(3, (1, 2, 3), max_turns=-1)


def test_select_elites_by_hand():
    costs = torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])
    assert select_elites(costs, 3).tolist() == [1, 3, 2]  # ties keep the earlier sample first
    with pytest.raises(ValueError, match=r"samples \[2\] are NaN"):
        select_elites(torch.tensor([1.0, 2.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="N must be at least the number of elites"):
        select_elites(costs, 6)


def test_refit_categorical_by_hand():
    elites = torch.tensor([[1, 2], [1, 3]])
    previous = torch.full((2, 4), 0.25)
    refit = refit_categorical(elites, previous, smoothing=0.5)
    expected = torch.tensor([[0.125, 0.625, 0.125, 0.125], [0.125, 0.125, 0.375, 0.375]])
    assert torch.allclose(refit, expected)
    assert torch.allclose(refit.sum(dim=1), torch.ones(2))


def test_refit_gaussian_by_hand():
    elites = torch.tensor([[[0.0, 1.0, 2.0]], [[2.0, 1.0, 4.0]]])  # E = 2, L = 1
    mean, std = torch.zeros(1, 3), torch.ones(1, 3)
    new_mean, new_std = refit_gaussian(elites, mean, std, smoothing=0.25, min_std=0.1)
    assert torch.allclose(new_mean, torch.tensor([[0.75, 0.75, 2.25]]))
    # population deviations (1, 0, 1), blended: 0.25 + 0.75 * (1, 0, 1), the 0.25 above the floor
    assert torch.allclose(new_std, torch.tensor([[1.0, 0.25, 1.0]]))
    _, floored = refit_gaussian(elites, mean, std, smoothing=0.0, min_std=0.1)
    assert torch.allclose(floored, torch.tensor([[1.0, 0.1, 1.0]]))


def test_gaussian_samples_stay_in_bounds():
    mean, std = torch.zeros(5, 3), torch.ones(5, 3)
    low, high = torch.tensor([-0.1, -0.2, -0.3]), torch.tensor([0.1, 0.2, 0.3])
    samples = sample_gaussian(mean, std, 1000, torch.Generator().manual_seed(0), low, high)
    assert samples.shape == (1000, 5, 3)
    assert (samples >= low).all() and (samples <= high).all()
    assert (samples == high).any()  # one sigma of 1 against a bound of 0.3: many are clipped


def test_config_validation():
    assert CEMConfig().elites == 18  # 30 % of 60
    assert CEMConfig(num_samples=8, num_elites=2).elites == 2
    with pytest.raises(ValueError, match="N must be at least the number of elites"):
        CEMConfig(num_samples=8, num_elites=9)
    with pytest.raises(ValueError, match="elite_fraction"):
        CEMConfig(elite_fraction=0.0)
    with pytest.raises(ValueError, match="allowed_actions"):
        CEMConfig(allowed_actions=(1, 4))
    with pytest.raises(ValueError, match="probe_turns must be >= 0 or None, got -2"):
        CEMConfig(probe_turns=-2)
    with pytest.raises(ValueError, match="execute_steps"):
        MPCConfig(cem=CEMConfig(horizon=4), execute_steps=5)


# ----------------------------------------------------------------------------- with the oracle
@pytest.fixture(scope="module")
def oracle():
    sim = Simulator(SimulatorConfig(width=32, height=32, turn_step_deg=30.0))
    sim.load_scene(SCENE)
    return OracleRollout(sim)


@pytest.fixture(scope="module")
def cost():
    return GoalCost()


def _straight_ahead_case(oracle, seed, steps=4):
    """A start and the view after ``steps`` free forward moves, showing more than a wall."""
    rng = np.random.default_rng(seed)
    while True:
        position = oracle.sim.sample_navigable_point(rng)
        start = oracle.start(SCENE, position, float(rng.uniform(-math.pi, math.pi)))
        walk = oracle.rollout(start, torch.ones(1, steps, dtype=torch.int64))
        if not walk.collided.any() and walk.depth[0, -1].median() >= 1.0:
            return start, walk


def test_plan_improves_the_cost_and_is_consistent(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 0)
    goal = walk.rgb[0, -1]
    config = CEMConfig(num_samples=16, num_iterations=2, horizon=6)
    plan = plan_cem(oracle, start, goal, cost, config, torch.Generator().manual_seed(0))
    again = plan_cem(oracle, start, goal, cost, config, torch.Generator().manual_seed(0))
    assert torch.equal(plan.actions, again.actions)  # seeded
    assert plan.actions.shape == (6,)
    assert plan.best_costs.shape == (2,) and plan.best_costs[1] <= plan.best_costs[0]
    start_cost = float(cost.frames(start.rgb, goal)[0])
    assert plan.cost < start_cost
    replay = oracle.rollout(start, plan.actions[None])
    assert float(cost(replay, goal)[0]) == pytest.approx(plan.cost, abs=1e-6)  # same frames
    assert torch.equal(replay.cam_to_world[0, -1], plan.final_pose)


def test_continuous_plan(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 1)
    config = CEMConfig(kind="continuous", num_samples=12, num_iterations=2, horizon=4)
    plan = plan_cem(oracle, start, walk.rgb[0, -1], cost, config, torch.Generator().manual_seed(0))
    assert plan.actions.shape == (4, 3)
    low, high = torch.tensor(config.waypoint_low), torch.tensor(config.waypoint_high)
    assert (plan.actions >= low).all() and (plan.actions <= high).all()
    assert set(plan.distribution) == {"mean", "std"}


def test_plan_bad_input(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 2)
    config = CEMConfig(num_samples=4, num_iterations=1, horizon=3)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        plan_cem(oracle, start, walk.rgb[0, -1, :, :16, :16], cost, config, generator)
    with pytest.raises(ValueError, match="one state"):
        plan_cem(oracle, start.repeat(2), walk.rgb[0, -1], cost, config, generator)
    limited = OracleRollout(oracle.sim)
    limited.max_horizon = 2
    with pytest.raises(ValueError, match="beyond what this model supports"):
        plan_cem(limited, start, walk.rgb[0, -1], cost, config, generator)


def test_mpc_walks_to_a_goal_ahead(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 3, steps=6)
    config = MPCConfig(
        cem=CEMConfig(num_samples=24, num_iterations=2, horizon=6),
        execute_steps=3,
        max_steps=15,
        record_imagined=True,
    )
    episode = run_mpc(
        oracle, oracle, start, walk.rgb[0, -1], cost, config, torch.Generator().manual_seed(0)
    )
    steps = len(episode.actions)
    assert episode.poses.shape == (steps + 1, 4, 4)
    assert episode.frames.shape == (steps + 1, 3, 32, 32)
    # the oracle imagines exactly what then happens
    assert torch.equal(episode.imagined, episode.frames)
    goal_position = walk.agent_state[0, -1, :3].numpy()
    assert success(episode.agent_states[-1, :3].numpy(), goal_position, radius_m=0.5)
    assert episode.costs[-1] < episode.costs[0]


@pytest.mark.slow
def test_cem_with_the_oracle_reaches_goals_a_few_metres_away(cost):
    # the simulator's default 10-degree turns and the planner's defaults (horizon 18, 3 steps
    # executed per decision, at most 100 actions)
    oracle = OracleRollout(config=SimulatorConfig(width=64, height=64))
    config = MPCConfig()
    rng = np.random.default_rng(0)
    reached = []
    for index, scene in enumerate(scene_ids("train", 5) * 4):
        episode = sample_image_goal_episode(oracle, scene, rng)
        start, goal = episode_start(oracle, episode)
        generator = torch.Generator().manual_seed(index)
        run = run_mpc(oracle, oracle, start, goal, cost, config, generator)
        final = run.agent_states[-1, :3].numpy()
        reached.append(bool(success(final, episode.goal_position, radius_m=0.5)))
    assert np.mean(reached) >= 0.9, reached


def test_shift_plan_by_hand():
    config = CEMConfig(horizon=3, allowed_actions=(1, 2, 3))
    probabilities = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    incumbent, initial = shift_plan(
        torch.tensor([1, 2, 3]), {"probabilities": probabilities}, 2, config, keep=1.0
    )
    assert incumbent.tolist() == [3, 0, 0]  # the rest of the plan, then waits
    third = 1 / 3
    shifted = torch.tensor(
        [[0.0, 0.5, 0.5, 0.0], [0.0, third, third, third], [0, third, third, third]]
    )
    assert torch.allclose(initial["probabilities"], shifted)
    _, blended = shift_plan(torch.tensor([1, 2, 3]), {"probabilities": probabilities}, 2, config)
    uniform = torch.tensor([0.0, third, third, third])
    assert torch.allclose(blended["probabilities"], 0.5 * shifted + 0.5 * uniform)
    continuous = CEMConfig(kind="continuous", horizon=3, initial_mean=(0.0, 0.2, 0.0))
    distribution = {"mean": torch.ones(3, 3), "std": torch.ones(3, 3)}
    waypoints, start = shift_plan(torch.ones(3, 3), distribution, 1, continuous, keep=1.0)
    assert waypoints.tolist() == [[1.0] * 3, [1.0] * 3, [0.0] * 3]
    assert start["mean"][2].tolist() == pytest.approx([0.0, 0.2, 0.0])


def test_incumbent_bounds_the_plan_cost(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 5)
    goal = walk.rgb[0, -1]
    incumbent = torch.tensor([1, 1, 1, 1])  # exactly the walk to the goal view: cost ~0
    config = CEMConfig(num_samples=4, num_iterations=1, horizon=4)
    plan = plan_cem(
        oracle, start, goal, cost, config, torch.Generator().manual_seed(0), incumbent=incumbent
    )
    assert plan.cost < 1e-6  # LPIPS of the same rendered frame: float noise only
    assert torch.equal(plan.actions, incumbent)


def test_probe_parents_share_rollouts_between_prefixes():
    probes = turn_and_walk(3, (0, 1, 2, 3))
    parents, parent_of, step_of = probe_parents(probes)
    # one rollout per turn count: turn k then walk the rest
    assert sorted(probes[parents].tolist()) == sorted(
        [[3, 3, 3], [3, 3, 1], [3, 1, 1], [1, 1, 1], [2, 1, 1], [2, 2, 1], [2, 2, 2]]
    )
    for probe, parent, step in zip(probes, parent_of, step_of, strict=True):
        moves = int((probe != 0).sum())
        assert step == moves - 1
        assert torch.equal(probes[parents[parent], :moves], probe[:moves])
    with pytest.raises(ValueError, match="moves followed only by waits"):
        probe_parents(torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match="moves followed only by waits"):
        probe_parents(torch.tensor([[0, 0, 0]]))


def test_prefix_scored_probes_equal_rolling_out_every_probe(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 2)
    goal = walk.rgb[0, -1]
    model = oracle
    probes = turn_and_walk(5, (0, 1, 2, 3), max_turns=3)
    costs, poses = score_probes(model, start, probes, goal, cost, torch.Generator())
    full = model.rollout(start.repeat(len(probes)), probes, num_frames=1)
    assert len(probe_parents(probes)[0]) == 7 < len(probes) == 29
    torch.testing.assert_close(costs, cost(full, goal), atol=1e-5, rtol=0)
    torch.testing.assert_close(poses, full.cam_to_world[:, -1])
    # a cost over the last two frames scores each probe's own rollout, waits included
    two = GoalCost(GoalCostConfig(last_frames=2), lpips=cost.lpips)
    costs, _ = score_probes(model, start, probes, goal, two, torch.Generator())
    every = model.rollout(start.repeat(len(probes)), probes, num_frames=2)
    torch.testing.assert_close(costs, two(every, goal), atol=1e-5, rtol=0)


def _render_planner():
    """A learned planner of the tiny render-reading model with a rendered memory (one row)."""
    memory = build_memory("rendered", voxel_size=0.05)
    memory.reset(1)
    model = WorldModel.from_config_name(
        "tiny", memory_token_dim=0, memory_render=True, turn_step_deg=30.0
    ).eval()
    return LearnedSimulator(model, memory, sampler=SamplerConfig(num_inference_steps=1))


def test_mpc_keeps_one_episode_map_of_what_it_executed(oracle, cost):
    """The learned planner's map holds every executed view and nothing it only imagined."""
    planner = _render_planner()
    start, walk = _straight_ahead_case(oracle, 3, steps=4)
    config = MPCConfig(
        cem=CEMConfig(num_samples=4, num_iterations=1, horizon=4, probe_turns=1),
        execute_steps=2,
        max_steps=4,
        # never believe to have arrived: execute all four steps
        cost="lpips",
        stop_localised=False,
        stop_lpips=None,
        explore_above=0.0,
    )
    episode = run_mpc(
        planner, oracle, start, walk.rgb[0, -1], cost, config, torch.Generator().manual_seed(0)
    )
    assert len(episode.actions) == 4
    points = episode.memory.points()
    assert points.observed.all()  # imagined frames never entered the episode's map
    # It is the map of the start and the executed views, frame by frame.
    truth = oracle.rollout(start, episode.actions[None])
    expected = build_memory("rendered", voxel_size=0.05)
    expected.reset(1)
    expected.update(start.rgb, start.depth, start.intrinsics[:, None], start.cam_to_world)
    expected.update(
        truth.rgb, truth.depth, start.intrinsics[:, None].expand(1, 4, 3, 3), truth.cam_to_world
    )
    assert torch.equal(points.xyz, expected.points().xyz)


def test_an_earlier_walk_is_the_start_of_the_episode_map_and_is_read(oracle, cost):
    """A prior map (an earlier walk) starts the episode map, stays unchanged, and is what the
    learned planner imagines from: at a pose of the walk its frame shows the walk's view."""
    planner = _render_planner()
    walk = oracle.tour(SCENE, 12, np.random.default_rng(3))
    assert walk.rgb.shape == (1, 12, 3, 32, 32) and walk.depth.shape == (1, 12, 1, 32, 32)
    again = oracle.tour(SCENE, 12, np.random.default_rng(3))
    assert torch.equal(walk.cam_to_world, again.cam_to_world)  # the rng decides the walk
    steps = (walk.cam_to_world[0, 1:, :3, 3] - walk.cam_to_world[0, :-1, :3, 3]).norm(dim=-1)
    assert steps.max() <= oracle.sim.config.forward_step_m + 1e-5  # one action per frame
    with pytest.raises(ValueError, match="a tour needs steps >= 1, got 0"):
        oracle.tour(SCENE, 0, np.random.default_rng(3))
    prior = planner.map_of(walk)
    before = prior.points().xyz.clone()

    start, goal_walk = _straight_ahead_case(oracle, 3, steps=4)
    config = MPCConfig(
        cem=CEMConfig(num_samples=4, num_iterations=1, horizon=4, probe_turns=1),
        execute_steps=2,
        max_steps=2,
        cost="lpips",
        stop_localised=False,
        stop_lpips=None,
        explore_above=0.0,
    )
    generator = torch.Generator().manual_seed(0)
    goal = goal_walk.rgb[0, -1]
    episode = run_mpc(planner, oracle, start, goal, cost, config, generator, False, prior)
    assert torch.equal(prior.points().xyz, before)  # the prior is copied, never written
    expected = build_memory("rendered", voxel_size=0.05)
    expected.reset(1)
    expected.update(
        walk.rgb, walk.depth, walk.intrinsics[:, None].expand(1, 12, 3, 3), walk.cam_to_world
    )
    expected.update(start.rgb, start.depth, start.intrinsics[:, None], start.cam_to_world)
    truth = oracle.rollout(start, episode.actions[None])
    expected.update(
        truth.rgb, truth.depth, start.intrinsics[:, None].expand(1, 2, 3, 3), truth.cam_to_world
    )
    assert torch.equal(episode.memory.points().xyz, expected.points().xyz)

    # Read, not only kept: standing at the walk's last pose, the imagined frame (composited
    # with the render) is the walk's view where the map covers it; without the map it is not.
    here = oracle.start(SCENE, walk.agent_state[0, :3].numpy(), float(walk.agent_state[0, 3]))
    turn = torch.full((1, 1), int(Action.TURN_LEFT))
    seen = oracle.rollout(here, turn)
    remembered = planner.rollout(planner.with_episode_memory(here, prior), turn)
    forgotten = planner.rollout(planner.with_episode_memory(here), turn)
    error = [(r.rgb[0, -1] - seen.rgb[0, -1]).abs().mean() for r in (remembered, forgotten)]
    assert error[0] < 0.5 * error[1]
    with pytest.raises(ValueError, match="one-row RenderedMemory"):
        planner.with_episode_memory(here, build_memory("feature_map", encoder="pooled_color"))


def test_earlier_walks_give_one_map_per_house_of_the_seeded_walk(oracle):
    planner = _render_planner()
    maps = earlier_walks(oracle, planner, [SCENE, SCENE], 6, seed=4)
    assert list(maps) == [SCENE]  # each house walked once
    expected = planner.map_of(oracle.tour(SCENE, 6, np.random.default_rng([4, 0])))
    assert torch.equal(maps[SCENE].points().xyz, expected.points().xyz)
    # No map where nothing would read it: the oracle plans, no walk, or no memory.
    assert earlier_walks(oracle, None, [SCENE], 6, 4) == {}
    assert earlier_walks(oracle, planner, [SCENE], 0, 4) == {}
    assert earlier_walks(oracle, LearnedSimulator(planner.model), [SCENE], 6, 4) == {}
    with pytest.raises(ValueError, match="--tour-steps must be >= 0"):
        earlier_walks(oracle, planner, [SCENE], -1, 4)


class _CountingRollout:
    """The oracle, counting rollouts: bad input must be refused before any."""

    def __init__(self, oracle):
        self.oracle, self.calls = oracle, 0
        self.image_size, self.max_horizon = oracle.image_size, 2

    def rollout(self, *args, **kwargs):
        self.calls += 1
        return self.oracle.rollout(*args, **kwargs)


def test_mpc_refuses_bad_input_before_any_rollout(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 3)
    counting = _CountingRollout(oracle)
    small = MPCConfig(cem=CEMConfig(num_samples=4, num_iterations=1, horizon=2), execute_steps=1)
    with pytest.raises(ValueError, match=r"the goal image is \(16, 16\).*\(32, 32\)"):
        run_mpc(
            counting, oracle, start, walk.rgb[0, -1, :, :16, :16], cost, small, torch.Generator()
        )
    long = MPCConfig(cem=CEMConfig(num_samples=4, num_iterations=1, horizon=3), execute_steps=1)
    with pytest.raises(ValueError, match="horizon 3 is beyond what this model supports"):
        run_mpc(counting, oracle, start, walk.rgb[0, -1], cost, long, torch.Generator())
    assert counting.calls == 0


def test_stop_reasons_say_what_the_planner_believed(oracle, cost):
    start, walk = _straight_ahead_case(oracle, 3)
    config = MPCConfig(
        cem=CEMConfig(num_samples=4, num_iterations=1, horizon=4, probe_turns=1),
        cost="lpips",
        stop_localised=False,
        stop_lpips=0.01,
    )
    # The goal is the start view: its LPIPS is 0, below the threshold, and no plan is better.
    episode = run_mpc(oracle, oracle, start, start.rgb[0, -1], cost, config, torch.Generator())
    assert episode.stop_reason == "lpips" and len(episode.actions) == 0
    # Neither rule: the budget ends it (no belief of arrival).
    blind = dataclasses.replace(config, stop_lpips=None, max_steps=2, execute_steps=2)
    episode = run_mpc(oracle, oracle, start, walk.rgb[0, -1], cost, blind, torch.Generator())
    assert episode.stop_reason == "max_steps" and len(episode.actions) == 2
