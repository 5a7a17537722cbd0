"""Wall time of one CEM decision and one ranking decision at N = 8, 16, 60.

Each decision plans from one start towards an image goal with the ground-truth oracle as the
planning simulator (the learned world model's rollout adapter plugs into the same calls). A CEM
decision is ``num_iterations`` rounds of N rollouts of ``horizon`` steps plus their LPIPS costs;
a ranking decision is sampling N trajectories from a NoMaD-style policy plus their rollouts and
costs. Times are medians over ``repeats``; ratios are against N = 8 of the same kind, measured in
the same run.

Run::

    python benchmarks/bench_planners.py
    python benchmarks/bench_planners.py --sizes 32 --samples 8 16 --repeats 1   # quick
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import tyro

from envs.rollout import OracleRollout, sample_image_goal_episode
from envs.simulator import SimulatorConfig
from planners.cem import CEMConfig, plan_cem
from planners.costs import GoalCost
from planners.nomad import POLICY_PRESETS, NoMaDPolicy
from planners.ranking import NoMaDSampler, ranked_decision


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    sizes: tuple[int, ...] = (32, 64)
    """Frame sizes (pixels) of the oracle; the policy preset follows (32: tiny, else small)."""
    samples: tuple[int, ...] = (8, 16, 60)
    """Candidates N per decision."""
    horizon: int = 12
    """CEM horizon, steps."""
    iterations: int = 3
    """CEM iterations."""
    repeats: int = 3
    """Timed decisions per setting (median reported)."""
    device: str = "cpu"
    """Device of the policy and the cost."""
    threads: int = 0
    """CPU threads of torch (0: torch's default)."""
    seed: int = 0
    """Seed of the episode and the samples."""


def timed(function, repeats: int) -> float:
    """Median wall time of ``function()`` in seconds, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main(args: Args) -> list[dict[str, float]]:
    """Run the benchmark and print a table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cost = GoalCost(device=args.device)
    rows = []
    for size in args.sizes:
        oracle = OracleRollout(config=SimulatorConfig(width=size, height=size, turn_step_deg=30))
        episode = sample_image_goal_episode(oracle, "house-train-0000", np.random.default_rng(0))
        start = oracle.start(episode.scene, episode.start_position, episode.start_yaw, num_frames=4)
        goal = oracle.start(episode.scene, episode.goal_position, episode.goal_yaw).rgb[0, -1]
        preset = "tiny" if size <= 32 else "small"
        torch.manual_seed(args.seed)  # initialisation of the (untrained) benchmark policy
        policy = NoMaDPolicy(**POLICY_PRESETS[preset]).to(args.device).eval()
        sampler = NoMaDSampler(policy, oracle.sim.config.action_spec)
        baselines: dict[str, float] = {}
        for count in args.samples:
            config = CEMConfig(
                num_samples=count, num_iterations=args.iterations, horizon=args.horizon
            )
            generator = torch.Generator().manual_seed(args.seed)
            cem = timed(
                partial(plan_cem, oracle, start, goal, cost, config, generator), args.repeats
            )
            rank = timed(
                partial(ranked_decision, sampler, oracle, start, goal, cost, count, generator),
                args.repeats,
            )
            for kind, seconds in (("cem", cem), ("ranking", rank)):
                baselines.setdefault(kind, seconds)
                rows.append(
                    {
                        "decision": kind,
                        "size": size,
                        "policy": preset if kind == "ranking" else "-",
                        "N": count,
                        "seconds": seconds,
                        "x_vs_N8": seconds / baselines[kind],
                    }
                )
    device = args.device if args.device != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"planner decision wall time, oracle rollouts, {device}")
    print(f"{'decision':>9} {'size':>5} {'policy':>7} {'N':>4} {'seconds':>9} {'x vs first N':>13}")
    for row in rows:
        print(
            f"{row['decision']:>9} {row['size']:>5} {row['policy']:>7} {row['N']:>4} "
            f"{row['seconds']:>9.3f} {row['x_vs_N8']:>13.2f}"
        )
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
