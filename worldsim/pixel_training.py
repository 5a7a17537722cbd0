"""Training the pixel-space denoiser (:mod:`worldsim.pixel_denoiser`): index, train, validate.

The recipe is collect → index → train → export; each step resumes where it stopped.

Index (:func:`build_index`)
    Rendering a map for every training step would cost more than the network's step on a CPU,
    so the renders are made once. Clips of a :class:`~worldsim.data.ClipDataset` are drawn by its
    :meth:`~worldsim.data.ClipDataset.clip_sampler` (memory-dependent clips, clips whose
    earlier frames are dropped, the rest); for each, a :class:`~worldsim.memory.RenderedMemory`
    holds the clip's memory frames and its context frames (as
    :func:`worldsim.losses.render_for_batch` builds it) and is rendered at every future frame's
    recorded camera. A sample is one future frame: the clip's context, the recorded frame (the
    target), the render at its camera (RGB-D, where it shows observed points within the
    sensor's range, and the age of those points) and the camera relative to the last context
    camera. Samples are written in parts of ``clips_per_part`` clips (uint8 colour, float16
    depth, ``.npy`` files read memory-mapped), each part atomically (a folder renamed into
    place), so a killed build resumes at the first missing part.

Training (:class:`PixelTrainer`)
    EDM's loss (Karras et al. 2022, eq. 2 with ``lambda(sigma)``) at log-normal noise levels,
    per pixel weighted toward the render's holes: weight 1 where the render leaves the pixel
    empty, ``known_weight`` where it covers (there the render is the answer and the sampler
    keeps it). Samples are drawn in proportion to ``hole_sampling_floor`` plus their hole
    share, so frames with holes come more often. With probability
    ``drop_render_probability`` a sample's render is dropped entirely (a chunk without any
    map: the prefill is the last context frame), so the model learns the no-memory case too.
    EMA weights, AdamW with warm-up, gradient clipping. A
    checkpoint (model, EMA, optimizer, schedule, the random generator, step and seconds
    trained) is written atomically every ``checkpoint_minutes`` and when the run ends; a rerun
    of the same command resumes from it. ``budget_minutes`` ends a run cleanly (checkpoint,
    export) after that much wall-clock time.

Validation (:func:`evaluate`)
    On a fixed set of validation samples (other houses than training), the EMA model's samples
    against the classical fills of the same render (:mod:`worldsim.fills`) and the last context
    frame: PSNR on the render's holes (RGB), depth error on the holes, and optionally LPIPS of
    the frame with only its holes replaced (``lpips_holes``: the truth elsewhere, so only what
    each method puts in the holes is scored) and of the whole frame on *exploration* samples
    (render coverage below 20 %).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.data import ClipConfig, ClipDataset, collate_clips
from worldsim.fills import harmonic_fill, nearest_fill
from worldsim.geometry import relative_pose
from worldsim.memory import RenderedMemory
from worldsim.pixel_denoiser import (
    EDMSamplerConfig,
    PixelConditions,
    PixelDenoiser,
    edm_loss_weight,
    edm_training_sigmas,
    sample_frames,
)
from worldsim.sampling import insert_clip_memory, insert_frames

INDEX_FORMAT = "persistent-world-pixel-index-1"
"""Format tag of an index's ``index.json``."""

EXPLORATION_COVERAGE = 0.2
"""Samples whose render covers less than this share of the frame are *exploration* samples."""

_ARRAYS = (
    "context_rgb",
    "context_depth",
    "target_rgb",
    "target_depth",
    "render_rgb",
    "render_depth",
    "render_known",
    "render_age",
    "cam_to_ref",
    "intrinsics",
    "memory_dropped",
)


# ===================================================================================== index
@dataclass(frozen=True)
class IndexConfig:
    """Which clips an index renders, and how.

    Attributes:
        n_context: context frames per clip, >= 1 (the model's ``n_context``).
        n_future: future frames per clip, each one sample, >= 1.
        max_memory_frames: most earlier frames in a clip's map (those that see most of its
            future, :class:`~worldsim.data.ClipConfig`), >= 0.
        num_clips: clips drawn, >= 1.
        clips_per_part: clips per part file (the unit of resuming), >= 1.
        render_batch: clips rendered together, >= 1 (speed only).
        memory_dependent_fraction: share of drawn clips whose future the memory sees and the
            context does not, in [0, 1].
        empty_memory_fraction: share of drawn clips whose earlier frames are dropped (the map
            holds the context only), in [0, 1], at most ``1 - memory_dependent_fraction``.
        seed: seeds the draw of clips, >= 0.
    """

    n_context: int = 2
    n_future: int = 4
    max_memory_frames: int = 16
    num_clips: int = 8000
    clips_per_part: int = 200
    render_batch: int = 8
    memory_dependent_fraction: float = 0.5
    empty_memory_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name, low in (
            ("n_context", 1),
            ("n_future", 1),
            ("max_memory_frames", 0),
            ("num_clips", 1),
            ("clips_per_part", 1),
            ("render_batch", 1),
            ("seed", 0),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{owner}.{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("memory_dependent_fraction", "empty_memory_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{owner}.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.memory_dependent_fraction + self.empty_memory_fraction > 1.0:
            raise ValueError(
                f"{owner}: memory_dependent_fraction + empty_memory_fraction must be <= 1, got "
                f"{self.memory_dependent_fraction} + {self.empty_memory_fraction}"
            )

    def clip_config(self) -> ClipConfig:
        """The :class:`~worldsim.data.ClipConfig` of the clips drawn."""
        return ClipConfig(
            n_context=self.n_context,
            n_future=self.n_future,
            max_memory_frames=self.max_memory_frames,
            memory_dependent_fraction=self.memory_dependent_fraction,
            empty_memory_fraction=self.empty_memory_fraction,
        )


def _to_uint8(rgb: Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@torch.no_grad()
def render_clips(batch: dict[str, Any], n_context: int, max_depth_m: float) -> dict[str, Tensor]:
    """The samples of a batch of clips: context, targets and the map rendered at their cameras.

    Args:
        batch: clips collated by :func:`worldsim.data.collate_clips` (T = n_context + F).
        n_context: context frames per clip.
        max_depth_m: the sensor's range; drawn points beyond it do not count as known.

    Returns:
        ``context_rgb`` (B, n_context, 3, H, W), ``context_depth`` (B, n_context, 1, H, W),
        ``target_rgb`` (B, F, 3, H, W), ``target_depth`` (B, F, 1, H, W), ``render_rgb`` (B, F,
        3, H, W), ``render_depth`` (B, F, 1, H, W), ``render_known`` (B, F, 1, H, W) bool (drawn,
        observed, within range), ``render_age`` (B, F, 1, H, W) frames since the drawn point
        was last seen, ``cam_to_ref`` (B, F, 4, 4) and ``intrinsics`` (B, F, 3, 3).
    """
    memory = RenderedMemory()
    insert_clip_memory(memory, batch, "cpu")
    context = slice(0, n_context)
    insert_frames(
        memory,
        batch["rgb"][:, context],
        batch["depth"][:, context],
        batch["intrinsics"][:, context],
        batch["cam_to_world"][:, context],
    )
    poses = batch["cam_to_world"]
    future = poses[:, n_context:]  # (B, F, 4, 4)
    size = tuple(batch["rgb"].shape[-2:])
    render = memory.render(future, batch["intrinsics"][:, n_context:], size)
    known = render.mask & render.observed & (render.depth <= max_depth_m)
    age = (memory.steps[:, None, None, None, None] - render.last_seen).float()
    return {
        "context_rgb": batch["rgb"][:, context],
        "context_depth": batch["depth"][:, context],
        "target_rgb": batch["rgb"][:, n_context:],
        "target_depth": batch["depth"][:, n_context:],
        "render_rgb": render.rgb * known,
        "render_depth": render.depth * known,
        "render_known": known,
        "render_age": torch.where(known, age, torch.zeros_like(age)),
        "cam_to_ref": relative_pose(poses[:, n_context - 1 : n_context], future).float(),
        "intrinsics": batch["intrinsics"][:, n_context:],
    }


def _stored(name: str, tensor: Tensor) -> np.ndarray:
    """A sample array in its stored dtype (colour uint8, depth and age float16)."""
    if name.endswith("_rgb"):
        return _to_uint8(tensor)
    if name.endswith("_depth") or name == "render_age":
        return tensor.clamp(max=60000).to(torch.float16).numpy()
    return tensor.numpy()


def build_index(
    data_dir: str | Path,
    index_dir: str | Path,
    config: IndexConfig,
    max_depth_m: float,
    progress: bool = True,
) -> Path:
    """Render the samples of ``config.num_clips`` clips into ``index_dir`` (module docstring).

    Args:
        data_dir: a dataset folder written by ``examples/collect_data.py``.
        index_dir: the index folder (created; a finished part is kept and skipped).
        config: which clips and how.
        max_depth_m: the sensor's range (the model's ``max_depth_m``).
        progress: show a progress bar.

    Returns:
        ``index_dir``.

    Raises:
        ValueError: if ``index_dir`` holds an index of other settings or another data set.
    """
    index_dir = Path(index_dir)
    dataset = ClipDataset(data_dir, config.clip_config())
    settings = {
        "format": INDEX_FORMAT,
        "data_dir": str(Path(data_dir).resolve()),
        "episodes": len(dataset.store.episodes),
        "clips_in_data": len(dataset),
        "config": asdict(config),
        "max_depth_m": max_depth_m,
    }
    manifest = index_dir / "index.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if {k: saved.get(k) for k in settings} != settings:
            raise ValueError(
                f"{str(index_dir)!r} holds an index of other settings or data; use another "
                f"folder (saved {saved.get('config')}, this run {settings['config']})"
            )
    else:
        index_dir.mkdir(parents=True, exist_ok=True)
        temporary = manifest.with_name(manifest.name + ".tmp")
        temporary.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, manifest)
    generator = torch.Generator().manual_seed(config.seed)
    draws = list(dataset.clip_sampler(config.num_clips, generator))
    parts = range(0, config.num_clips, config.clips_per_part)
    bar = tqdm(total=config.num_clips, desc="index", unit="clip", disable=not progress)
    for number, first in enumerate(parts):
        folder = index_dir / f"part-{number:05d}"
        chosen = draws[first : first + config.clips_per_part]
        if (folder / "done").is_file():
            bar.update(len(chosen))
            continue
        arrays: dict[str, list[np.ndarray]] = {name: [] for name in (*_ARRAYS, "clip")}
        for start in range(0, len(chosen), config.render_batch):
            group = chosen[start : start + config.render_batch]
            batch = collate_clips([dataset[draw] for draw in group])
            samples = render_clips(batch, config.n_context, max_depth_m)
            for name, tensor in samples.items():
                arrays[name].append(_stored(name, tensor))
            arrays["memory_dropped"].append(np.array([draw.empty_memory for draw in group]))
            arrays["clip"].append(np.array([draw.index for draw in group], dtype=np.int64))
            bar.update(len(group))
        temporary = folder.with_name(folder.name + ".tmp")
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        for name, parts_of_name in arrays.items():
            np.save(temporary / f"{name}.npy", np.concatenate(parts_of_name))
        (temporary / "done").write_text("")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temporary, folder)
    bar.close()
    return index_dir


class PixelIndex:
    """The samples of an index folder (:func:`build_index`), memory-mapped.

    Sample ``i`` is future frame ``i % F`` of clip ``i // F`` (F the index's ``n_future``).

    Args:
        index_dir: the folder.

    Raises:
        FileNotFoundError: if it holds no finished part.
    """

    def __init__(self, index_dir: str | Path) -> None:
        self.root = Path(index_dir)
        manifest = self.root / "index.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"no pixel index at {str(self.root)!r}: run build_index first")
        self.settings = json.loads(manifest.read_text())
        parts = sorted(p for p in self.root.glob("part-*") if (p / "done").is_file())
        if not parts:
            raise FileNotFoundError(f"the pixel index {str(self.root)!r} has no finished part")
        self.parts = [
            {name: np.load(part / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
            for part in parts
        ]
        counts = np.array([len(part["memory_dropped"]) for part in self.parts])
        self._part_start = np.concatenate([[0], np.cumsum(counts)])
        self.num_clips = int(counts.sum())
        self.n_future = int(self.settings["config"]["n_future"])
        self._hole_shares: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_clips * self.n_future

    def hole_shares(self) -> np.ndarray:
        """(N,) float32: each sample's share of pixels its render leaves empty (read once)."""
        if self._hole_shares is None:
            shares = []
            for part in self.parts:
                known = part["render_known"]  # (C, F, 1, H, W); sample i = clip * F + frame
                flat = known.reshape(known.shape[0] * known.shape[1], -1)  # (C * F, H * W)
                shares.append(1.0 - flat.mean(axis=1, dtype=np.float32))
            self._hole_shares = np.concatenate(shares).astype(np.float32)
        return self._hole_shares

    def batch(self, indices: np.ndarray | list[int]) -> dict[str, Tensor]:
        """Samples as float tensors: RGB in [0, 1], depth in metres.

        Returns:
            ``context_rgb`` (B, n_context, 3, H, W), ``context_depth`` (B, n_context, 1, H, W),
            ``target_rgb`` (B, 3, H, W), ``target_depth`` (B, 1, H, W), ``render_rgb`` (B, 3,
            H, W), ``render_depth`` (B, 1, H, W), ``render_known`` (B, 1, H, W) bool,
            ``render_age`` (B, 1, H, W), ``cam_to_ref`` (B, 4, 4), ``intrinsics`` (B, 3, 3),
            ``memory_dropped`` (B,) bool.
        """
        rows: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS}
        for index in np.asarray(indices, dtype=np.int64):
            clip, frame = divmod(int(index), self.n_future)
            number = int(np.searchsorted(self._part_start, clip, side="right")) - 1
            part, row = self.parts[number], clip - int(self._part_start[number])
            for name in _ARRAYS:
                array = part[name][row]
                per_frame = name not in ("context_rgb", "context_depth", "memory_dropped")
                rows[name].append(np.asarray(array[frame] if per_frame else array))
        out = {name: torch.from_numpy(np.stack(values)) for name, values in rows.items()}
        for name in ("context_rgb", "target_rgb", "render_rgb"):
            out[name] = out[name].float() / 255.0
        for name in ("context_depth", "target_depth", "render_depth", "render_age"):
            out[name] = out[name].float()
        return out


def conditions_of(
    model: PixelDenoiser, samples: dict[str, Tensor], drop_render: Tensor | None = None
) -> PixelConditions:
    """The model's conditioning of index samples, optionally with some renders dropped.

    Args:
        model: the denoiser.
        samples: from :meth:`PixelIndex.batch`.
        drop_render: (B,) bool, rows whose render is replaced by an empty one; None = none.
    """
    known = samples["render_known"]
    if drop_render is not None:
        known = known & ~drop_render[:, None, None, None]
    return model.conditions(
        samples["context_rgb"],
        samples["context_depth"],
        samples["render_rgb"] * known,
        samples["render_depth"] * known,
        known,
        samples["render_age"],
        samples["intrinsics"],
        samples["cam_to_ref"],
    )


# ===================================================================================== training
@dataclass(frozen=True)
class PixelTrainConfig:
    """Settings of :class:`PixelTrainer`.

    Attributes:
        batch_size: samples per step, >= 1.
        learning_rate: AdamW's rate after warm-up, > 0.
        warmup_steps: linear warm-up, steps, >= 0.
        weight_decay: AdamW's decoupled weight decay, >= 0.
        ema_decay: decay of the exponential moving average of the weights, in [0, 1).
        grad_clip: largest gradient norm, > 0.
        sigma_log_mean: mean of ``ln sigma`` at training (EDM's P_mean).
        sigma_log_std: standard deviation of ``ln sigma`` (EDM's P_std), > 0.
        known_weight: loss weight of pixels the render covers (holes weigh 1), in [0, 1].
        drop_render_probability: chance that a sample's render is dropped, in [0, 1].
        hole_sampling_floor: samples are drawn with probability proportional to this plus
            their hole share (more steps on frames with holes), >= 0; None draws uniformly.
        max_steps: the run ends at this step, >= 1.
        budget_minutes: the run ends after this much wall-clock time, > 0; None = no limit.
        checkpoint_minutes: wall-clock time between checkpoints, > 0.
        keep_checkpoints: most checkpoints kept, >= 1.
        log_every: steps between learning-curve lines, >= 1.
        eval_every: steps between validations, >= 1; validation also runs at the end.
        eval_samples: validation samples (spread evenly over the index), >= 1.
        seed: seeds the initial weights' draw order of samples and noise, >= 0.
    """

    batch_size: int = 16
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    sigma_log_mean: float = -1.2
    sigma_log_std: float = 1.2
    known_weight: float = 0.1
    drop_render_probability: float = 0.1
    hole_sampling_floor: float | None = 0.05
    max_steps: int = 1_000_000
    budget_minutes: float | None = None
    checkpoint_minutes: float = 5.0
    keep_checkpoints: int = 2
    log_every: int = 25
    eval_every: int = 500
    eval_samples: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name, low in (
            ("batch_size", 1),
            ("warmup_steps", 0),
            ("max_steps", 1),
            ("keep_checkpoints", 1),
            ("log_every", 1),
            ("eval_every", 1),
            ("eval_samples", 1),
            ("seed", 0),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{owner}.{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("learning_rate", "grad_clip", "sigma_log_std", "checkpoint_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{owner}.{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"{owner}.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"{owner}.ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("known_weight", "drop_render_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{owner}.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.hole_sampling_floor is not None and self.hole_sampling_floor < 0:
            raise ValueError(
                f"{owner}.hole_sampling_floor must be >= 0 or None, got {self.hole_sampling_floor}"
            )
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ValueError(
                f"{owner}.budget_minutes must be > 0 or None, got {self.budget_minutes}"
            )


def pixel_loss(
    model: PixelDenoiser,
    samples: dict[str, Tensor],
    config: PixelTrainConfig,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    """EDM's weighted denoising loss of a batch of index samples, toward the render's holes.

    Returns:
        ``(loss, parts)``: the scalar loss and ``hole_share`` (the batch's share of hole pixels).
    """
    batch = samples["target_rgb"].shape[0]
    drop = torch.rand(batch, generator=generator) < config.drop_render_probability
    conditions = conditions_of(model, samples, drop)
    target = model.to_pixels(samples["target_rgb"], samples["target_depth"])  # (B, 4, H, W)
    sigma = edm_training_sigmas(batch, generator, config.sigma_log_mean, config.sigma_log_std)
    noise = torch.randn(target.shape, generator=generator)
    noisy = target + sigma[:, None, None, None] * noise
    denoised = model(noisy, sigma, conditions)
    level = edm_loss_weight(sigma, model.config.sigma_data)
    loss = hole_weighted_error(denoised, target, conditions.known, level, config.known_weight)
    return loss, {"hole_share": float((~conditions.known).float().mean())}


def hole_weighted_error(
    denoised: Tensor, target: Tensor, known: Tensor, level: Tensor, known_weight: float
) -> Tensor:
    """The mean of ``level * w * (denoised - target)^2``, ``w`` 1 on holes, ``known_weight`` else.

    Args:
        denoised: (B, 4, H, W) the model's denoised frames, pixels.
        target: (B, 4, H, W) the recorded frames, pixels.
        known: (B, 1, H, W) bool, where the render covers.
        level: (B,) EDM's weight of each sample's noise level.
        known_weight: weight of covered pixels, in [0, 1].

    Returns:
        The scalar loss (a batch with more holes weighs more: the mean is over all pixels).
    """
    weight = torch.where(known, known_weight, 1.0)  # (B, 1, H, W)
    return (level[:, None, None, None] * weight * (denoised - target) ** 2).mean()


class PixelTrainer:
    """Trains a :class:`PixelDenoiser` on a :class:`PixelIndex` (module docstring).

    Args:
        model: the model, trained in place (moved to channels-last memory, faster on CPUs).
        config: the settings.
        output_dir: ``checkpoints/``, ``curve.jsonl`` and the exported ``model/`` go here.
        sampler: the sampler of validation (saved as ``model/sampler.json`` on export).
    """

    def __init__(
        self,
        model: PixelDenoiser,
        config: PixelTrainConfig,
        output_dir: str | Path,
        sampler: EDMSamplerConfig,
    ) -> None:
        self.model = model.to(memory_format=torch.channels_last)
        self.config = config
        self.output_dir = Path(output_dir)
        self.sampler = sampler
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.schedule = get_scheduler(
            "constant_with_warmup", self.optimizer, num_warmup_steps=config.warmup_steps
        )
        self.ema = EMAModel(model.parameters(), decay=config.ema_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.seconds = 0.0  # training wall-clock time over all runs

    # ----------------------------------------------------------------------------- checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of the ``step-XXXXXXXX.pt`` checkpoints."""
        return self.output_dir / "checkpoints"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return sorted(self.checkpoint_dir.glob("step-*.pt"))

    def save_checkpoint(self) -> Path:
        """Write the training state atomically; keep the newest ``keep_checkpoints``."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_dir / f"step-{self.step:08d}.pt"
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "seconds": self.seconds,
            "model_config": dict(self.model.config),
        }
        torch.save(state, temporary)
        os.replace(temporary, final)
        for old in self.checkpoints()[: -self.config.keep_checkpoints]:
            old.unlink()
        return final

    def resume(self) -> bool:
        """Load the newest checkpoint, if any; return whether one was loaded.

        Raises:
            ValueError: if it was written for a model of another configuration.
        """
        found = self.checkpoints()
        if not found:
            return False
        state = torch.load(found[-1], weights_only=False)
        saved = json.loads(json.dumps(state["model_config"], default=list))
        current = json.loads(json.dumps(dict(self.model.config), default=list))
        differing = sorted(k for k in saved if not k.startswith("_") and saved[k] != current.get(k))
        if differing:
            raise ValueError(
                f"checkpoint {str(found[-1])!r} is of a model with other settings ({differing}); "
                "use another --output-dir or the same model settings"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        return True

    def ema_model(self) -> PixelDenoiser:
        """A copy of the model (standard memory layout) with the EMA weights, in eval mode."""
        copy = PixelDenoiser.from_config(self.model.config)
        parameters = list(self.model.parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        copy.load_state_dict({k: v.contiguous() for k, v in self.model.state_dict().items()})
        self.ema.restore(parameters)
        return copy.eval()

    def export(self) -> Path:
        """Save the EMA model to ``<output_dir>/model`` with the sampler's ``sampler.json``."""
        folder = self.output_dir / "model"
        self.ema_model().save_pretrained(folder)
        (folder / "sampler.json").write_text(json.dumps(asdict(self.sampler), indent=2) + "\n")
        return folder

    # ----------------------------------------------------------------------------- training

    def _log(self, record: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "curve.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")

    def fit(
        self,
        train: PixelIndex,
        validation: PixelIndex | None = None,
        progress: bool = True,
        evaluate_fn: Callable[[PixelDenoiser], dict[str, float]] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``max_steps`` or the time budget, resuming from a checkpoint.

        Args:
            train: the training samples.
            validation: the validation samples (validated every ``eval_every`` steps and at the
                end), or None.
            progress: show a progress bar.
            evaluate_fn: replaces the validation (the EMA model in, metrics out); default
                :func:`evaluate` on ``validation`` without LPIPS.

        Returns:
            The learning-curve records of this run (also appended to ``curve.jsonl``).
        """
        config = self.config
        self.resume()
        if evaluate_fn is None and validation is not None:
            chosen = spread_samples(len(validation), config.eval_samples)

            def evaluate_fn(model: PixelDenoiser) -> dict[str, float]:
                return evaluate(model, validation, chosen, self.sampler, seed=config.seed)

        history: list[dict[str, Any]] = []
        started = time.perf_counter()
        seconds_before = self.seconds
        last_checkpoint = started
        budget = None if config.budget_minutes is None else 60 * config.budget_minutes
        bar = tqdm(
            total=config.max_steps, initial=self.step, desc="pixel denoiser", disable=not progress
        )
        weights = None
        if config.hole_sampling_floor is not None:
            weights = torch.from_numpy(train.hole_shares()).double() + config.hole_sampling_floor
        self.model.train()
        while self.step < config.max_steps:
            if weights is None:
                indices = torch.randint(len(train), (config.batch_size,), generator=self.generator)
            else:
                indices = torch.multinomial(
                    weights, config.batch_size, replacement=True, generator=self.generator
                )
            samples = train.batch(indices.numpy())
            loss, parts = pixel_loss(self.model, samples, config, self.generator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.model.parameters())
            self.step += 1
            now = time.perf_counter()
            self.seconds = seconds_before + now - started
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {self.step}")
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            out_of_time = budget is not None and now - started >= budget
            last = out_of_time or self.step == config.max_steps
            record: dict[str, Any] = {}
            if self.step % config.log_every == 0 or last:
                record = {"step": self.step, "seconds": round(self.seconds, 1), "loss": value}
                record.update(parts)
            if evaluate_fn is not None and (self.step % config.eval_every == 0 or last):
                record = record or {"step": self.step, "seconds": round(self.seconds, 1)}
                record["validation"] = evaluate_fn(self.ema_model())
                self.model.train()
            if record:
                record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                history.append(record)
                self._log(record)
            if last or time.perf_counter() - last_checkpoint >= 60 * config.checkpoint_minutes:
                self.save_checkpoint()
                last_checkpoint = time.perf_counter()
            if out_of_time:
                print(f"time budget of {config.budget_minutes:g} min spent at step {self.step}")
                break
        bar.close()
        self.export()
        return history


# ===================================================================================== validation
def spread_samples(total: int, count: int) -> np.ndarray:
    """``min(count, total)`` sample indices spread evenly over ``range(total)``, (N,) int64."""
    if count >= total:
        return np.arange(total, dtype=np.int64)
    return np.floor(np.linspace(0, total - 1, count) + 0.5).astype(np.int64)


def _hole_psnr(pred: Tensor, target: Tensor, holes: Tensor) -> Tensor:
    """(N,) PSNR (data range 1) over each frame's holes; NaN for a frame without holes.

    The error is floored at 1e-10 (100 dB) so that a frame repeated exactly (the last frame of
    an agent standing still) does not make a mean infinite.
    """
    weight = holes.expand_as(pred).double()
    count = weight.sum((1, 2, 3))
    mse = (((pred - target).double() ** 2) * weight).sum((1, 2, 3)) / count
    mse = mse.clamp_min(1e-10)
    return torch.where(count > 0, 10 * torch.log10(1 / mse), torch.nan)


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


@torch.no_grad()
def evaluate(
    model: PixelDenoiser,
    index: PixelIndex,
    chosen: np.ndarray,
    sampler: EDMSamplerConfig,
    seed: int = 0,
    batch_size: int = 32,
    lpips_model: torch.nn.Module | None = None,
    drop_render: bool = False,
) -> dict[str, float]:
    """Score the model's samples and the classical fills on validation samples.

    Sample ``i`` is drawn from a generator seeded with ``seed + i``.

    Args:
        model: the denoiser (eval mode).
        index: the validation samples.
        chosen: (N,) their indices.
        sampler: the sampler's settings.
        seed: the base seed of the initial noise.
        batch_size: samples per model call.
        lpips_model: an :class:`~worldsim.lpips.LPIPS` with inputs in [0, 1] for the LPIPS
            scores, or None to skip them.
        drop_render: drop every render (the no-memory case: holes are the whole frame).

    Returns:
        ``hole_psnr_<method>`` (dB over the holes, frames with holes only), ``hole_depth_l1_<m>``
        (metres over the holes where the truth has depth), ``psnr_<method>`` (whole frames),
        with ``lpips_holes_<m>`` and exploration-sample ``lpips_explore_<m>`` when
        ``lpips_model`` is given, for methods ``model``, ``harmonic``, ``nearest`` and
        ``last_frame``; and ``samples``, ``hole_share``, ``explore_samples``.
    """
    methods = ("model", "harmonic", "nearest", "last_frame")
    scores: dict[str, list[Tensor]] = {}

    def add(name: str, values: Tensor) -> None:
        scores.setdefault(name, []).append(values.double().flatten())

    for first in range(0, len(chosen), batch_size):
        rows = chosen[first : first + batch_size]
        samples = index.batch(rows)
        count = len(rows)
        drop = torch.full((count,), drop_render)
        conditions = conditions_of(model, samples, drop)
        generators = [torch.Generator().manual_seed(seed + int(i)) for i in rows]
        generated = sample_frames(model, conditions, sampler, generators)
        known = conditions.known
        render = conditions.render
        predictions = {
            "model": generated,
            "harmonic": harmonic_fill(render, known),
            "nearest": nearest_fill(render, known),
            "last_frame": conditions.channels[:, 4 * (model.config.n_context - 1) :][:, :4],
        }
        truth_rgb, truth_depth = samples["target_rgb"], samples["target_depth"]
        holes = ~known
        coverage = known.float().mean((1, 2, 3))  # (N,)
        explore = coverage < EXPLORATION_COVERAGE
        add("hole_share", holes.float().mean((1, 2, 3)))
        add("explore", explore.float())
        for method in methods:
            pixels = predictions[method]
            if method != "last_frame":  # the fills and samples keep the render where it covers
                pixels = torch.where(known, render, pixels)
            rgb, depth = model.from_pixels(pixels)
            add(f"hole_psnr_{method}", _hole_psnr(rgb, truth_rgb, holes))
            hit = holes & (truth_depth > 0)
            error = ((depth - truth_depth).abs() * hit).sum((1, 2, 3)) / hit.sum((1, 2, 3))
            add(f"hole_depth_l1_{method}", torch.where(hit.any(dim=(1, 2, 3)), error, torch.nan))
            add(f"psnr_{method}", _hole_psnr(rgb, truth_rgb, torch.ones_like(holes)))
            if lpips_model is not None:
                in_holes = torch.where(holes, rgb, truth_rgb)
                lpips_holes = lpips_model(in_holes, truth_rgb).flatten()
                has_holes = holes.any(dim=(1, 2, 3))
                add(f"lpips_holes_{method}", torch.where(has_holes, lpips_holes, torch.nan))
                whole = lpips_model(rgb, truth_rgb).flatten()
                add(f"lpips_explore_{method}", torch.where(explore, whole, torch.nan))
    merged = {name: torch.cat(parts) for name, parts in scores.items()}
    result: dict[str, float] = {
        "samples": float(len(chosen)),
        "hole_share": float(merged.pop("hole_share").mean()),
        "explore_samples": float(merged.pop("explore").sum()),
    }
    for name, values in merged.items():
        result[name] = round(_nanmean(values), 5)
    return result
