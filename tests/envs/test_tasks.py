"""Image-goal episodes whose goal pictures look like no other place of the house."""

import numpy as np
import pytest

from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import (
    DistinctGoals,
    episode_start,
    house_views,
    sample_distinct_image_goal_episodes,
    sample_image_goal_episodes,
)
from worldsim.metrics.lpips import LPIPS

SCENE = "house-test-0010"


@pytest.fixture(scope="module")
def oracle():
    return OracleRollout(config=SimulatorConfig(width=32, height=32))


@pytest.fixture(scope="module")
def lpips():
    return LPIPS().eval()


def test_distinct_goals_are_compared_with_views_elsewhere_and_rejections_counted(oracle, lpips):
    # Bound 0 accepts every goal: the plain sampler's episodes, nothing rejected.
    accept = DistinctGoals(min_lpips=0.0)
    episodes, rejected = sample_distinct_image_goal_episodes(
        oracle, [SCENE], 2, np.random.default_rng(0), lpips, accept
    )
    plain = sample_image_goal_episodes(oracle, [SCENE], 2, np.random.default_rng(0))
    assert rejected == 0
    assert [e.goal_position.tolist() for e in episodes] == [e.goal_position.tolist() for e in plain]
    # A bound no picture meets: every draw is rejected and the least alike of them is kept.
    strict = DistinctGoals(min_lpips=10.0, views=8, max_rejections=2)
    kept, rejected = sample_distinct_image_goal_episodes(
        oracle, [SCENE], 1, np.random.default_rng(0), lpips, strict
    )
    assert rejected == 2 and len(kept) == 1
    drawn = sample_image_goal_episodes(oracle, [SCENE], 2, np.random.default_rng(0))
    assert kept[0].goal_position.tolist() in [e.goal_position.tolist() for e in drawn]
    # A working bound: every kept goal is at least that far (LPIPS) from every view elsewhere.
    bound = DistinctGoals(min_lpips=0.1, views=16)
    kept, rejected = sample_distinct_image_goal_episodes(
        oracle, [SCENE], 3, np.random.default_rng(1), lpips, bound
    )
    views, positions = house_views(
        oracle, SCENE, bound.views, np.random.default_rng(list(SCENE.encode()))
    )
    for episode in kept:
        goal = episode_start(oracle, episode)[1]
        far = np.linalg.norm(positions[:, [0, 2]] - episode.goal_position[[0, 2]], axis=1) > 1.0
        others = views[far]
        assert float(lpips(others, goal[None].expand_as(others)).min()) >= 0.1
    with pytest.raises(ValueError, match="views must be >= 1"):
        DistinctGoals(views=0)
