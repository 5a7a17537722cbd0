"""The embedded NoMaD-style policy: it ships, loads with no arguments and beats an untrained one."""

import json

import numpy as np
import pytest
import torch

from envs.embedded.scenes import scene_ids
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import episode_start, sample_image_goal_episode
from planners.nomad import DEFAULT_CHECKPOINT, POLICY_PRESETS, UNTRAINED, NoMaDPolicy, load_policy
from planners.ranking import NoMaDSampler

MAX_FILE_MB = 40  # the package's limit per shipped file


@pytest.fixture(scope="module")
def policy() -> NoMaDPolicy:
    return NoMaDPolicy.from_pretrained()


def test_the_policy_ships_as_a_small_safetensors_file_with_its_card(policy):
    names = {path.name for path in DEFAULT_CHECKPOINT.iterdir()}
    assert {"config.json", "README.md", "diffusion_pytorch_model.safetensors"} <= names
    weights = DEFAULT_CHECKPOINT / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < MAX_FILE_MB * 1e6
    saved = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert saved["_class_name"] == "NoMaDPolicy"
    small = POLICY_PRESETS["small"]
    assert tuple(policy.config.image_size) == small["image_size"]
    assert policy.config.context_size == small["context_size"]
    assert not policy.training and all(torch.isfinite(p).all() for p in policy.parameters())
    assert load_policy().config == policy.config


def _final_distances(policy, oracle, episodes, samples=4):
    """Floor distance to the goal after executing each of ``samples`` sampled trajectories."""
    sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
    distances = []
    for index, episode in enumerate(episodes):
        start, goal = episode_start(oracle, episode, policy.config.context_size + 1)
        generator = torch.Generator().manual_seed(index)
        candidates = sampler.sample(start, goal, samples, generator)
        for actions in candidates:
            final = oracle.rollout(start, actions[None]).agent_state[0, -1]
            offset = final[[0, 2]].numpy() - episode.goal_position[[0, 2]]
            distances.append(float(np.linalg.norm(offset)))
    return np.array(distances)


def test_the_policy_heads_for_image_goals_in_unseen_houses(policy):
    # Goals 1-2 m away in held-out houses; each sample is 8 waypoints executed open loop.
    oracle = OracleRollout(config=SimulatorConfig(width=64, height=64))
    rng = np.random.default_rng(0)
    scenes = scene_ids("test", 2)
    episodes = [sample_image_goal_episode(oracle, scenes[i % 2], rng, 1.0, 2.0) for i in range(8)]
    start = np.array(
        [np.linalg.norm(e.start_position[[0, 2]] - e.goal_position[[0, 2]]) for e in episodes]
    )
    trained = _final_distances(policy, oracle, episodes)
    torch.manual_seed(0)
    untrained = _final_distances(load_policy(UNTRAINED, "small"), oracle, episodes)
    assert trained.mean() < start.mean() - 0.1, (trained.mean(), start.mean())  # 1.24 vs 1.44 m
    assert trained.mean() < untrained.mean() - 0.5, (trained.mean(), untrained.mean())  # vs 2.37
