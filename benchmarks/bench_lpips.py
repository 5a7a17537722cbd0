"""LPIPS throughput (image pairs per second) at 64x64 and 256x256, batch 1 and batch 60.

The baseline, measured in the same run on the same device, is a Python loop over the pairs one at
a time (batch 1); the ratio says how much a batched call gains over that loop.

    .venv/bin/python benchmarks/bench_lpips.py                 # AlexNet, CPU (+ CUDA if present)
    .venv/bin/python benchmarks/bench_lpips.py --net vgg --repeats 5 --threads 1
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from worldsim import cli
from worldsim.metrics.lpips import LPIPS


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    net: str = "alex"
    """LPIPS trunk: alex or vgg."""
    sizes: tuple[int, ...] = (64, 256)
    """Square image sides to time."""
    batch: int = 60
    """Pairs per batched call (and pairs in the batch-1 loop)."""
    repeats: int = 3
    """Timed repetitions; the best one is reported."""
    seed: int = 0
    """Seed of the random images."""
    cpu_only: bool = False
    """Skip CUDA even where it is available."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def best_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, kernels, cuDNN algorithm choice
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main(args: Args) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(
        f"LPIPS-{args.net} pairs/s (best of {args.repeats}, {torch.get_num_threads()} threads); "
        "baseline = loop of batch-1 calls"
    )
    print(f"{'device':<8}{'size':>6}{'batch':>7}{'pairs/s':>11}{'vs loop':>9}")
    for device in devices:
        model = LPIPS(args.net).to(device)
        for size in args.sizes:
            x = torch.rand(args.batch, 3, size, size, generator=generator).to(device)
            y = torch.rand(args.batch, 3, size, size, generator=generator).to(device)

            def loop(x=x, y=y, model=model) -> None:
                for i in range(args.batch):
                    model(x[i : i + 1], y[i : i + 1])

            def batched(x=x, y=y, model=model) -> None:
                model(x, y)

            loop_rate = args.batch / best_seconds(loop, args.repeats, device)
            batched_rate = args.batch / best_seconds(batched, args.repeats, device)
            print(f"{device.type:<8}{size:>6}{1:>7}{loop_rate:>11.1f}{1.0:>8.2f}x")
            ratio = batched_rate / loop_rate
            print(f"{device.type:<8}{size:>6}{args.batch:>7}{batched_rate:>11.1f}{ratio:>8.2f}x")


if __name__ == "__main__":
    cli.run(main, Args)
