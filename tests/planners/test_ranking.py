"""Trajectory ranking with the ground-truth oracle."""

import math

import numpy as np
import pytest
import torch

from envs.embedded.simulator import Simulator
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from planners.costs import GoalCost
from planners.metrics import sim_score
from planners.nomad import POLICY_PRESETS, NoMaDPolicy, waypoints_to_actions
from planners.ranking import NoMaDSampler, TrajectorySampler, rank_candidates, ranked_decision

SCENE = "house-train-0001"
TINY = {**POLICY_PRESETS["tiny"], "dropout": 0.0, "len_traj_pred": 8}


@pytest.fixture(scope="module")
def oracle():
    sim = Simulator(SimulatorConfig(width=32, height=32, turn_step_deg=30.0))
    sim.load_scene(SCENE)
    return OracleRollout(sim)


@pytest.fixture(scope="module")
def cost():
    return GoalCost()


@pytest.fixture(scope="module")
def sampler(oracle):
    torch.manual_seed(0)  # initialisation of the untrained test policy only
    return NoMaDSampler(NoMaDPolicy(**TINY).eval(), oracle.sim.config.action_spec)


def _case(oracle, seed):
    """A start, a goal reached by 4 to 8 random moves from it (view and state), and the moves."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = oracle.start(
        SCENE, oracle.sim.sample_navigable_point(rng), float(rng.uniform(-math.pi, math.pi))
    )
    length = int(torch.randint(4, 9, (1,), generator=generator))
    moves = torch.randint(1, 4, (1, length), generator=generator)
    walk = oracle.rollout(start, moves)
    return start, walk.rgb[0, -1], walk.agent_state[0, -1], moves[0]


class NoisyPolicy:
    """A stand-in for a decent policy: the true moves, each replaced at random with chance p."""

    def __init__(self, moves, probability):
        self.moves, self.probability = moves, probability

    def sample(self, start, goal, num_samples, generator):
        samples = self.moves.repeat(num_samples, 1)
        replace = torch.rand(samples.shape, generator=generator) < self.probability
        random = torch.randint(0, 4, samples.shape, generator=generator)
        return torch.where(replace, random, samples)


def test_the_true_path_ranks_first(oracle, cost):
    start, goal_image, _, moves = _case(oracle, 0)
    candidates = torch.randint(1, 4, (6, len(moves)), generator=torch.Generator().manual_seed(9))
    candidates[4] = moves
    generator = torch.Generator().manual_seed(0)
    ranking = rank_candidates(oracle, start, candidates, goal_image, cost, generator)
    assert ranking.best == 4
    assert ranking.costs[4] < 1e-6  # the same rendered frame: float noise of LPIPS only
    assert torch.equal(ranking.best_actions, moves)
    assert ranking.imagined.rgb.shape == (6, 1, 3, 32, 32)


def test_nomad_sampler_converts_waypoints(oracle, sampler):
    start, goal_image, _, _ = _case(oracle, 1)
    actions = sampler.sample(start, goal_image, 5, torch.Generator().manual_seed(3))
    waypoints = sampler.waypoints(start, goal_image, 5, torch.Generator().manual_seed(3))
    assert isinstance(sampler, TrajectorySampler)
    assert actions.dtype == torch.int64 and actions.shape[0] == 5
    for row in range(5):
        expected = waypoints_to_actions(waypoints[row], sampler.spec)
        assert torch.equal(actions[row, : len(expected)], expected)
        assert (actions[row, len(expected) :] == 0).all()  # padded with stop (no-op)


@pytest.mark.parametrize("seed", range(8))
def test_ranked_sample_is_at_least_as_similar_as_the_mean(oracle, cost, seed):
    start, goal_image, goal_state, moves = _case(oracle, seed)
    generator = torch.Generator().manual_seed(seed)
    policy = NoisyPolicy(moves, probability=0.4)
    ranking = ranked_decision(policy, oracle, start, goal_image, cost, 8, generator)
    final = ranking.imagined.agent_state[:, -1]
    sims = np.array(
        [
            sim_score(
                estimate_position=final[k, :3],
                estimate_yaw=final[k, 3],
                reference_position=goal_state[:3],
                reference_yaw=goal_state[3],
            )
            for k in range(8)
        ]
    )
    assert sims[ranking.best] >= sims.mean(), (ranking.best, sims.round(1))


def test_bad_input(oracle, cost, sampler):
    start, goal_image, _, _ = _case(oracle, 2)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        ranked_decision(sampler, oracle, start, goal_image[:, :16, :16], cost, 4, generator)
    with pytest.raises(ValueError, match="num_samples"):
        ranked_decision(sampler, oracle, start, goal_image, cost, 0, generator)
    with pytest.raises(ValueError, match="one state"):
        rank_candidates(
            oracle,
            start.repeat(2),
            torch.ones(2, 3, dtype=torch.int64),
            goal_image,
            cost,
            generator,
        )
