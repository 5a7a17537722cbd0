"""Multi-chunk rollouts over revisit windows, scored by how much of each frame only memory explains.

A single generated chunk (4 frames at 10 deg turns) cannot reach 50 % pixels that earlier frames
see and the context does not; turning around, coming back through a doorway or the return leg of
an out-and-back can. This module evaluates rollouts of several chunks where that happens.

Windows and their frames come from :mod:`worldsim.evaluation.windows`.

Variants
    A :class:`Variant` is a name, a world model or ``None``, and a memory builder (the memory a
    window gives it: :func:`episode_memory`, its ``shuffled`` form, or :func:`no_memory`). Every
    variant with a model rolls out along the recorded camera motion (relative step poses, so the
    generated views align with the recorded ones) from the same initial noise per window. Without
    a model there is no learning: with a :class:`~worldsim.memory.RenderedMemory` the memory and
    context frames are rendered at each future camera and the uncovered pixels taken from the last
    context frame (the *reprojection* baseline); without memory every future frame is the last
    context frame (*last frame*).

Scores
    :func:`score_windows` bins every generated frame by its memory-only share (0-10 %, 10-50 %,
    >= 50 %, computed at full resolution) and reports PSNR, SSIM, LPIPS, depth L1 and PSNR on the
    memory-only pixels per bin, per chunk and overall.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.evaluation.clips import depth_error, reproject
from worldsim.memory import RenderedMemory
from worldsim.metrics.video import MetricResult, lpips, psnr, ssim
from worldsim.simulator.chunks import insert_frames, rollout_along_recorded_poses
from worldsim.simulator.sampler import SamplerConfig

if TYPE_CHECKING:
    from worldsim.memory import Memory
    from worldsim.metrics.lpips import LPIPS
    from worldsim.models.world_model import WorldModel
from worldsim.evaluation.windows import Window, WindowBatch, select

BIN_EDGES = (0.1, 0.5)
"""Memory-only shares that separate the bins 0-10 %, 10-50 % and >= 50 %."""
BIN_NAMES = ("0-10 %", "10-50 %", ">= 50 %")
"""Names of the coverage bins, in order."""
METRICS = (
    "psnr",
    "ssim",
    "lpips",
    "depth_l1",
    "psnr_memory_only",
    "psnr_unmapped",
    "unmapped_share",
)
"""Columns of :func:`score_windows`' rows, in order."""


MemoryBuilder = Callable[[WindowBatch, torch.device], "Memory | None"]
"""Builds the memory a variant reads for a batch: reset to B rows on the device and filled."""


def episode_memory(prototype: Memory, shuffled: bool = False) -> MemoryBuilder:
    """The windows' memory frames (or, ``shuffled``, another episode's) in a copy of a memory.

    Args:
        prototype: the memory kind and settings (e.g. the checkpoint's ``memory.json``); it is
            copied, never filled.
        shuffled: use :attr:`WindowBatch.shuffled` (the control) instead of the own memory.
    """
    memory = copy.deepcopy(prototype)  # one copy per builder, emptied for every batch

    def build(batch: WindowBatch, device: torch.device) -> Memory:
        frames = batch.shuffled if shuffled else batch.memory
        memory.reset(frames.rgb.shape[0], device)
        insert_frames(
            memory, frames.rgb, frames.depth, frames.intrinsics, frames.cam_to_world, frames.valid
        )
        return memory

    return build


def unmapped_pixels(batch: WindowBatch) -> Tensor:
    """Future pixels that no memory or context frame shows: where a model must invent.

    The windows' memory and context frames are put in a :class:`RenderedMemory` and rendered
    at the future cameras (what the reprojection baseline draws); the pixels it leaves empty
    are the ones reprojection fills from the last context frame and a model inpaints.

    Returns:
        (B, length, 1, H, W) bool.
    """
    memory = episode_memory(RenderedMemory())(batch, torch.device("cpu"))
    _, _, drawn = reproject_window(memory, batch)
    return ~drawn


def reproject_window(memory: RenderedMemory, batch: WindowBatch) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`~worldsim.evaluation.clips.reproject` of the windows' context at their future cameras.

    Args:
        memory: the map of the windows' earlier frames, B rows (the context is written into it).
        batch: the windows.

    Returns:
        ``(rgb, depth, drawn)`` of the future frames, as
        :func:`~worldsim.evaluation.clips.reproject`.
    """
    context, future = batch.context, batch.future
    return reproject(
        memory,
        context.rgb,
        context.depth,
        context.intrinsics,
        context.cam_to_world,
        future.cam_to_world,
        future.intrinsics,
    )


def no_memory(batch: WindowBatch, device: torch.device) -> None:
    """The memory builder of a variant without memory."""
    return None


@dataclass(frozen=True)
class Variant:
    """One way of predicting a window's future.

    Attributes:
        name: row label in the report.
        model: the world model, or ``None`` for the no-learning baselines (reprojection with a
            :class:`~worldsim.memory.RenderedMemory`, last frame without memory).
        memory: what the variant remembers of the window (:data:`MemoryBuilder`).
        sampler: how the model samples each chunk (ignored by the baselines).
    """

    name: str
    model: WorldModel | None
    memory: MemoryBuilder
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


def reprojection_variant(name: str = "reprojection", shuffled: bool = False) -> Variant:
    """The no-learning baseline: memory and context rendered at each future camera."""
    return Variant(name, None, episode_memory(RenderedMemory(), shuffled))


def last_frame_variant(name: str = "last frame") -> Variant:
    """The floor: every future frame is the last context frame."""
    return Variant(name, None, no_memory)


@torch.no_grad()
def predict(
    variant: Variant,
    batch: WindowBatch,
    generators: list[torch.Generator],
    insert_context_frames: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """One variant's prediction of a batch of windows' futures.

    Args:
        variant: the variant.
        batch: B windows.
        generators: one noise generator per window (ignored by the baselines).
        insert_context_frames: a model's rollout unprojects the context frames into the memory
            too (Algorithm 1a); the reprojection baseline always renders them.

    Returns:
        ``(rgb, depth)``: (B, length, 3, H, W) in [0, 1] and (B, length, 1, H, W) metres
        (``None`` for an RGB-only model), on the CPU.

    Raises:
        ValueError: a model whose frames, context or chunk length do not fit the windows, or a
            baseline with a memory that cannot render.
    """
    context, future = batch.context, batch.future
    length = future.rgb.shape[1]
    model = variant.model
    device = torch.device("cpu") if model is None else model.device
    memory = variant.memory(batch, device)
    if model is None:
        last_rgb = context.rgb[:, -1:].expand(-1, length, -1, -1, -1)
        last_depth = context.depth[:, -1:].expand(-1, length, -1, -1, -1)
        if memory is None:
            return last_rgb.clone(), last_depth.clone()
        if not memory.gives_render:  # the baseline draws the map: it needs one that renders
            raise ValueError(
                "the reprojection baseline needs a memory that gives a render, got "
                f"{type(memory).__name__}"
            )
        rgb, depth, _ = reproject_window(memory, batch)
        return rgb, depth
    config = model.config
    if (config.height, config.width) != tuple(future.rgb.shape[-2:]):
        raise ValueError(
            f"{variant.name}: the model makes {config.height}x{config.width} frames, the windows "
            f"are {future.rgb.shape[-2]}x{future.rgb.shape[-1]}; collect data at the model's size"
        )
    if config.n_context != context.rgb.shape[1] or length % config.n_future:
        raise ValueError(
            f"{variant.name}: the model starts from {config.n_context} frames and generates "
            f"chunks of {config.n_future}; windows have {context.rgb.shape[1]} context frames and "
            f"{length} future frames (set WindowConfig.n_context and a multiple of n_future)"
        )
    return rollout_along_recorded_poses(
        model,
        context.rgb,
        context.depth,
        context.cam_to_world,
        future.cam_to_world,
        sampler=variant.sampler,
        intrinsics=context.intrinsics[:, -1],
        memory=memory,
        insert_start_frames=insert_context_frames,
        generator=generators,
    )


@dataclass(frozen=True)
class WindowPredictions:
    """Recorded and predicted futures of all windows.

    Attributes:
        windows: the windows, in row order.
        batch: their recorded frames and memory-only pixels.
        rgb: ``{variant: (N, length, 3, H, W)}`` float32 in [0, 1].
        depth: ``{variant: (N, length, 1, H, W)}`` float32 metres, or ``None`` (RGB-only model).
        unmapped: (N, length, 1, H, W) bool, :func:`unmapped_pixels` of the windows.
    """

    windows: list[Window]
    batch: WindowBatch
    rgb: dict[str, Tensor]
    depth: dict[str, Tensor | None]
    unmapped: Tensor


def predict_windows(
    windows: Sequence[Window],
    batch: WindowBatch,
    variants: Sequence[Variant],
    batch_size: int = 8,
    insert_context_frames: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> WindowPredictions:
    """Every variant's prediction of every window, from the same noise per window.

    Args:
        windows: the windows (window ``i`` draws its noise from ``seed + i``).
        batch: :func:`load_windows` of them.
        variants: distinct names.
        batch_size: windows per model call, >= 1.
        insert_context_frames: as :func:`predict`.
        seed: >= 0.
        progress: show a progress bar.
    """
    names = [v.name for v in variants]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"give one or more variants with distinct names, got {names}")
    if batch_size < 1 or seed < 0:
        raise ValueError(f"batch_size must be >= 1 and seed >= 0, got {batch_size}, {seed}")
    rgb: dict[str, list[Tensor]] = {name: [] for name in names}
    depth: dict[str, list[Tensor | None]] = {name: [] for name in names}
    jobs = [(v, first) for v in variants for first in range(0, len(windows), batch_size)]
    for variant, first in tqdm(jobs, disable=not progress, desc="rollouts"):
        index = torch.arange(first, min(first + batch_size, len(windows)))
        generators = [torch.Generator().manual_seed(seed + int(i)) for i in index]
        out_rgb, out_depth = predict(
            variant, select(batch, index), generators, insert_context_frames
        )
        rgb[variant.name].append(out_rgb)
        depth[variant.name].append(out_depth)
    return WindowPredictions(
        windows=list(windows),
        batch=batch,
        rgb={name: torch.cat(parts) for name, parts in rgb.items()},
        depth={
            name: None if parts[0] is None else torch.cat(parts) for name, parts in depth.items()
        },
        unmapped=unmapped_pixels(batch),
    )


def coverage_bins(coverage: Tensor) -> Tensor:
    """Bin index of each memory-only share: 0 below 10 %, 1 below 50 %, 2 from 50 % up.

    Args:
        coverage: float shares in [0, 1], any shape.

    Returns:
        int64 of the same shape.
    """
    return torch.bucketize(coverage, torch.tensor(BIN_EDGES, dtype=coverage.dtype), right=True)


def masked_psnr(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """PSNR (data range 1) over the masked pixels of each frame.

    Args:
        pred: (N, 3, H, W) float in [0, 1].
        target: same shape.
        mask: (N, 1, H, W) bool.

    Returns:
        (N,) float64 dB; NaN for a frame without masked pixels, inf for an exact match.
    """
    weight = mask.expand_as(pred).double()
    mse = (((pred - target).double() ** 2) * weight).sum((1, 2, 3)) / weight.sum((1, 2, 3))
    return 10 * torch.log10(1 / mse)


def _mean(name: str, values: np.ndarray, unit: str) -> MetricResult:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return MetricResult.unavailable(name, "no frame in this bin has such pixels")
    return MetricResult(name=name, value=float(finite.mean()), unit=unit, per_item=finite)


def score_windows(
    predictions: WindowPredictions, n_future: int, lpips_model: LPIPS | Exception | None = None
) -> list[dict]:
    """Per variant: metrics overall, per coverage bin and per chunk.

    Args:
        predictions: from :func:`predict_windows`.
        n_future: frames per chunk (for the per-chunk rows).
        lpips_model: an LPIPS with ``input_range=(0, 1)`` on the CPU; a new AlexNet one if
            ``None``; an exception to report LPIPS as unavailable with its message.

    Returns:
        Rows with ``frames`` (subset), ``variant``, ``frames_n``, ``psnr`` (dB), ``ssim``,
        ``lpips``, ``depth_l1`` (metres; absent for an RGB-only model), ``psnr_memory_only``
        (dB over the frames' memory-only pixels), ``psnr_unmapped`` (dB over the pixels no
        memory or context frame shows, :func:`unmapped_pixels`; frames without such pixels are
        left out of its mean) and ``unmapped_share`` (their share of the frame), for the subsets
        ``all``, the three coverage bins and ``chunk 1`` .. ``chunk k``. A subset without frames
        gives ``frames_n = 0`` only.
    """
    if lpips_model is None:
        from worldsim.metrics.lpips import LPIPS

        try:
            lpips_model = LPIPS("alex")
        except FileNotFoundError as error:
            lpips_model = error
    batch = predictions.batch
    truth = batch.future.rgb.flatten(0, 1)  # (N*L, 3, H, W)
    truth_depth = batch.future.depth.flatten(0, 1)[:, None]  # (N*L, 1, 1, H, W)
    only = batch.memory_only.flatten(0, 1)  # (N*L, 1, H, W)
    unmapped = predictions.unmapped.flatten(0, 1)  # (N*L, 1, H, W)
    length = batch.future.rgb.shape[1]
    bins = coverage_bins(batch.coverage).flatten().numpy()
    chunk = (np.arange(length) // n_future)[None].repeat(len(predictions.windows), 0).flatten()
    subsets = {"all": np.ones_like(bins, dtype=bool)}
    subsets |= {name: bins == b for b, name in enumerate(BIN_NAMES)}
    subsets |= {f"chunk {c + 1}": chunk == c for c in range(-(-length // n_future))}
    per_frame = {}
    for name, generated in predictions.rgb.items():
        pred = generated.flatten(0, 1)
        values = {
            "psnr": (psnr(pred, truth).per_item, "dB"),
            "ssim": (ssim(pred, truth).per_item, "[-1, 1]"),
            "psnr_memory_only": (masked_psnr(pred, truth, only).numpy(), "dB"),
            "psnr_unmapped": (masked_psnr(pred, truth, unmapped).numpy(), "dB"),
            "unmapped_share": (unmapped.double().mean((1, 2, 3)).numpy(), "fraction"),
        }
        if not isinstance(lpips_model, Exception):
            values["lpips"] = (lpips(pred, truth, lpips_model).per_item, "distance")
        depth = predictions.depth[name]
        if depth is not None:
            error = depth_error(depth.flatten(0, 1)[:, None], truth_depth)
            values["depth_l1"] = (error.per_item, "m")
        per_frame[name] = values
    rows = []
    for subset, chosen in subsets.items():
        for name, values in per_frame.items():
            row: dict = {"frames": subset, "variant": name, "frames_n": int(chosen.sum())}
            if chosen.any():
                for metric in METRICS:
                    if metric == "lpips" and isinstance(lpips_model, Exception):
                        row[metric] = MetricResult.unavailable(metric, str(lpips_model))
                    elif metric in values:
                        series, unit = values[metric]
                        row[metric] = _mean(metric, np.asarray(series)[chosen], unit)
            rows.append(row)
    return rows
