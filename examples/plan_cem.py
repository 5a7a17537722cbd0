"""CEM navigation to an image goal (paper §4.3, Fig. 6a: SIM against CEM iterations).

For each episode (a start and an image goal 1.5-3 m away in a house), plan by CEM in the
planning simulator, execute the first steps in the ground truth, replan; repeat for several
numbers of CEM iterations. Writes a metrics table (``plan_cem.md`` / ``.json``), SIM against
iterations (``sim_vs_iterations.png``), a top-down plot of the trajectories (``topdown.png``) and
a video of the imagined vs. executed views (``imagined_vs_executed.mp4``); ``episodes.json`` has
every episode's end distance, success, SIM, steps and why it stopped.

The planning simulator is the ground-truth oracle (``--planner oracle``: "imagined" equals
"executed") or the learned world model (``--planner world-model``: the embedded checkpoint, or
``--checkpoint PATH``, a folder of ``WorldModel.save_pretrained`` with its ``memory.json``),
through the same rollout interface; actions are always executed in the ground truth.
``--checkpoint tiny-untrained`` builds an untrained tiny world model (32x32 frames, a cheap
colour-feature memory): a smoke test of the pipeline whose imagined frames are noise. With a
world model the frame size is the model's.

Run (a few minutes on a CPU)::

    python examples/plan_cem.py

Tiny setting (as the tests)::

    python examples/plan_cem.py --output-dir /tmp/plan_cem --episodes 1 --iterations 1 \
        --num-samples 8 --horizon 4 --max-steps 4 --size 32

With the learned simulator (the embedded checkpoint unless ``--checkpoint`` names another)::

    python examples/plan_cem.py --output-dir outputs/plan_cem_wm --planner world-model
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

from envs.embedded.scenes import scene_ids
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import (
    earlier_walks,
    episode_start,
    planning_simulator,
    sample_image_goal_episodes,
)
from planners.cem import CEMConfig
from planners.costs import GoalCost, GoalCostConfig
from planners.metrics import path_length, sim_score, spl, success
from planners.mpc import MPCConfig, MPCEpisode, run_mpc
from worldsim import cli
from worldsim.evaluation.report import (
    plot_metric_curves,
    plot_trajectories,
    write_panel_video,
    write_report,
)


@dataclass(frozen=True)
class Args:
    """Settings of the CEM navigation experiment."""

    output_dir: Path = Path("outputs/plan_cem")
    """Output folder."""
    planner: Literal["oracle", "world-model"] = "oracle"
    """Simulator plans are imagined in: the ground truth, or the learned world model."""
    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), tiny-untrained (an untrained
    smoke-test model), or None: the embedded default checkpoint."""
    sampling_steps: int | None = None
    """DDIM steps per generated chunk of the world model (None: the checkpoint's
    sampler_config.json)."""
    split: str = "train"
    """Scene split the episodes come from."""
    num_scenes: int = 5
    """Scenes cycled through."""
    scene_start: int = 0
    """Index of the first house in the split (houses scene_start .. scene_start + num_scenes - 1;
    e.g. 10 for house-test-0010..): results on the first houses alone are not held out."""
    episodes: int = 10
    """Episodes per iteration count."""
    size: int | None = None
    """Frame height and width, pixels; None: 64 for the oracle, the world model's own."""
    turn_step_deg: float | None = None
    """Turn step of the discrete actions, degrees; None: the world model's own with
    --planner world-model (10° for the embedded checkpoint), 30° with the oracle. To compare
    the two planners with the same budget, give the oracle the world model's step (10): with
    30° turns it faces a goal in a third of the actions."""
    iterations: tuple[int, ...] = (1, 2, 3)
    """CEM iteration counts compared (Fig. 6a): each run plans with one of them as its
    num_iterations (so --num-iterations is not read here)."""
    planning: Annotated[MPCConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: MPCConfig(
            cem=CEMConfig(num_samples=60, horizon=12),
            execute_steps=3,
            max_steps=80,
            record_imagined=True,
        )
    )
    """CEM and its receding-horizon loop (planners.mpc.MPCConfig; flags without a prefix:
    --kind, --num-samples, --horizon, --execute-steps, --max-steps, ...)."""
    min_goal_m: float = 1.5
    """Smallest start-to-goal geodesic distance, metres."""
    max_goal_m: float = 3.0
    """Largest start-to-goal geodesic distance, metres."""
    success_radius_m: float = 0.5
    """An episode succeeds when it ends this close to the goal, metres."""
    tour_steps: int = 0
    """Frames of an earlier walk through each house (random waypoints) that the world model's
    episode maps start from: what the agent saw there before (0: nothing; the oracle ignores
    it)."""
    collisions: bool = False
    """The world model's imagined camera collides with the walls its map has observed (the
    oracle always collides)."""
    cost_blur_px: float = 0.0
    """Gaussian blur of frames and goal before LPIPS, pixels (0: none; see planners.costs)."""
    seed: int = 0
    """Seed of episodes and plans."""
    device: str = "cpu"
    """Device of the goal cost (LPIPS)."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def episode_video(run: MPCEpisode, path: Path, goal: torch.Tensor) -> Path:
    """Write goal | imagined | executed side by side, one frame per executed step."""
    imagined = run.imagined if run.imagined is not None else run.frames
    return write_panel_video({"goal": goal, "imagined": imagined, "executed": run.frames}, path)


def main(args: Args) -> list[dict[str, float]]:
    """Run the experiment; returns the metrics table's rows."""
    scenes = scene_ids(args.split, args.num_scenes, args.scene_start)  # refuses bad ranges first
    args.output_dir.mkdir(parents=True, exist_ok=True)
    learned, size, turn_step_deg = planning_simulator(
        args.planner,
        args.checkpoint,
        args.device,
        None,
        args.turn_step_deg,
        args.sampling_steps,
        args.size,
        collisions=args.collisions,
    )
    oracle = OracleRollout(
        config=SimulatorConfig(width=size, height=size, turn_step_deg=turn_step_deg)
    )
    planner = oracle if learned is None else learned
    cost = GoalCost(GoalCostConfig(blur_px=args.cost_blur_px), device=args.device)
    rng = np.random.default_rng(args.seed)
    episodes = sample_image_goal_episodes(
        oracle, scenes, args.episodes, rng, args.min_goal_m, args.max_goal_m
    )
    # One earlier walk per house, the same for every episode and setting there.
    priors = earlier_walks(
        oracle, learned, [episode.scene for episode in episodes], args.tour_steps, args.seed
    )
    rows, showcase, details = [], None, []
    for iterations in args.iterations:
        config = dataclasses.replace(
            args.planning, cem=dataclasses.replace(args.planning.cem, num_iterations=iterations)
        )
        sims, successes, shortest, taken, steps = [], [], [], [], []
        for index, episode in enumerate(tqdm(episodes, desc=f"CEM, {iterations} iterations")):
            start, goal = episode_start(oracle, episode)
            generator = torch.Generator().manual_seed(args.seed * 1000 + index)
            prior = priors.get(episode.scene)
            run = run_mpc(planner, oracle, start, goal, cost, config, generator, False, prior)
            final = run.agent_states[-1]
            sims.append(
                sim_score(
                    estimate_position=final[:3],
                    estimate_yaw=final[3],
                    reference_position=episode.goal_position,
                    reference_yaw=episode.goal_yaw,
                )
            )
            successes.append(
                bool(success(final[:3].numpy(), episode.goal_position, args.success_radius_m))
            )
            shortest.append(episode.geodesic_distance)
            taken.append(path_length(run.agent_states[:, :3].numpy()))
            steps.append(len(run.actions))
            offset = final[:3].numpy() - episode.goal_position
            details.append(
                {
                    "cem_iterations": iterations,
                    "episode": index,
                    "scene": episode.scene,
                    "geodesic_m": float(episode.geodesic_distance),
                    "end_distance_m": float(np.hypot(offset[0], offset[2])),
                    "success": successes[-1],
                    "sim": sims[-1],
                    "steps": len(run.actions),
                    "stop_reason": run.stop_reason,
                }
            )
            if index == 0:
                showcase = (episode, run, goal)
        rows.append(
            {
                "planner": args.planner,
                "cem_iterations": iterations,
                "episodes": len(episodes),
                "success": float(np.mean(successes)),
                "sim": float(np.mean(sims)),
                "spl": spl(successes, shortest, taken),
                "mean_steps": float(np.mean(steps)),
            }
        )
    write_report(rows, args.output_dir, "plan_cem")
    (args.output_dir / "episodes.json").write_text(json.dumps(details, indent=1) + "\n")
    plot_metric_curves(
        {"SIM": [row["sim"] for row in rows], "success": [row["success"] for row in rows]},
        args.output_dir / "sim_vs_iterations.png",
        title="CEM: SIM against iterations",
        xlabel=f"CEM iterations {list(args.iterations)} (index)",
    )
    episode, run, goal = showcase
    oracle.sim.load_scene(episode.scene)
    navigation = oracle.sim.navigation
    plot_trajectories(
        {"executed": run.poses},
        args.output_dir / "topdown.png",
        occupancy=navigation.navigable,
        extent=navigation.extent,
        goal=episode.goal_position,
        title=f"CEM in {episode.scene}",
    )
    episode_video(run, args.output_dir / "imagined_vs_executed.mp4", goal)
    print(f"wrote {args.output_dir}/plan_cem.md")
    print((args.output_dir / "plan_cem.md").read_text())
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
