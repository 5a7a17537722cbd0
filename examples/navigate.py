"""The main job: CEM navigation to an image goal in an unseen house, imagined by the world model.

An agent stands in a house none of the shipped models saw in training (the ``test`` split) and
is shown a picture taken 1.5-2.5 m away. It has walked through the house before (``--tour-steps``
frames of a random-waypoint walk from a random start; 0 for none): the world model's persistent
3D map holds that walk, and every view the agent sees during the episode goes in too. It plans
by the cross-entropy method in the embedded world model (:mod:`planners.cem`: sample action
sequences, imagine each with the RGB-D video diffusion model reading its map rendered into every
imagined camera, score the imagined last frame against the goal with LPIPS, refit, repeat),
executes the first actions of the best plan in the ground-truth simulator, and replans from what
it sees, until it believes it has arrived. Once the goal picture is found in the map
(:mod:`planners.localisation`), the cost adds the map's geodesic cost-to-go to it
(:mod:`planners.goal_map`; ``--cost lpips`` for LPIPS alone), and the agent stops where the map
puts the goal under it or where its view's LPIPS falls below the calibrated threshold. The same
planner with the ground truth as its imagination (the oracle, which needs no walk) runs the same
episodes for reference.

Writes to ``--output-dir`` (``outputs/navigate``):

- ``navigate.md`` / ``.json``: per planner and episode, why the planner stopped (``stop``, its
  belief) apart from success (the truth: within 0.5 m of the goal, the paper's image-goal
  radius; the library's metrics default to Habitat's 0.2 m), false stops, the start's
  geodesic (walkable) distance to the goal ``start_geodesic_m``, the final straight-line floor
  distance ``final_straight_line_m``, SIM (paper §4.3), actions, wall time; and a summary;
- ``navigate.mp4``: goal | imagined | executed, one frame per action, the world model's first
  episode and then the oracle's, each frame captioned with the planner, step, action and the
  goal cost (LPIPS) of the imagined and the seen frame;
- ``topdown.png``: the executed paths of both planners on the house's floor plan;
- ``episodes.png``: every episode of every planner, reached or not, with start and goal poses.

Run (about 2.5 minutes on a 2-core CPU)::

    python examples/navigate.py

Tiny setting (as the tests: an untrained tiny world model, a few actions)::

    python examples/navigate.py --checkpoint tiny-untrained --output-dir /tmp/navigate \
        --num-samples 4 --horizon 4 --max-steps 4 --sampling-steps 2
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import (
    ImageGoalEpisode,
    episode_start,
    planning_simulator,
    sample_image_goal_episode,
)
from planners.cem import CEMConfig
from planners.costs import GoalCost, GoalCostConfig
from planners.episodes import judge_episode, plot_episode_grid
from planners.goal_map import map_of_frames
from planners.mpc import MPCConfig, MPCEpisode, run_mpc
from worldsim import cli
from worldsim.evaluation.report import plot_trajectories, write_panel_video, write_report
from worldsim.geometry import Action
from worldsim.memory import Memory
from worldsim.simulator.protocol import RolloutModel


@dataclass(frozen=True)
class Args:
    """Settings of the navigation job."""

    output_dir: Path = Path("outputs/navigate")
    """Output folder."""
    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), tiny-untrained (an untrained
    smoke-test model), or None: the embedded checkpoint."""
    scene: str = "house-test-0000"
    """House of the episodes: an id of envs.embedded.scenes or a .glb path."""
    episodes: int = 1
    """Image-goal episodes, each with its own start and goal."""
    min_goal_m: float = 1.5
    """Smallest start-to-goal geodesic distance, metres."""
    max_goal_m: float = 2.5
    """Largest, metres."""
    planning: Annotated[MPCConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: MPCConfig(
            cem=CEMConfig(num_samples=12, num_iterations=2, horizon=8, probe_turns=4),
            execute_steps=4,
            max_steps=24,
            record_imagined=True,
        )
    )
    """CEM, its receding-horizon loop, cost and stopping (planners.mpc.MPCConfig; flags without
    a prefix: --cost, --num-samples, --horizon, --max-steps, ...): the library's cost and
    stopping rules with the main job's budget (a minute on a CPU, where the library's defaults
    take several): 12 sequences x 2 iterations, a horizon of two of the embedded model's
    4-frame chunks, probes of at most 4 x 10° turns either way, 4 actions per decision, 24 per
    episode."""
    sampling_steps: int | None = None
    """DDIM steps per imagined chunk (None: the checkpoint's sampler_config.json; the shipped one
    says 4)."""
    tour_steps: int = 300
    """Frames of an earlier walk through the house (random waypoints, from a random start) that
    the world model's episode map starts from: what the agent saw there before (0: nothing, the
    agent knows only what it sees during the episode)."""
    oracle: bool = True
    """Also run the planner with the ground truth as its imagination, for reference."""
    success_radius_m: float = 0.5
    """An episode succeeds when it ends this close to the goal, metres."""
    cost_blur_px: float = 0.0
    """Gaussian blur of frames and goal before LPIPS, pixels (0: none; see planners.costs)."""
    seed: int = 0
    """Seed of the episodes, the plans and the model's noise."""
    device: str = "cpu"
    """Device of the world model and the goal cost."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def navigate(
    planner: RolloutModel,
    truth: OracleRollout,
    episode: ImageGoalEpisode,
    cost: GoalCost,
    config: MPCConfig,
    seed: int,
    prior_memory: Memory | None = None,
) -> tuple[MPCEpisode, torch.Tensor, float]:
    """One receding-horizon episode; returns it, the goal image and its wall time (s)."""
    start, goal = episode_start(truth, episode)
    begin = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    run = run_mpc(planner, truth, start, goal, cost, config, generator, True, prior_memory)
    return run, goal, time.perf_counter() - begin


def score(
    run: MPCEpisode, episode: ImageGoalEpisode, radius: float, seconds: float
) -> dict[str, float | str | bool]:
    """What the planner believed (``stop``) and what the truth says (``success``), effort."""
    outcome = judge_episode(
        run, episode.goal_position, episode.goal_yaw, episode.geodesic_distance, radius
    )
    return {
        "success": outcome.success,
        "false_stop": outcome.false_stop,
        "final_straight_line_m": outcome.end_distance_m,
        "start_geodesic_m": episode.geodesic_distance,
        "sim": outcome.sim,
        "actions": outcome.steps,
        "stop": run.stop_reason,
        "goal_localised": outcome.localised,
        "decision_s": outcome.decision_s,
        "seconds": seconds,
    }


def write_episode_video(
    runs: dict[str, tuple[MPCEpisode, torch.Tensor]], cost: GoalCost, path: Path
) -> Path:
    """Goal | imagined | executed for each planner's episode in turn, one caption per step.

    The caption names the planner, the step, the action that led to the frame and the goal
    cost (LPIPS) of the frame the planner imagined there and of the one it then saw.
    """
    goals, imagined, executed, captions = [], [], [], []
    for name, (run, goal) in runs.items():
        steps = len(run.frames)
        dreamt = run.imagined if run.imagined is not None else run.frames
        costs_imagined = cost.frames(dreamt[:, None], goal)
        costs_seen = cost.frames(run.frames[:, None], goal)
        for step in range(steps):
            action = "start" if step == 0 else Action(int(run.actions[step - 1])).name.lower()
            captions.append(
                f"{name} | step {step}/{steps - 1} | {action} | goal LPIPS imagined "
                f"{float(costs_imagined[step]):.2f}, seen {float(costs_seen[step]):.2f}"
            )
        goals.append(goal[None].expand(steps, -1, -1, -1))
        imagined.append(dreamt)
        executed.append(run.frames)
    panels = {
        "goal": torch.cat(goals),
        "imagined": torch.cat(imagined),
        "executed": torch.cat(executed),
    }
    return write_panel_video(panels, path, captions=captions)


def main(args: Args) -> list[dict]:
    """Run the job; returns the metrics table's rows (per episode, then a summary per planner)."""
    learned, size, turn = planning_simulator(
        "world-model", args.checkpoint, args.device, num_inference_steps=args.sampling_steps
    )
    truth = OracleRollout(config=SimulatorConfig(width=size, height=size, turn_step_deg=turn))
    config = args.planning
    cost = GoalCost(GoalCostConfig(blur_px=args.cost_blur_px), device=args.device)
    rng = np.random.default_rng(args.seed)
    episodes = [
        sample_image_goal_episode(truth, args.scene, rng, args.min_goal_m, args.max_goal_m)
        for _ in range(args.episodes)
    ]
    if args.tour_steps < 0:
        raise ValueError(f"--tour-steps must be >= 0 (0: no earlier walk), got {args.tour_steps}")
    priors: dict[str, Memory | None] = {"world model": None, "oracle": None}
    if args.tour_steps > 0:
        walk = truth.tour(args.scene, args.tour_steps, np.random.default_rng([args.seed, 1]))
        # The oracle's map of the same walk serves only to localise the goal.
        priors = {"world model": learned.map_of(walk), "oracle": map_of_frames(walk)}
        print(f"earlier walk through {args.scene}: {args.tour_steps} frames in the map")
    planners: dict[str, RolloutModel] = {"world model": learned}
    if args.oracle:
        planners["oracle"] = truth
    rows, paths, showcase, panels = [], {}, {}, []
    for index, episode in enumerate(episodes):
        print(
            f"episode {index}: {episode.scene}, goal {episode.geodesic_distance:.2f} m away "
            "(geodesic)"
        )
        for name, planner in planners.items():
            run, goal, seconds = navigate(
                planner,
                truth,
                episode,
                cost,
                config,
                args.seed * 1000 + index,
                priors[name],
            )
            row = {
                "planner": name,
                "episode": index,
                **score(run, episode, args.success_radius_m, seconds),
            }
            rows.append(row)
            tqdm.write(
                f"  {name}: {'reached' if row['success'] else 'missed'} the goal, "
                f"{row['final_straight_line_m']:.2f} m from it after {row['actions']} actions "
                f"({row['stop']}), SIM {row['sim']:.1f}, {seconds:.0f} s"
            )
            panels.append(
                {
                    "name": f"{name}, episode {index}",
                    "outcome": judge_episode(
                        run,
                        episode.goal_position,
                        episode.goal_yaw,
                        episode.geodesic_distance,
                        args.success_radius_m,
                    ),
                    "positions": run.agent_states[:, :3].numpy(),
                    "start_yaw": episode.start_yaw,
                    "goal_position": episode.goal_position,
                    "goal_yaw": episode.goal_yaw,
                    "estimate": None if run.goal_estimate is None else run.goal_estimate.position,
                }
            )
            if index == 0:
                paths[name] = run.poses
                showcase[name] = (run, goal)
    summary = [
        {
            "planner": name,
            "episode": "all",
            **{
                key: float(np.mean([r[key] for r in rows if r["planner"] == name]))
                for key in (
                    "success",
                    "false_stop",
                    "final_straight_line_m",
                    "start_geodesic_m",
                    "sim",
                    "actions",
                    "decision_s",
                )
            },
            "stop": "-",
            "goal_localised": "-",
            "seconds": float(sum(r["seconds"] for r in rows if r["planner"] == name)),
        }
        for name in planners
    ]
    rows += summary
    write_report(rows, args.output_dir, "navigate")
    write_episode_video(showcase, cost, args.output_dir / "navigate.mp4")
    episode = episodes[0]
    truth.sim.load_scene(episode.scene)
    navigation = truth.sim.navigation
    plot_trajectories(
        paths,
        args.output_dir / "topdown.png",
        occupancy=navigation.navigable,
        extent=navigation.extent,
        goal=episode.goal_position,
        title=f"CEM to an image goal in {episode.scene} (episode 0)",
    )
    for panel in panels:  # every episode, reached or not
        panel["occupancy"], panel["extent"] = navigation.navigable, navigation.extent
    plot_episode_grid(panels, args.output_dir / "episodes.png", title=f"{episode.scene}")
    print()
    print((args.output_dir / "navigate.md").read_text())
    print(f"video: {args.output_dir / 'navigate.mp4'}   map: {args.output_dir / 'topdown.png'}")
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
