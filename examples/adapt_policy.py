r"""Adapt a policy to unseen houses by hindsight-relabelled fine-tuning (paper §4.3, Fig. 6b).

In each unseen house the simulator starts from a few images (a spin in place at a start point);
the NoMaD-style policy explores from there, its trajectories are relabelled in hindsight (goals =
frames it actually reached) and it is fine-tuned on them, for a few rounds
(:mod:`planners.hindsight`). The simulator it explores in is the learned world model (its memory
initialised from the few images) or, as the upper bound, the ground truth (``--simulator
ground_truth``: the same start, the true frames). Before and after, the policy navigates to a
fixed set of image goals per house in the ground truth, scored by success (with a 95 % Wilson
interval), how often it came within the success radius at all (``reached``: success had it
stopped at the right time), and SIM. Every house adapts a fresh copy of the policy.

The loss is measured on a fixed held-out relabelled set per house (the base policy's
ground-truth exploration from another start, never trained on) before and after every round.

Writes ``adapt_policy.md`` / ``.json`` (per house and over all houses: success, its interval,
reached, SIM before and after; held-out losses per round), ``topdown.png`` (the first house's
first episode before and after) and ``imagined_vs_executed.mp4`` (goal | the world model's
imagination of the executed actions, or the executed frames again in the ground truth | the
ground truth, after adaptation).

Run (the embedded world model and policy unless ``--checkpoint`` / ``--policy`` name others)::

    python examples/adapt_policy.py --simulator ground_truth --scene-start 10 --num-scenes 3 \
        --episodes 60

Tiny setting (as the tests; untrained tiny models)::

    python examples/adapt_policy.py --checkpoint tiny-untrained --policy untrained --preset tiny \
        --output-dir /tmp/adapt \
        --episodes 1 --eval-steps 4 --hindsight.rounds 1 --hindsight.rollouts 1 \
        --hindsight.rollout-steps 6 --hindsight.training.max-goal-distance 2 \
        --hindsight.training.min-action-distance 1 --hindsight.training.steps 2 --sampling-steps 2
"""

from __future__ import annotations

import copy
import time
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
from planners.hindsight import (
    HindsightConfig,
    ImaginedTrajectory,
    adapt,
    check_adaptation_inputs,
    heldout_loss,
    imagine_policy,
    relabel,
)
from planners.metrics import sim_score, success, wilson_interval
from planners.nomad import NoMaDPolicy, load_policy
from planners.ranking import NoMaDSampler
from worldsim import cli
from worldsim.evaluation.report import plot_trajectories, write_panel_video, write_report
from worldsim.geometry import Action, position_yaw_from_pose
from worldsim.simulator.checkpoints import learned_planning_rollout
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.protocol import RolloutModel, RolloutStart

WORLD_MODEL_TURN_STEP_DEG = 10.0
"""Turn step of the ground-truth-only runs when none is asked for: the embedded world model's."""


@dataclass(frozen=True)
class Args:
    """Settings of the adaptation experiment."""

    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), tiny-untrained (smoke test), or
    None: the embedded default checkpoint. Unused with --simulator ground_truth."""
    simulator: Literal["learned", "ground_truth"] = "learned"
    """What the policy explores in while adapting: the learned world model from the few images,
    or the ground truth (the upper bound)."""
    output_dir: Path = Path("outputs/adapt_policy")
    """Output folder."""
    policy: str | None = None
    """Policy folder (NoMaDPolicy.save_pretrained), untrained (an untrained --preset
    policy, for smoke tests), or None: the embedded policy."""
    preset: Literal["tiny", "small", "upstream"] = "small"
    """Size of the untrained policy."""
    split: str = "test"
    """Scene split (test: scenes unseen in training)."""
    scene_start: int = 0
    """Index of the first house in the split (e.g. 10: house-test-0010..)."""
    num_scenes: int = 1
    """Houses, from --scene-start on; each adapts a fresh copy of the policy."""
    few_images: int = 6
    """Images of a spin in place the adaptation starts from, >= the policy's context + 1."""
    episodes: int = 10
    """Image-goal episodes per house, evaluated before and after (fixed by --episode-seed)."""
    episode_seed: int = 0
    """Seed of the evaluation episodes (fixed across adaptation seeds)."""
    eval_steps: int = 40
    """Most actions per evaluation episode."""
    execute_steps: int = 4
    """Actions of each sampled trajectory executed before the policy is asked again."""
    stop_distance: float | None = None
    """Stop an evaluation episode when the policy's distance head predicts at most this many
    frames to the goal (NoMaD's goal-reached test) or its waypoints propose to stay; None: never
    stop (run out the steps)."""
    hindsight: HindsightConfig = field(default_factory=HindsightConfig)
    """Rounds, rollouts and fine-tuning settings."""
    heldout_rollouts: int = 2
    """Ground-truth exploration rollouts (rollout_steps each) of the base policy from another
    start, relabelled into the fixed held-out set of each house, >= 1."""
    replay_dir: Path | None = None
    """Trajectory data set the policy was trained on (collect_data.py), replayed with
    --hindsight.replay-fraction; None: no replay."""
    replay_clips: int = 256
    """Clips drawn from --replay-dir into memory, >= 1."""
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
    """Seed of the few-shot starts, the rollouts and the fine-tuning."""
    device: str = "cpu"
    """Device of the models."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def check_args(args: Args) -> None:
    """Refuse settings that cannot run (one ``error:`` line, before any work)."""
    counts = ("num_scenes", "few_images", "episodes", "eval_steps", "execute_steps")
    for name in (*counts, "heldout_rollouts", "replay_clips"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.scene_start < 0:
        raise ValueError(f"--scene-start must be >= 0, got {args.scene_start}")
    if args.hindsight.replay_fraction > 0 and args.replay_dir is None:
        raise ValueError(
            f"--hindsight.replay-fraction {args.hindsight.replay_fraction} needs --replay-dir "
            "(the policy's training data)"
        )


def world_model_rollout(args: Args) -> LearnedSimulator:
    """The learned simulator of ``--checkpoint`` with its memory."""
    return learned_planning_rollout(
        args.checkpoint,
        args.device,
        turn_step_deg=args.turn_step_deg,
        num_inference_steps=args.sampling_steps,
    )


def spin_start(
    oracle: OracleRollout, scene: str, count: int, rng: np.random.Generator
) -> RolloutStart:
    """A start whose ``count`` frames are a spin in place (the few images of the memory)."""
    if count < 1:
        raise ValueError(f"few_images must be >= 1, got {count}")
    oracle.sim.load_scene(scene)
    position = oracle.sim.sample_navigable_point(rng)
    start = oracle.start(scene, position, float(rng.uniform(-np.pi, np.pi)), num_frames=count)
    if count == 1:
        return start
    turns = torch.full((1, count - 1), int(Action.TURN_LEFT), dtype=torch.int64)
    return start.advance(oracle.rollout(start, turns))  # frames: the start view, then turns


def replay_clips(args: Args, policy: NoMaDPolicy) -> dict[str, torch.Tensor] | None:
    """``--replay-clips`` clips of the policy's training data (RGB as uint8), or ``None``."""
    if args.replay_dir is None:
        return None
    from worldsim.data import ClipConfig, ClipDataset

    window = args.hindsight.window(policy)
    context = policy.config.context_size + 1
    dataset = ClipDataset(
        args.replay_dir,
        ClipConfig(n_context=context, n_future=window - context, max_memory_frames=0),
    )
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(dataset), size=min(args.replay_clips, len(dataset)), replace=False)
    items = [dataset[int(i)] for i in tqdm(picks, desc="replay clips", leave=False)]
    size = tuple(items[0]["rgb"].shape[-2:])
    if size != tuple(policy.config.image_size):
        raise ValueError(
            f"--replay-dir holds {size} frames, the policy works on "
            f"{tuple(policy.config.image_size)}"
        )
    rgb = torch.stack([(item["rgb"] * 255).round().to(torch.uint8) for item in items])
    return {"rgb": rgb, "cam_to_world": torch.stack([item["cam_to_world"] for item in items])}


def evaluate(
    policy: NoMaDPolicy,
    oracle: OracleRollout,
    episodes: list[ImageGoalEpisode],
    args: Args,
) -> tuple[dict[str, float], list[tuple[RolloutStart, ImaginedTrajectory, torch.Tensor]]]:
    """Success (with its Wilson interval), reached, SIM of the policy in the ground truth."""
    sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
    needed = policy.config.context_size + 1
    sims, successes, reached, stopped, runs = [], [], [], [], []
    for index, episode in enumerate(tqdm(episodes, desc="evaluating", leave=False)):
        start, goal = episode_start(oracle, episode, needed)
        generator = torch.Generator().manual_seed(args.seed * 1000 + index)
        run = imagine_policy(
            oracle,
            sampler,
            start,
            args.eval_steps,
            args.execute_steps,
            generator,
            goal,
            stop_distance=args.stop_distance,
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
        successes.append(
            bool(success(position.numpy(), episode.goal_position, args.success_radius_m))
        )
        path = run.cam_to_world[needed - 1 :, :3, 3].double().numpy()  # (S + 1, 3) positions
        reached.append(bool(success(path, episode.goal_position, args.success_radius_m).any()))
        stopped.append(run.stopped)
        runs.append((start, run, goal))
    return summarise(successes, reached, sims, stopped), runs


def summarise(
    successes: list[bool], reached: list[bool], sims: list[float], stopped: list[bool]
) -> dict[str, float]:
    """Rates of a set of episodes, success with its 95 % Wilson interval."""
    low, high = wilson_interval(int(sum(successes)), len(successes))
    return {
        "episodes": len(successes),
        "success": float(np.mean(successes)),
        "success_low": low,
        "success_high": high,
        "reached": float(np.mean(reached)),
        "stopped": float(np.mean(stopped)),
        "sim": float(np.mean(sims)),
    }


def heldout_clips(
    policy: NoMaDPolicy, oracle: OracleRollout, scene: str, args: Args, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """The fixed held-out relabelled set: the base policy explores the truth from another start."""
    start = spin_start(oracle, scene, args.few_images, rng)
    sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
    generator = torch.Generator().manual_seed(args.seed + 7919)
    trajectories = [
        imagine_policy(
            oracle,
            sampler,
            start,
            args.hindsight.rollout_steps,
            args.hindsight.execute_steps,
            generator,
        )
        for _ in range(args.heldout_rollouts)
    ]
    return relabel(trajectories, policy, args.hindsight)


def adapt_in_scene(
    base: NoMaDPolicy,
    oracle: OracleRollout,
    model: RolloutModel,
    scene: str,
    scene_number: int,
    args: Args,
    replay: dict[str, torch.Tensor] | None,
) -> dict:
    """Evaluate, adapt a copy of the policy in one house, evaluate again."""
    episode_rng = np.random.default_rng([args.episode_seed, scene_number])
    episodes = [
        sample_image_goal_episode(oracle, scene, episode_rng, args.min_goal_m, args.max_goal_m)
        for _ in range(args.episodes)
    ]
    rng = np.random.default_rng([args.seed, scene_number])
    start = spin_start(oracle, scene, args.few_images, rng)
    policy = copy.deepcopy(base)
    heldout = heldout_clips(policy, oracle, scene, args, rng)
    heldout_before = heldout_loss(policy, heldout, args.hindsight.training)
    began = time.perf_counter()
    before, runs_before = evaluate(policy, oracle, episodes, args)
    tqdm.write(f"{scene} before: {before}")
    evaluated = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    history = adapt(
        policy,
        model,
        [start],
        args.hindsight,
        generator,
        spec=oracle.sim.config.action_spec,
        heldout=heldout,
        replay=replay,
    )
    adapted = time.perf_counter()
    after, runs_after = evaluate(policy, oracle, episodes, args)
    tqdm.write(f"{scene} after: {after}; rounds: {history}")
    return {
        "scene": scene,
        "episodes": episodes,
        "before": before,
        "after": after,
        "heldout_before": heldout_before,
        "history": history,
        "raw": (runs_before, runs_after),
        "seconds": {
            "evaluate": evaluated - began,
            "adapt": adapted - evaluated,
            "total": time.perf_counter() - began,
        },
        "policy": policy,
    }


def pooled(results: list[dict], key: str) -> dict[str, float]:
    """The ``before`` / ``after`` rates over all houses' episodes (equal episodes per house)."""
    counts = [r[key]["episodes"] for r in results]
    total = sum(counts)
    rates = {
        name: sum(r[key][name] * n for r, n in zip(results, counts, strict=True)) / total
        for name in ("success", "reached", "stopped", "sim")
    }
    low, high = wilson_interval(round(rates["success"] * total), total)
    return {"episodes": total, **rates, "success_low": low, "success_high": high}


def main(args: Args) -> list[dict[str, float]]:
    """Run the experiment; returns the metrics table's rows."""
    check_args(args)
    torch.manual_seed(args.seed)  # initialisation of untrained models
    args.output_dir.mkdir(parents=True, exist_ok=True)
    world = world_model_rollout(args) if args.simulator == "learned" else None
    if world is not None:
        size, turn = world.image_size[0], world.model.action_spec.turn_step_deg
    else:
        size, turn = None, args.turn_step_deg or WORLD_MODEL_TURN_STEP_DEG
    policy = load_policy(args.policy, args.preset, size, args.device)
    size = size or policy.config.image_size[0]
    oracle = OracleRollout(config=SimulatorConfig(width=size, height=size, turn_step_deg=turn))
    model = world if world is not None else oracle
    scenes = scene_ids(args.split, args.scene_start + args.num_scenes)[args.scene_start :]
    if len(scenes) < args.num_scenes:
        raise ValueError(
            f"--scene-start {args.scene_start} --num-scenes {args.num_scenes} runs past the "
            f"{args.split} split"
        )
    # every input error before any work: a few-shot start of the first house, as each will be
    probe = spin_start(oracle, scenes[0], args.few_images, np.random.default_rng(args.seed))
    check_adaptation_inputs(policy, model, [probe], args.hindsight)
    replay = replay_clips(args, policy)
    results = [
        adapt_in_scene(policy, oracle, model, scene, args.scene_start + i, args, replay)
        for i, scene in enumerate(tqdm(scenes, desc="houses"))
    ]
    rows = []
    for result in [*results, None]:
        scene = "all" if result is None else result["scene"]
        for key in ("before", "after"):
            rates = pooled(results, key) if result is None else result[key]
            row = {
                "policy": "before" if key == "before" else f"after {args.hindsight.rounds} rounds",
                "simulator": args.simulator,
                "scene": scene,
                **rates,
            }
            if result is not None and key == "before":
                row["heldout_loss"] = result["heldout_before"]["loss"]
                row["heldout_distance"] = result["heldout_before"]["distance"]
            elif result is not None:
                row["heldout_loss"] = result["history"][-1]["heldout_loss"]
                row["heldout_distance"] = result["history"][-1]["heldout_distance"]
                row["minutes"] = result["seconds"]["total"] / 60
            rows.append(row)
    rounds = [
        {
            "scene": r["scene"],
            "round": 0.0,
            **{f"heldout_{k}": v for k, v in r["heldout_before"].items()},
        }
        for r in results
    ] + [{"scene": r["scene"], **row} for r in results for row in r["history"]]
    write_report(rows, args.output_dir, "adapt_policy")
    write_report(rounds, args.output_dir, "adapt_policy_rounds")
    write_pictures(results[0], oracle, world, args)
    print((args.output_dir / "adapt_policy.md").read_text())
    return rows


def write_pictures(
    result: dict, oracle: OracleRollout, world: LearnedSimulator | None, args: Args
) -> None:
    """The first episode's paths before and after, and the video after adaptation."""
    runs_before, runs_after = result["raw"]
    episode = result["episodes"][0]
    oracle.sim.load_scene(result["scene"])
    plot_trajectories(
        {"before": runs_before[0][1].cam_to_world, "after": runs_after[0][1].cam_to_world},
        args.output_dir / "topdown.png",
        occupancy=oracle.sim.navigation.navigable,
        extent=oracle.sim.navigation.extent,
        goal=episode.goal_position,
        title=f"policy before / after adaptation in {result['scene']}",
    )
    first_start, executed, goal = runs_after[0]
    count = first_start.num_frames
    real = executed.rgb[count - 1 :]
    if world is not None and len(executed.actions):
        generator = torch.Generator().manual_seed(args.seed)
        dream = world.rollout(first_start, executed.actions[None], generator=generator)
        imagined = torch.cat([executed.rgb[count - 1 : count], dream.rgb[0]])  # (S + 1, 3, H, W)
    else:
        imagined = real  # the ground truth is its own imagination
    write_panel_video(
        {"goal": goal, "imagined": imagined, "executed": real},
        args.output_dir / "imagined_vs_executed.mp4",
    )


if __name__ == "__main__":
    cli.run(main, Args)
