r"""Adapt a policy to an unseen scene inside the world model (paper §4.3, Fig. 6b).

In an unseen scene the world model's memory is initialised from a few images (a spin in place at
a start point); the NoMaD-style policy explores in the world model, its imagined trajectories are
relabelled in hindsight (goals = frames it actually reached) and it is fine-tuned on them, for a
few rounds (:mod:`planners.hindsight`). Before and after, the policy navigates to image goals in
the ground-truth simulator, scored by success and SIM.

Writes ``adapt_policy.md`` / ``.json`` (success and SIM before and after, the fine-tuning
losses), ``topdown.png`` (one episode's trajectories before and after) and
``imagined_vs_executed.mp4`` (goal | the world model's imagination of the executed actions | the
ground truth, after adaptation).

Run (the embedded world model and policy unless ``--checkpoint`` / ``--policy`` name others)::

    python examples/adapt_policy.py

Tiny setting (as the tests; untrained tiny models)::

    python examples/adapt_policy.py --checkpoint tiny-untrained --policy untrained --preset tiny \
        --output-dir /tmp/adapt \
        --episodes 1 --eval-steps 4 --hindsight.rounds 1 --hindsight.rollouts 1 \
        --hindsight.rollout-steps 6 --hindsight.training.max-goal-distance 2 \
        --hindsight.training.min-action-distance 1 --hindsight.training.steps 2 --sampling-steps 2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.embedded.scenes import scene_ids
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import ImageGoalEpisode, episode_start, sample_image_goal_episode
from planners.hindsight import HindsightConfig, ImaginedTrajectory, adapt, imagine_policy
from planners.metrics import sim_score, success
from planners.nomad import NoMaDPolicy, load_policy
from planners.ranking import NoMaDSampler
from worldsim import cli
from worldsim.evaluation.report import plot_trajectories, write_panel_video, write_report
from worldsim.geometry import Action, position_yaw_from_pose
from worldsim.simulator.checkpoints import learned_planning_rollout
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.protocol import RolloutStart


@dataclass(frozen=True)
class Args:
    """Settings of the adaptation experiment."""

    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), tiny-untrained (smoke test), or
    None: the embedded default checkpoint."""
    output_dir: Path = Path("outputs/adapt_policy")
    """Output folder."""
    policy: str | None = None
    """Policy folder (NoMaDPolicy.save_pretrained), untrained (an untrained --preset
    policy, for smoke tests), or None: the embedded policy."""
    preset: Literal["tiny", "small", "upstream"] = "small"
    """Size of the untrained policy."""
    split: str = "test"
    """Scene split (test: scenes unseen in training)."""
    scene_index: int = 0
    """Which scene of the split."""
    few_images: int = 6
    """Images of a spin in place that initialise the memory, >= 1."""
    episodes: int = 10
    """Image-goal episodes evaluated before and after."""
    eval_steps: int = 40
    """Most actions per evaluation episode."""
    execute_steps: int = 4
    """Actions of each sampled trajectory executed before the policy is asked again."""
    hindsight: HindsightConfig = field(default_factory=HindsightConfig)
    """Rounds, rollouts and fine-tuning settings."""
    turn_step_deg: float | None = None
    """Turn step of the discrete actions, degrees; None: the world model's own (10° for the
    embedded checkpoint)."""
    min_goal_m: float = 1.0
    """Smallest start-to-goal geodesic distance, metres."""
    max_goal_m: float = 2.5
    """Largest, metres."""
    success_radius_m: float = 0.5
    """An episode succeeds when it ends this close to the goal, metres."""
    sampling_steps: int | None = None
    """DDIM steps per generated chunk of the world model (None: the checkpoint's
    sampler_config.json)."""
    seed: int = 0
    """Seed of everything."""
    device: str = "cpu"
    """Device of the models."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def world_model_rollout(args: Args) -> LearnedSimulator:
    """The learned simulator of ``--checkpoint`` with its memory."""
    return learned_planning_rollout(
        args.checkpoint,
        args.device,
        turn_step_deg=args.turn_step_deg,
        num_inference_steps=args.sampling_steps,
    )


def spin_start(oracle: OracleRollout, scene: str, count: int, rng: np.random.Generator):
    """A start whose ``count`` frames are a spin in place (the few images of the memory)."""
    if count < 1:
        raise ValueError(f"few_images must be >= 1, got {count}")
    position = oracle.sim.sample_navigable_point(rng)
    start = oracle.start(scene, position, float(rng.uniform(-np.pi, np.pi)), num_frames=count)
    if count == 1:
        return start
    turns = torch.full((1, count - 1), int(Action.TURN_LEFT), dtype=torch.int64)
    return start.advance(oracle.rollout(start, turns))  # frames: the start view, then turns


def evaluate(
    policy: NoMaDPolicy,
    oracle: OracleRollout,
    episodes: list[ImageGoalEpisode],
    args: Args,
) -> tuple[dict[str, float], list[tuple[RolloutStart, ImaginedTrajectory, torch.Tensor]]]:
    """Success and SIM of the policy navigating to image goals in the ground truth."""
    sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
    needed = policy.config.context_size + 1
    sims, successes, runs = [], [], []
    for index, episode in enumerate(tqdm(episodes, desc="evaluating", leave=False)):
        start, goal = episode_start(oracle, episode, needed)
        generator = torch.Generator().manual_seed(args.seed * 1000 + index)
        run = imagine_policy(
            oracle, sampler, start, args.eval_steps, args.execute_steps, generator, goal
        )
        position, yaw = position_yaw_from_pose(run.cam_to_world[-1].double())
        sims.append(
            sim_score(
                estimate_position=position,
                estimate_yaw=yaw,
                reference_position=episode.goal_position,
                reference_yaw=episode.goal_yaw,
            )
        )
        reached = success(position.numpy(), episode.goal_position, args.success_radius_m)
        successes.append(bool(reached))
        runs.append((start, run, goal))
    return {"success": float(np.mean(successes)), "sim": float(np.mean(sims))}, runs


def main(args: Args) -> list[dict[str, float]]:
    """Run the experiment; returns the metrics table's rows."""
    torch.manual_seed(args.seed)  # initialisation of untrained models
    args.output_dir.mkdir(parents=True, exist_ok=True)
    world = world_model_rollout(args)
    size = world.image_size[0]
    policy = load_policy(args.policy, args.preset, size, args.device)
    oracle = OracleRollout(
        config=SimulatorConfig(
            width=size, height=size, turn_step_deg=world.model.action_spec.turn_step_deg
        )
    )
    rng = np.random.default_rng(args.seed)
    scene = scene_ids(args.split, args.scene_index + 1)[args.scene_index]
    episodes = [
        sample_image_goal_episode(oracle, scene, rng, args.min_goal_m, args.max_goal_m)
        for _ in range(args.episodes)
    ]
    before, runs_before = evaluate(policy, oracle, episodes, args)
    start = spin_start(oracle, scene, args.few_images, rng)
    generator = torch.Generator().manual_seed(args.seed)
    history = adapt(
        policy, world, [start], args.hindsight, generator, spec=oracle.sim.config.action_spec
    )
    after, runs_after = evaluate(policy, oracle, episodes, args)
    rows = [
        {"policy": "before", "scene": scene, "episodes": len(episodes), **before},
        {
            "policy": f"after {args.hindsight.rounds} hindsight rounds",
            "scene": scene,
            "episodes": len(episodes),
            **after,
            "loss_first": history[0]["loss_first"],
            "loss_last": history[-1]["loss_last"],
        },
    ]
    write_report(rows, args.output_dir, "adapt_policy")
    oracle.sim.load_scene(scene)
    plot_trajectories(
        {"before": runs_before[0][1].cam_to_world, "after": runs_after[0][1].cam_to_world},
        args.output_dir / "topdown.png",
        occupancy=oracle.sim.navigation.navigable,
        extent=oracle.sim.navigation.extent,
        goal=episodes[0].goal_position,
        title=f"policy before / after adaptation in {scene}",
    )
    first_start, executed, goal = runs_after[0]
    dream = world.rollout(first_start, executed.actions[None], generator=generator)
    count = first_start.num_frames
    imagined = torch.cat([executed.rgb[count - 1 : count], dream.rgb[0]])  # (S + 1, 3, H, W)
    real = executed.rgb[count - 1 :]
    write_panel_video(
        {"goal": goal, "imagined": imagined, "executed": real},
        args.output_dir / "imagined_vs_executed.mp4",
    )
    print((args.output_dir / "adapt_policy.md").read_text())
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
