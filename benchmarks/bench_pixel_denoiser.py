"""Pixel denoiser: parameters, training-step cost and the cost of generating one chunk.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pixel_denoiser.py --threads 1

A training step (forward, backward, AdamW) of a batch of random 64x64 inputs is timed in the
standard memory layout (the baseline) and in channels-last (what training uses), so the ratio is
the layout's gain. Generating a chunk of ``frames`` frames (conditions with the classical
prefill, then ``k`` Euler steps) is timed for k = 1..4. CPU times are reported beside wall times
because a shared machine inflates the latter; the first repetition of each is a warm-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from worldsim import cli
from worldsim.geometry import intrinsics_from_hfov
from worldsim.models.pixel_denoiser import (
    EDMSamplerConfig,
    PixelDenoiser,
    count_parameters,
    edm_training_sigmas,
    sample_frames,
)


@dataclass(frozen=True)
class Args:
    """Benchmark sizes."""

    config: Literal["tiny", "small"] = "small"
    """Model configuration."""
    batch_size: int = 16
    """Samples per training step."""
    frames: int = 4
    """Frames per generated chunk."""
    repeats: int = 4
    """Timed repetitions after one warm-up."""
    threads: int = 1
    """CPU threads of torch (0: the idle cores)."""
    seed: int = 0
    """Seed of the weights and inputs."""


def timed(function, repeats: int) -> tuple[float, float]:
    """Mean wall and CPU seconds of ``function()`` over ``repeats`` runs after a warm-up."""
    function()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def random_inputs(model: PixelDenoiser, rows: int, generator: torch.Generator) -> dict:
    size = model.config.height
    known = torch.rand(rows, 1, size, size, generator=generator) < 0.8
    n_context = model.config.n_context
    return {
        "context_rgb": torch.rand(rows, n_context, 3, size, size, generator=generator),
        "context_depth": 5 * torch.rand(rows, n_context, 1, size, size, generator=generator),
        "render_rgb": torch.rand(rows, 3, size, size, generator=generator) * known,
        "render_depth": 5 * torch.rand(rows, 1, size, size, generator=generator) * known,
        "render_known": known,
        "render_age": torch.zeros(rows, 1, size, size),
        "intrinsics": intrinsics_from_hfov(90.0, size, size).expand(rows, 3, 3),
        "cam_to_ref": torch.eye(4).expand(rows, 4, 4),
    }


def training_step_seconds(
    model: PixelDenoiser,
    inputs: dict,
    target: torch.Tensor,
    generator: torch.Generator,
    repeats: int,
) -> tuple[float, float]:
    """Wall and CPU seconds of a training step: conditions, forward, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = target.shape[0]

    def step() -> None:
        conditions = model.conditions(**inputs)
        sigma = edm_training_sigmas(batch, generator)
        noise = torch.randn(target.shape, generator=generator)
        loss = (model(target + sigma[:, None, None, None] * noise, sigma, conditions) - target) ** 2
        loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, repeats)


def main(args: Args) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = PixelDenoiser.from_config_name(args.config)
    print(f"{args.config}: {count_parameters(model):,} parameters, threads {args.threads}")
    inputs = random_inputs(model, args.batch_size, generator)
    size = model.config.height
    target = torch.rand(args.batch_size, 4, size, size, generator=generator) * 2 - 1
    for layout in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=layout).train()
        wall, cpu = training_step_seconds(model, inputs, target, generator, args.repeats)
        print(
            f"training step, batch {args.batch_size}, {layout}: {wall:.3f} s wall, {cpu:.3f} s CPU"
        )
    model = model.to(memory_format=torch.contiguous_format).eval()
    chunk = random_inputs(model, args.frames, generator)
    for steps in range(1, 5):
        sampler = EDMSamplerConfig(num_steps=steps)

        @torch.no_grad()
        def generate(sampler: EDMSamplerConfig = sampler) -> None:
            conditions = model.conditions(**chunk)
            sample_frames(model, conditions, sampler, torch.Generator().manual_seed(args.seed))

        wall, cpu = timed(generate, args.repeats)
        name = f"chunk of {args.frames} frames, {steps} Euler steps"
        print(f"{name}: {wall:.3f} s wall, {cpu:.3f} s CPU")


if __name__ == "__main__":
    cli.run(main, Args)
