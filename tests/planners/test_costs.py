"""Goal costs against a direct LPIPS reference."""

import pytest
import torch

from planners.costs import GoalCost, GoalCostConfig, check_goal_image, gaussian_blur
from worldsim.simulator.protocol import RolloutResult


@pytest.fixture(scope="module")
def cost():
    return GoalCost()


def _frames(seed, batch=3, count=4, size=32):
    return torch.rand(batch, count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_cost_is_lpips_of_the_last_frame(cost):
    frames, goal = _frames(0), _frames(1, batch=1, count=1)[0, 0]
    expected = torch.stack([cost.lpips(frames[b, -1:], goal[None])[0] for b in range(3)])
    # the batched call and the one-by-one reference differ only by float summation order
    assert torch.allclose(cost.frames(frames, goal), expected, atol=1e-6)
    assert cost.frames(frames, goal).shape == (3,)


def test_last_frames_average(cost):
    two = GoalCost(GoalCostConfig(last_frames=2), lpips=cost.lpips)
    frames, goal = _frames(2), _frames(3, batch=1, count=1)[0, 0]
    last = cost.lpips(frames[:, -1], goal[None])
    before = cost.lpips(frames[:, -2], goal[None])
    # same numbers, different batching: float summation order only
    assert torch.allclose(two.frames(frames, goal), (last + before) / 2, atol=1e-6)


def test_goal_seen_exactly_costs_zero(cost):
    frames = _frames(4)
    assert torch.equal(cost.frames(frames, frames[1, -1]), cost.frames(frames, frames[1, -1]))
    # the goal's features come from a batch of 1, the frame's from a batch of 3: float noise only
    assert cost.frames(frames, frames[1, -1])[1] < 1e-6
    assert (cost.frames(frames, frames[1, -1])[[0, 2]] > 0.05).all()


def test_result_with_too_few_frames(cost):
    two = GoalCost(GoalCostConfig(last_frames=2), lpips=cost.lpips)
    result = RolloutResult(
        _frames(5, count=1), torch.zeros(3, 1, 1, 32, 32), torch.eye(4).repeat(3, 3, 1, 1)
    )
    with pytest.raises(ValueError, match="num_frames >= 2"):
        two(result, _frames(6, batch=1, count=1)[0, 0])
    assert cost(result, _frames(6, batch=1, count=1)[0, 0]).shape == (3,)


def test_bad_goals_raise():
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(32, 32\)"):
        check_goal_image(torch.rand(3, 16, 16), (32, 32))
    with pytest.raises(ValueError, match="NaN"):
        check_goal_image(torch.full((3, 32, 32), float("nan")), (32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_goal_image(torch.rand(3, 32, 32) * 255, (32, 32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        check_goal_image(torch.rand(2, 3, 32, 32), (32, 32))
    assert check_goal_image(torch.rand(1, 3, 32, 32), (32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="last_frames"):
        GoalCostConfig(last_frames=0)
    with pytest.raises(ValueError, match="net"):
        GoalCostConfig(net="squeeze")


def test_gaussian_blur_against_a_brute_force_sum():
    images = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    sigma = 1.3
    radius = 4  # ceil(3 sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    weights = torch.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * sigma**2))
    weights = weights / weights.sum()
    expected = torch.zeros_like(images)
    for i in range(9):
        for j in range(7):
            for a in range(-radius, radius + 1):
                for b in range(-radius, radius + 1):
                    y, x = min(max(i + a, 0), 8), min(max(j + b, 0), 6)  # edges replicated
                    expected[:, :, i, j] += weights[a + radius, b + radius] * images[:, :, y, x]
    torch.testing.assert_close(gaussian_blur(images, sigma), expected, atol=1e-6, rtol=0)
    assert torch.equal(gaussian_blur(images, 0.0), images)
    constant = torch.full((1, 3, 5, 5), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 2.0), constant)


def test_blurred_cost_forgives_blur_but_not_a_wrong_view():
    generator = torch.Generator().manual_seed(1)
    goal = torch.rand(3, 32, 32, generator=generator)
    imagined = gaussian_blur(goal[None], 1.5)[0]  # the right view, blurry
    wrong = torch.rand(3, 32, 32, generator=generator)  # another view, sharp
    plain = GoalCost()
    blurred = GoalCost(GoalCostConfig(blur_px=1.5), lpips=plain.lpips)
    frames = torch.stack([imagined, wrong])[:, None]  # (2, 1, 3, H, W)
    plain_costs, blurred_costs = plain.frames(frames, goal), blurred.frames(frames, goal)
    assert blurred_costs[0] < plain_costs[0] / 2  # the blur itself costs little
    assert blurred_costs[0] < blurred_costs[1]  # a wrong view still costs more
    assert float(blurred.frames(goal[None, None], goal)[0]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="blur_px must be >= 0"):
        GoalCostConfig(blur_px=-1.0)
