"""Trajectory ranking: NoMaD alone vs. NoMaD ranked by imagination (paper Table 2).

For each episode the ground-truth path is the shortest-path follower's walk from a start to a
goal a few metres away; the goal image is the view at its end. The NoMaD-style policy samples N
trajectories towards the goal image (8 waypoints each, converted to simulator actions); the
ranked method rolls every sample out in the planning simulator, scores LPIPS(goal image, last
imagined frame) and executes the lowest; "policy alone" executes the first sample. Executed
trajectories are scored against the ground-truth path: ATE and RPE (metres, after resampling
both paths to the same number of poses at equal fractions of their steps) and SIM of the final
pose against the goal pose.

Writes ``rank_nomad.md`` / ``.json``, a top-down plot (``topdown.png``) and a video of the
imagined vs. executed views of the ranked choice (``imagined_vs_executed.mp4``).

The planning simulator is the ground-truth oracle (``--planner oracle``) or a learned world model
(``--planner world-model --checkpoint PATH``; ``--memory none`` gives the no-memory comparison of
Table 2) through the same rollout interface (``worldsim.simulator.protocol``); ``--checkpoint
tiny-untrained`` builds an untrained tiny world model (32x32 frames, colour-feature memory) as a
smoke test. With a world model the frame size is the model's.

Run (the embedded policy unless ``--policy`` names another)::

    python examples/rank_nomad.py
    python examples/rank_nomad.py --planner world-model --split test \
        --output-dir outputs/rank_nomad_wm

Tiny setting (as the tests; an untrained tiny policy)::

    python examples/rank_nomad.py --output-dir /tmp/rank --policy untrained --preset tiny \
        --episodes 1 --num-samples 2 --size 32
    python examples/rank_nomad.py --output-dir /tmp/rank_wm --policy untrained --preset tiny \
        --episodes 1 --num-samples 2 --planner world-model --checkpoint tiny-untrained
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.embedded.scenes import scene_ids
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import (
    ImageGoalEpisode,
    earlier_walks,
    planning_simulator,
    sample_image_goal_episode,
)
from planners.costs import GoalCost
from planners.metrics import absolute_trajectory_error, relative_pose_error, sim_score
from planners.nomad import load_policy
from planners.ranking import NoMaDSampler, rank_candidates
from worldsim import cli
from worldsim.evaluation.report import plot_trajectories, write_panel_video, write_report
from worldsim.geometry import Action
from worldsim.simulator.protocol import RolloutStart

TRAJECTORY_POSES = 8
"""Poses both paths are resampled to before ATE / RPE."""


@dataclass(frozen=True)
class Args:
    """Settings of the ranking experiment."""

    output_dir: Path = Path("outputs/rank_nomad")
    """Output folder."""
    policy: str | None = None
    """Policy folder (NoMaDPolicy.save_pretrained), untrained (an untrained --preset
    policy, for smoke tests), or None: the embedded policy."""
    preset: Literal["tiny", "small", "upstream"] = "small"
    """Size of the untrained policy."""
    planner: Literal["oracle", "world-model"] = "oracle"
    """Simulator candidates are imagined in: the ground truth, or the learned world model."""
    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), tiny-untrained (an untrained
    smoke-test model), or None: the embedded default checkpoint."""
    memory: str | None = None
    """World-model memory (a build_memory name, or none); default: the checkpoint's."""
    sampling_steps: int | None = None
    """DDIM steps per generated chunk of the world model (None: the checkpoint's
    sampler_config.json)."""
    split: str = "train"
    """Scene split of the episodes."""
    num_scenes: int = 5
    """Scenes cycled through."""
    scene_start: int = 0
    """Index of the first house in the split (houses scene_start .. scene_start + num_scenes - 1;
    e.g. 10 for house-test-0010..): results on the first houses alone are not held out."""
    episodes: int = 10
    """Episodes."""
    num_samples: tuple[int, ...] = (8, 16)
    """Candidates N ranked per decision."""
    size: int | None = None
    """Frame height and width, pixels; None: 64 for the oracle, the world model's own."""
    turn_step_deg: float | None = None
    """Turn step of the discrete actions, degrees; None: the world model's own with
    --planner world-model (10° for the embedded checkpoint), 30° with the oracle."""
    min_goal_m: float = 1.0
    """Smallest start-to-goal geodesic distance, metres."""
    max_goal_m: float = 2.0
    """Largest, metres."""
    max_path_steps: int = 40
    """Longest ground-truth path, actions."""
    tour_steps: int = 0
    """Frames of an earlier walk through each house (random waypoints) that the world model's
    episode maps start from: what the agent saw there before (0: nothing; the oracle and a
    world model without memory ignore it)."""
    seed: int = 0
    """Seed of episodes and samples."""
    device: str = "cpu"
    """Device of the policy and the cost."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def ground_truth_path(
    oracle: OracleRollout, episode: ImageGoalEpisode, max_steps: int
) -> torch.Tensor:
    """(S,) int64 actions of the shortest-path follower from the start towards the goal."""
    sim = oracle.sim
    sim.load_scene(episode.scene)
    sim.reset_agent(episode.start_position, episode.start_yaw)
    actions = []
    for _ in range(max_steps):
        action = sim.oracle_action(episode.goal_position)
        if action == Action.STOP:
            break
        sim.step(action)
        actions.append(action)
    return torch.tensor(actions or [int(Action.STOP)], dtype=torch.int64)


def resample(poses: torch.Tensor, count: int) -> torch.Tensor:
    """(count, 4, 4) poses at equal fractions of a (T, 4, 4) trajectory's steps."""
    index = torch.linspace(0, poses.shape[0] - 1, count).round().long()
    return poses[index]


def executed_poses(
    oracle: OracleRollout, start: RolloutStart, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground-truth poses (start first), final agent state and frames of a sequence."""
    result = oracle.rollout(start, actions[None])
    poses = torch.cat([start.cam_to_world[0, -1:], result.cam_to_world[0]])
    return poses, result.agent_state[0, -1], result.rgb[0]


def score(
    poses: torch.Tensor, final: torch.Tensor, reference: torch.Tensor, episode: ImageGoalEpisode
) -> dict[str, float]:
    """ATE / RPE against the ground-truth path and SIM against the goal pose."""
    estimate, target = resample(poses, TRAJECTORY_POSES), resample(reference, TRAJECTORY_POSES)
    return {
        "ate_m": absolute_trajectory_error(estimate, target).translation.rmse,
        "rpe_m": relative_pose_error(estimate, target).translation.rmse,
        "sim": sim_score(
            estimate_position=final[:3],
            estimate_yaw=final[3],
            reference_position=episode.goal_position,
            reference_yaw=episode.goal_yaw,
        ),
    }


def main(args: Args) -> list[dict[str, float]]:
    """Run the experiment; returns the metrics table's rows."""
    scenes = scene_ids(args.split, args.num_scenes, args.scene_start)  # refuses bad ranges first
    args.output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)  # initialisation of an untrained policy
    policy = load_policy(args.policy, args.preset, device=args.device)
    learned, size, turn_step_deg = planning_simulator(
        args.planner,
        args.checkpoint,
        args.device,
        args.memory,
        args.turn_step_deg,
        args.sampling_steps,
        args.size,
    )
    oracle = OracleRollout(
        config=SimulatorConfig(width=size, height=size, turn_step_deg=turn_step_deg)
    )
    planner = oracle if learned is None else learned
    sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
    cost = GoalCost(device=args.device)
    rng = np.random.default_rng(args.seed)
    used = [scenes[index % len(scenes)] for index in range(args.episodes)]
    priors = earlier_walks(oracle, learned, used, args.tour_steps, args.seed)
    methods = ["policy alone", *[f"ranked by {args.planner}, N={n}" for n in args.num_samples]]
    scores: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    showcase = None
    for index in tqdm(range(args.episodes), desc="episodes"):
        episode = sample_image_goal_episode(
            oracle, scenes[index % len(scenes)], rng, args.min_goal_m, args.max_goal_m
        )
        start = oracle.start(
            episode.scene,
            episode.start_position,
            episode.start_yaw,
            num_frames=policy.config.context_size + 1,
        )
        truth_actions = ground_truth_path(oracle, episode, args.max_path_steps)
        reference, truth_final, truth_frames = executed_poses(oracle, start, truth_actions)
        goal = truth_frames[-1]
        # The goal pose is where the ground-truth path ends (its view is the goal image).
        episode = ImageGoalEpisode(
            episode.scene,
            episode.start_position,
            episode.start_yaw,
            truth_final[:3].numpy(),
            float(truth_final[3]),
            episode.geodesic_distance,
        )
        generator = torch.Generator().manual_seed(args.seed * 1000 + index)
        candidates = sampler.sample(start, goal, max(args.num_samples), generator)
        # The world model imagines from the episode's map: the earlier walk, if any, and the
        # start's views (a copy per ranking; the oracle needs none).
        imagine_from = start
        if learned is not None:
            imagine_from = learned.with_episode_memory(start, priors.get(episode.scene))
        first_poses, first_final, _ = executed_poses(oracle, start, candidates[0])
        scores["policy alone"].append(score(first_poses, first_final, reference, episode))
        for count, method in zip(args.num_samples, methods[1:], strict=True):
            ranking = rank_candidates(
                planner, imagine_from, candidates[:count], goal, cost, generator
            )
            poses, final, frames = executed_poses(oracle, start, ranking.best_actions)
            scores[method].append(score(poses, final, reference, episode))
            if index == 0 and count == max(args.num_samples):
                imagined = planner.rollout(
                    imagine_from, ranking.best_actions[None], generator=generator
                ).rgb[0]
                showcase = (episode, reference, first_poses, poses, imagined, frames, goal)
    rows = [
        {
            "method": method,
            "episodes": len(values),
            **{k: float(np.mean([v[k] for v in values])) for k in ("ate_m", "rpe_m", "sim")},
        }
        for method, values in scores.items()
    ]
    write_report(rows, args.output_dir, "rank_nomad")
    episode, reference, first_poses, best_poses, imagined, frames, goal = showcase
    oracle.sim.load_scene(episode.scene)
    plot_trajectories(
        {"ground truth": reference, "policy alone": first_poses, "ranked": best_poses},
        args.output_dir / "topdown.png",
        occupancy=oracle.sim.navigation.navigable,
        extent=oracle.sim.navigation.extent,
        goal=episode.goal_position,
        title=f"ranking in {episode.scene}",
    )
    write_panel_video(
        {"goal": goal, "imagined": imagined, "executed": frames},
        args.output_dir / "imagined_vs_executed.mp4",
    )
    print((args.output_dir / "rank_nomad.md").read_text())
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
