"""The world model behind the rollout protocol: Algorithm 1a, batching, memory, poses."""

import math

import numpy as np
import pytest
import torch

from envs.embedded.simulator import Simulator
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from tests.worldsim.conftest import make_tiny, randomise_memory_gates
from worldsim.geometry import action_to_relative_pose, waypoint_to_relative_pose
from worldsim.memory import build_memory
from worldsim.memory.splatting import fill_rings
from worldsim.simulator.chunks import chain_poses, step_poses
from worldsim.simulator.chunks import rollout as reference_rollout
from worldsim.simulator.learned import LearnedSimulator, row_generators
from worldsim.simulator.protocol import RolloutModel, RolloutStart
from worldsim.simulator.sampler import SamplerConfig

SCENE = "house-train-0000"
# Batched and single-row matrix products round differently on the CPU (~1e-6 on frames).
ROUNDING = 1e-4


def _memory():
    return build_memory("feature_map", encoder="pooled_color", voxel_size=0.25)


@pytest.fixture(scope="module")
def model():
    model = make_tiny(memory_token_dim=_memory().token_dim)
    randomise_memory_gates(model)  # so that the memory changes what is generated
    return model


@pytest.fixture(scope="module")
def sim():
    simulator = Simulator(SimulatorConfig(width=32, height=32))
    simulator.load_scene(SCENE)
    return simulator


@pytest.fixture(scope="module")
def start(sim):
    """Two ground-truth start states (real frames), as a planner would get them."""
    rng = np.random.default_rng(0)
    positions = np.stack([sim.sample_navigable_point(rng) for _ in range(2)])
    yaws = rng.uniform(-math.pi, math.pi, size=2)
    return OracleRollout(sim).start(SCENE, positions, yaws)


def _actions(rows, steps, seed=0):
    return torch.randint(0, 4, (rows, steps), generator=torch.Generator().manual_seed(seed))


def test_is_a_rollout_model(model):
    learned = LearnedSimulator(model, _memory(), sampler=SamplerConfig(num_inference_steps=1))
    assert isinstance(learned, RolloutModel)
    assert learned.image_size == (32, 32)
    assert learned.max_horizon is None


def test_equals_the_library_rollout_with_a_fresh_memory(model, start):
    """For whole chunks the protocol is exactly Algorithm 1a of worldsim.simulator.chunks."""
    actions = _actions(2, 4)
    learned = LearnedSimulator(model, _memory(), sampler=SamplerConfig(num_inference_steps=1))
    result = learned.rollout(start, actions, generator=torch.Generator().manual_seed(7))

    memory = _memory()
    memory.reset(2)
    expected = reference_rollout(
        model,
        start.rgb,
        start.depth,
        start.cam_to_world,
        actions,
        sampler=SamplerConfig(num_inference_steps=1),
        intrinsics=start.intrinsics,
        memory=memory,
        generator=row_generators(2, torch.Generator().manual_seed(7)),
    )
    assert result.rgb.shape == (2, 4, 3, 32, 32) and result.depth.shape == (2, 4, 1, 32, 32)
    assert result.cam_to_world.shape == (2, 4, 4, 4)
    assert result.collided is None and result.agent_state is None
    torch.testing.assert_close(result.rgb, expected.rgb, atol=ROUNDING, rtol=0)
    torch.testing.assert_close(result.depth, expected.depth, atol=ROUNDING, rtol=0)
    # poses are integrated in float64 here, in float32 there
    torch.testing.assert_close(result.cam_to_world, expected.cam_to_world, atol=1e-5, rtol=0)


def test_poses_are_the_free_space_motion_and_match_the_oracle_without_collisions(model, start, sim):
    actions = _actions(2, 6, seed=1)
    actions[:, 0] = 2
    # one denoising step: the poses do not depend on the frames
    learned = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=1))
    result = learned.rollout(start, actions, num_frames=1)
    for row in range(2):  # slow reference: multiply the step motions one by one
        pose = start.cam_to_world[row, -1].double()
        for step in range(6):
            pose = pose @ action_to_relative_pose(actions[row, step]).double()
            torch.testing.assert_close(
                result.cam_to_world[row, step].double(), pose, atol=1e-5, rtol=0
            )
    truth = OracleRollout(sim).rollout(start, actions, num_frames=1)
    for row in range(2):  # the oracle's motion is the same up to the first collision
        blocked = truth.collided[row].nonzero()
        free = int(blocked[0]) if len(blocked) else actions.shape[1]
        assert free >= 1  # the first action is a turn, which never collides
        torch.testing.assert_close(
            result.cam_to_world[row, :free], truth.cam_to_world[row, :free], atol=1e-4, rtol=0
        )  # the oracle stores float32 poses of float64 states


def test_rows_do_not_depend_on_the_batch_size_or_on_each_other(model, start):
    actions = _actions(2, 2, seed=2)
    learned = LearnedSimulator(model, _memory(), sampler=SamplerConfig(num_inference_steps=1))
    whole = learned.rollout(start, actions, generator=torch.Generator().manual_seed(3))
    one_by_one = learned.rollout(
        start, actions, generator=torch.Generator().manual_seed(3), batch_size=1
    )
    torch.testing.assert_close(whole.rgb, one_by_one.rgb, atol=ROUNDING, rtol=0)
    torch.testing.assert_close(whole.depth, one_by_one.depth, atol=ROUNDING, rtol=0)
    again = learned.rollout(start, actions, generator=torch.Generator().manual_seed(3))
    assert torch.equal(whole.rgb, again.rgb)  # seeded: identical
    other = learned.rollout(start, actions, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(whole.rgb, other.rgb, atol=1e-2)


def test_partial_chunks_are_padded_and_num_frames_keeps_the_last(model, start):
    learned = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=1))
    actions = _actions(2, 3, seed=5)
    full = learned.rollout(start, actions, generator=torch.Generator().manual_seed(0))
    first_chunk = learned.rollout(start, actions[:, :2], generator=torch.Generator().manual_seed(0))
    assert full.rgb.shape == (2, 3, 3, 32, 32)
    # the first chunk does not see the padding of the second
    torch.testing.assert_close(full.rgb[:, :2], first_chunk.rgb, atol=ROUNDING, rtol=0)
    last = learned.rollout(start, actions, generator=torch.Generator().manual_seed(0), num_frames=1)
    assert last.rgb.shape == (2, 1, 3, 32, 32) and last.cam_to_world.shape == (2, 3, 4, 4)
    torch.testing.assert_close(last.rgb[:, 0], full.rgb[:, -1], atol=ROUNDING, rtol=0)


def test_waypoints_roll_out_like_the_equivalent_discrete_actions(model, start):
    learned = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=1))
    actions = torch.tensor([[1, 2], [3, 1]])
    turn = math.radians(model.config.turn_step_deg)
    table = torch.tensor(
        [[0, 0, 0], [0, model.config.forward_step_m, 0], [0, 0, turn], [0, 0, -turn]]
    )
    waypoints = table[actions].float()  # (2, 2, 3)
    torch.testing.assert_close(
        step_poses(waypoints, model), step_poses(actions, model), atol=1e-6, rtol=0
    )
    discrete = learned.rollout(start, actions, generator=torch.Generator().manual_seed(1))
    continuous = learned.rollout(start, waypoints, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(continuous.rgb, discrete.rgb, atol=ROUNDING, rtol=0)
    torch.testing.assert_close(continuous.cam_to_world, discrete.cam_to_world, atol=1e-6, rtol=0)


def test_chain_poses_multiplies_in_order():
    waypoints = torch.tensor([[[0.0, 1.0, math.pi / 2], [0.0, 1.0, 0.0]]])
    chained = chain_poses(waypoint_to_relative_pose(waypoints))
    # forward 1 m, turn left 90 deg, forward 1 m: 1 m ahead and 1 m to the left (camera -x)
    torch.testing.assert_close(
        chained[0, 1, :3, 3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6, rtol=0
    )


def test_start_memory_is_copied_not_modified(model, start):
    memory = _memory()
    memory.reset(2)
    k = start.intrinsics[:, None]
    memory.update(start.rgb, start.depth, k, start.cam_to_world)
    with_memory = RolloutStart(
        rgb=start.rgb,
        depth=start.depth,
        cam_to_world=start.cam_to_world,
        intrinsics=start.intrinsics,
        memory=memory,
    )
    behind = start.cam_to_world @ action_to_relative_pose(torch.tensor(2)).expand(2, 1, 4, 4)
    before = memory.tokens(behind, k, (32, 32))[1].sum()
    result = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=1)).rollout(
        with_memory, torch.full((2, 2), 2), generator=torch.Generator().manual_seed(0)
    )
    assert memory.tokens(behind, k, (32, 32))[1].sum() == before
    assert result.memory is not memory
    assert result.memory.tokens(behind, k, (32, 32))[1].sum() > before  # it saw the turn


def test_the_memory_changes_the_prediction(model, start):
    actions = _actions(2, 2, seed=6)
    with_memory = LearnedSimulator(
        model, _memory(), sampler=SamplerConfig(num_inference_steps=1)
    ).rollout(start, actions, generator=torch.Generator().manual_seed(0))
    without = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=1)).rollout(
        start, actions, generator=torch.Generator().manual_seed(0)
    )
    assert (with_memory.rgb - without.rgb).abs().max() > 1e-3


def test_bad_requests_raise(model, start):
    learned = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=1))
    small = RolloutStart(
        rgb=start.rgb[..., :16, :16],
        depth=start.depth[..., :16, :16],
        cam_to_world=start.cam_to_world,
        intrinsics=start.intrinsics,
    )
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(32, 32\)"):
        learned.rollout(small, _actions(2, 2))
    with pytest.raises(ValueError, match="memory_token_dim"):
        LearnedSimulator(model, build_memory("none", token_dim=3))
    with pytest.raises(ValueError, match="no memory branch"):
        LearnedSimulator(make_tiny(memory_token_dim=0), _memory())
    memory = _memory()
    memory.reset(3)
    with pytest.raises(ValueError, match="holds 3 rows but the start has 2"):
        RolloutStart(
            rgb=start.rgb,
            depth=start.depth,
            cam_to_world=start.cam_to_world,
            intrinsics=start.intrinsics,
            memory=memory,
        )
    with pytest.raises(ValueError, match="num_inference_steps"):
        LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=0))


def test_a_repeated_start_writes_its_frames_once_with_the_same_result(model, start):
    repeated = start.select([1, 1, 1])
    actions = _actions(3, 4, seed=3)
    learned = LearnedSimulator(model, _memory(), sampler=SamplerConfig(num_inference_steps=1))
    calls = []
    update = type(learned.memory).update

    def counting_update(self, rgb, *args, **kwargs):
        calls.append(rgb.shape[0])
        return update(self, rgb, *args, **kwargs)

    type(learned.memory).update = counting_update
    try:
        shared = learned.rollout(repeated, actions, generator=torch.Generator().manual_seed(5))
        assert calls[0] == 1  # the start's frames went in for one row, not three
        calls.clear()
        mixed = start.select([0, 1, 1])
        learned.rollout(mixed, actions, generator=torch.Generator().manual_seed(5))
        assert calls[0] == 3  # rows that differ each get their own
    finally:
        type(learned.memory).update = update
    per_row = LearnedSimulator(model, _memory(), sampler=SamplerConfig(num_inference_steps=1))
    per_row.memory.reset(1)
    memory = per_row.memory.select(torch.zeros(3, dtype=torch.int64))
    k = repeated.intrinsics[:, None].expand(3, repeated.num_frames, 3, 3)
    memory.update(repeated.rgb, repeated.depth, k, repeated.cam_to_world)
    given = RolloutStart(
        rgb=repeated.rgb,
        depth=repeated.depth,
        cam_to_world=repeated.cam_to_world,
        intrinsics=repeated.intrinsics,
        memory=memory,
    )
    per_row.insert_start_frames = False
    expected = per_row.rollout(given, actions, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(shared.rgb, expected.rgb, atol=ROUNDING, rtol=0)


def test_common_noise_makes_equal_candidates_equal(start):
    model = make_tiny(memory_token_dim=0)
    twins = start.select([0, 0])
    actions = torch.ones(2, model.config.n_future, dtype=torch.int64)
    common = LearnedSimulator(
        model,
        sampler=SamplerConfig(num_inference_steps=2),
        common_noise=True,
    )
    result = common.rollout(twins, actions, generator=torch.Generator().manual_seed(0))
    # Same start, actions and noise: the same frames (up to batched rounding).
    assert (result.rgb[0] - result.rgb[1]).abs().max() < ROUNDING
    own = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=2))
    result = own.rollout(twins, actions, generator=torch.Generator().manual_seed(0))
    assert (result.rgb[0] - result.rgb[1]).abs().mean() > 100 * ROUNDING  # the control


def test_map_views_answer_mapped_rows_with_the_render_and_generate_the_rest(start):
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=90.0)
    prototype = build_memory("rendered", voxel_size=0.05)
    rows = start.select([0, 0])
    n_future = model.config.n_future
    actions = torch.zeros(2, n_future, 3)  # waypoints (dx, dz, dyaw)
    actions[0, :, 2] = 0.05  # row 0 turns a little: a mostly mapped view
    actions[1, :, 2] = 1.5  # row 1 turns by near quarter turns: mostly unmapped
    seed = 7
    # No fill rings: the generated row's holes are the network's own pixels (the control below).
    no_fill = SamplerConfig(num_inference_steps=1, render_init=0.0, render_fill=0)
    plain = LearnedSimulator(
        model,
        prototype,
        sampler=no_fill,
        common_noise=True,
    )
    expected = plain.rollout(rows, actions, generator=torch.Generator().manual_seed(seed))
    mapped = LearnedSimulator(
        model,
        prototype,
        sampler=no_fill,
        common_noise=True,
        map_views=0.6,
    )
    result = mapped.rollout(rows, actions, generator=torch.Generator().manual_seed(seed))
    # What the model reads: the start frames' map rendered at the result's cameras.
    memory = build_memory("rendered", voxel_size=0.05)
    memory.reset(2)
    k = rows.intrinsics[:, None].expand(2, rows.num_frames, 3, 3)
    memory.update(rows.rgb, rows.depth, k, rows.cam_to_world)
    k = rows.intrinsics[:, None].expand(2, n_future, 3, 3)
    render = memory.render(result.cam_to_world, k, (model.config.height, model.config.width))
    covered = model.render_coverage(render.depth, render.mask)
    share = covered.flatten(2).float().mean(-1).amin(-1)
    assert 1 > share[0] >= 0.6 > share[1]  # row 0 is answered by the map, row 1 generated
    assert torch.equal(mapped.map_coverage(rows, actions), share)  # what decides it
    assert torch.equal(result.cam_to_world, expected.cam_to_world)
    # The answered row is the generated frames wherever the map covers (the composite pastes
    # the render there), filled from its neighbours elsewhere, without running the model.
    row_covered = covered[0].expand_as(result.rgb[0])
    assert torch.equal(result.rgb[0][row_covered], expected.rgb[0][row_covered])
    assert not torch.equal(result.rgb[0], expected.rgb[0])  # the holes are filled, not generated
    assert (result.rgb[0][~row_covered] - 0.5).abs().max() < 0.5  # filled values lie in [0, 1]
    torch.testing.assert_close(result.rgb[1], expected.rgb[1], atol=ROUNDING, rtol=0)
    assert result.memory is None  # the rows' memories live in two objects
    # Control: without the map's answer the standing row's holes are the model's own pixels.
    assert torch.equal(
        expected.rgb[0][row_covered], render.rgb[0].expand_as(row_covered)[row_covered]
    )


def test_map_views_need_a_composite_render_model_and_a_share_in_range(model):
    with pytest.raises(ValueError, match="map_views needs a model that reads the rendered"):
        LearnedSimulator(model, _memory(), map_views=1.0)
    render_model = make_tiny(memory_token_dim=0, memory_render=True)
    with pytest.raises(ValueError, match=r"map_views must be in \(0, 1\]"):
        LearnedSimulator(render_model, build_memory("rendered"), map_views=1.5)


def test_fill_holes_takes_the_mean_of_known_neighbours_then_the_default():
    image = torch.zeros(1, 1, 1, 5, 5)
    image[..., :, :2] = 1.0
    known = torch.zeros(1, 1, 1, 5, 5, dtype=torch.bool)
    known[..., :, :2] = True
    filled = fill_rings(image, known, default=-1.0, passes=1)
    assert torch.equal(filled[..., :, :2], image[..., :, :2])  # known pixels stay
    assert torch.equal(filled[..., :, 2], torch.ones(1, 1, 1, 5))  # one ring: neighbours' mean
    assert torch.equal(filled[..., :, 3:], torch.full((1, 1, 1, 5, 2), -1.0))  # beyond: default


def test_write_generated_off_leaves_the_memory_and_not_the_frames_of_a_render_model(start):
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=90.0)
    actions = torch.ones(1, model.config.n_future, dtype=torch.int64)  # move forward
    results = {}
    for write in (True, False):
        memory = build_memory("rendered", voxel_size=0.05)
        memory.reset(1)
        learned = LearnedSimulator(
            model,
            memory,
            sampler=SamplerConfig(num_inference_steps=1),
            write_generated=write,
        )
        row = learned.with_episode_memory(start.select([0]))
        before = int(row.memory.num_points()[0])
        result = learned.rollout(row, actions, generator=torch.Generator().manual_seed(2))
        results[write] = (result, before)
    # The model reads observed points only: the frames are the same either way ...
    assert torch.equal(results[True][0].rgb, results[False][0].rgb)
    # ... and only the default writes the generated frames into the rollout's memory.
    assert int(results[True][0].memory.num_points()[0]) > results[True][1]
    assert int(results[False][0].memory.num_points()[0]) == results[False][1]
