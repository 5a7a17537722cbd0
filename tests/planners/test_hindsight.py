"""Hindsight relabelling against a hand-built trajectory; fine-tuning; policy rollouts."""

import numpy as np
import pytest
import torch

from envs.embedded.simulator import Simulator
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from planners.hindsight import (
    HindsightConfig,
    ImaginedTrajectory,
    adapt,
    check_adaptation_inputs,
    finetune,
    heldout_loss,
    imagine_policy,
    relabel,
)
from planners.nomad import (
    POLICY_PRESETS,
    NoMaDPolicy,
    make_scheduler,
    normalize_waypoints,
    sample_waypoints,
)
from planners.nomad.training import NoMaDTrainingConfig, policy_batch, policy_loss
from planners.ranking import NoMaDSampler
from worldsim.geometry import pose_from_position_yaw

TINY = {**POLICY_PRESETS["tiny"], "dropout": 0.0}
SCENE = "house-train-0000"
STEP_M = 0.25


@pytest.fixture
def policy():
    torch.manual_seed(0)  # parameter initialisation of the test model only
    return NoMaDPolicy(**TINY).eval()


def straight_walk(frames: int) -> ImaginedTrajectory:
    """Frame i is a flat grey of value i / frames, taken STEP_M * i metres along -z (yaw 0)."""
    values = torch.arange(frames, dtype=torch.float32) / frames
    rgb = values[:, None, None, None].expand(frames, 3, 32, 32).clone()
    position = torch.zeros(frames, 3, dtype=torch.float64)
    position[:, 2] = -STEP_M * torch.arange(frames)
    poses = pose_from_position_yaw(position, torch.zeros(frames, dtype=torch.float64)).float()
    return ImaginedTrajectory(rgb, poses, torch.ones(frames - 1, dtype=torch.int64))


def config(max_goal: int = 3, **overrides) -> HindsightConfig:
    training = NoMaDTrainingConfig(
        min_goal_distance=1,
        max_goal_distance=max_goal,
        min_action_distance=1,
        max_action_distance=max_goal,
        learning_rate=1e-3,
        steps=overrides.pop("steps", 1),
        batch_size=8,
    )
    return HindsightConfig(training=training, **overrides)


def test_relabel_by_hand(policy):
    clips = relabel([straight_walk(10)], policy, config(clip_stride=2))
    # window = context 1 + current 1 + max(goal 3, horizon 4) = 6 frames; starts 0, 2, 4
    assert clips["rgb"].shape == (3, 6, 3, 32, 32) and clips["cam_to_world"].shape == (3, 6, 4, 4)
    assert clips["rgb"][:, 0, 0, 0, 0].tolist() == pytest.approx([0.0, 0.2, 0.4])
    batch = policy_batch(clips, policy, config().training, torch.Generator().manual_seed(0))
    # The goal is the frame reached d steps after the current view (index 1 of each clip).
    first = torch.tensor([0, 2, 4])
    expected_goal = (first + 1 + batch["distance"].long()).float() / 10
    assert torch.allclose(batch["goal"][:, 0, 0, 0], expected_goal)
    # The action target is the path actually taken: 0.25 m straight ahead per frame.
    ahead = torch.stack([STEP_M * torch.arange(1, 5).float(), torch.zeros(4)], dim=-1)
    expected = normalize_waypoints(ahead, policy.config.metric_waypoint_spacing)
    assert torch.allclose(batch["deltas"], expected.expand(3, 4, 2), atol=1e-5)  # float32 poses


def test_relabel_needs_long_enough_trajectories(policy):
    with pytest.raises(ValueError, match="clips need 6 frames but the longest trajectory has 5"):
        relabel([straight_walk(5)], policy, config())
    with pytest.raises(ValueError, match="rollouts must be >= 1"):
        HindsightConfig(rollouts=0)


def test_finetuning_lowers_the_loss_on_relabelled_data(policy):
    clips = relabel([straight_walk(12)], policy, config())
    settings = config(steps=60).training
    scheduler = make_scheduler(policy)

    @torch.no_grad()
    def loss() -> float:
        """NoMaD's loss averaged over 16 fixed batches (one batch's diffusion noise is loud)."""
        values = []
        for seed in range(16):
            generator = torch.Generator().manual_seed(seed)
            batch = policy_batch(clips, policy, settings, generator)
            values.append(float(policy_loss(policy, scheduler, batch, settings, generator)[0]))
        return float(np.mean(values))

    before = loss()
    losses = finetune(policy, clips, settings, torch.Generator().manual_seed(100))
    assert len(losses) == 60 and all(np.isfinite(losses))
    after = loss()
    # 60 AdamW steps at lr 1e-3 on 7 clips of one straight walk fit them well below the start
    assert after < 0.7 * before


@pytest.fixture(scope="module")
def oracle():
    sim = Simulator(SimulatorConfig(width=32, height=32, turn_step_deg=30.0))
    sim.load_scene(SCENE)
    return OracleRollout(sim)


def test_policy_rollout_reaches_what_the_simulator_replays(policy, oracle):
    position = oracle.sim.sample_navigable_point(np.random.default_rng(0))
    start = oracle.start(SCENE, position, 0.3, num_frames=2)
    sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
    trajectory = imagine_policy(oracle, sampler, start, 6, 2, torch.Generator().manual_seed(0))
    assert trajectory.actions.shape == (6,) and (trajectory.actions != 0).all()
    assert trajectory.rgb.shape == (8, 3, 32, 32) and trajectory.cam_to_world.shape == (8, 4, 4)
    replay = oracle.rollout(start, trajectory.actions[None])
    assert torch.equal(trajectory.rgb[2:], replay.rgb[0])  # the oracle is deterministic
    assert torch.equal(trajectory.cam_to_world[2:], replay.cam_to_world[0])


def test_adapt_runs_rounds_in_a_simulator(policy, oracle):
    position = oracle.sim.sample_navigable_point(np.random.default_rng(1))
    start = oracle.start(SCENE, position, 0.0, num_frames=2)
    settings = config(max_goal=2, rounds=2, rollouts=1, rollout_steps=5, steps=2)
    history = adapt(
        policy,
        oracle,
        [start],
        settings,
        torch.Generator().manual_seed(0),
        spec=oracle.sim.config.action_spec,
        progress=False,
    )
    # 1 start frame + 6 steps = 7 frames, windows of 1 + 1 + max(2, 4) = 6: 2 clips per round
    assert [row["clips"] for row in history] == [2.0, 2.0]
    assert all(np.isfinite(row["train_last"]) for row in history)


def walk(frames: int, left: bool) -> ImaginedTrajectory:
    """Straight ahead (yaw 0 looks along -z), or sideways to the left (-x), STEP_M per frame.

    Frame i is a flat grey of value i / frames in both walks, so only the path tells them apart.
    """
    trajectory = straight_walk(frames)
    if not left:
        return trajectory
    position = torch.zeros(frames, 3, dtype=torch.float64)
    position[:, 0] = -STEP_M * torch.arange(frames)
    poses = pose_from_position_yaw(position, torch.zeros(frames, dtype=torch.float64)).float()
    return ImaginedTrajectory(trajectory.rgb, poses, trajectory.actions)


def mean_waypoint(policy, trajectory: ImaginedTrajectory) -> torch.Tensor:
    """(2,) mean final sampled waypoint (forward, left) from the walk's first frames, goal shown."""
    context = trajectory.rgb[None, : policy.config.context_size + 1]
    goal = trajectory.rgb[None, policy.config.context_size + 3]
    sampled = sample_waypoints(
        policy, make_scheduler(policy), context, goal, 64, torch.Generator().manual_seed(0)
    )
    return sampled[0, :, -1].mean(dim=0)  # (K, L, 2) -> the last waypoint's mean


@pytest.mark.slow  # ~30 s on an idle core
def test_finetuning_moves_the_policy_towards_the_relabelled_path():
    # The same frames relabelled with a forward path or (the control) a leftward one: each
    # fine-tuned copy's samples end near the path it was trained on, not at a shared drift.
    targets = {False: torch.tensor([1.0, 0.0]), True: torch.tensor([0.0, 1.0])}  # 4 x 0.25 m
    ends = {}
    for left in (False, True):
        torch.manual_seed(0)  # the same initial test model for both
        model = NoMaDPolicy(**TINY).eval()
        trajectory = walk(12, left)
        before = mean_waypoint(model, trajectory)
        finetune(
            model,
            relabel([trajectory], model, config()),
            config(steps=80).training,
            torch.Generator().manual_seed(1),
        )
        ends[left] = mean_waypoint(model, trajectory)
        own, other = targets[left], targets[not left]
        assert (ends[left] - own).norm() < 0.5 * (before - own).norm()
        # 80 steps fit the 7 clips only partly (about 0.4 m short on the left axis), but each
        # copy ends clearly nearer its own path than the other's (0.3 m, ~a forward step)
        assert (ends[left] - own).norm() < (ends[left] - other).norm() - 0.3


def test_heldout_loss_is_fixed_and_falls_with_training_on_its_distribution(policy):
    train, heldout = (
        relabel([straight_walk(12)], policy, config()),
        relabel([straight_walk(11)], policy, config()),
    )
    settings = config(steps=60).training
    first = heldout_loss(policy, heldout, settings)
    assert heldout_loss(policy, heldout, settings) == first  # same draws every call
    finetune(policy, train, settings, torch.Generator().manual_seed(2))
    # the held-out walk has the same path (another brightness ramp): its loss falls too
    assert heldout_loss(policy, heldout, settings)["loss"] < 0.7 * first["loss"]


@pytest.mark.slow  # ~30 s on an idle core
def test_replay_keeps_the_original_behaviour(policy):
    # Fine-tune on a forward walk while replaying a leftward one (the "original data"): with
    # replay the policy keeps fitting the leftward clips; without it, it forgets them.
    new = relabel([walk(12, left=False)], policy, config())
    old = relabel([walk(12, left=True)], policy, config())
    old = {"rgb": (old["rgb"] * 255).round().to(torch.uint8), "cam_to_world": old["cam_to_world"]}
    settings = config(steps=80).training
    losses = {}
    for fraction in (0.0, 0.5):
        torch.manual_seed(0)  # the same initial test model
        model = NoMaDPolicy(**TINY).eval()
        finetune(model, new, settings, torch.Generator().manual_seed(3), None, old, fraction)
        losses[fraction] = heldout_loss(model, _float(old), settings)["diffusion"]
    # 80 steps, half of each batch replayed: the old clips' diffusion loss stays >= 15 % lower
    # (measured 0.42 vs 0.53; the held-out average of 8 noisy batches moves by a few %)
    assert losses[0.5] < 0.85 * losses[0.0]


def _float(clips):
    return {"rgb": clips["rgb"].float() / 255.0, "cam_to_world": clips["cam_to_world"]}


def test_policy_rollout_stops_on_its_distance_head(policy, oracle):
    position = oracle.sim.sample_navigable_point(np.random.default_rng(2))
    start = oracle.start(SCENE, position, 0.0, num_frames=2)
    goal = start.rgb[0, -1]
    sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
    predicted = sampler.distance(start, goal)
    generator = torch.Generator().manual_seed(0)
    stopped = imagine_policy(oracle, sampler, start, 6, 2, generator, goal, predicted + 1e-3)
    assert stopped.stopped and stopped.actions.shape == (0,) and stopped.rgb.shape[0] == 2
    # the control: a threshold below any prediction never stops
    going = imagine_policy(oracle, sampler, start, 6, 2, generator, goal, float("-inf"))
    assert not going.stopped and going.actions.shape == (6,)


def test_adaptation_rejects_bad_inputs_before_any_work(policy, oracle):
    position = oracle.sim.sample_navigable_point(np.random.default_rng(3))
    start = oracle.start(SCENE, position, 0.0, num_frames=2)
    settings = config(rollout_steps=6)
    check_adaptation_inputs(policy, oracle, [start], settings)  # the good case passes
    with pytest.raises(ValueError, match="at least one start state"):
        check_adaptation_inputs(policy, oracle, [], settings)
    one = oracle.start(SCENE, position, 0.0, num_frames=1)
    with pytest.raises(ValueError, match="1 few-shot frames but the policy's context needs 2"):
        check_adaptation_inputs(policy, oracle, [one], settings)
    small = OracleRollout(config=SimulatorConfig(width=16, height=16)).start(
        SCENE, position, 0.0, num_frames=2
    )
    with pytest.raises(ValueError, match=r"few-shot frames of start 0 are \(16, 16\)"):
        check_adaptation_inputs(policy, oracle, [small], settings)
    other = NoMaDPolicy(**{**TINY, "image_size": (16, 16)})
    with pytest.raises(ValueError, match=r"the policy works on \(16, 16\) frames"):
        check_adaptation_inputs(other, oracle, [start], settings)
    with pytest.raises(ValueError, match="clips need 6 frames but rollouts reach at most 5"):
        check_adaptation_inputs(policy, oracle, [start], config(rollout_steps=3))
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        config(rounds=0)
    with pytest.raises(ValueError, match="replay_fraction > 0 needs replay clips"):
        adapt(
            policy,
            oracle,
            [start],
            config(rollout_steps=6, replay_fraction=0.5),
            torch.Generator(),
            progress=False,
        )
