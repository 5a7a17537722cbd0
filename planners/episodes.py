"""Navigation episodes judged against the truth: belief apart from outcome, summaries, pictures.

A planner *stops* because of what it believes (:attr:`planners.mpc.MPCEpisode.stop_reason`:
the goal localised in its map under the agent, the view's LPIPS below a threshold, no plan
better than staying, a plan that stays); whether it *succeeded* is the ground truth's answer
(the final floor position within the success radius of the goal). :class:`EpisodeOutcome`
keeps both; a *false stop* is a stop the planner chose with the truth farther than the radius.

Summaries give the success rate with its 95 % Wilson score interval::

    centre = (s + z^2 / 2) / (n + z^2),  half = z / (n + z^2) * sqrt(s (n - s) / n + z^2 / 4)

(s successes of n, z = 1.96), false stops, mean SIM and SPL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from planners.metrics import path_length, sim_score, spl
from planners.mpc import MPCEpisode

STOPPED_BY_BELIEF = ("localised", "lpips", "no_better_plan", "plan_stays")
"""Stop reasons that are the planner's decision (``max_steps`` is the budget's)."""


@dataclass(frozen=True)
class EpisodeOutcome:
    """One episode: what the planner believed and what the ground truth says.

    Attributes:
        stop_reason: why the planner ended the episode (:class:`planners.mpc.MPCEpisode`).
        stopped: the planner chose to stop (not the step budget).
        success: the final floor position lies within ``radius_m`` of the goal (the truth).
        false_stop: stopped, yet not a success.
        end_distance_m: final straight-line floor distance to the goal, metres.
        geodesic_m: the start's geodesic distance to the goal, metres.
        sim: final pose similarity (:func:`planners.metrics.sim_score`), in [0, 100].
        steps: actions executed.
        path_m: floor length of the executed path, metres.
        localised: the goal was localised in the map with trusted confidence at the end.
        localisation_error_m: floor distance from the trusted estimate to the goal, or NaN.
        decision_s: mean wall time of a decision (a CEM plan, localisation included), seconds.
    """

    stop_reason: str
    stopped: bool
    success: bool
    false_stop: bool
    end_distance_m: float
    geodesic_m: float
    sim: float
    steps: int
    path_m: float
    localised: bool
    localisation_error_m: float
    decision_s: float

    def as_dict(self) -> dict[str, float | int | bool | str]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def judge_episode(
    run: MPCEpisode,
    goal_position: np.ndarray,
    goal_yaw: float,
    geodesic_m: float,
    radius_m: float,
) -> EpisodeOutcome:
    """Judge an episode against the truth.

    Args:
        run: the episode (with ground-truth ``agent_states``).
        goal_position: (3,) the goal's floor position, metres.
        goal_yaw: the goal view's heading, radians.
        geodesic_m: the start's geodesic distance to the goal, metres.
        radius_m: success radius, metres, > 0.

    Raises:
        ValueError: for an episode without ground-truth agent states or a radius <= 0.
    """
    if run.agent_states is None:
        raise ValueError("judging an episode needs its ground-truth agent states")
    if not radius_m > 0.0:
        raise ValueError(f"radius_m must be > 0, got {radius_m}")
    states = run.agent_states.double().numpy()
    final = states[-1]
    goal_position = np.asarray(goal_position, dtype=np.float64)
    end = float(np.hypot(*(final[[0, 2]] - goal_position[[0, 2]])))
    success = end <= radius_m
    stopped = run.stop_reason in STOPPED_BY_BELIEF
    estimate = run.goal_estimate
    error = math.nan
    if estimate is not None:
        error = float(np.hypot(*(estimate.position[[0, 2]] - goal_position[[0, 2]])))
    seconds = run.decision_seconds
    return EpisodeOutcome(
        stop_reason=run.stop_reason,
        stopped=stopped,
        success=success,
        false_stop=stopped and not success,
        end_distance_m=end,
        geodesic_m=float(geodesic_m),
        sim=sim_score(
            estimate_position=final[:3],
            estimate_yaw=float(final[3]),
            reference_position=goal_position,
            reference_yaw=goal_yaw,
        ),
        steps=len(run.actions),
        path_m=path_length(states[:, :3]),
        localised=estimate is not None,
        localisation_error_m=error,
        decision_s=float(seconds.mean()) if len(seconds) else 0.0,
    )


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (module docstring).

    Raises:
        ValueError: for ``trials < 1`` or successes outside ``[0, trials]``.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials >= 1, got {successes} of {trials}")
    denominator = trials + z * z
    centre = (successes + z * z / 2) / denominator
    half = z / denominator * math.sqrt(successes * (trials - successes) / trials + z * z / 4)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(outcomes: Sequence[EpisodeOutcome]) -> dict[str, float | int]:
    """Success (with its 95 % Wilson interval), false stops, SIM, SPL, steps, decision time.

    Raises:
        ValueError: for no outcomes.
    """
    if not outcomes:
        raise ValueError("no episodes to summarise")
    successes = [o.success for o in outcomes]
    low, high = wilson_interval(sum(successes), len(outcomes))
    return {
        "episodes": len(outcomes),
        "success": float(np.mean(successes)),
        "success_ci_low": low,
        "success_ci_high": high,
        "false_stops": sum(o.false_stop for o in outcomes),
        "false_stop_rate": float(np.mean([o.false_stop for o in outcomes])),
        "sim": float(np.mean([o.sim for o in outcomes])),
        "spl": spl(successes, [o.geodesic_m for o in outcomes], [o.path_m for o in outcomes]),
        "mean_steps": float(np.mean([o.steps for o in outcomes])),
        "localised": float(np.mean([o.localised for o in outcomes])),
        "decision_s": float(np.mean([o.decision_s for o in outcomes])),
    }


def calibrate_stop_threshold(
    costs: Sequence[float] | np.ndarray,
    distances: Sequence[float] | np.ndarray,
    radius_m: float,
    max_false_rate: float,
) -> tuple[float | None, float]:
    """The highest LPIPS threshold whose stops are rarely far from the goal.

    A stop at threshold ``t`` happens at any view with cost ``<= t``; among those views the
    share farther than ``radius_m`` from the goal is the false-stop rate of ``t``. Returned is
    the largest observed cost whose rate is at most ``max_false_rate``, and that rate.

    Args:
        costs: (V,) goal costs (LPIPS) of views seen in validation episodes.
        distances: (V,) the views' true floor distances to their goals, metres.
        radius_m: the success radius, metres.
        max_false_rate: the largest acceptable share of far views, in [0, 1].

    Returns:
        ``(threshold, rate)``; ``(None, 0.0)`` when even the lowest cost is too often far.

    Raises:
        ValueError: for mismatched or empty inputs.
    """
    costs, distances = np.asarray(costs, dtype=np.float64), np.asarray(distances, np.float64)
    if costs.shape != distances.shape or costs.ndim != 1 or len(costs) == 0:
        raise ValueError(
            f"costs and distances must be equal-length 1-D arrays, got {costs.shape} and "
            f"{distances.shape}"
        )
    order = np.argsort(costs, kind="stable")
    far = np.cumsum(distances[order] > radius_m) / np.arange(1, len(costs) + 1)
    # A threshold equal to a cost admits every view of that cost: judge at the last of ties.
    last_of_tie = np.append(costs[order][1:] != costs[order][:-1], True)
    ok = (far <= max_false_rate) & last_of_tie
    if not ok.any():
        return None, 0.0
    best = int(np.nonzero(ok)[0].max())
    return float(costs[order][best]), float(far[best])


def plot_episode_grid(
    panels: Sequence[dict],
    path: str | Path,
    columns: int = 5,
    title: str | None = None,
) -> Path:
    """Top-down pictures of every episode, successes and failures, in one PNG grid.

    Each panel shows the house's navigable floor, the executed path, the start pose (circle and
    heading arrow), the goal pose (star and heading arrow), the map's goal estimate if any
    (a diamond) and a title with the episode, its outcome (green: success, red: failure),
    the stop reason and the final distance.

    Args:
        panels: one dict per episode: ``name`` (str), ``outcome``
            (:class:`EpisodeOutcome`), ``positions`` ((T, 3) floor positions, metres),
            ``start_yaw``, ``goal_position`` ((3,)), ``goal_yaw``, ``occupancy`` ((H, W)
            navigable cells) and ``extent`` (``(x_min, x_max, z_min, z_max)``), and optionally
            ``estimate`` ((3,) the map's goal estimate).
        path: output ``.png`` path.
        columns: panels per row, >= 1.
        title: figure title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("no episodes to draw")
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.0 * columns, 3.1 * rows), dpi=90)
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax, panel in zip(axes, panels, strict=False):
        outcome: EpisodeOutcome = panel["outcome"]
        x_min, x_max, z_min, z_max = panel["extent"]
        ax.imshow(
            np.asarray(panel["occupancy"], dtype=np.float64),
            cmap="Greys_r",
            extent=(x_min, x_max, z_max, z_min),
            origin="upper",
            interpolation="nearest",
            alpha=0.6,
        )
        positions = np.asarray(panel["positions"], dtype=np.float64)
        colour = "tab:green" if outcome.success else "tab:red"
        ax.plot(positions[:, 0], positions[:, 2], color=colour, linewidth=1.2)
        goal = np.asarray(panel["goal_position"], dtype=np.float64)
        for (x, z), yaw, marker in (
            (positions[0, [0, 2]], panel["start_yaw"], "o"),
            (goal[[0, 2]], panel["goal_yaw"], "*"),
        ):
            ax.plot(x, z, marker, color="black" if marker == "o" else "gold", markersize=9)
            # yaw 0 looks along world -z; positive yaw turns left (towards -x)
            ax.arrow(x, z, -0.4 * math.sin(yaw), -0.4 * math.cos(yaw), width=0.03, color="k")
        ax.plot(*positions[-1, [0, 2]], "x", color=colour, markersize=8)
        if panel.get("estimate") is not None:
            estimate = np.asarray(panel["estimate"], dtype=np.float64)
            ax.plot(estimate[0], estimate[2], "D", color="tab:blue", markersize=5)
        margin = 1.5
        xs = np.concatenate([positions[:, 0], [goal[0]]])
        zs = np.concatenate([positions[:, 2], [goal[2]]])
        ax.set_xlim(xs.min() - margin, xs.max() + margin)
        ax.set_ylim(zs.max() + margin, zs.min() - margin)  # z down: a view from above
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
        verdict = "success" if outcome.success else "FAIL"
        ax.set_title(
            f"{panel['name']}\n{verdict}, {outcome.stop_reason}, {outcome.end_distance_m:.2f} m",
            fontsize=7,
            color=colour,
        )
    for ax in axes[len(panels) :]:
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
