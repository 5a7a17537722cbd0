"""Metric reports: a table as JSON and Markdown, and plots as PNG.

Plots draw on a private matplotlib ``Figure`` with the Agg canvas, so nothing here touches
pyplot's global state or the user's backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw
from torch import Tensor

from worldsim.metrics.video import MetricResult

Row = Mapping[str, Any]


def _jsonable(value: Any) -> Any:
    """Plain JSON value of a table cell (non-finite floats become strings)."""
    if isinstance(value, MetricResult):
        return value.as_dict()
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf / nan
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _cell(value: Any, notes: list[str], column: str) -> str:
    """Markdown text of a table cell; unavailable metrics add a footnote with the reason."""
    if isinstance(value, MetricResult):
        if not value.available:
            notes.append(f"{column}: unavailable: {value.reason}")
            return f"n/a[^{len(notes)}]"
        value = value.value
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_report(
    metrics: Row | Sequence[Row], out_dir: str | Path, name: str, notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write a metrics table as ``<name>.json`` and ``<name>.md``.

    Args:
        metrics: one row (``{column: value}``) or a list of rows, e.g.
            ``[{"method": "ours", "psnr": 24.1, "fvd": MetricResult(...)}, ...]``. Values are
            numbers, strings, booleans, ``None`` or :class:`~worldsim.metrics.video.MetricResult`
            (its value; "n/a" with a footnote giving the reason when unavailable). Columns are
            the union of the rows' keys in first-seen order.
        out_dir: folder to write into (created if missing).
        name: file stem, letters, digits, ``-``, ``_`` and ``.`` only.
        notes: lines that say how to read the table (e.g. what each column means), listed
            under it in the Markdown and kept as ``"notes"`` in the JSON; none by default.

    Returns:
        ``(json_path, markdown_path)``. The JSON keeps full precision (``MetricResult`` as
        dicts; ``inf`` / ``nan`` as strings); the Markdown shows 4 significant digits.

    Raises:
        ValueError: for an empty table, a row that is not a mapping, or an unsafe name.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"report name {name!r} must be a plain file stem (letters, digits, -_.)")
    rows = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    if not rows:
        raise ValueError("the metrics table is empty: give at least one row")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index} is a {type(row).__name__}, expected a dict of columns")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_rows = [{str(k): _jsonable(v) for k, v in row.items()} for row in rows]
    content: dict[str, Any] = {"name": name, "rows": json_rows}
    if notes:
        content["notes"] = list(notes)
    json_path.write_text(json.dumps(content, indent=2) + "\n")
    legend = "".join(f"- {note}\n" for note in notes)
    md_path.write_text(f"# {name}\n\n{markdown_table(rows)}" + (f"\n{legend}" if notes else ""))
    return json_path, md_path


def markdown_table(rows: Sequence[Row]) -> str:
    """A list of rows as a Markdown table, cells as in :func:`write_report`.

    Args:
        rows: ``{column: value}`` mappings; columns are the union of their keys in first-seen
            order, a missing cell shows ``-``.

    Returns:
        The table's lines, each ending in a newline, then the footnotes of unavailable metrics
        (numbered from 1) after a blank line.
    """
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    notes: list[str] = []
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = [_cell(row.get(column), notes, column) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"[^{i}]: {note}" for i, note in enumerate(notes, start=1)]
    return "\n".join(lines) + "\n"


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)  # Agg rendering for this figure only
    return figure


def _as_curve(values: Any) -> np.ndarray:
    if isinstance(values, MetricResult):
        if values.per_step is None:
            raise ValueError(f"metric {values.name!r} has no per-step values (computed on frames)")
        values = values.per_step
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    curve = np.asarray(values, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(
            f"a metric curve must be a non-empty (T,) sequence, got shape {curve.shape}"
        )
    return curve


def plot_metric_curves(
    curves: Mapping[str, Any],
    path: str | Path,
    title: str | None = None,
    xlabel: str = "step",
    x: Sequence[float] | None = None,
) -> Path:
    """Plot per-step metric curves, one panel per metric, as a PNG.

    Args:
        curves: ``{metric: values}`` or ``{metric: {series label: values}}``; values are (T,)
            sequences, tensors, or :class:`~worldsim.metrics.video.MetricResult` with ``per_step``.
        path: output ``.png`` path (parent folders are created).
        title: figure title.
        xlabel: label of the step axis.
        x: where each value lies on the step axis (e.g. the CEM iteration counts compared),
            one per value of every curve, ticked; ``None``: 0, 1, 2, ...

    Returns:
        The path written.

    Raises:
        ValueError: for no curves, a curve that is not a non-empty 1-D sequence, or one whose
            length differs from that of ``x``.
    """
    if not curves:
        raise ValueError("no curves to plot")
    panels = {
        metric: dict(series) if isinstance(series, Mapping) else {metric: series}
        for metric, series in curves.items()
    }
    figure = _new_figure(4.0 * len(panels), 3.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, series) in zip(axes, panels.items(), strict=True):
        for label, values in series.items():
            curve = _as_curve(values)
            steps = np.arange(len(curve)) if x is None else np.asarray(x, dtype=np.float64)
            if steps.shape != curve.shape:
                raise ValueError(
                    f"curve {label!r} has {len(curve)} values but x has {len(steps)} positions"
                )
            ax.plot(steps, curve, marker="o", markersize=3, label=label)
        if x is not None:
            ax.set_xticks(np.asarray(x, dtype=np.float64))  # ticks at the settings compared
        ax.set_title(metric)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _positions(trajectory: Any) -> np.ndarray:
    if isinstance(trajectory, Tensor):
        trajectory = trajectory.detach().cpu().numpy()
    array = np.asarray(trajectory, dtype=np.float64)
    if array.ndim == 3 and array.shape[1:] == (4, 4):
        array = array[:, :3, 3]  # camera positions of cam_to_world poses
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(
            f"a trajectory must be (T, 4, 4) poses or (T, 3) positions, got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("trajectory positions must be finite (no NaN or infinity)")
    return array


def plot_trajectories(
    trajectories: Mapping[str, Any],
    path: str | Path,
    occupancy: np.ndarray | None = None,
    extent: tuple[float, float, float, float] | None = None,
    goal: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Top-down overlay of trajectories on the floor plane (world x-z), as a PNG.

    Seen from above (world +y): x points right and z points down, so world -z (the heading of
    yaw 0) points up and the picture is not mirrored. Starts are circles, ends crosses.

    Args:
        trajectories: ``{label: (T, 4, 4) cam_to_world poses or (T, 3) positions}``.
        path: output ``.png`` path (parent folders are created).
        occupancy: optional (H, W) background map (bool or float; e.g. navigable cells), row
            ``i`` at ``z = z_min + (i + 0.5) (z_max - z_min) / H`` and column ``j`` at
            ``x = x_min + (j + 0.5) (x_max - x_min) / W``.
        extent: ``(x_min, x_max, z_min, z_max)`` of ``occupancy`` in metres; required with it.
        goal: optional goal position ``(x, y, z)`` in metres, or (G, 3) goals visited in turn
            (numbered), drawn as stars.
        title: figure title.

    Returns:
        The path written.

    Raises:
        ValueError: for no trajectories, invalid arrays, or an occupancy map without extent.
    """
    if not trajectories:
        raise ValueError("no trajectories to plot")
    figure = _new_figure(5.0, 5.0)
    ax = figure.subplots()
    if occupancy is not None:
        occupancy = np.asarray(occupancy)
        if occupancy.ndim != 2:
            raise ValueError(f"occupancy must be an (H, W) map, got shape {occupancy.shape}")
        if extent is None or len(extent) != 4:
            raise ValueError("occupancy needs extent=(x_min, x_max, z_min, z_max) in metres")
        x_min, x_max, z_min, z_max = extent
        ax.imshow(
            occupancy.astype(np.float64),
            cmap="Greys_r",
            extent=(x_min, x_max, z_max, z_min),  # row 0 at z_min, the top of the picture
            origin="upper",
            interpolation="nearest",
            alpha=0.6,
        )
    for label, trajectory in trajectories.items():
        positions = _positions(trajectory)
        (line,) = ax.plot(positions[:, 0], positions[:, 2], label=label, linewidth=1.5)
        ax.plot(*positions[0, [0, 2]], "o", color=line.get_color())
        ax.plot(*positions[-1, [0, 2]], "x", color=line.get_color(), markersize=8)
    if goal is not None:
        goals = np.asarray(goal, dtype=np.float64)
        if goals.shape[-1:] != (3,) or goals.ndim > 2:
            raise ValueError(f"goal must be (x, y, z) or (G, 3) positions, got shape {goals.shape}")
        goals = goals.reshape(-1, 3)
        label = "goal" if len(goals) == 1 else "goals"
        ax.plot(goals[:, 0], goals[:, 2], "*", color="gold", markersize=14, label=label)
        if len(goals) > 1:
            for index, (x, _, z) in enumerate(goals):
                ax.annotate(str(index + 1), (x, z), xytext=(5, 5), textcoords="offset points")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()  # z down: a view from above
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def write_panel_video(
    panels: Mapping[str, Tensor],
    path: str | Path,
    fps: int = 4,
    height: int = 256,
    captions: Sequence[str] | None = None,
) -> Path:
    """Labelled image sequences side by side as an mp4, e.g. goal | imagined | executed.

    Args:
        panels: ``{label: (S, 3, H, W) RGB in [0, 1] or (3, H, W)}``, in the order drawn; a
            single image (a goal) is repeated on every frame. Every sequence has the same S and
            every image the same H.
        path: output ``.mp4`` path (parent folders are created).
        fps: frames per second.
        height: the frames are enlarged by a whole factor to about this many pixels high.
        captions: one line of text per frame (S of them), drawn under the panels, e.g. the
            step, the action and the cost; ``None``: no caption row.

    Returns:
        The path written.

    Raises:
        ValueError: for no panels, or panels of different lengths or heights.
    """
    if not panels:
        raise ValueError("no panels to draw")
    lengths = {len(v) for v in panels.values() if v.dim() == 4}
    if len(lengths) > 1:
        raise ValueError(f"panels have different numbers of frames: {sorted(lengths)}")
    steps = lengths.pop() if lengths else 1
    columns = [
        (v if v.dim() == 4 else v[None].expand(steps, -1, -1, -1)).detach().float().cpu()
        for v in panels.values()
    ]
    if len({c.shape[-2] for c in columns}) > 1 or any(c.shape[1] != 3 for c in columns):
        raise ValueError(
            f"panels must be RGB of one height, got {[tuple(c.shape[1:]) for c in columns]}"
        )
    frames = torch.cat(columns, dim=-1).clamp(0, 1)  # (S, 3, H, sum W)
    video = (rearrange(frames, "s c h w -> s h w c") * 255).round().to(torch.uint8).numpy()
    scale = max(1, height // video.shape[1])
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    header = Image.new("RGB", (video.shape[2], 14), "black")
    draw, left = ImageDraw.Draw(header), 0
    for label, column in zip(panels, columns, strict=True):
        draw.text((left + 3, 1), label, fill="white")
        left += column.shape[-1] * scale
    header_pixels = np.asarray(header)
    parts = [np.broadcast_to(header_pixels, (len(video), *header.size[::-1], 3)), video]
    if captions is not None:
        if len(captions) != len(video):
            raise ValueError(f"give one caption per frame: {len(video)} frames, {len(captions)}")
        rows = []
        for caption in captions:
            row = Image.new("RGB", (video.shape[2], 14), "black")
            ImageDraw.Draw(row).text((3, 1), caption, fill="white")
            rows.append(np.asarray(row))
        parts.append(np.stack(rows))
    video = np.concatenate(parts, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, list(video), fps=fps, macro_block_size=1)
    return path
