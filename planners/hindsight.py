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
3. fine-tune the policy on those clips with NoMaD's loss (:func:`finetune`), optionally mixed
   with clips of the policy's original training data (``replay_fraction``: replay against
   forgetting).

Progress is measured on a fixed held-out relabelled set (:func:`heldout_loss`: the same clips,
goals, masks and noise every round), not on each round's new clips. Evaluation rollouts may stop
on the policy's own temporal-distance head (``stop_distance`` of :func:`imagine_policy`, NoMaD's
"goal reached" test): a policy that never stops ends wherever its step budget runs out.

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
        replay_fraction: share of each fine-tuning batch drawn from replayed original training
            clips (``replay`` of :func:`adapt`), in [0, 1).
        training: NoMaD's loss settings and the fine-tuning steps per round (``steps``),
            ``batch_size`` and optimiser; goal distances are in frames of the rollout.
    """

    rounds: int = 3
    rollouts: int = 4
    rollout_steps: int = 40
    execute_steps: int = 4
    clip_stride: int = 1
    replay_fraction: float = 0.0
    training: NoMaDTrainingConfig = field(
        default_factory=lambda: NoMaDTrainingConfig(
            max_goal_distance=12, max_action_distance=12, steps=50, batch_size=16
        )
    )

    def __post_init__(self) -> None:
        for name in ("rounds", "rollouts", "rollout_steps", "execute_steps", "clip_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")

    def window(self, policy: NoMaDPolicy) -> int:
        """Frames of one relabelled clip: context, current view, then goals and waypoints."""
        return (
            policy.config.context_size
            + 1
            + max(self.training.max_goal_distance, policy.config.len_traj_pred)
        )


@dataclass(frozen=True, eq=False)
class ImaginedTrajectory:
    """Frames and poses a policy reached in a simulator.

    Attributes:
        rgb: (T, 3, H, W) float32 in [0, 1], the start's frames first.
        cam_to_world: (T, 4, 4) float32 camera poses (world frame, y up).
        actions: (S,) int64 actions taken after the start's frames (S may be 0).
        stopped: whether the policy stopped (its distance head judged the goal reached) before
            its step budget ran out.
    """

    rgb: Tensor
    cam_to_world: Tensor
    actions: Tensor
    stopped: bool = False


def imagine_policy(
    model: RolloutModel,
    sampler: NoMaDSampler,
    start: RolloutStart,
    steps: int,
    execute_steps: int,
    generator: torch.Generator,
    goal: Tensor | None = None,
    stop_distance: float | None = None,
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
        stop_distance: with a goal, stop as soon as the policy's distance head predicts at most
            this many frames to the goal (checked before every decision), or its waypoints
            propose to stay (all within half a step); ``None``: never stop (a proposal to stay
            is asked again).

    Returns:
        The trajectory: the start's T frames then one frame per action taken.

    Raises:
        ValueError: for a start of several rows or non-positive step counts.
        RuntimeError: if the policy keeps proposing to stay (``10 * steps`` proposals).
    """
    if start.batch_size != 1:
        raise ValueError(f"a policy rollout starts from one state, got {start.batch_size} rows")
    if steps < 1 or execute_steps < 1:
        raise ValueError(f"steps and execute_steps must be >= 1, got {steps}, {execute_steps}")
    rgb, poses, actions = [start.rgb[0]], [start.cam_to_world[0]], []
    state, taken, stopped = start, 0, False
    for _ in range(10 * steps):
        if taken >= steps:
            break
        if goal is not None and stop_distance is not None:
            if sampler.distance(state, goal) <= stop_distance:
                stopped = True
                break
        planned = sampler.sample(state, goal, 1, generator)[0]
        chunk = planned[planned != Action.STOP][: min(execute_steps, steps - taken)]
        if len(chunk) == 0 and goal is not None and stop_distance is not None:
            stopped = True  # the policy proposes to stay at its goal: it has arrived
            break
        if len(chunk) == 0:  # exploring, the policy proposes to stay: ask again
            continue
        result = model.rollout(state, chunk[None], generator=generator)
        state = state.advance(result)
        rgb.append(result.rgb[0])
        poses.append(result.cam_to_world[0])
        actions.append(chunk)
        taken += len(chunk)
    if taken < steps and not stopped:
        raise RuntimeError(
            f"the policy proposed to stay {10 * steps} times; it took {taken} of {steps} actions"
        )
    return ImaginedTrajectory(
        rgb=torch.cat(rgb).float(),
        cam_to_world=torch.cat(poses).float(),
        actions=torch.cat(actions) if actions else torch.zeros(0, dtype=torch.int64),
        stopped=stopped,
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
    window = config.window(policy)
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


def _rows(clips: dict[str, Tensor], index: Tensor, window: int) -> dict[str, Tensor]:
    """Rows ``index`` of clips cut to ``window`` frames, RGB as float in [0, 1]."""
    rgb = clips["rgb"][index, :window]
    if rgb.dtype == torch.uint8:  # replayed clips are kept as bytes (a quarter of the memory)
        rgb = rgb.float() / 255.0
    return {"rgb": rgb, "cam_to_world": clips["cam_to_world"][index, :window]}


def finetune(
    policy: NoMaDPolicy,
    clips: dict[str, Tensor],
    config: NoMaDTrainingConfig,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
    replay: dict[str, Tensor] | None = None,
    replay_fraction: float = 0.0,
) -> list[float]:
    """Fine-tune the policy on relabelled clips with NoMaD's loss (``config.steps`` steps).

    Args:
        policy: the policy (trained in place, on its device).
        clips: :func:`relabel`'s clips.
        config: loss, batch size, steps and optimiser settings.
        generator: random source of the batches, goals, masks, noise and diffusion steps.
        optimizer: an optimiser over the policy's parameters to continue; ``None``: a new AdamW.
        replay: original training clips, ``rgb`` (R, W', 3, H, W) float in [0, 1] or uint8
            and ``cam_to_world`` (R, W', 4, 4), W' at least the relabelled clips' length.
        replay_fraction: share of each batch drawn from ``replay``, in [0, 1).

    Returns:
        The loss of each step.
    """
    if not 0.0 <= replay_fraction < 1.0:
        raise ValueError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
    window = clips["rgb"].shape[1]
    if replay is not None and replay["rgb"].shape[1] < window:
        raise ValueError(
            f"replayed clips have {replay['rgb'].shape[1]} frames, the relabelled ones {window}"
        )
    scheduler = make_scheduler(policy)
    optimizer = optimizer or torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    device = next(policy.parameters()).device
    count = clips["rgb"].shape[0]
    replayed = 0 if replay is None else round(config.batch_size * replay_fraction)
    losses = []
    policy.train()
    for _ in range(config.steps):
        index = torch.randint(
            0, count, (min(config.batch_size - replayed, count),), generator=generator
        )
        rows = _rows(clips, index, window)
        if replayed:
            old = torch.randint(0, replay["rgb"].shape[0], (replayed,), generator=generator)
            old_rows = _rows(replay, old, window)
            rows = {k: torch.cat([rows[k], old_rows[k]]) for k in rows}
        batch = policy_batch(rows, policy, config, generator)
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


@torch.no_grad()
def heldout_loss(
    policy: NoMaDPolicy,
    clips: dict[str, Tensor],
    config: NoMaDTrainingConfig,
    batches: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """NoMaD's loss on a fixed held-out set: the same rows, goals, masks and noise every call.

    Args:
        policy: the policy (evaluated in eval mode).
        clips: held-out :func:`relabel` clips (never trained on).
        config: the loss settings and ``batch_size``.
        batches: batches averaged (one batch's diffusion noise is loud), >= 1.
        seed: seed of the fixed draws.

    Returns:
        ``loss``, ``diffusion`` and ``distance`` (MSE, frames²) averaged over the batches.
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    scheduler = make_scheduler(policy)
    device = next(policy.parameters()).device
    count, window = clips["rgb"].shape[:2]
    training = policy.training
    policy.eval()
    totals = {"loss": 0.0, "diffusion": 0.0, "distance": 0.0}
    for index in range(batches):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        rows = torch.randperm(count, generator=generator)[: config.batch_size]
        batch = policy_batch(_rows(clips, rows, window), policy, config, generator)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, parts = policy_loss(policy, scheduler, batch, config, generator)
        totals["loss"] += float(loss)
        totals["diffusion"] += parts["diffusion"]
        totals["distance"] += parts["distance"]
    policy.train(training)
    return {name: value / batches for name, value in totals.items()}


def check_adaptation_inputs(
    policy: NoMaDPolicy,
    model: RolloutModel,
    starts: list[RolloutStart],
    config: HindsightConfig,
) -> None:
    """Reject inputs that cannot adapt, before any rollout or gradient step.

    Args:
        policy: the policy to adapt.
        model: the simulator to imagine in.
        starts: the few-shot start states.
        config: the settings.

    Raises:
        ValueError: for no starts, a start of several rows, few-shot frames of another size than
            the simulator's, fewer few-shot frames than the policy's context, a policy trained
            on another frame size, or rollouts too short for one relabelled clip.
    """
    if not starts:
        raise ValueError("adapt needs at least one start state (the few-shot frames)")
    size = tuple(model.image_size)
    if tuple(policy.config.image_size) != size:
        raise ValueError(
            f"the policy works on {tuple(policy.config.image_size)} frames but the simulator "
            f"renders {size}; use a policy checkpoint trained at {size[0]}x{size[1]} or a "
            "simulator of the policy's frame size"
        )
    needed = policy.config.context_size + 1
    for index, start in enumerate(starts):
        if start.batch_size != 1:
            raise ValueError(f"start {index} has {start.batch_size} rows; each start is one state")
        if tuple(start.image_size) != size:
            raise ValueError(
                f"few-shot frames of start {index} are {tuple(start.image_size)} but the "
                f"simulator renders {size}; take them with the simulator's camera"
            )
        if start.num_frames < needed:
            raise ValueError(
                f"start {index} has {start.num_frames} few-shot frames but the policy's context "
                f"needs {needed} (context_size + 1); give at least {needed} frames"
            )
    window = config.window(policy)
    longest = max(start.num_frames for start in starts) + config.rollout_steps
    if longest < window:
        raise ValueError(
            f"clips need {window} frames but rollouts reach at most {longest} "
            f"(few-shot frames + rollout_steps = {config.rollout_steps}); roll out longer "
            "or lower max_goal_distance"
        )


def adapt(
    policy: NoMaDPolicy,
    model: RolloutModel,
    starts: list[RolloutStart],
    config: HindsightConfig,
    generator: torch.Generator,
    spec: ActionSpec | None = None,
    progress: bool = True,
    heldout: dict[str, Tensor] | None = None,
    replay: dict[str, Tensor] | None = None,
) -> list[dict[str, float]]:
    """Adapt a policy to a scene by hindsight-relabelled fine-tuning in a simulator.

    Args:
        policy: the policy (fine-tuned in place).
        model: the simulator to imagine in (a learned one initialises its memory from each
            start's frames).
        starts: few-shot start states in the scene (B = 1 each), cycled over the rollouts.
        config: the settings.
        generator: random source of everything.
        spec: the simulator's step sizes (waypoints -> actions); default :class:`ActionSpec`.
        progress: show a progress bar over rounds.
        heldout: fixed held-out relabelled clips; their loss is measured after every round.
        replay: original training clips mixed into each batch (``config.replay_fraction``).

    Returns:
        Per round: ``round``, ``clips`` relabelled, ``train_first`` / ``train_last`` (the loss
        of the round's first and last step, on its own new clips) and, with ``heldout``,
        ``heldout_loss`` / ``heldout_diffusion`` / ``heldout_distance`` after the round.

    Raises:
        ValueError: for inputs that cannot adapt (:func:`check_adaptation_inputs`), or a
            ``replay_fraction`` without ``replay``.
    """
    check_adaptation_inputs(policy, model, starts, config)
    if config.replay_fraction > 0 and replay is None:
        raise ValueError("replay_fraction > 0 needs replay clips (the original training data)")
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
        losses = finetune(
            policy, clips, config.training, generator, optimizer, replay, config.replay_fraction
        )
        row = {
            "round": float(round_index + 1),
            "clips": float(clips["rgb"].shape[0]),
            "train_first": losses[0],
            "train_last": losses[-1],
        }
        if heldout is not None:
            measured = heldout_loss(policy, heldout, config.training)
            row.update({f"heldout_{name}": value for name, value in measured.items()})
        history.append(row)
    return history
