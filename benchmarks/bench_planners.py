"""Wall time of one CEM decision and one ranking decision at N = 8, 16, 60.

Each decision plans from one start towards an image goal in a training house, imagining in one
of three simulators (a world model from the episode map: an earlier ``tour_steps``-frame walk
through the house and the start's views, as ``navigate.py`` plans):

- ``oracle``: the ground truth at 64x64 (the floor: rendering only);
- ``tiny``: an untrained tiny world model (32x32, a colour-feature memory) with an untrained
  tiny policy, the smoke-test setting;
- ``shipped``: the embedded world model (64x64, rendered memory; candidates whose end views the
  map covers are answered by its render, far cells drawn coarser: ``learned_planning_rollout``)
  and the embedded policy, the main job's setting.

A CEM decision is ``iterations`` rounds of N sampled sequences of ``horizon`` steps plus, in the
first round, the turn-then-walk probes (one rollout per turn count), all imagined and scored by
LPIPS; a ranking decision samples N trajectories from the NoMaD-style policy and imagines and
scores each. The defaults are those of the main job (``examples/navigate.py``: L = 8, two
iterations, probes up to 6 turns, the model's own DDIM steps, a 300-frame walk). Times are
medians over ``repeats``
after one warm-up decision per simulator; ratios are against N = 8 of the same decision and
simulator, measured in the same run.

Run::

    python benchmarks/bench_planners.py                       # a few minutes on 2 CPU cores
    python benchmarks/bench_planners.py --simulators oracle tiny --num-samples 8 16   # quick
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from envs.tasks import earlier_walks, episode_start, sample_image_goal_episode
from planners.cem import CEMConfig, plan_cem
from planners.costs import GoalCost
from planners.nomad import UNTRAINED, load_policy
from planners.ranking import NoMaDSampler, ranked_decision
from worldsim import cli
from worldsim.simulator.checkpoints import TINY_UNTRAINED, learned_planning_rollout


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    simulators: tuple[str, ...] = ("oracle", "tiny", "shipped")
    """What the planners imagine in: oracle, tiny and / or shipped."""
    num_samples: tuple[int, ...] = (8, 16, 60)
    """Candidates N per decision."""
    horizon: int = 8
    """CEM horizon, steps."""
    iterations: int = 2
    """CEM iterations."""
    probe_turns: int = 6
    """Most turns of a CEM probe."""
    sampling_steps: int | None = None
    """DDIM steps per chunk of a world model (None: the checkpoint's sampler_config.json)."""
    tour_steps: int = 300
    """Frames of the earlier walk through the house in a world model's episode map (0: none)."""
    repeats: int = 1
    """Timed decisions per setting (median reported)."""
    device: str = "cpu"
    """Device of the models and the cost."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seed of the episode and the samples."""


def timed(function, repeats: int) -> float:
    """Median wall time of ``function()`` in seconds."""
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def setting(name: str, args: Args):
    """``(planning simulator, policy, frame size, turn step)`` of a simulator name."""
    if name == "oracle":
        return None, load_policy(), 64, 10.0
    if name not in ("tiny", "shipped"):
        raise ValueError(f"unknown simulator {name!r}; use oracle, tiny or shipped")
    checkpoint = TINY_UNTRAINED if name == "tiny" else None
    rollout = learned_planning_rollout(
        checkpoint, args.device, num_inference_steps=args.sampling_steps
    )
    size = rollout.image_size[0]
    if name == "tiny":
        torch.manual_seed(args.seed)  # initialisation of the untrained policy
        policy = load_policy(UNTRAINED, "tiny", size)
    else:
        policy = load_policy()
    return rollout, policy, size, rollout.model.action_spec.turn_step_deg


def cem_decision(planner, start, goal, cost, args: Args, count: int, generator) -> None:
    """One CEM plan of ``count`` samples per iteration with the benchmark's settings."""
    config = CEMConfig(
        num_samples=count,
        num_iterations=args.iterations,
        horizon=args.horizon,
        probe_turns=args.probe_turns,
    )
    plan_cem(planner, start, goal, cost, config, generator)


def main(args: Args) -> list[dict[str, float]]:
    """Run the benchmark and print a table."""
    cost = GoalCost(device=args.device)
    rows = []
    for name in args.simulators:
        learned, policy, size, turn = setting(name, args)
        oracle = OracleRollout(config=SimulatorConfig(width=size, height=size, turn_step_deg=turn))
        planner = oracle if learned is None else learned
        episode = sample_image_goal_episode(oracle, "house-train-0000", np.random.default_rng(0))
        start, goal = episode_start(oracle, episode, policy.config.context_size + 1)
        if learned is not None:
            walks = earlier_walks(oracle, learned, [episode.scene], args.tour_steps, args.seed)
            start = learned.with_episode_memory(start.select([0]), walks.get(episode.scene))
        sampler = NoMaDSampler(policy.to(args.device), oracle.sim.config.action_spec)
        generator = torch.Generator().manual_seed(args.seed)
        cem = partial(cem_decision, planner, start.select([0]), goal, cost, args)
        ranking = partial(ranked_decision, sampler, planner, start, goal, cost)
        cem(min(args.num_samples), generator)  # warm-up
        baselines: dict[str, float] = {}
        for count in args.num_samples:
            for kind, decision in (
                ("cem", partial(cem, count, generator)),
                ("ranking", partial(ranking, count, generator)),
            ):
                seconds = timed(decision, args.repeats)
                baselines.setdefault(kind, seconds)
                rows.append(
                    {
                        "decision": kind,
                        "simulator": name,
                        "size": size,
                        "N": count,
                        "seconds": seconds,
                        "x_vs_first_N": seconds / baselines[kind],
                    }
                )
                print(f"{kind:>8} {name:>8} N={count:<3} {seconds:8.2f} s", flush=True)
    device = args.device if args.device != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    steps = args.sampling_steps or "the model's"
    print(
        f"\nplanner decision wall time, {device}; CEM: L={args.horizon}, {args.iterations} "
        f"iterations, probes up to {args.probe_turns} turns; "
        f"{steps} DDIM steps; "
        f"a {args.tour_steps}-frame walk in the map"
    )
    print(f"{'decision':>9} {'simulator':>9} {'size':>5} {'N':>4} {'seconds':>9} {'x vs N8':>8}")
    for row in rows:
        print(
            f"{row['decision']:>9} {row['simulator']:>9} {row['size']:>5} {row['N']:>4} "
            f"{row['seconds']:>9.3f} {row['x_vs_first_N']:>8.2f}"
        )
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
