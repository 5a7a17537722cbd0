"""Validation of the world model on held-out clips: the future chunk with and without memory.

For each chosen clip of a :class:`~worldsim.data.ClipDataset` (see :class:`EvaluationConfig`),
the model sees the clip's ``n_context`` frames and generates its ``n_future`` frames along the
clip's recorded camera motion (:func:`worldsim.simulator.chunks.rollout` with relative step poses,
so a collision in the recording does not misplace the generated views). It does so once per memory
variant, with the same initial noise for every variant of a clip, so the variants differ only
in their conditioning:

* a memory (e.g. the 3D feature map) built from the clip's earlier frames (``memory_*`` of the
  clip, as in training), optionally with the context frames too;
* ``"none"``: the same model without map tokens (its memory blocks are skipped: the stage-1
  backbone, the NWM-style baseline).

The generated frames are scored against the recorded ones with PSNR, SSIM and LPIPS
(:mod:`worldsim.metrics.video`) and the mean absolute depth error in metres, on two subsets: revisit
clips (future views seen before the clip, where memory can help) and all chosen clips.
:func:`evaluation_rows` turns the result into a table for
:func:`worldsim.evaluation.report.write_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.data import ClipDataset, collate_clips
from worldsim.geometry import DEFAULT_MAX_DEPTH_M
from worldsim.metrics.video import MetricResult, lpips, psnr, ssim
from worldsim.simulator.chunks import (
    insert_clip_memory,
    insert_frames,
    rollout_along_recorded_poses,
)
from worldsim.simulator.sampler import SamplerConfig, composite_render

if TYPE_CHECKING:
    from worldsim.memory import Memory, RenderedMemory
    from worldsim.metrics.lpips import LPIPS
    from worldsim.models.world_model import WorldModel

SUBSETS = ("revisit", "all")
"""Clip subsets scored by :func:`evaluation_rows`."""


@dataclass(frozen=True)
class EvaluationConfig:
    """Which clips are evaluated and how the future is sampled.

    Attributes:
        max_clips: most clips per subset (revisit clips, all clips), >= 1; spread evenly over
            the dataset's clips of that subset.
        batch_size: clips per model call, >= 1.
        sampler: how each chunk is sampled (the checkpoint's own: ``load_sampler_config``).
        insert_context_frames: also unproject the context frames into the memory (training
            builds the memory from the earlier frames only).
        seed: seeds the initial noise of clip ``i`` with ``seed + i``, >= 0.
    """

    max_clips: int = 64
    batch_size: int = 8
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    insert_context_frames: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_clips", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Predictions:
    """Recorded and generated future chunks of the evaluated clips.

    Attributes:
        clips: (N,) int64 clip indices into the dataset.
        is_revisit: (N,) bool, whether each clip is a revisit clip.
        rgb: (N, n_future, 3, H, W) float32 recorded RGB in [0, 1].
        depth: (N, n_future, 1, H, W) float32 recorded depth, metres.
        generated_rgb: ``{variant: (N, n_future, 3, H, W)}`` float32 in [0, 1].
        generated_depth: ``{variant: (N, n_future, 1, H, W)}`` float32 metres (``None`` for an
            RGB-only model).
    """

    clips: np.ndarray
    is_revisit: np.ndarray
    rgb: Tensor
    depth: Tensor
    generated_rgb: dict[str, Tensor]
    generated_depth: dict[str, Tensor | None]


def choose_clips(dataset: ClipDataset, max_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_clips`` revisit clips and up to ``max_clips`` clips of any kind.

    Args:
        dataset: the held-out clips.
        max_clips: most clips per subset, >= 1.

    Returns:
        ``(revisit, everything)``: sorted int64 clip indices, each spread evenly over its subset
        (``revisit`` is empty when the dataset has no revisit clip).
    """
    if max_clips < 1:
        raise ValueError(f"max_clips must be >= 1, got {max_clips}")

    def spread(indices: np.ndarray) -> np.ndarray:
        if len(indices) <= max_clips:
            return indices.astype(np.int64)
        picks = np.floor(np.linspace(0, len(indices) - 1, max_clips) + 0.5).astype(np.int64)
        return indices[picks].astype(np.int64)

    return spread(np.flatnonzero(dataset.is_revisit)), spread(np.arange(len(dataset)))


@torch.no_grad()
def predict_future(
    model: WorldModel,
    batch: dict,
    memory: Memory | None,
    generators: list[torch.Generator],
    sampler: SamplerConfig,
    insert_context_frames: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Generate the future chunk of a batch of clips along their recorded camera motion.

    Args:
        model: the world model; the clips have its frame size and ``n_context + n_future``
            frames.
        batch: clips collated by :func:`worldsim.data.collate_clips`.
        memory: built from the clips' ``memory_*`` frames (reset here to B rows on the model's
            device), or ``None`` for no map tokens.
        generators: one noise generator per clip.
        sampler: how the chunk is sampled.
        insert_context_frames: unproject the context frames into the memory too.

    Returns:
        ``(rgb, depth)``: (B, n_future, 3, H, W) float32 in [0, 1] and (B, n_future, 1, H, W)
        float32 metres (``None`` for an RGB-only model), on the CPU.

    Raises:
        ValueError: for clips of another length or frame size than the model's.
    """
    n_context, n_future = model.config.n_context, model.config.n_future
    rgb, depth, poses = batch["rgb"], batch["depth"], batch["cam_to_world"]
    if rgb.shape[1] != n_context + n_future:
        raise ValueError(
            f"clips have {rgb.shape[1]} frames but the model needs n_context + n_future = "
            f"{n_context + n_future}; build the dataset with ClipConfig(n_context={n_context}, "
            f"n_future={n_future})"
        )
    model.check_frames(rgb, "clip rgb", 3)
    if memory is not None:
        insert_clip_memory(memory, batch, model.device)
    return rollout_along_recorded_poses(
        model,
        rgb[:, :n_context],
        depth[:, :n_context],
        poses[:, :n_context],
        poses[:, n_context:],
        sampler=sampler,
        intrinsics=batch["intrinsics"][:, 0],
        memory=memory,
        insert_start_frames=insert_context_frames,
        generator=generators,
    )


def predict_clips(
    model: WorldModel,
    dataset: ClipDataset,
    memories: dict[str, Memory | None],
    config: EvaluationConfig,
    progress: bool = False,
) -> Predictions:
    """Generate the future chunk of the chosen clips once per memory variant.

    Args:
        model: the world model (eval mode).
        dataset: held-out clips with the model's ``n_context``, ``n_future`` and frame size.
        memories: ``{variant name: memory or None}``, e.g. ``{"feature_map": ..., "none": None}``.
        config: clip choice and sampling settings.
        progress: show a progress bar over batches.

    Returns:
        The recorded and generated chunks (:class:`Predictions`).

    Raises:
        ValueError: for no variants, or clips that do not fit the model.
    """
    if not memories:
        raise ValueError("give at least one memory variant, e.g. {'none': None}")
    revisit, everything = choose_clips(dataset, config.max_clips)
    clips = np.union1d(revisit, everything).astype(np.int64)
    truth_rgb, truth_depth = [], []
    generated_rgb: dict[str, list[Tensor]] = {name: [] for name in memories}
    generated_depth: dict[str, list[Tensor | None]] = {name: [] for name in memories}
    n_context = model.config.n_context
    starts = range(0, len(clips), config.batch_size)
    for first in tqdm(starts, disable=not progress, desc="clips"):
        chosen = clips[first : first + config.batch_size]
        batch = collate_clips([dataset[int(index)] for index in chosen])
        truth_rgb.append(batch["rgb"][:, n_context:])
        truth_depth.append(batch["depth"][:, n_context:])
        for name, memory in memories.items():
            # The same noise for every variant of a clip: they differ only in the memory.
            generators = [torch.Generator().manual_seed(config.seed + int(i)) for i in chosen]
            rgb, depth = predict_future(
                model,
                batch,
                memory,
                generators,
                config.sampler,
                config.insert_context_frames,
            )
            generated_rgb[name].append(rgb)
            generated_depth[name].append(depth)
    return Predictions(
        clips=clips,
        is_revisit=dataset.is_revisit[clips],
        rgb=torch.cat(truth_rgb),
        depth=torch.cat(truth_depth),
        generated_rgb={name: torch.cat(parts) for name, parts in generated_rgb.items()},
        generated_depth={
            name: None if parts[0] is None else torch.cat(parts)
            for name, parts in generated_depth.items()
        },
    )


def depth_error(pred: Tensor, target: Tensor) -> MetricResult:
    """Mean absolute depth error over pixels with a recorded hit (target depth > 0).

    Args:
        pred: (B, T, 1, H, W) float metres.
        target: same shape, metres, 0 = no hit.

    Returns:
        ``"depth_l1"`` in metres (lower is better), with per-frame values.
    """
    if pred.shape != target.shape:
        raise ValueError(f"depth shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    hit = (target > 0).float()
    per_frame = ((pred - target).abs() * hit).sum(dim=(-3, -2, -1)) / hit.sum(
        dim=(-3, -2, -1)
    ).clamp(min=1.0)  # (B, T); a frame without hits scores 0
    return MetricResult(
        name="depth_l1",
        value=float(per_frame.mean()),
        unit="m",
        per_item=per_frame.flatten().double().numpy(),
        per_step=per_frame.mean(dim=0).double().numpy(),
    )


LAST_FRAME = "last frame"
"""Name of the baseline variant of :func:`with_last_frame_baseline`."""


def with_last_frame_baseline(predictions: Predictions, dataset: ClipDataset) -> Predictions:
    """Add the ``"last frame"`` variant: every future frame is the clip's last context frame.

    The floor a world model must beat: it scores what is already known before any motion is
    imagined (for slow camera motion it is a strong floor).

    Args:
        predictions: from :func:`predict_clips` on ``dataset``.
        dataset: the clips the predictions were made for.

    Returns:
        New predictions with the extra variant (the others unchanged).
    """
    n_future = predictions.rgb.shape[1]
    last_rgb, last_depth = [], []
    for index in predictions.clips:
        item = dataset[int(index)]
        n_context = item["rgb"].shape[0] - n_future
        last_rgb.append(item["rgb"][n_context - 1].expand(n_future, -1, -1, -1))
        last_depth.append(item["depth"][n_context - 1].expand(n_future, -1, -1, -1))
    return _with_variant(predictions, LAST_FRAME, torch.stack(last_rgb), torch.stack(last_depth))


REPROJECTION = "reprojection"
"""Name of the baseline variant of :func:`with_reprojection_baseline`."""


def with_reprojection_baseline(predictions: Predictions, dataset: ClipDataset) -> Predictions:
    """Add the ``"reprojection"`` variant: the clip's memory and context rendered, no learning.

    Each clip's memory frames and context frames go into a
    :class:`~worldsim.memory.RenderedMemory`, which is rendered at the future cameras; pixels it
    leaves empty repeat the last context frame. A model that reads its memory should beat it.

    Args:
        predictions: from :func:`predict_clips` on ``dataset``.
        dataset: the clips the predictions were made for.

    Returns:
        New predictions with the extra variant (the others unchanged).
    """
    from worldsim.memory import RenderedMemory

    n_future = predictions.rgb.shape[1]
    memory = RenderedMemory()
    rgb_out, depth_out = [], []
    for index in predictions.clips:
        batch = collate_clips([dataset[int(index)]])
        n_context = batch["rgb"].shape[1] - n_future
        insert_clip_memory(memory, batch, "cpu")
        context, future = slice(0, n_context), slice(n_context, None)
        rgb, depth, _ = reproject(
            memory,
            batch["rgb"][:, context],
            batch["depth"][:, context],
            batch["intrinsics"][:, context],
            batch["cam_to_world"][:, context],
            batch["cam_to_world"][:, future],
            batch["intrinsics"][:, future],
        )
        rgb_out.append(rgb[0])
        depth_out.append(depth[0])
    return _with_variant(predictions, REPROJECTION, torch.stack(rgb_out), torch.stack(depth_out))


def reproject(
    memory: RenderedMemory,
    rgb: Tensor,
    depth: Tensor,
    intrinsics: Tensor,
    cam_to_world: Tensor,
    future_cam_to_world: Tensor,
    future_intrinsics: Tensor,
    max_depth_m: float = DEFAULT_MAX_DEPTH_M,
) -> tuple[Tensor, Tensor, Tensor]:
    """The no-learning baseline: a map of what is known rendered at the future cameras.

    The context frames are written into ``memory`` (which may already hold earlier frames) and
    the map is rendered at every future camera; pixels it leaves empty repeat the last context
    frame (:func:`~worldsim.simulator.sampler.composite_render`: a drawn point's depth reads 0
    beyond the sensor's range, as the model's composite and the sensor do).

    Args:
        memory: the map of the earlier frames, B rows (written into).
        rgb: (B, n_context, 3, H, W) context frames in [0, 1].
        depth: (B, n_context, 1, H, W) metres.
        intrinsics: (B, n_context, 3, 3) ``K``.
        cam_to_world: (B, n_context, 4, 4) their poses.
        future_cam_to_world: (B, L, 4, 4) the future cameras.
        future_intrinsics: (B, L, 3, 3) their ``K``.
        max_depth_m: the sensor's range, metres.

    Returns:
        ``(rgb, depth, mask)``: (B, L, 3, H, W), (B, L, 1, H, W) and the (B, L, 1, H, W) bool
        pixels the map drew.
    """
    insert_frames(memory, rgb, depth, intrinsics, cam_to_world)
    length = future_cam_to_world.shape[1]
    render = memory.render(future_cam_to_world, future_intrinsics, tuple(rgb.shape[-2:]))
    last_rgb = rgb[:, -1:].expand(-1, length, -1, -1, -1)
    last_depth = depth[:, -1:].expand(-1, length, -1, -1, -1)
    composite_rgb, composite_depth = composite_render(render, last_rgb, last_depth, max_depth_m)
    return (
        composite_rgb,
        composite_depth,
        render.mask,
    )


def _with_variant(predictions: Predictions, name: str, rgb: Tensor, depth: Tensor) -> Predictions:
    """``predictions`` with one more variant (its depth dropped for an RGB-only model)."""
    with_depth = any(d is not None for d in predictions.generated_depth.values())
    return Predictions(
        clips=predictions.clips,
        is_revisit=predictions.is_revisit,
        rgb=predictions.rgb,
        depth=predictions.depth,
        generated_rgb={**predictions.generated_rgb, name: rgb},
        generated_depth={**predictions.generated_depth, name: depth if with_depth else None},
    )


def evaluation_rows(predictions: Predictions, lpips_model: LPIPS | None = None) -> list[dict]:
    """Score every (subset, variant) pair.

    Args:
        predictions: from :func:`predict_clips`.
        lpips_model: an LPIPS with ``input_range=(0, 1)`` on the CPU; a new AlexNet one if
            ``None`` (reported as unavailable when its weights are missing).

    Returns:
        One row per subset and variant: ``subset``, ``memory``, ``clips``, ``psnr``, ``ssim``,
        ``lpips`` (:class:`~worldsim.metrics.video.MetricResult`) and ``depth_l1`` (metres; absent
        for an RGB-only model). A subset without clips gives rows with ``clips = 0`` and no
        metrics.
    """
    if lpips_model is None:
        from worldsim.metrics.lpips import LPIPS

        try:
            lpips_model = LPIPS("alex")
        except FileNotFoundError as error:
            lpips_model = error
    rows = []
    masks = {"revisit": predictions.is_revisit, "all": np.ones_like(predictions.is_revisit)}
    for subset in SUBSETS:
        chosen = torch.from_numpy(np.flatnonzero(masks[subset]))
        for name, generated in predictions.generated_rgb.items():
            row: dict = {"subset": subset, "memory": name, "clips": len(chosen)}
            if len(chosen) == 0:
                rows.append(row)
                continue
            pred, truth = generated[chosen], predictions.rgb[chosen]
            row["psnr"] = psnr(pred, truth)
            row["ssim"] = ssim(pred, truth)
            if isinstance(lpips_model, Exception):
                row["lpips"] = MetricResult.unavailable("lpips", str(lpips_model))
            else:
                row["lpips"] = lpips(pred, truth, lpips_model)
            depth = predictions.generated_depth[name]
            if depth is not None:
                row["depth_l1"] = depth_error(depth[chosen], predictions.depth[chosen])
            rows.append(row)
    return rows
