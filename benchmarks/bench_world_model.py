"""Speed of the world model: denoiser forward, generated frames/s, memory tokens vs. time.

    python benchmarks/bench_world_model.py --configs tiny small --batch-sizes 1 60

For each configuration and batch size it prints the time of one denoiser forward pass without
memory (the baseline of the row), with memory blocks reading N random map tokens for several N
(as a ratio to the baseline), and the frames per second of generating one chunk
(``--sampling-steps`` denoising steps plus VAE decoding), all measured in the same run.
Freshly initialised weights: speed does not depend on training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from worldsim import cli
from worldsim.models.world_model import WorldModel
from worldsim.simulator.sampler import SamplerConfig, sample_chunk


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    configs: list[str] = field(default_factory=lambda: ["tiny", "small"])
    """Named configurations to time."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 60])
    """Batch sizes B."""
    memory_tokens: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    """Numbers of map tokens N to time against the no-memory baseline."""
    sampling_steps: int = 4
    """Denoising steps per generated chunk."""
    repeats: int = 3
    """Timed repetitions (the median is reported) after one warm-up."""
    device: str = "cpu"
    """torch device."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seed of the weights and inputs."""


def median_seconds(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def bench(args: Args, name: str, batch: int, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    model = WorldModel.from_config_name(name).to(device).eval()
    shape = model.future_latent_shape(batch)
    context_shape = (batch, model.transformer.config.num_context_latent_frames, *shape[2:])
    rays_shape = (batch, shape[1], model.ray_channels, *shape[3:])
    noisy = torch.randn(shape, generator=generator).to(device)
    context = torch.randn(context_shape, generator=generator).to(device)
    rays = torch.randn(rays_shape, generator=generator).to(device)
    timestep = torch.full((batch,), 500, device=device)

    baseline = median_seconds(
        lambda: model.predict(noisy, timestep, context, rays), args.repeats, device
    )
    print(f"{name:>6} B={batch:<3} denoiser forward, no memory: {baseline * 1e3:9.1f} ms (1.00x)")
    dim = model.transformer.config.memory_token_dim
    for count in args.memory_tokens:
        tokens = torch.randn(batch, count, dim, generator=generator).to(device)
        mask = torch.ones(batch, count, dtype=torch.bool, device=device)
        seconds = median_seconds(
            lambda tokens=tokens, mask=mask: model.predict(
                noisy, timestep, context, rays, tokens, mask
            ),
            args.repeats,
            device,
        )
        print(
            f"{'':>6} {'':<5} with N={count:<5} map tokens:     {seconds * 1e3:9.1f} ms "
            f"({seconds / baseline:.2f}x)"
        )

    def generate() -> None:
        sampler = SamplerConfig(num_inference_steps=args.sampling_steps)
        latents = sample_chunk(model, sampler, context, rays, generator=generator)
        model.decode(latents)

    seconds = median_seconds(generate, max(1, args.repeats // 2), device)
    frames = batch * model.config.n_future
    print(
        f"{'':>6} {'':<5} generate one chunk ({args.sampling_steps} steps + decode): "
        f"{seconds:.2f} s, {frames / seconds:.1f} frames/s "
        f"({seconds / (args.sampling_steps * baseline):.2f}x the steps' forward time)"
    )


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    for name in args.configs:
        for batch in args.batch_sizes:
            bench(args, name, batch, device)


if __name__ == "__main__":
    cli.run(main, Args)
