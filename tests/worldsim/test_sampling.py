import importlib

import pytest
import torch

from tests.worldsim.conftest import make_tiny, randomise_memory_gates
from worldsim.simulator.chunks import chain_poses, rollout, step_poses
from worldsim.simulator.sampler import SamplerConfig, sample_chunk


def start(batch):
    return batch["rgb"][:, :1], batch["depth"][:, :1], batch["cam_to_world"][:, :1]


def test_rollout_shapes_and_poses(tiny_model, tiny_batch):
    rgb, depth, poses = start(tiny_batch)
    actions = torch.tensor([[1, 2, 3, 1], [2, 2, 1, 0]])
    result = rollout(
        tiny_model, rgb, depth, poses, actions, generator=torch.Generator().manual_seed(0)
    )
    assert result.rgb.shape == (2, 4, 3, 32, 32) and result.depth.shape == (2, 4, 1, 32, 32)
    assert result.rgb.min() >= 0 and result.rgb.max() <= 1 and result.depth.min() >= 0
    expected = poses[:, 0]
    for step in range(4):  # composing the actions' relative poses one by one
        expected = expected @ chain_poses(step_poses(actions[:, step : step + 1], tiny_model))[:, 0]
        torch.testing.assert_close(result.cam_to_world[:, step], expected)  # float32 products


def test_rollout_is_deterministic_under_a_seed(tiny_model, tiny_batch):
    rgb, depth, poses = start(tiny_batch)
    actions = torch.ones(2, 2, dtype=torch.int64)

    def run(seed):
        return rollout(
            tiny_model, rgb, depth, poses, actions, generator=torch.Generator().manual_seed(seed)
        )

    first, second, other = run(0), run(0), run(1)
    assert torch.equal(first.rgb, second.rgb) and torch.equal(first.depth, second.depth)
    assert not torch.equal(first.rgb, other.rgb)


def test_one_step_sampling_equals_minus_v_at_the_last_timestep(tiny_model, tiny_batch):
    # With zero terminal SNR, alpha_bar(999) = 0 and one trailing DDIM step returns the
    # predicted x0 = sqrt(alpha) x - sqrt(1 - alpha) v = -v.
    with torch.no_grad():
        context = tiny_model.encode(tiny_batch["rgb"][:, :1], tiny_batch["depth"][:, :1])
        rays = tiny_model.chunk_rays(
            tiny_model.default_intrinsics(2),
            chain_poses(step_poses(torch.ones(2, 2, dtype=torch.int64), tiny_model)),
        )
        sampled = sample_chunk(
            tiny_model,
            SamplerConfig(num_inference_steps=1),
            context,
            rays,
            generator=torch.Generator().manual_seed(3),
        )
        noise = torch.randn(
            tiny_model.future_latent_shape(2), generator=torch.Generator().manual_seed(3)
        )
        expected = -tiny_model.predict(noise, torch.tensor([999, 999]), context, rays)
    torch.testing.assert_close(sampled, expected, rtol=1e-6, atol=1e-6)  # float32 rounding in step


def test_bad_rollout_inputs(tiny_model, tiny_batch):
    rgb, depth, poses = start(tiny_batch)
    with pytest.raises(ValueError, match="positive multiple of 2, got 3"):
        rollout(tiny_model, rgb, depth, poses, torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="frames of 32x32 pixels"):
        rollout(
            tiny_model,
            rgb[..., :16, :16],
            depth[..., :16, :16],
            poses,
            torch.ones(2, 2, dtype=torch.int64),
        )
    with pytest.raises(ValueError, match="unknown action 7"):
        rollout(tiny_model, rgb, depth, poses, torch.full((2, 2), 7))
    rgb_only = make_tiny(use_depth=False)
    memory = importlib.import_module("worldsim.memory").build_memory("none")
    with pytest.raises(ValueError, match="tokens of width 1"):
        rollout(tiny_model, rgb, depth, poses, torch.ones(2, 2, dtype=torch.int64), memory=memory)
    with pytest.raises(ValueError, match="RGB-only world model"):
        memory_model = make_tiny(use_depth=False, memory_token_dim=1)
        rollout(memory_model, rgb, None, poses, torch.ones(2, 2, dtype=torch.int64), memory=memory)
    result = rollout(rgb_only, rgb, None, poses, torch.ones(2, 2, dtype=torch.int64))
    assert result.depth is None and result.rgb.shape == (2, 2, 3, 32, 32)


def test_rollout_writes_generated_frames_into_the_memory(tiny_batch):
    memories = importlib.import_module("worldsim.memory")
    memory = memories.build_memory(
        "feature_map", encoder="pooled_color", voxel_size=0.25, max_tokens=None
    )
    model = make_tiny(memory_token_dim=memory.token_dim, turn_step_deg=90.0)
    randomise_memory_gates(model)
    rgb, depth, poses = start(tiny_batch)
    k = model.default_intrinsics(2)[:, None]
    memory.reset(2)
    memory.update(rgb, depth, k, poses)
    # The view after a half turn looks away from the start frame's view.
    actions = torch.full((2, 2), 2)  # two 90-degree left turns: one chunk
    behind = poses @ chain_poses(step_poses(actions, model))[:, -1:]
    seen_before = memory.tokens(behind, k, (32, 32))[1].sum()
    rollout(
        model,
        rgb,
        depth,
        poses,
        actions,
        memory=memory,
        insert_start_frames=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert memory.tokens(behind, k, (32, 32))[1].sum() > seen_before


def test_step_poses_and_waypoints_roll_out_like_the_equivalent_action_ids(tiny_model, tiny_batch):
    from worldsim.geometry import action_to_waypoint
    from worldsim.simulator.chunks import step_poses

    rgb, depth, poses = start(tiny_batch)
    actions = torch.tensor([[1, 2, 3, 1], [2, 2, 1, 0]])
    motions = {
        "ids": actions,
        "waypoints": action_to_waypoint(actions, tiny_model.action_spec).float(),
        "poses": step_poses(actions, tiny_model),
    }
    results = {
        name: rollout(
            tiny_model, rgb, depth, poses, motion, generator=torch.Generator().manual_seed(0)
        )
        for name, motion in motions.items()
    }
    for name in ("waypoints", "poses"):
        # sin/cos of the waypoint's yaw vs. the action table's: float32 rounding only
        torch.testing.assert_close(results[name].cam_to_world, results["ids"].cam_to_world)
        torch.testing.assert_close(results[name].rgb, results["ids"].rgb, atol=1e-5, rtol=0)


def test_rows_do_not_depend_on_the_batch_size_with_one_generator_per_row(tiny_model, tiny_batch):
    rgb, depth, poses = start(tiny_batch)
    actions = torch.tensor([[1, 2, 3, 1], [2, 2, 1, 0]])

    def run(batch_size):
        generators = [torch.Generator().manual_seed(seed) for seed in (4, 5)]
        return rollout(
            tiny_model, rgb, depth, poses, actions, generator=generators, batch_size=batch_size
        )

    whole, parts = run(None), run(1)
    # Batched and single-row matrix products round differently on the CPU.
    torch.testing.assert_close(parts.rgb, whole.rgb, atol=1e-4, rtol=0)
    torch.testing.assert_close(parts.depth, whole.depth, atol=1e-4, rtol=0)


def test_memory_frames_choose_what_is_unprojected(tiny_batch):
    memories = importlib.import_module("worldsim.memory")

    def fresh():
        memory = memories.build_memory(
            "feature_map", encoder="pooled_color", voxel_size=0.25, max_tokens=None
        )
        memory.reset(2)
        return memory

    model = make_tiny(memory_token_dim=fresh().token_dim, turn_step_deg=90.0)
    rgb, depth, poses = start(tiny_batch)
    k = model.default_intrinsics(2)[:, None]
    actions = torch.full((2, 2), 2)  # two 90-degree left turns: one chunk
    behind = poses @ chain_poses(step_poses(actions, model))[:, -1:]
    keep = torch.tensor([[True, True], [False, False]])  # row 1 writes nothing
    memory = fresh()
    rollout(
        model,
        rgb,
        depth,
        poses,
        actions,
        memory=memory,
        insert_start_frames=False,
        memory_frames=keep,
        generator=torch.Generator().manual_seed(0),
    )
    seen = memory.tokens(behind, k, (32, 32))[1].sum(dim=1)
    assert seen[0] > 0 and seen[1] == 0
    with pytest.raises(ValueError, match=r"memory_frames must be a bool tensor of shape \(2, 2\)"):
        rollout(model, rgb, depth, poses, actions, memory=fresh(), memory_frames=keep[:, :1])
    with pytest.raises(ValueError, match=r"\(B, L, 4, 4\) float relative poses, got shape"):
        rollout(model, rgb, depth, poses, torch.zeros(2, 2, 2))
