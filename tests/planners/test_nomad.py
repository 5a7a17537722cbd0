"""The NoMaD-style policy: shapes, goal masking, save/load, gradients, waypoints, upstream keys."""

import math

import pytest
import torch
import torch.nn.functional as F

from planners.nomad import (
    POLICY_PRESETS,
    UNTRAINED,
    NoMaDPolicy,
    future_positions,
    load_policy,
    load_upstream_state_dict,
    make_scheduler,
    normalize_waypoints,
    sample_waypoints,
    unnormalize_deltas,
    waypoints_to_actions,
    waypoints_to_local,
)
from planners.nomad.encoder import EfficientNetEncoder, SameConv2d
from planners.nomad.training import NoMaDTrainingConfig, policy_batch, policy_loss
from worldsim.geometry import (
    ActionSpec,
    action_to_relative_pose,
    pose_from_position_yaw,
    waypoint_to_relative_pose,
)

TINY = {**POLICY_PRESETS["tiny"], "dropout": 0.0}


@pytest.fixture
def policy():
    torch.manual_seed(0)  # parameter initialisation of the test model only
    return NoMaDPolicy(**TINY).eval()


def _inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    context = torch.rand(batch, 2, 3, 32, 32, generator=generator)
    goal = torch.rand(batch, 3, 32, 32, generator=generator)
    return context, goal


def test_shapes_and_seeded_sampling(policy):
    context, goal = _inputs()
    condition = policy.encode(context, goal)
    assert condition.shape == (2, 32)
    assert policy.predict_distance(condition).shape == (2,)
    noise = policy.predict_noise(torch.randn(2, 4, 2), torch.tensor([0, 9]), condition)
    assert noise.shape == (2, 4, 2)
    scheduler = make_scheduler(policy)
    first = sample_waypoints(policy, scheduler, context, goal, 3, torch.Generator().manual_seed(1))
    again = sample_waypoints(policy, scheduler, context, goal, 3, torch.Generator().manual_seed(1))
    other = sample_waypoints(policy, scheduler, context, goal, 3, torch.Generator().manual_seed(2))
    assert first.shape == (2, 3, 4, 2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # clipped samples stay inside the action_stats box: each delta within [-2.5, 5] x [-4, 4]
    deltas = torch.diff(first / 0.25, dim=2, prepend=torch.zeros_like(first[:, :, :1]))
    assert deltas[..., 0].min() >= -2.5 - 1e-5 and deltas[..., 0].max() <= 5 + 1e-5


def test_goal_masking_hides_the_goal(policy):
    context, goal = _inputs()
    other_goal = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    masked = torch.ones(2, dtype=torch.bool)
    assert torch.equal(
        policy.encode(context, goal, masked), policy.encode(context, other_goal, masked)
    )
    assert torch.equal(policy.encode(context, goal, masked), policy.encode(context, None))
    assert not torch.allclose(policy.encode(context, goal), policy.encode(context, other_goal))
    # the masked context is the mean of the observation tokens only: a row's mask acts per row
    mixed = policy.encode(context, goal, torch.tensor([True, False]))
    assert torch.allclose(mixed[0], policy.encode(context, None)[0], atol=1e-6)  # float reorder
    assert torch.allclose(mixed[1], policy.encode(context, goal)[1], atol=1e-6)


def test_save_and_load_give_the_same_outputs(policy, tmp_path):
    policy.save_pretrained(tmp_path)
    loaded = NoMaDPolicy.from_pretrained(tmp_path).eval()
    # loaded tensors sit in fresh, 64-byte aligned memory: kernels take the same path as before
    assert all(t.data_ptr() % 64 == 0 for t in [*loaded.parameters(), *loaded.buffers()])
    context, goal = _inputs()
    assert tuple(loaded.config.down_dims) == policy.config.down_dims
    assert torch.equal(loaded.encode(context, goal), policy.encode(context, goal))


def test_loading_refuses_what_is_not_a_saved_policy(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"no NoMaD policy checkpoint .*NoMaDPolicy\.save_pretrained"
    ):
        NoMaDPolicy.from_pretrained(tmp_path / "missing")
    upstream = tmp_path / "nomad.pth"
    upstream.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="load_upstream_state_dict"):
        NoMaDPolicy.from_pretrained(upstream)
    (tmp_path / "config.json").write_text('{"_class_name": "WorldModel"}')
    with pytest.raises(ValueError, match="holds a 'WorldModel' checkpoint, expected 'NoMaDPolicy'"):
        NoMaDPolicy.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown policy preset 'huge'"):
        load_policy(UNTRAINED, "huge")
    torch.manual_seed(0)
    fresh = load_policy(UNTRAINED, "tiny", image_size=24)
    assert tuple(fresh.config.image_size) == (24, 24) and not fresh.training


def test_gradients_reach_every_parameter(policy):
    policy.train()
    config = NoMaDTrainingConfig(max_goal_distance=4, min_action_distance=1)
    generator = torch.Generator().manual_seed(0)
    clips = _clips(batch=4)
    batch = policy_batch(clips, policy, config, generator)
    batch["goal_mask"] = torch.tensor([True, False, False, True])
    loss, parts = policy_loss(policy, make_scheduler(policy), batch, config, generator)
    loss.backward()
    missing = [n for n, p in policy.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []
    assert math.isfinite(parts["distance"]) and math.isfinite(parts["diffusion"])


def _clips(batch=2, frames=7):
    """Clips of an agent walking forward 0.25 m per frame from the origin, heading yaw 0."""
    positions = torch.zeros(batch, frames, 3)
    positions[..., 2] = -0.25 * torch.arange(frames)  # yaw 0 looks along -z
    poses = pose_from_position_yaw(positions, torch.zeros(batch, frames))
    rgb = torch.rand(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return {"rgb": rgb, "cam_to_world": poses}


def test_training_batch_cuts_goals_and_waypoints(policy):
    config = NoMaDTrainingConfig(min_goal_distance=2, max_goal_distance=4)
    clips = _clips()
    batch = policy_batch(clips, policy, config, torch.Generator().manual_seed(0))
    assert batch["context"].shape == (2, 2, 3, 32, 32)
    for row in range(2):
        d = int(batch["distance"][row])
        assert 2 <= d <= 4
        assert torch.equal(batch["goal"][row], clips["rgb"][row, 1 + d])
    # walking straight: every delta is one spacing forward: 2 (1 + 2.5) / 7.5 - 1, and 0 left
    assert torch.allclose(batch["deltas"][..., 0], torch.full((2, 4), 2 * 3.5 / 7.5 - 1))
    assert torch.allclose(batch["deltas"][..., 1], torch.zeros(2, 4), atol=1e-6)
    with pytest.raises(ValueError, match="too short"):
        policy_batch(_clips(frames=5), policy, config, torch.Generator())
    with pytest.raises(ValueError, match="no goal would ever train the actions"):
        NoMaDTrainingConfig(max_goal_distance=4, min_action_distance=5, max_action_distance=8)


def test_stop_at_goal_targets_end_at_the_goal(policy):
    # Straight walk, goals 1-3 frames ahead, 4 waypoints: with stop_at_goal the target walks d
    # steps and stays (deltas 0 after the goal); hidden goals and the NoMaD default keep walking.
    clips = _clips(batch=64)
    walking = 2 * 3.5 / 7.5 - 1  # a normalised delta of one spacing forward
    standing = 2 * 2.5 / 7.5 - 1  # of zero
    config = NoMaDTrainingConfig(min_goal_distance=1, max_goal_distance=3, stop_at_goal=True)
    batch = policy_batch(clips, policy, config, torch.Generator().manual_seed(0))
    for row in range(64):
        d = 4 if batch["goal_mask"][row] else int(batch["distance"][row])
        expected = torch.tensor([walking] * d + [standing] * (4 - d))
        assert torch.allclose(batch["deltas"][row, :, 0], expected, atol=1e-6)
    assert batch["goal_mask"].any() and (~batch["goal_mask"]).any()  # both kinds were checked
    nomad = policy_batch(clips, policy, NoMaDTrainingConfig(min_goal_distance=1,
                         max_goal_distance=3), torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.allclose(nomad["deltas"][..., 0], torch.full((64, 4), walking))


def test_waypoint_normalisation_by_hand_and_round_trip():
    positions = torch.tensor([[0.25, 0.0], [0.5, 0.25], [0.5, 0.5]])
    normalized = normalize_waypoints(positions, 0.25)
    # deltas in spacings: (1, 0), (1, 1), (0, 1); n = 2 (d - min) / (max - min) - 1
    expected = torch.tensor(
        [[2 * 3.5 / 7.5 - 1, 0.0], [2 * 3.5 / 7.5 - 1, 2 * 5 / 8 - 1], [2 * 2.5 / 7.5 - 1, 0.25]]
    )
    assert torch.allclose(normalized, expected)
    assert torch.allclose(unnormalize_deltas(normalized, 0.25), positions, atol=1e-6)


def test_future_positions_use_nomad_axes():
    # facing -z (yaw 0), the agent walks forward 0.25 m, then steps to its left (world -x)
    positions = torch.tensor([[[0.0, 0, 0], [0.0, 0, -0.25], [-0.25, 0, -0.25]]])
    poses = pose_from_position_yaw(positions, torch.zeros(1, 3))
    local = future_positions(poses, 0, 2)
    assert torch.allclose(local, torch.tensor([[[0.25, 0.0], [0.25, 0.25]]]), atol=1e-6)


def test_waypoints_to_actions_by_hand():
    spec = ActionSpec()  # 0.25 m, 10 degrees
    assert waypoints_to_actions(torch.tensor([[0.5, 0.0]]), spec).tolist() == [1, 1]
    assert waypoints_to_actions(torch.tensor([[0.0, 0.5]]), spec).tolist() == [2] * 9 + [1, 1]
    assert waypoints_to_actions(torch.tensor([[0.0, -0.25]]), spec).tolist() == [3] * 9 + [1]
    assert waypoints_to_actions(torch.tensor([[0.1, 0.0]]), spec).tolist() == []  # < half step


def test_waypoints_to_actions_reach_the_last_waypoint():
    generator = torch.Generator().manual_seed(0)
    spec = ActionSpec(forward_step_m=0.25, turn_step_deg=10.0)
    for _ in range(20):
        steps = torch.randn(8, 2, generator=generator) * 0.3 + torch.tensor([0.25, 0.0])
        positions = torch.cumsum(steps, dim=0)
        pose = torch.eye(4)
        for action in waypoints_to_actions(positions, spec):
            pose = pose @ action_to_relative_pose(action, spec)
        reached = torch.stack([pose[2, 3], -pose[0, 3]])  # camera z forward, x right
        # each segment's rounding leaves < half a step and < half a turn of the remaining
        # error, which the next segment corrects from the true pose: the end is within one step
        assert (reached - positions[-1]).norm() < spec.forward_step_m


def test_waypoints_to_local_compose_to_the_positions():
    positions = torch.tensor([[0.25, 0.0], [0.25, 0.25], [0.5, 0.5], [0.5, 0.5]])
    local = waypoints_to_local(positions)
    assert torch.allclose(local[0], torch.tensor([0.0, 0.25, 0.0]))
    assert torch.allclose(local[1], torch.tensor([-0.25, 0.0, math.pi / 2]), atol=1e-6)
    pose = torch.eye(4)
    for step in range(4):
        pose = pose @ waypoint_to_relative_pose(local[step])
        assert torch.allclose(
            pose[[2, 0], 3] * torch.tensor([1.0, -1.0]), positions[step], atol=1e-6
        )


def test_same_padding_matches_tensorflow():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF "same", 4 -> 2 with stride 2 and kernel 3: one pixel of padding, right and bottom
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), expected)
    assert conv(torch.zeros(1, 1, 5, 7)).shape == (1, 1, 3, 4)


def test_b0_encoder_has_efficientnet_b0_size():
    encoder = EfficientNetEncoder(3)
    # EfficientNet-B0 has 5,288,548 parameters, 1,281,000 of them in the ImageNet classifier;
    # GroupNorm has the same affine parameters as BatchNorm
    assert sum(p.numel() for p in encoder.parameters()) == 5_288_548 - 1_281_000
    assert len(encoder._blocks) == 16 and encoder.out_channels == 1280


def test_upstream_key_names():
    keys = set(NoMaDPolicy().state_dict())
    for key in (
        "vision_encoder.obs_encoder._conv_stem.weight",
        "vision_encoder.goal_encoder._blocks.15._se_expand.bias",
        "vision_encoder.obs_encoder._blocks.1._expand_conv.weight",
        "vision_encoder.compress_goal_enc.weight",
        "vision_encoder.positional_encoding.pos_enc",
        "vision_encoder.sa_encoder.layers.3.self_attn.in_proj_weight",
        "noise_pred_net.diffusion_step_encoder.1.weight",
        "noise_pred_net.down_modules.0.2.conv.weight",
        "noise_pred_net.up_modules.1.2.conv.weight",
        "noise_pred_net.mid_modules.1.cond_encoder.1.weight",
        "noise_pred_net.final_conv.1.weight",
        "dist_pred_net.network.4.weight",
    ):
        assert key in keys, key
    assert "vision_encoder.obs_encoder._blocks.0._expand_conv.weight" not in keys  # expand 1


def test_upstream_state_dict_loads_and_mismatches_are_listed(policy, tmp_path):
    torch.manual_seed(1)  # a second, different model's initialisation
    source = NoMaDPolicy(**TINY).eval()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.vision_encoder.obs_encoder._fc.weight"] = torch.zeros(1000, 320)
    torch.save({"model": state}, tmp_path / "nomad.pth")
    load_upstream_state_dict(policy, tmp_path / "nomad.pth")
    context, goal = _inputs()
    assert torch.equal(policy.encode(context, goal), source.encode(context, goal))

    del state["module.dist_pred_net.network.0.weight"]
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\).*network.0.weight"):
        load_upstream_state_dict(policy, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        load_upstream_state_dict(policy, tmp_path / "absent.pth")


def test_bad_inputs_raise(policy):
    context, goal = _inputs()
    with pytest.raises(ValueError, match=r"\(B, 2, 3, H, W\)"):
        policy.encode(context[:, :1], goal)
    with pytest.raises(ValueError, match="NaN"):
        policy.encode(context * float("nan"), goal)
    with pytest.raises(ValueError, match="len_traj_pred"):
        NoMaDPolicy(**{**TINY, "len_traj_pred": 3})
