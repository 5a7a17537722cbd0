"""Speed of the 3D feature map against a straightforward dense-grid reference, same run.

    .venv/bin/python benchmarks/bench_memory.py            # CPU (and CUDA when available)
    .venv/bin/python benchmarks/bench_memory.py --tiny     # seconds, for a smoke test

For each feature-grid size (64x64 and 128x128 feature cells per frame, the cheap encoder at
stride 1) and each map size (10^4 … 10^6 occupied voxels, pre-filled at random in a cube that
the frames look into), it times

- ``update``: one RGB-D frame into :class:`FeatureMap3D` (encode + lift + sparse max-pool), and
  the dense reference: the same lifted points max-pooled into a dense (X*Y*Z, C) tensor that
  spans the cube;
- ``tokens``: 4096 nearest-voxel tokens for one target camera, and the dense reference: scan the
  whole dense occupancy grid, then the same selection.

and prints milliseconds and the ratio dense / sparse (> 1: the sparse map is faster).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from worldsim import cli
from worldsim.geometry import intrinsics_from_hfov, invert_rigid, pose_from_position_yaw
from worldsim.memory import FeatureMap3D, FeatureMapConfig
from worldsim.memory.base import lift_frames
from worldsim.models.encoders import PooledColorEncoder


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    feature_sizes: tuple[int, ...] = (64, 128)
    """Feature cells per side of a frame (the image size, as the encoder has stride 1)."""
    map_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Occupied voxels in the map before timing."""
    voxel_size: float = 0.05
    """Voxel edge, metres."""
    num_frequencies: int = 5
    """Cheap-encoder octaves: C = 3 * (1 + 2 F) channels."""
    repeats: int = 7
    """Timed repetitions (median reported)."""
    tiny: bool = False
    """Small sizes, for a smoke test."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(function, repeats: int, device: torch.device) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def make_frame(size: int, generator: torch.Generator, device: torch.device):
    rgb = torch.rand(1, 1, 3, size, size, generator=generator).to(device)
    depth = (1.0 + 1.5 * torch.rand(1, 1, 1, size, size, generator=generator)).to(device)
    k = intrinsics_from_hfov(90.0, size, size).expand(1, 1, 3, 3).to(device)
    yaw = torch.rand(1, 1, generator=generator) * 2 * math.pi
    pose = pose_from_position_yaw(torch.zeros(1, 1, 3), yaw).to(device)
    pose[..., 1, 3] = 0.0  # camera at the centre of the pre-filled cube
    return rgb, depth, k, pose


class DenseMap:
    """Reference: a dense (X*Y*Z, C) max-pool grid over a cube of ``side`` voxels."""

    def __init__(self, side: int, channels: int, voxel: float, device: torch.device) -> None:
        self.side, self.voxel = side, voxel
        self.features = torch.full((side**3, channels), float("-inf"), device=device)
        self.occupied = torch.zeros(side**3, dtype=torch.bool, device=device)

    def flat(self, cells: torch.Tensor) -> torch.Tensor:
        """Flat indices of (P, 3) voxel coordinates centred on the cube."""
        cells = cells + self.side // 2
        return (cells[:, 0] * self.side + cells[:, 1]) * self.side + cells[:, 2]

    def insert(self, cells: torch.Tensor, features: torch.Tensor) -> None:
        """Max-pool (P, C) features into their voxels."""
        index = self.flat(cells)
        self.features.scatter_reduce_(0, index[:, None].expand_as(features), features, "amax")
        self.occupied[index] = True

    def tokens(self, camera: torch.Tensor, count: int, memory: FeatureMap3D) -> torch.Tensor:
        """The ``count`` voxels nearest to ``camera`` (4, 4), as (count, C + 6 F) tokens."""
        index = self.occupied.nonzero()[:, 0]
        z = index % self.side
        y = (index // self.side) % self.side
        x = index // (self.side * self.side)
        centres = (torch.stack([x, y, z], -1) - self.side // 2 + 0.5) * self.voxel
        distance = (centres - camera[:3, 3]).norm(dim=-1)
        nearest = distance.topk(min(count, distance.numel()), largest=False).indices
        position = memory.config.position(
            memory.token_coords(
                centres[nearest], invert_rigid(camera).expand(nearest.numel(), 4, 4)
            )
        )
        return torch.cat([self.features[index[nearest]], position], dim=-1)


def run(device: torch.device, args: Args) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    encoder = PooledColorEncoder(stride=1, num_frequencies=args.num_frequencies)
    channels = encoder.out_channels
    sizes = (16, 32) if args.tiny else args.feature_sizes
    map_sizes = (1000, 10_000) if args.tiny else args.map_sizes
    print(f"device {device}, C = {channels}, voxel {args.voxel_size} m, median of {args.repeats}")
    header = "features  voxels     update ms  dense ms  ratio   tokens ms  dense ms  ratio"
    print(header)
    for voxels in map_sizes:
        side = math.ceil((2 * voxels) ** (1 / 3))  # cube with about half of its voxels occupied
        side = max(side, math.ceil(2 * 3.6 / args.voxel_size) + 2)  # frames (<= 3.54 m) fit
        config = FeatureMapConfig(
            voxel_size=args.voxel_size, max_voxels=4 * voxels, max_tokens=4096
        )
        memory = FeatureMap3D(config, encoder=encoder)
        memory.reset(1, device)
        dense = DenseMap(side, channels, args.voxel_size, device)
        flat = torch.randperm(side**3, generator=generator)[:voxels]
        cells = torch.stack([flat // side**2, (flat // side) % side, flat % side], -1) - side // 2
        features = torch.rand(voxels, channels, generator=generator)
        cells, features = cells.to(device), features.to(device)
        memory.grid.insert(
            torch.zeros(voxels, dtype=torch.long, device=device),
            cells,
            features,
            torch.zeros(voxels, dtype=torch.long, device=device),
        )
        dense.insert(cells, features)
        for size in sizes:
            frame = make_frame(size, generator, device)
            update, update_dense, tokens, tokens_dense = time_case(
                memory, dense, frame, args, device
            )
            print(
                f"{size:>4}^2    {len(memory.grid):>9,}  {update:8.2f}  {update_dense:8.2f}  "
                f"{update_dense / update:5.2f}   {tokens:8.2f}  {tokens_dense:8.2f}  "
                f"{tokens_dense / tokens:5.2f}"
            )


def time_case(memory: FeatureMap3D, dense: DenseMap, frame, args: Args, device: torch.device):
    """Median milliseconds of (update, dense update, tokens, dense tokens) for one frame."""
    size = frame[0].shape[-1]
    channels = memory.encoder.out_channels

    def dense_update():
        frames = memory._check_frames(*frame, None)
        lifted = lift_frames(frames, memory.encoder, "median", memory.config.max_depth)
        valid = lifted.point_valid.reshape(-1)
        points = lifted.points.reshape(-1, 3)[valid]
        feats = lifted.features.permute(0, 2, 3, 1).reshape(-1, channels)[valid]
        dense.insert(torch.floor(points / args.voxel_size).long(), feats)

    target, k = frame[3][:, 0], frame[2][:, 0]
    return (
        median_ms(lambda: memory.update(*frame), args.repeats, device),
        median_ms(dense_update, args.repeats, device),
        median_ms(
            lambda: memory.tokens(target[:, None], k[:, None], (size, size)), args.repeats, device
        ),
        median_ms(lambda: dense.tokens(target[0], 4096, memory), args.repeats, device),
    )


def main(args: Args) -> None:
    torch.manual_seed(args.seed)  # the script's single seeding; sampling uses explicit generators
    run(torch.device("cpu"), args)
    if torch.cuda.is_available():
        run(torch.device("cuda"), args)


if __name__ == "__main__":
    cli.run(main, Args)
