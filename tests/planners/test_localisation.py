"""The goal picture found in the persistent map by render-and-compare."""

import math

import numpy as np
import pytest
import torch

from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from planners.localisation import LocalisationConfig, candidate_positions, localise_goal
from worldsim.memory import build_memory
from worldsim.simulator.chunks import insert_frames

SENSOR = 1.25  # metres above the floor, the default camera


def _map_of_a_walk(scene: str, steps: int, seed: int = 0):
    oracle = OracleRollout(config=SimulatorConfig(width=64, height=64))
    walk = oracle.tour(scene, steps, np.random.default_rng(seed))
    memory = build_memory("rendered")
    memory.reset(1)
    insert_frames(memory, walk.rgb, walk.depth, walk.intrinsics, walk.cam_to_world)
    oracle.sim.load_scene(scene)
    return oracle.sim, walk, memory, float(walk.cam_to_world[0, 0, 1, 3]) - SENSOR


def _truth(pose: np.ndarray) -> tuple[np.ndarray, float]:
    forward = pose[:3, 2]  # the camera's z axis in the world
    return pose[:3, 3] - [0.0, SENSOR, 0.0], math.atan2(-forward[0], -forward[2])


def test_bad_settings_and_a_map_without_floor_are_refused():
    with pytest.raises(ValueError, match="headings must be >= 4, got 2"):
        LocalisationConfig(headings=2)
    with pytest.raises(ValueError, match=r"min_coverage must be \(0, 1\], got 0"):
        LocalisationConfig(min_coverage=0)
    memory = build_memory("rendered")
    memory.reset(1)
    with pytest.raises(ValueError, match="holds no observed floor"):
        candidate_positions(memory, 0.0, LocalisationConfig())
    tokens = build_memory("feature_map", encoder="pooled_color")
    tokens.reset(1)
    with pytest.raises(ValueError, match="needs a memory that gives a render"):
        candidate_positions(tokens, 0.0, LocalisationConfig())


@pytest.mark.slow
def test_goal_pictures_of_a_walked_house_are_found_within_half_a_metre():
    """Pictures taken where the walk went are found; a picture of another house matches worse."""
    sim, walk, memory, floor = _map_of_a_walk("house-test-0010", 300)
    rng = np.random.default_rng(1)
    errors, scores = [], []
    for index in rng.choice(300, size=3, replace=False):
        pose = walk.cam_to_world[0, int(index)].double().numpy()
        position, yaw = _truth(pose)
        rgb, _ = sim.render(pose)
        goal = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        estimate = localise_goal(memory, goal, walk.intrinsics[0], floor)
        errors.append(float(np.hypot(*(estimate.position - position)[[0, 2]])))
        scores.append(estimate.error)
        assert abs(math.remainder(estimate.yaw - yaw, 2 * math.pi)) < math.radians(45)
    assert max(errors) < 0.5, errors
    # The control: a picture of another house matches no place of this one as well.
    other, other_walk, _, _ = _map_of_a_walk("house-test-0011", 40)
    rgb, _ = other.render(other_walk.cam_to_world[0, 20].double().numpy())
    foreign = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    estimate = localise_goal(memory, foreign, walk.intrinsics[0], floor)
    assert estimate.error > max(scores), (estimate.error, scores)
