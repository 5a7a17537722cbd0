"""CEM navigation to an image goal (paper §4.3, Fig. 6a: SIM against CEM iterations).

For each episode (a start and an image goal 1.5-3 m away in a house), plan by CEM in the
planning simulator, execute the first steps in the ground truth, replan; repeat for several
numbers of CEM iterations (the library's own by default). Writes a metrics table
(``plan_cem.md`` / ``.json``: success with its 95 % Wilson interval, false stops, SIM, SPL,
decision time), SIM against iterations (``sim_vs_iterations.png``), a top-down picture of every
episode (``episodes.png``: start and goal poses, path, success or failure, the map's goal
estimate), videos of the imagined vs. executed views of a success and of a failure
(``imagined_vs_executed_{success,failure}.mp4``), ``episodes.json`` (per episode why the planner
stopped, ``stop_reason``, apart from the truth, ``success``) and ``stop_calibration.json`` (the
LPIPS of every executed view against its true distance to the goal, and the highest stop
threshold whose views lie within the success radius in >= 95 % of cases).

The cost is ``--cost map`` (LPIPS plus the episode map's geodesic cost-to-go to where the goal
picture was found in it, :mod:`planners.goal_map`) or the paper's ``--cost lpips``. The map is
the earlier walk (``--tour-steps``) and the episode's own views, for the oracle too.

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

The Done-when measurement of issue 26 (held-out houses house-test-0010..0013)::

    python examples/plan_cem.py --split test --scene-start 10 --num-scenes 4 --episodes 20 \
        --turn-step-deg 10 --tour-steps 300 --cost map

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
    DistinctGoals,
    ImageGoalEpisode,
    earlier_walks,
    episode_start,
    planning_simulator,
    sample_distinct_image_goal_episodes,
)
from planners.costs import GoalCost, GoalCostConfig
from planners.episodes import (
    EpisodeOutcome,
    calibrate_stop_threshold,
    judge_episode,
    plot_episode_grid,
    summarise,
)
from planners.goal_map import map_of_frames
from planners.mpc import MPCConfig, MPCEpisode, run_mpc
from worldsim import cli
from worldsim.evaluation.report import plot_metric_curves, write_panel_video, write_report
from worldsim.memory import Memory
from worldsim.simulator.learned import LearnedSimulator


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
    iterations: tuple[int, ...] | None = None
    """CEM iteration counts compared (Fig. 6a, e.g. 1 2 3): each run plans with one of them as
    its num_iterations; None: the planning settings' own (--num-iterations)."""
    planning: Annotated[MPCConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: MPCConfig(record_imagined=True)
    )
    """CEM, its receding-horizon loop, the cost and the stopping rule, at the library's
    defaults (planners.mpc.MPCConfig; flags without a prefix: --cost, --num-samples,
    --num-iterations, --horizon, --execute-steps, --max-steps, --stop-lpips, ...)."""
    distinct: DistinctGoals = field(default_factory=DistinctGoals)
    """Goal pictures that look like other places of the house are redrawn (envs.tasks;
    --distinct.min-lpips 0 accepts every goal)."""
    min_goal_m: float = 1.5
    """Smallest start-to-goal geodesic distance, metres."""
    max_goal_m: float = 3.0
    """Largest start-to-goal geodesic distance, metres."""
    success_radius_m: float = 0.5
    """An episode succeeds when it ends this close to the goal, metres."""
    tour_steps: int = 0
    """Frames of an earlier walk through each house (random waypoints) that the episode maps
    start from: what the agent saw there before (0: nothing). The world model imagines from its
    map; the oracle's map serves only the goal's localisation and the map cost."""
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


def episode_maps(
    oracle: OracleRollout,
    learned: LearnedSimulator | None,
    scenes: list[str],
    steps: int,
    seed: int,
    config: MPCConfig,
) -> dict[str, Memory]:
    """One map per house of the earlier walk.

    The learned simulator's own maps, or for the oracle (whose map only localises the goal) a
    rendered map of the same walk.
    """
    if learned is not None:
        return earlier_walks(oracle, learned, scenes, steps, seed)
    if steps == 0 or not config.uses_map:
        return {}
    return {
        scene: map_of_frames(oracle.tour(scene, steps, np.random.default_rng([seed, index])))
        for index, scene in enumerate(sorted(set(scenes)))
    }


def view_distances(run: MPCEpisode, episode: ImageGoalEpisode) -> np.ndarray:
    """(S + 1,) true floor distance of every executed view to the goal, metres."""
    offset = run.agent_states[:, [0, 2]].double().numpy() - episode.goal_position[[0, 2]]
    return np.hypot(offset[:, 0], offset[:, 1])


def main(args: Args) -> list[dict[str, float]]:
    """Run the experiment; returns the metrics table's rows."""
    scenes = scene_ids(args.split, args.num_scenes, args.scene_start)  # refuses bad ranges first
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
    horizon = args.planning.cem.horizon
    if planner.max_horizon is not None and horizon > planner.max_horizon:
        raise ValueError(
            f"--horizon {horizon} is beyond what this model supports (max_horizon = "
            f"{planner.max_horizon}); set --horizon <= {planner.max_horizon}"
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cost = GoalCost(GoalCostConfig(blur_px=args.cost_blur_px), device=args.device)
    rng = np.random.default_rng(args.seed)
    episodes, rejected = sample_distinct_image_goal_episodes(
        oracle,
        scenes,
        args.episodes,
        rng,
        cost.lpips,
        args.distinct,
        args.min_goal_m,
        args.max_goal_m,
    )
    print(f"{rejected} goals rejected: they looked like other places of their house")
    # One earlier walk per house, the same for every episode and setting there.
    priors = episode_maps(
        oracle,
        learned,
        [episode.scene for episode in episodes],
        args.tour_steps,
        args.seed,
        args.planning,
    )
    iteration_counts = args.iterations or (args.planning.cem.num_iterations,)
    rows, details, panels, views = [], [], [], []
    showcase: dict[bool, tuple] = {}
    for iterations in iteration_counts:
        config = dataclasses.replace(
            args.planning, cem=dataclasses.replace(args.planning.cem, num_iterations=iterations)
        )
        outcomes = []
        for index, episode in enumerate(tqdm(episodes, desc=f"CEM, {iterations} iterations")):
            start, goal = episode_start(oracle, episode)
            generator = torch.Generator().manual_seed(args.seed * 1000 + index)
            prior = priors.get(episode.scene)
            run = run_mpc(planner, oracle, start, goal, cost, config, generator, False, prior)
            outcome = judge_episode(
                run,
                episode.goal_position,
                episode.goal_yaw,
                episode.geodesic_distance,
                args.success_radius_m,
            )
            outcomes.append(outcome)
            details.append(
                {
                    "cem_iterations": iterations,
                    "episode": index,
                    "scene": episode.scene,
                    **outcome.as_dict(),
                }
            )
            # Written after every episode: a long run that is stopped keeps what it measured.
            (args.output_dir / "episodes.json").write_text(json.dumps(details, indent=1) + "\n")
            views.append((cost.frames(run.frames[:, None], goal), view_distances(run, episode)))
            showcase.setdefault(outcome.success, (episode, run, goal))
            if iterations == iteration_counts[-1]:
                panels.append((index, episode, run, outcome))
        rows.append(
            {
                "planner": args.planner,
                "cost": config.cost,
                "tour_steps": args.tour_steps,
                "cem_iterations": iterations,
                **summarise(outcomes),
                "goals_rejected": rejected,
            }
        )
    write_report(rows, args.output_dir, "plan_cem")
    (args.output_dir / "episodes.json").write_text(json.dumps(details, indent=1) + "\n")
    lpips = np.concatenate([np.asarray(c, dtype=np.float64) for c, _ in views])
    distance = np.concatenate([d for _, d in views])
    threshold, rate = calibrate_stop_threshold(lpips, distance, args.success_radius_m, 0.05)
    calibration = {
        "success_radius_m": args.success_radius_m,
        "max_false_rate": 0.05,
        "threshold": threshold,
        "false_rate": rate,
        "views": [[float(c), float(d)] for c, d in zip(lpips, distance, strict=True)],
    }
    (args.output_dir / "stop_calibration.json").write_text(json.dumps(calibration) + "\n")
    plot_metric_curves(
        {"SIM": [row["sim"] for row in rows], "success": [row["success"] for row in rows]},
        args.output_dir / "sim_vs_iterations.png",
        title="CEM: SIM against iterations",
        xlabel=f"CEM iterations {list(iteration_counts)} (index)",
    )
    plot_episode_grid(
        [
            episode_panel(oracle, index, episode, run, outcome)
            for index, episode, run, outcome in panels
        ],
        args.output_dir / "episodes.png",
        title=f"CEM, {args.planner}, cost {args.planning.cost}, {iteration_counts[-1]} iterations",
    )
    for succeeded, (_, run, goal) in showcase.items():
        name = "success" if succeeded else "failure"
        episode_video(run, args.output_dir / f"imagined_vs_executed_{name}.mp4", goal)
    print(f"wrote {args.output_dir}/plan_cem.md")
    print((args.output_dir / "plan_cem.md").read_text())
    return rows


def episode_panel(
    oracle: OracleRollout,
    index: int,
    episode: ImageGoalEpisode,
    run: MPCEpisode,
    outcome: EpisodeOutcome,
) -> dict:
    """One panel of :func:`planners.episodes.plot_episode_grid`: the house's floor and the run."""
    oracle.sim.load_scene(episode.scene)
    navigation = oracle.sim.navigation
    return {
        "name": f"{index}: {episode.scene}",
        "outcome": outcome,
        "positions": run.agent_states[:, :3].numpy(),
        "start_yaw": episode.start_yaw,
        "goal_position": episode.goal_position,
        "goal_yaw": episode.goal_yaw,
        "occupancy": navigation.navigable,
        "extent": navigation.extent,
        "estimate": None if run.goal_estimate is None else run.goal_estimate.position,
    }


if __name__ == "__main__":
    cli.run(main, Args)
