"""Multi-chunk rollouts over revisit windows, scored by how much of each frame only memory explains.

A single generated chunk (4 frames at 10 deg turns) cannot reach 50 % pixels that earlier frames
see and the context does not; turning around, coming back through a doorway or the return leg of
an out-and-back can. This module evaluates rollouts of several chunks where that happens.

Windows and their frames come from :mod:`worldsim.evaluation.windows`.

Variants
    A :class:`Variant` is a name, a world model or ``None``, and a memory builder (the memory a
    window gives it: :func:`episode_memory`, its ``shuffled`` form, :func:`context_memory` (the
    context frames alone) or :func:`no_memory`). Every variant with a model rolls out along the
    recorded camera motion (relative step poses, so the generated views align with the recorded
    ones) from the same initial noise per window. Without a model there is no learning: with a
    :class:`~worldsim.memory.RenderedMemory` the memory and context frames are rendered at each
    future camera and the pixels the render leaves empty (its *holes*) are filled from the last
    context frame (the *reprojection* baseline) or classically from the render itself
    (:func:`fill_render_holes`: the *harmonic fill* and *nearest fill* baselines); without
    memory every future frame is the last context frame (*last frame*).

Scores
    :func:`score_windows` bins every generated frame by its memory-only share (0-10 %, 10-50 %,
    >= 50 %, computed at full resolution) and by its render coverage (the *exploration* frames,
    < 20 % of the frame drawn by the memory and context render) and reports per bin, per chunk
    and overall: PSNR (the mean of per-frame values, and pooled), SSIM, LPIPS, depth L1 and PSNR
    on the memory-only pixels, and on the frames with >= 1 % holes the hole-pixel PSNR, the LPIPS
    map averaged over the holes and the holes' depth L1. The holes are those of the reprojection
    render (:func:`unmapped_pixels`), one mask for every variant.
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
from worldsim.memory.fills import FILLS, fill_holes
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
EXPLORATION_COVERAGE = 0.2
"""Frames whose memory + context render covers less than this share are exploration frames."""
EXPLORATION_NAME = "exploration: render < 20 %"
"""Name of the exploration frames' subset."""
MIN_HOLE_SHARE = 0.01
"""Frames with at least this share of holes are scored on their holes (``*_holes`` columns)."""
LAST_FRAME_FILL = "last frame"
"""The reprojection's hole fill: the last context frame."""
HOLE_FILLS = (LAST_FRAME_FILL, *FILLS)
"""Ways a no-learning variant fills the render's holes (:attr:`Variant.fill`)."""
METRICS = (
    "psnr",
    "psnr_pooled",
    "ssim",
    "lpips",
    "depth_l1",
    "psnr_memory_only",
    "psnr_unmapped",
    "unmapped_share",
    "holes_n",
    "psnr_holes",
    "psnr_holes_pooled",
    "lpips_holes",
    "depth_l1_holes",
)
"""Columns of :func:`score_windows`' rows, in order."""
NOTES = (
    "frames: the subset scored: every frame; by memory-only share (pixels earlier frames see "
    "and the context does not) 0-10 %, 10-50 %, >= 50 %; exploration frames, whose memory + "
    "context render covers < 20 %; each chunk",
    "psnr: the mean of per-frame PSNR (inf once a frame matches exactly); psnr_pooled: the PSNR "
    "of the squared error pooled over the subset's frames",
    "psnr_memory_only / psnr_unmapped: PSNR on the memory-only pixels / on the pixels the "
    "render leaves empty (holes), over frames that have any; unmapped_share: the holes' share",
    "holes: the pixels the reprojection's render (memory + context) leaves empty, one mask for "
    "every variant; holes_n: frames with >= 1 % holes, which the *_holes columns score: "
    "psnr_holes (mean per frame), psnr_holes_pooled, lpips_holes (the LPIPS map averaged over "
    "the holes), depth_l1_holes (metres, holes with a recorded depth)",
    "baselines without learning: reprojection (holes from the last context frame), "
    "harmonic / nearest fill (holes filled from the render), last frame; context only: a memory "
    "of the context frames alone, the control beside none",
)
"""How to read :func:`score_windows`' table, one line each: the ``notes`` of
:func:`~worldsim.evaluation.report.write_report`."""


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


def context_memory(prototype: Memory) -> MemoryBuilder:
    """An emptied copy of a memory: the rollout writes the window's context frames into it.

    The control against :func:`no_memory`: what the context frames' own render (or features)
    gives, without any earlier frame. A model's rollout writes the context when
    ``insert_context_frames`` (the default of :func:`predict_windows`); the reprojection baseline
    always does.

    Args:
        prototype: the memory kind and settings; it is copied, never filled.
    """
    memory = copy.deepcopy(prototype)

    def build(batch: WindowBatch, device: torch.device) -> Memory:
        memory.reset(batch.context.rgb.shape[0], device)
        return memory

    return build


def unmapped_pixels(batch: WindowBatch) -> Tensor:
    """Future pixels that no memory or context frame shows: where a model must invent.

    The windows' memory and context frames are put in a :class:`RenderedMemory` and rendered
    at the future cameras (what the reprojection baseline draws); the pixels it leaves empty
    are the ones reprojection fills from the last context frame and a model inpaints: the
    *holes* of every variant's hole metrics.

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


def fill_render_holes(
    rgb: Tensor, depth: Tensor, drawn: Tensor, method: str
) -> tuple[Tensor, Tensor]:
    """The reprojection's frames with the render's holes filled classically from the render.

    As the pixel generator's prefill: RGB and depth are filled together from the drawn pixels
    (:func:`worldsim.memory.fills.fill_holes`); a frame the render does not cover at all keeps
    its input (the last context frame, in the reprojection's composite).

    Args:
        rgb: (B, L, 3, H, W) the reprojection's composite (:func:`reproject_window`).
        depth: (B, L, 1, H, W) metres, the same.
        drawn: (B, L, 1, H, W) bool, the pixels the render drew.
        method: one of :data:`worldsim.memory.fills.FILLS`.

    Returns:
        ``(rgb, depth)`` of the input shapes, equal to the inputs where ``drawn``.
    """
    frames = torch.cat([rgb, depth], dim=2).flatten(0, 1)  # (B*L, 4, H, W)
    known = drawn.flatten(0, 1)  # (B*L, 1, H, W)
    filled = fill_holes(frames, known, method)
    covers_any = known.flatten(1).any(dim=1)[:, None, None, None]  # (B*L, 1, 1, 1)
    filled = torch.where(covers_any, filled, frames).view(*rgb.shape[:2], 4, *rgb.shape[-2:])
    return filled[:, :, :3], filled[:, :, 3:]  # (B, L, 3, H, W), (B, L, 1, H, W)


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
        fill: how a reprojection baseline fills the render's holes, one of
            :data:`HOLE_FILLS` (ignored by models and by the last frame).
    """

    name: str
    model: WorldModel | None
    memory: MemoryBuilder
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    fill: str = LAST_FRAME_FILL

    def __post_init__(self) -> None:
        if self.fill not in HOLE_FILLS:
            raise ValueError(f"Variant.fill must be one of {HOLE_FILLS}, got {self.fill!r}")


def reprojection_variant(
    name: str = "reprojection",
    shuffled: bool = False,
    fill: str = LAST_FRAME_FILL,
    context_only: bool = False,
) -> Variant:
    """The no-learning baseline: memory and context rendered at each future camera.

    Args:
        name: row label.
        shuffled: render another episode's memory (:attr:`WindowBatch.shuffled`).
        fill: the holes' fill, one of :data:`HOLE_FILLS` (``"harmonic"`` and ``"nearest"``:
            :func:`fill_render_holes`).
        context_only: render the context frames alone (:func:`context_memory`).
    """
    if shuffled and context_only:
        raise ValueError("a reprojection is of a shuffled memory or of the context only, not both")
    memory = RenderedMemory()
    builder = context_memory(memory) if context_only else episode_memory(memory, shuffled)
    return Variant(name, None, builder, fill=fill)


def fill_variants() -> list[Variant]:
    """The classical fills of the reprojection's holes as named baselines."""
    return [
        reprojection_variant(f"{method} fill", fill=method) for method in ("harmonic", "nearest")
    ]


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
        rgb, depth, drawn = reproject_window(memory, batch)
        if variant.fill != LAST_FRAME_FILL:
            rgb, depth = fill_render_holes(rgb, depth, drawn, variant.fill)
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


def pooled_psnr(squared_error: Tensor | np.ndarray, count: Tensor | np.ndarray) -> float:
    """PSNR (data range 1) of the mean squared error pooled over frames.

    Unlike the mean of per-frame PSNRs it stays finite while some frames match exactly, and
    it weighs every pixel alike.

    Args:
        squared_error: (N,) each frame's sum of squared errors over the scored pixel values.
        count: (N,) how many pixel values each sum holds.

    Returns:
        dB; ``inf`` when every frame matches exactly, NaN without any scored value.
    """
    total, values = float(np.sum(squared_error)), float(np.sum(count))
    if values == 0:
        return float("nan")
    return float("inf") if total == 0 else 10 * np.log10(values / total)


def masked_lpips(
    pred: Tensor, target: Tensor, mask: Tensor, model: LPIPS, batch_size: int = 64
) -> Tensor:
    """The LPIPS map (:meth:`~worldsim.metrics.lpips.LPIPS.spatial`) averaged over masked pixels.

    Args:
        pred: (N, 3, H, W) float in [0, 1].
        target: same shape.
        mask: (N, 1, H, W) bool.
        model: an LPIPS with ``input_range=(0, 1)``.
        batch_size: frames per trunk pass.

    Returns:
        (N,) float64; NaN for a frame without masked pixels.
    """
    maps = torch.cat(
        [
            model.spatial(pred[i : i + batch_size], target[i : i + batch_size])
            for i in range(0, pred.shape[0], batch_size)
        ]
    ).double()  # (N, 1, H, W)
    weight = mask.double()
    return (maps * weight).sum((1, 2, 3)) / weight.sum((1, 2, 3))


def _mean(name: str, values: np.ndarray, unit: str) -> MetricResult:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return MetricResult.unavailable(name, "no frame in this bin has such pixels")
    return MetricResult(name=name, value=float(finite.mean()), unit=unit, per_item=finite)


def _pooled(name: str, squared_error: np.ndarray, count: np.ndarray) -> MetricResult:
    if count.sum() == 0:
        return MetricResult.unavailable(name, "no frame in this bin has such pixels")
    return MetricResult(name=name, value=pooled_psnr(squared_error, count), unit="dB")


def _subsets(predictions: WindowPredictions, n_future: int) -> dict[str, np.ndarray]:
    """Frame subsets by name, each an (N*L,) bool: all, bins, exploration, chunks."""
    batch = predictions.batch
    length = batch.future.rgb.shape[1]
    bins = coverage_bins(batch.coverage).flatten().numpy()
    rendered = 1 - predictions.unmapped.flatten(0, 1).double().mean((1, 2, 3)).numpy()
    chunk = (np.arange(length) // n_future)[None].repeat(len(predictions.windows), 0).flatten()
    subsets = {"all": np.ones_like(bins, dtype=bool)}
    subsets |= {name: bins == b for b, name in enumerate(BIN_NAMES)}
    subsets[EXPLORATION_NAME] = rendered < EXPLORATION_COVERAGE
    subsets |= {f"chunk {c + 1}": chunk == c for c in range(-(-length // n_future))}
    return subsets


def score_windows(
    predictions: WindowPredictions, n_future: int, lpips_model: LPIPS | Exception | None = None
) -> list[dict]:
    """Per variant: metrics overall, per coverage bin, on exploration frames and per chunk.

    Args:
        predictions: from :func:`predict_windows`.
        n_future: frames per chunk (for the per-chunk rows).
        lpips_model: an LPIPS with ``input_range=(0, 1)`` on the CPU; a new AlexNet one if
            ``None``; an exception to report LPIPS as unavailable with its message.

    Returns:
        Rows with ``frames`` (subset), ``variant``, ``frames_n``, ``psnr`` (dB, the mean of
        per-frame values: ``inf`` once a frame matches exactly), ``psnr_pooled`` (dB of the
        squared error pooled over the subset's frames), ``ssim``, ``lpips``, ``depth_l1``
        (metres; absent for an RGB-only model), ``psnr_memory_only`` (dB over the frames'
        memory-only pixels), ``psnr_unmapped`` (dB over the pixels no memory or context frame
        shows, :func:`unmapped_pixels`; frames without such pixels are left out of its mean),
        ``unmapped_share`` (their share of the frame), and on the ``holes_n`` frames whose
        unmapped pixels (*holes*) are >= 1 % of the frame: ``psnr_holes`` (mean over frames of
        the hole-pixel PSNR), ``psnr_holes_pooled`` (the squared error pooled over all their hole
        pixels), ``lpips_holes`` (the LPIPS map averaged over the holes, :func:`masked_lpips`)
        and ``depth_l1_holes`` (metres, over holes with a recorded depth). Subsets: ``all``, the
        three memory-only bins, :data:`EXPLORATION_NAME` (render coverage < 20 %) and
        ``chunk 1`` .. ``chunk k``. A subset without frames gives ``frames_n = 0`` only.
    """
    if lpips_model is None:
        from worldsim.metrics.lpips import LPIPS

        try:
            lpips_model = LPIPS("alex")
        except FileNotFoundError as error:
            lpips_model = error
    batch = predictions.batch
    truth = batch.future.rgb.flatten(0, 1)  # (N*L, 3, H, W)
    truth_depth = batch.future.depth.flatten(0, 1)  # (N*L, 1, H, W)
    only = batch.memory_only.flatten(0, 1)  # (N*L, 1, H, W)
    unmapped = predictions.unmapped.flatten(0, 1)  # (N*L, 1, H, W)
    hole_share = unmapped.double().mean((1, 2, 3))  # (N*L,)
    scored = hole_share >= MIN_HOLE_SHARE  # (N*L,) the frames scored on their holes
    holes = unmapped & scored[:, None, None, None]  # (N*L, 1, H, W), the same for every variant
    hole_values = 3 * holes.sum((1, 2, 3)).double().numpy()  # (N*L,) RGB values in the holes
    subsets = _subsets(predictions, n_future)
    means, pooled = {}, {}
    for name, generated in predictions.rgb.items():
        pred = generated.flatten(0, 1)
        squared = (pred - truth).double() ** 2  # (N*L, 3, H, W)
        values = {
            "psnr": (psnr(pred, truth).per_item, "dB"),
            "ssim": (ssim(pred, truth).per_item, "[-1, 1]"),
            "psnr_memory_only": (masked_psnr(pred, truth, only).numpy(), "dB"),
            "psnr_unmapped": (masked_psnr(pred, truth, unmapped).numpy(), "dB"),
            "unmapped_share": (hole_share.numpy(), "fraction"),
            "psnr_holes": (masked_psnr(pred, truth, holes).numpy(), "dB"),
        }
        pooled[name] = {
            "psnr_pooled": (squared.sum((1, 2, 3)).numpy(), np.full(len(pred), truth[0].numel())),
            "psnr_holes_pooled": ((squared * holes).sum((1, 2, 3)).numpy(), hole_values),
        }
        if not isinstance(lpips_model, Exception):
            values["lpips"] = (lpips(pred, truth, lpips_model).per_item, "distance")
            in_holes = torch.full((len(pred),), float("nan"), dtype=torch.float64)
            if scored.any():
                in_holes[scored] = masked_lpips(
                    pred[scored], truth[scored], holes[scored], lpips_model
                )
            values["lpips_holes"] = (in_holes.numpy(), "distance")
        depth = predictions.depth[name]
        if depth is not None:
            depth = depth.flatten(0, 1)  # (N*L, 1, H, W)
            error = depth_error(depth[:, None], truth_depth[:, None])
            values["depth_l1"] = (error.per_item, "m")
            hit = (holes & (truth_depth > 0)).double()  # holes with a recorded depth
            hole_error = ((depth - truth_depth).abs().double() * hit).sum((1, 2, 3))
            values["depth_l1_holes"] = ((hole_error / hit.sum((1, 2, 3))).numpy(), "m")
        means[name] = values
    rows = []
    for subset, chosen in subsets.items():
        for name, values in means.items():
            row: dict = {"frames": subset, "variant": name, "frames_n": int(chosen.sum())}
            if chosen.any():
                for metric in METRICS:
                    if metric == "holes_n":
                        row[metric] = int((chosen & scored.numpy()).sum())
                    elif metric.startswith("lpips") and isinstance(lpips_model, Exception):
                        row[metric] = MetricResult.unavailable(metric, str(lpips_model))
                    elif metric in pooled[name]:
                        squared_error, count = pooled[name][metric]
                        row[metric] = _pooled(metric, squared_error[chosen], count[chosen])
                    elif metric in values:
                        series, unit = values[metric]
                        row[metric] = _mean(metric, np.asarray(series)[chosen], unit)
            rows.append(row)
    return rows
