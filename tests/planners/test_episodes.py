"""Episodes judged against the truth: belief apart from success, Wilson intervals, calibration."""

import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from planners.episodes import (
    calibrate_stop_threshold,
    judge_episode,
    plot_episode_grid,
    summarise,
    wilson_interval,
)
from planners.mpc import MPCEpisode


def _episode(stop_reason: str, final_x: float) -> MPCEpisode:
    states = torch.tensor([[0.0, 0.0, 0.0, 0.0], [final_x, 0.0, 0.0, 0.0]], dtype=torch.float64)
    return MPCEpisode(
        actions=torch.tensor([1]),
        poses=torch.eye(4).expand(2, 4, 4),
        agent_states=states,
        frames=torch.zeros(2, 3, 8, 8),
        imagined=None,
        costs=torch.zeros(2),
        plans=[],
        stop_reason=stop_reason,
        decision_seconds=torch.tensor([2.0, 4.0]),
    )


def test_a_stop_far_from_the_goal_is_a_false_stop_and_no_success():
    goal = np.array([3.0, 0.0, 0.0])
    far = judge_episode(_episode("lpips", 0.0), goal, 0.0, 3.0, 0.5)
    assert far.stopped and not far.success and far.false_stop and far.end_distance_m == 3.0
    near = judge_episode(_episode("localised", 2.7), goal, 0.0, 3.0, 0.5)
    assert near.success and not near.false_stop
    budget = judge_episode(_episode("max_steps", 0.0), goal, 0.0, 3.0, 0.5)
    assert not budget.stopped and not budget.false_stop  # the budget ended it, not a belief
    assert near.decision_s == 3.0 and near.path_m == pytest.approx(2.7)
    summary = summarise([far, near, budget])
    assert summary["success"] == pytest.approx(1 / 3) and summary["false_stops"] == 1
    assert summary["success_ci_low"] < 1 / 3 < summary["success_ci_high"]
    with pytest.raises(ValueError, match="radius_m must be > 0"):
        judge_episode(_episode("lpips", 0.0), goal, 0.0, 3.0, 0.0)


def test_wilson_interval_by_hand():
    # s = 0 of 10: centre = 1.92 / 13.84, half = 1.96 / 13.84 * sqrt(0.9604) = 1.92 / 13.84
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(3.8416 / 13.8416, abs=1e-12)
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(20 / 23.8416, abs=1e-12)
    low, high = wilson_interval(5, 10)
    half = 1.96 / 13.8416 * math.sqrt(2.5 + 0.9604)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(3, 2)


def test_stop_threshold_calibration_by_hand():
    costs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    distances = [0.1, 0.2, 0.3, 2.0, 0.4, 3.0]  # the view at 0.04 is far
    # <= 0.03: none far; <= 0.04: 1 of 4 far (25 %); <= 0.05: 1 of 5 (20 %); <= 0.06: 2 of 6
    assert calibrate_stop_threshold(costs, distances, 0.5, 0.0) == (0.03, 0.0)
    assert calibrate_stop_threshold(costs, distances, 0.5, 0.2) == (0.05, 0.2)
    assert calibrate_stop_threshold([0.1], [5.0], 0.5, 0.05) == (None, 0.0)
    # tied costs are admitted together
    assert calibrate_stop_threshold([0.1, 0.1], [0.1, 5.0], 0.5, 0.0) == (None, 0.0)


def test_every_episode_is_drawn(tmp_path):
    goal = np.array([3.0, 0.0, 0.0])
    panels = []
    for index, (reason, x) in enumerate([("lpips", 0.0), ("localised", 2.8)]):
        run = _episode(reason, x)
        panels.append(
            {
                "name": f"episode {index}",
                "outcome": judge_episode(run, goal, 0.0, 3.0, 0.5),
                "positions": run.agent_states[:, :3].numpy(),
                "start_yaw": 0.0,
                "goal_position": goal,
                "goal_yaw": math.pi / 2,
                "occupancy": np.ones((10, 10), dtype=bool),
                "extent": (-1.0, 4.0, -2.5, 2.5),
            }
        )
    path = plot_episode_grid(panels, tmp_path / "episodes.png")
    image = imageio.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # two panels side by side
    assert image.std() > 10
