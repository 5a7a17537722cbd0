"""Which frame should the goal cost read: the imagined one, or the map's render at the end pose?

For image-goal episodes in unseen test houses (goals 1.5-2.5 m away; each house's map holds an
earlier walk of ``--tour-steps`` frames), draw K action sequences of L steps as CEM's first
iteration does (uniform over the discrete actions), execute each in the ground truth to learn
where it really ends (collisions included), and score it by LPIPS to the goal image through each
cost input:

- ``imagined``: the world model's generated last frame, every candidate generated;
- ``map >= c``: the map's render at the end camera (holes filled from their neighbours) for the
  candidates whose end view the map's observed points cover on at least a share ``c`` of the
  pixels, the imagined frame for the others (``LearnedSimulator.map_views``). For a model that
  pastes its render, ``c = 1`` gives exactly the imagined frames, only faster;
- ``oracle``: the ground truth's own last frame (the ceiling of any simulator).

Per cost input: the Spearman correlation between cost and true end distance to the goal (mean
over episodes; higher is better), the regret of the best-scored candidate (its true distance minus
the best candidate's, metres), the share of candidates the map answered, and seconds per episode.
Writes ``compare_costs.md`` / ``.json`` and ``cost_vs_distance.png``.

Run (about 15 minutes on 2 CPU cores)::

    python examples/compare_costs.py

Tiny setting (as the tests)::

    python examples/compare_costs.py --output-dir /tmp/costs --episodes 1 --num-samples 4 \
        --horizon 4 --tour-steps 20
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
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
from planners.cem import CEMConfig, initial_categorical, sample_categorical
from planners.costs import GoalCost
from worldsim import cli
from worldsim.evaluation.report import write_report


@dataclass(frozen=True)
class Args:
    """Settings of the cost comparison."""

    output_dir: Path = Path("outputs/compare_costs")
    """Output folder."""
    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), or None: the embedded checkpoint."""
    split: str = "test"
    """Scene split the episodes come from."""
    num_scenes: int = 4
    """Scenes cycled through."""
    scene_start: int = 0
    """Index of the first house in the split (houses scene_start .. scene_start + num_scenes - 1;
    e.g. 10 for house-test-0010..): results on the first houses alone are not held out."""
    episodes: int = 8
    """Image-goal episodes."""
    num_samples: int = 32
    """Candidate action sequences K per episode."""
    horizon: int = 8
    """Steps per candidate L."""
    coverages: tuple[float, ...] = (1.0, 0.9, 0.5)
    """Map shares c from which a candidate is scored on the map's render."""
    tour_steps: int = 300
    """Frames of the earlier walk through each house that its map holds (0: none)."""
    min_goal_m: float = 1.5
    """Smallest start-to-goal geodesic distance, metres."""
    max_goal_m: float = 2.5
    """Largest start-to-goal geodesic distance, metres."""
    seed: int = 0
    """Seed of episodes, walks and candidates."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def main(args: Args) -> list[dict[str, float]]:
    """Run the comparison; returns the table's rows."""
    scenes = scene_ids(args.split, args.num_scenes, args.scene_start)  # refuses bad ranges first
    for share in args.coverages:
        if not 0 < share <= 1:
            raise ValueError(f"--coverages must lie in (0, 1], got {share}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    learned, size, turn_step_deg = planning_simulator("world-model", args.checkpoint, "cpu")
    oracle = OracleRollout(
        config=SimulatorConfig(width=size, height=size, turn_step_deg=turn_step_deg)
    )
    cost = GoalCost()
    rng = np.random.default_rng(args.seed)
    episodes = sample_image_goal_episodes(
        oracle, scenes, args.episodes, rng, args.min_goal_m, args.max_goal_m
    )
    priors = earlier_walks(
        oracle, learned, [episode.scene for episode in episodes], args.tour_steps, args.seed
    )
    inputs = {"imagined": None, **{f"map >= {share:g}": share for share in args.coverages}}
    allowed = CEMConfig().allowed_actions
    scores = {name: [] for name in (*inputs, "oracle")}  # per episode: (costs, distances)
    answered = {name: [] for name in inputs}
    seconds = {name: [] for name in inputs}
    for index, episode in enumerate(tqdm(episodes, desc="episodes")):
        start, goal = episode_start(oracle, episode)
        generator = torch.Generator().manual_seed(args.seed * 1000 + index)
        actions = sample_categorical(
            initial_categorical(args.horizon, allowed), args.num_samples, generator
        )  # (K, L)
        truth = oracle.rollout(start.repeat(args.num_samples), actions, num_frames=1)
        ends = truth.agent_state[:, -1, :3].numpy()
        distance = np.linalg.norm(ends - episode.goal_position, axis=-1)  # (K,) metres
        scores["oracle"].append((cost(truth, goal).numpy(), distance))
        mapped = learned.with_episode_memory(start, priors.get(episode.scene))
        for name, share in inputs.items():
            learned.map_views = share
            begin = time.perf_counter()
            result = learned.rollout(
                mapped.repeat(args.num_samples),
                actions,
                generator=torch.Generator().manual_seed(args.seed),
                num_frames=1,
            )
            seconds[name].append(time.perf_counter() - begin)
            scores[name].append((cost(result, goal).numpy(), distance))
            if share is None:
                answered[name].append(0.0)
            else:
                coverage = learned.map_coverage(mapped.repeat(args.num_samples), actions, 1)
                answered[name].append(float((coverage >= share).float().mean()))
    rows = []
    for name, runs in scores.items():
        correlations = [spearmanr(costs, distance).statistic for costs, distance in runs]
        regrets = [distance[np.argmin(costs)] - distance.min() for costs, distance in runs]
        rows.append(
            {
                "cost input": name,
                "episodes": len(runs),
                "candidates": args.num_samples,
                "spearman": float(np.nanmean(correlations)),
                "spearman_sd": float(np.nanstd(correlations)),
                "regret_m": float(np.mean(regrets)),
                "map_answered": float(np.mean(answered[name])) if name in answered else None,
                "seconds": float(np.mean(seconds[name])) if name in seconds else None,
            }
        )
    write_report(rows, args.output_dir, "compare_costs")
    plot_costs(scores, args.output_dir / "cost_vs_distance.png")
    for row in rows:
        print(
            f"{row['cost input']:>12}: Spearman {row['spearman']:+.3f} ± {row['spearman_sd']:.3f}, "
            f"regret {row['regret_m']:.2f} m"
        )
    return rows


def plot_costs(scores: dict[str, list], path: Path) -> Path:
    """One panel per cost input: cost against true end distance, all episodes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(scores), 3.2), dpi=100)
    FigureCanvasAgg(figure)  # Agg rendering for this figure only
    for panel, (name, runs) in enumerate(scores.items()):
        axis = figure.add_subplot(1, len(scores), panel + 1)
        for costs, distance in runs:
            axis.scatter(distance, costs, s=6)
        axis.set_title(name)
        axis.set_xlabel("true end distance to goal (m)")
        if panel == 0:
            axis.set_ylabel("LPIPS cost")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    cli.run(main, Args)
