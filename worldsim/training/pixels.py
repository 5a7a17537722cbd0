"""Training the pixel-space denoiser (:mod:`worldsim.models.pixel_denoiser`): train and validate.

The recipe is collect → index (:mod:`worldsim.data.pixel_index`) → train → export; each step resumes
where it stopped.

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
    against the classical fills of the same render (:mod:`worldsim.memory.fills`) and the last
    context frame: PSNR on the render's holes (RGB), depth error on the holes, and optionally LPIPS
    of the frame with only its holes replaced (``lpips_holes``: the truth elsewhere, so only what
    each method puts in the holes is scored) and of the whole frame on *exploration* samples
    (render coverage below 20 %).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.data.pixel_index import PixelIndex, conditions_of
from worldsim.memory.fills import harmonic_fill, nearest_fill
from worldsim.models.pixel_denoiser import (
    EDMSamplerConfig,
    PixelDenoiser,
    edm_loss_weight,
    edm_training_sigmas,
    sample_frames,
)

EXPLORATION_COVERAGE = 0.2
"""Samples whose render covers less than this share of the frame are *exploration* samples."""


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
        high_noise_share: share of samples trained at ``high_noise_sigma`` instead of a
            log-normal level, in [0, 1]. A few-step sampler makes its first and largest
            prediction there (where a hole's content comes from the conditions alone), a level
            the log-normal draws for about 1 % of samples. 0.3 (the default) led 0 by about
            0.3 dB hole PSNR at 1,600-2,400 steps (docs/pixel_generator.md).
        high_noise_sigma: that level, > 0; the sampler's ``sigma_max``.
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
    high_noise_share: float = 0.3
    high_noise_sigma: float = 5.0
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
        for name in (
            "learning_rate",
            "grad_clip",
            "sigma_log_std",
            "high_noise_sigma",
            "checkpoint_minutes",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{owner}.{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"{owner}.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"{owner}.ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("known_weight", "drop_render_probability", "high_noise_share"):
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
    if config.high_noise_share > 0:  # no draw otherwise: earlier runs resume bitwise
        high = torch.rand(batch, generator=generator) < config.high_noise_share
        sigma = torch.where(high, torch.tensor(config.high_noise_sigma), sigma)
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
        self.sampler.save(folder)
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
        lpips_model: an :class:`~worldsim.metrics.lpips.LPIPS` with inputs in [0, 1] for the LPIPS
            scores, or None to skip them.
        drop_render: drop every render (the no-memory case: holes are the whole frame).

    Returns:
        ``hole_psnr_<method>`` (dB over the holes, frames with holes only), ``hole_depth_l1_<m>``
        (metres over the holes where the truth has depth), ``psnr_<method>`` (whole frames),
        with ``lpips_holes_<m>``, whole-frame ``lpips_<m>`` and exploration-sample
        ``lpips_explore_<m>`` when ``lpips_model`` is given, for methods ``model``,
        ``harmonic``, ``nearest`` and ``last_frame``; and ``samples``, ``hole_share``,
        ``explore_samples``.
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
                add(f"lpips_{method}", whole)
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
