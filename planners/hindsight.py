"""Hindsight-relabelled policy fine-tuning inside a simulator (paper §4.3, Fig. 6b).

In an unseen scene the world model's memory is initialised from a few images (the start's
frames, unprojected into the memory by :class:`worldsim.simulator.learned.LearnedSimulator`); then,
each round:

1. roll the policy out in the simulator (:func:`imagine_policy`): at every decision the policy
   samples a trajectory (goal-masked: it explores), the first ``execute_steps`` of its discrete
   actions are imagined, and the imagined frames become the next context;
2. relabel in hindsight (:func:`relabel`): every window of the imagined trajectory is a training
   clip whose goal is a frame the rollout actually reached ``d`` steps later, and whose action
   target is the path it actually took (NoMaD's targets,
   :func:`planners.nomad.training.policy_batch`);
3. fine-tune the policy on those clips with NoMaD's loss (:func:`finetune`).

Everything goes through the rollout protocol (:mod:`worldsim.simulator.protocol`), so the same loop
runs in the ground truth (an oracle check) and in the learned simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from planners.nomad import NoMaDPolicy, make_scheduler
from planners.nomad.training import NoMaDTrainingConfig, policy_batch, policy_loss
from planners.ranking import NoMaDSampler
from worldsim.geometry import Action, ActionSpec
from worldsim.simulator.protocol import RolloutModel, RolloutStart


@dataclass(frozen=True)
class HindsightConfig:
    """Settings of hindsight fine-tuning.

    Attributes:
        rounds: rollout-relabel-train rounds, >= 1.
        rollouts: policy rollouts imagined per round, >= 1.
        rollout_steps: discrete actions per rollout, >= 1.
        execute_steps: actions of each sampled trajectory imagined before the policy is asked
            again, >= 1.
        clip_stride: frames between the first frames of consecutive relabelled clips, >= 1.
        training: NoMaD's loss settings and the fine-tuning steps per round (``steps``),
            ``batch_size`` and optimiser; goal distances are in frames of the rollout.
    """

    rounds: int = 3
    rollouts: int = 4
    rollout_steps: int = 40
    execute_steps: int = 4
    clip_stride: int = 1
    training: NoMaDTrainingConfig = field(
        default_factory=lambda: NoMaDTrainingConfig(
            max_goal_distance=12, max_action_distance=12, steps=50, batch_size=16
        )
    )

    def __post_init__(self) -> None:
        for name in ("rounds", "rollouts", "rollout_steps", "execute_steps", "clip_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, eq=False)
class ImaginedTrajectory:
    """Frames and poses a policy reached in a simulator.

    Attributes:
        rgb: (T, 3, H, W) float32 in [0, 1], the start's frames first.
        cam_to_world: (T, 4, 4) float32 camera poses (world frame, y up).
        actions: (S,) int64 actions taken after the start's frames.
    """

    rgb: Tensor
    cam_to_world: Tensor
    actions: Tensor


def imagine_policy(
    model: RolloutModel,
    sampler: NoMaDSampler,
    start: RolloutStart,
    steps: int,
    execute_steps: int,
    generator: torch.Generator,
    goal: Tensor | None = None,
) -> ImaginedTrajectory:
    """Roll a policy out in a simulator, replanning every ``execute_steps`` actions.

    Args:
        model: the simulator (learned, or the oracle).
        sampler: the policy, as discrete actions.
        start: one start state (B = 1); all its frames open the trajectory.
        steps: actions to take, >= 1.
        execute_steps: actions per sampled trajectory, >= 1.
        generator: random source of the policy and the simulator.
        goal: (3, H, W) goal RGB in [0, 1], or ``None`` to explore (goal masking).

    Returns:
        The trajectory: the start's T frames then one frame per action.

    Raises:
        ValueError: for a start of several rows or non-positive step counts.
        RuntimeError: if the policy keeps proposing to stay (``10 * steps`` proposals).
    """
    if start.batch_size != 1:
        raise ValueError(f"a policy rollout starts from one state, got {start.batch_size} rows")
    if steps < 1 or execute_steps < 1:
        raise ValueError(f"steps and execute_steps must be >= 1, got {steps}, {execute_steps}")
    rgb, poses, actions = [start.rgb[0]], [start.cam_to_world[0]], []
    state, taken = start, 0
    for _ in range(10 * steps):
        if taken >= steps:
            break
        planned = sampler.sample(state, goal, 1, generator)[0]
        chunk = planned[planned != Action.STOP][: min(execute_steps, steps - taken)]
        if len(chunk) == 0:  # the policy proposes to stay: ask again
            continue
        result = model.rollout(state, chunk[None], generator=generator)
        state = state.advance(result)
        rgb.append(result.rgb[0])
        poses.append(result.cam_to_world[0])
        actions.append(chunk)
        taken += len(chunk)
    if taken < steps:
        raise RuntimeError(
            f"the policy proposed to stay {10 * steps} times; it took {taken} of {steps} actions"
        )
    return ImaginedTrajectory(
        rgb=torch.cat(rgb).float(),
        cam_to_world=torch.cat(poses).float(),
        actions=torch.cat(actions),
    )


def relabel(
    trajectories: list[ImaginedTrajectory], policy: NoMaDPolicy, config: HindsightConfig
) -> dict[str, Tensor]:
    """Cut reached trajectories into training clips (goals are relabelled when batched).

    A clip is a window of ``context_size + 1 + max(max_goal_distance, len_traj_pred)``
    consecutive frames starting every ``clip_stride`` frames; :func:`policy_batch` then takes
    the frame ``d`` steps after the clip's current view as its goal, and the poses actually
    reached as its action target: the goals are relabelled in hindsight with frames reached.

    Args:
        trajectories: the reached trajectories.
        policy: the policy (context size and horizon).
        config: the settings (goal distances, stride).

    Returns:
        ``rgb`` (N, W, 3, H, W) and ``cam_to_world`` (N, W, 4, 4) clips, W the window length.

    Raises:
        ValueError: if no trajectory is long enough for one clip.
    """
    window = (
        policy.config.context_size
        + 1
        + max(config.training.max_goal_distance, policy.config.len_traj_pred)
    )
    rgb, poses = [], []
    for trajectory in trajectories:
        for first in range(0, trajectory.rgb.shape[0] - window + 1, config.clip_stride):
            rgb.append(trajectory.rgb[first : first + window])
            poses.append(trajectory.cam_to_world[first : first + window])
    if not rgb:
        longest = max((t.rgb.shape[0] for t in trajectories), default=0)
        raise ValueError(
            f"clips need {window} frames but the longest trajectory has {longest}; roll out "
            "longer (rollout_steps) or lower max_goal_distance"
        )
    return {"rgb": torch.stack(rgb), "cam_to_world": torch.stack(poses)}


def finetune(
    policy: NoMaDPolicy,
    clips: dict[str, Tensor],
    config: NoMaDTrainingConfig,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Fine-tune the policy on relabelled clips with NoMaD's loss (``config.steps`` steps).

    Args:
        policy: the policy (trained in place, on its device).
        clips: :func:`relabel`'s clips.
        config: loss, batch size, steps and optimiser settings.
        generator: random source of the batches, goals, masks, noise and diffusion steps.
        optimizer: an optimiser over the policy's parameters to continue; ``None``: a new AdamW.

    Returns:
        The loss of each step.
    """
    scheduler = make_scheduler(policy)
    optimizer = optimizer or torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    device = next(policy.parameters()).device
    count = clips["rgb"].shape[0]
    losses = []
    policy.train()
    for _ in range(config.steps):
        index = torch.randint(0, count, (min(config.batch_size, count),), generator=generator)
        batch = policy_batch({k: v[index] for k, v in clips.items()}, policy, config, generator)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, _ = policy_loss(policy, scheduler, batch, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    policy.eval()
    return losses


def adapt(
    policy: NoMaDPolicy,
    model: RolloutModel,
    starts: list[RolloutStart],
    config: HindsightConfig,
    generator: torch.Generator,
    spec: ActionSpec | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Adapt a policy to a scene by hindsight-relabelled fine-tuning in a simulator.

    Args:
        policy: the policy (fine-tuned in place).
        model: the simulator to imagine in (its memory is initialised from each start's frames).
        starts: start states in the scene (B = 1 each), cycled over the rollouts.
        config: the settings.
        generator: random source of everything.
        spec: the simulator's step sizes (waypoints -> actions); default :class:`ActionSpec`.
        progress: show a progress bar over rounds.

    Returns:
        Per round: ``clips`` relabelled and ``loss_first`` / ``loss_last`` of its fine-tuning.
    """
    if not starts:
        raise ValueError("adapt needs at least one start state")
    optimizer = torch.optim.AdamW(
        policy.parameters(),
        lr=config.training.learning_rate,
        weight_decay=config.training.weight_decay,
    )
    history = []
    for round_index in tqdm(range(config.rounds), desc="hindsight rounds", disable=not progress):
        sampler = NoMaDSampler(policy, spec)
        trajectories = [
            imagine_policy(
                model,
                sampler,
                starts[(round_index * config.rollouts + i) % len(starts)],
                config.rollout_steps,
                config.execute_steps,
                generator,
            )
            for i in range(config.rollouts)
        ]
        clips = relabel(trajectories, policy, config)
        losses = finetune(policy, clips, config.training, generator, optimizer)
        history.append(
            {
                "clips": float(clips["rgb"].shape[0]),
                "loss_first": losses[0],
                "loss_last": losses[-1],
            }
        )
    return history
