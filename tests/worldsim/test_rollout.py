"""The rollout interface's data classes and request checks."""

from dataclasses import dataclass

import pytest
import torch

from worldsim.memory import build_memory
from worldsim.simulator.protocol import (
    RolloutResult,
    RolloutStart,
    action_kind,
    check_rollout_request,
)


def _start(batch=2, frames=3, size=8, memory=None):
    generator = torch.Generator().manual_seed(0)
    poses = torch.eye(4).repeat(batch, frames, 1, 1)
    poses[..., 0, 3] = torch.arange(batch * frames, dtype=torch.float32).reshape(batch, frames)
    return RolloutStart(
        rgb=torch.rand(batch, frames, 3, size, size, generator=generator),
        depth=torch.rand(batch, frames, 1, size, size, generator=generator) * 5,
        cam_to_world=poses,
        intrinsics=torch.eye(3).repeat(batch, 1, 1),
        scene=[f"scene-{b}" for b in range(batch)],
        agent_state=torch.arange(batch * 4, dtype=torch.float64).reshape(batch, 4),
        memory=memory,
    )


def _result(batch, steps, size=8, offset=100.0):
    poses = torch.eye(4).repeat(batch, steps, 1, 1)
    poses[..., 0, 3] = offset + torch.arange(batch * steps, dtype=torch.float32).reshape(
        batch, steps
    )
    return RolloutResult(
        rgb=torch.full((batch, steps, 3, size, size), 0.5),
        depth=torch.ones(batch, steps, 1, size, size),
        cam_to_world=poses,
        agent_state=torch.full((batch, steps, 4), 7.0, dtype=torch.float64),
    )


def _two_row_memory():
    """A memory whose row 0 holds one frame and row 1 nothing."""
    memory = build_memory("feature_map", encoder="pooled_color", voxel_size=0.5)
    memory.reset(2)
    size = 8
    memory.update(
        torch.full((2, 1, 3, size, size), 0.5),
        torch.full((2, 1, 1, size, size), 2.0),
        torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]).expand(2, 1, 3, 3),
        torch.eye(4).expand(2, 1, 4, 4),
        valid=torch.tensor([[True], [False]]),
    )
    return memory


def _rows_with_tokens(memory):
    targets = torch.eye(4).expand(memory.batch_size, 1, 4, 4)
    k = torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]).expand(memory.batch_size, 1, 3, 3)
    _, mask = memory.tokens(targets, k, (8, 8))
    return mask.any(dim=1).tolist()


def test_select_and_repeat_take_whole_rows():
    start = _start(memory=_two_row_memory())
    picked = start.select([1, 1, 0])
    assert picked.batch_size == 3
    assert torch.equal(picked.rgb[0], start.rgb[1]) and torch.equal(picked.rgb[2], start.rgb[0])
    assert picked.scene == ("scene-1", "scene-1", "scene-0")
    assert torch.equal(picked.agent_state[:, 0], torch.tensor([4.0, 4.0, 0.0], dtype=torch.float64))
    assert _rows_with_tokens(picked.memory) == [False, False, True]
    repeated = start.repeat(2)
    assert repeated.scene == ("scene-0", "scene-0", "scene-1", "scene-1")
    assert torch.equal(repeated.cam_to_world[1], start.cam_to_world[0])
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        start.select([2])


def test_start_memory_is_a_memory_of_as_many_rows():
    with pytest.raises(TypeError, match=r"worldsim\.memory\.Memory"):
        _start(memory=torch.tensor([[10.0], [20.0]]))
    with pytest.raises(ValueError, match="memory holds 2 rows but the start has 3"):
        _start(batch=3, memory=_two_row_memory())


def test_advance_keeps_the_last_frames():
    start = _start(batch=2, frames=3)
    result = _result(2, 2)
    after = start.advance(result)
    assert after.num_frames == 3
    # frames: old frame 2, new frames 0 and 1
    assert torch.equal(after.rgb[:, 0], start.rgb[:, 2])
    assert torch.equal(after.rgb[:, 1:], result.rgb)
    assert after.cam_to_world[1, :, 0, 3].tolist() == [5.0, 102.0, 103.0]
    assert after.agent_state.tolist() == [[7.0] * 4, [7.0] * 4]
    long = start.advance(_result(2, 5))
    assert long.cam_to_world[0, :, 0, 3].tolist() == [102.0, 103.0, 104.0]
    partial = RolloutResult(result.rgb[:, -1:], result.depth[:, -1:], result.cam_to_world)
    with pytest.raises(ValueError, match="num_frames=None"):
        start.advance(partial)


def test_start_validation_names_the_problem():
    good = _start()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RolloutStart(good.rgb * 255, good.depth, good.cam_to_world, good.intrinsics)
    with pytest.raises(ValueError, match="depth must have shape"):
        RolloutStart(good.rgb, good.depth[:, :2], good.cam_to_world, good.intrinsics)
    with pytest.raises(ValueError, match="NaN"):
        RolloutStart(good.rgb * float("nan"), good.depth, good.cam_to_world, good.intrinsics)
    with pytest.raises(ValueError, match="not a rigid transform"):
        RolloutStart(good.rgb, good.depth, good.cam_to_world * 2, good.intrinsics)
    with pytest.raises(ValueError, match="2 scene ids"):
        RolloutStart(good.rgb, good.depth, good.cam_to_world, good.intrinsics, scene="one")
    with pytest.raises(ValueError, match="agent_state"):
        RolloutStart(
            good.rgb, good.depth, good.cam_to_world, good.intrinsics, agent_state=torch.zeros(2, 3)
        )


def test_result_frames_must_fit_the_horizon():
    result = _result(2, 4)
    assert (result.batch_size, result.horizon, result.num_frames) == (2, 4, 4)
    with pytest.raises(ValueError, match="1 to L = 2"):
        RolloutResult(result.rgb, result.depth, result.cam_to_world[:, :2])
    with pytest.raises(ValueError, match="collided"):
        RolloutResult(result.rgb, result.depth, result.cam_to_world, collided=torch.zeros(2, 3))


def test_action_kind_from_shape_and_dtype():
    assert action_kind(torch.zeros(3, 5, dtype=torch.int64)) == "discrete"
    assert action_kind(torch.zeros(3, 5, 3)) == "waypoint"
    for bad in (torch.zeros(3, 5), torch.zeros(3, 5, 2), torch.zeros(3, dtype=torch.int64)):
        with pytest.raises(ValueError, match=r"\(B, L\) integer ids"):
            action_kind(bad)


@dataclass
class _Spec:
    image_size: tuple = (8, 8)
    max_horizon: int | None = 4


def test_request_checks_horizon_size_and_ids():
    start = _start()
    assert check_rollout_request(_Spec(), start, torch.ones(2, 4, dtype=torch.int64)) == "discrete"
    with pytest.raises(ValueError, match="beyond what this model supports"):
        check_rollout_request(_Spec(), start, torch.ones(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="model works at"):
        check_rollout_request(
            _Spec(image_size=(16, 16)), start, torch.ones(2, 2, dtype=torch.int64)
        )
    with pytest.raises(ValueError, match="unknown action id -1"):
        check_rollout_request(_Spec(), start, -torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch_size"):
        check_rollout_request(_Spec(), start, torch.ones(2, 2, dtype=torch.int64), batch_size=0)
