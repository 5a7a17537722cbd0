"""A synthetic ray-cast box room: training clips without the simulator, for tests and smoke runs.

:func:`render_box_room` ray-casts RGB-D views of a box room with coloured, checkered walls;
:class:`SyntheticRoomClips` draws clips of a camera wandering in it, in the batch format of
:class:`worldsim.data.ClipDataset` (``examples/train_world_model.py --data-dir synthetic``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

_WALL_COLOURS = (
    (0.85, 0.25, 0.2),  # x = -half: red
    (0.2, 0.55, 0.85),  # x = +half: blue
    (0.5, 0.5, 0.5),  # floor: grey
    (0.95, 0.95, 0.9),  # ceiling: white
    (0.25, 0.75, 0.3),  # z = -half: green
    (0.9, 0.8, 0.2),  # z = +half: yellow
)


def render_box_room(
    cam_to_world: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    half_size: float = 2.0,
    ceiling: float = 2.5,
) -> tuple[Tensor, Tensor]:
    """Ray-cast RGB-D views of a box room with coloured, checkered walls.

    The room spans ``[-half_size, half_size]`` in x and z and ``[0, ceiling]`` in y (world
    metres); each wall has its own colour, modulated by a 0.5 m checkerboard.

    Args:
        cam_to_world: (N, 4, 4) camera poses inside the room.
        intrinsics: (N, 3, 3) ``K`` in pixels.
        height: image rows.
        width: image columns.
        half_size: half the room's width, metres.
        ceiling: ceiling height, metres.

    Returns:
        ``(rgb, depth)``: (N, 3, H, W) in [0, 1] and (N, 1, H, W) z-depth in metres.
    """
    from worldsim.geometry import unproject_depth

    count = cam_to_world.shape[0]
    ones = torch.ones(count, height, width)
    directions = unproject_depth(ones, intrinsics).reshape(count, -1, 3)  # (N, HW, 3), z = 1
    directions = directions @ cam_to_world[:, :3, :3].transpose(-1, -2)  # world, unnormalised
    origins = cam_to_world[:, None, :3, 3]  # (N, 1, 3)
    planes = (
        (0, -half_size),
        (0, half_size),
        (1, 0.0),
        (1, ceiling),
        (2, -half_size),
        (2, half_size),
    )
    best = torch.full(directions.shape[:2], float("inf"))
    colour = torch.zeros(*directions.shape[:2], 3)
    for index, (axis, value) in enumerate(planes):
        step = directions[..., axis]
        safe = torch.where(step.abs() < 1e-9, torch.full_like(step, 1e-9), step)
        distance = (value - origins[..., axis]) / safe  # z-depth, since camera z of d is 1
        hit = (distance > 1e-6) & (distance < best)
        points = origins + distance[..., None] * directions
        others = [a for a in range(3) if a != axis]
        checker = (
            torch.floor(points[..., others[0]] / 0.5) + torch.floor(points[..., others[1]] / 0.5)
        ) % 2
        shade = 0.75 + 0.25 * checker
        wall = torch.tensor(_WALL_COLOURS[index])
        colour = torch.where(hit[..., None], shade[..., None] * wall, colour)
        best = torch.where(hit, distance, best)
    rgb = colour.transpose(1, 2).reshape(count, 3, height, width)
    depth = best.reshape(count, 1, height, width)
    return rgb, depth


class SyntheticRoomClips:
    """Training batches of random walks in :func:`render_box_room` rooms (a smoke-test source).

    Each clip is ``memory_frames + n_context + n_future`` consecutive frames of a random walk of
    discrete actions (forward moves that would leave the inner 1.5 m are blocked, as a wall
    would); the first ``memory_frames`` frames become the ``memory_*`` fields. Iterating yields
    ``num_batches`` batches (forever if ``None``), the same sequence for the same seed.

    Args:
        model_config: the model's config (``n_context``, ``n_future``, ``height``, ``width``,
            ``hfov_deg``, ``forward_step_m``, ``turn_step_deg``).
        batch_size: clips per batch.
        memory_frames: earlier frames per clip for the memory.
        seed: seed of the walks.
        num_batches: batches per iteration, or ``None`` for endless.
    """

    def __init__(
        self,
        model_config: Any,
        batch_size: int = 2,
        memory_frames: int = 4,
        seed: int = 0,
        num_batches: int | None = None,
    ):
        if batch_size < 1 or memory_frames < 0:
            raise ValueError(
                f"batch_size must be >= 1 and memory_frames >= 0, got {batch_size}, {memory_frames}"
            )
        self.config = model_config
        self.batch_size = batch_size
        self.memory_frames = memory_frames
        self.seed = seed
        self.num_batches = num_batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        from worldsim.geometry import (
            ActionSpec,
            intrinsics_from_hfov,
            pose_from_position_yaw,
        )

        config = self.config
        spec = ActionSpec(config.forward_step_m, config.turn_step_deg)
        rng = np.random.default_rng(self.seed)
        frames = self.memory_frames + config.n_context + config.n_future
        k = intrinsics_from_hfov(config.hfov_deg, config.width, config.height)
        produced = 0
        while self.num_batches is None or produced < self.num_batches:
            position = rng.uniform(-1.0, 1.0, size=(self.batch_size, 2))
            yaw = rng.uniform(-np.pi, np.pi, size=self.batch_size)
            actions = rng.choice([1, 1, 2, 3], size=(self.batch_size, frames - 1))
            positions, yaws = [position.copy()], [yaw.copy()]
            for step in range(frames - 1):
                move = actions[:, step] == 1
                # yaw 0 looks along -z; positive yaw turns left (towards -x).
                ahead = position + spec.forward_step_m * np.stack([-np.sin(yaw), -np.cos(yaw)], 1)
                inside = np.all(np.abs(ahead) <= 1.5, axis=1)
                position = np.where((move & inside)[:, None], ahead, position)
                yaw = yaw + spec.turn_step_rad * (
                    (actions[:, step] == 2).astype(float) - (actions[:, step] == 3)
                )
                positions.append(position.copy())
                yaws.append(yaw.copy())
            xz = torch.tensor(np.stack(positions, 1), dtype=torch.float32)  # (B, T, 2)
            floor = torch.stack([xz[..., 0], torch.zeros_like(xz[..., 0]), xz[..., 1]], -1)
            poses = pose_from_position_yaw(
                floor, torch.tensor(np.stack(yaws, 1), dtype=torch.float32)
            )
            intrinsics = k.expand(self.batch_size, frames, 3, 3).clone()
            rgb, depth = render_box_room(
                poses.reshape(-1, 4, 4), intrinsics.reshape(-1, 3, 3), config.height, config.width
            )
            shape = (self.batch_size, frames)
            rgb, depth = (
                rgb.reshape(*shape, 3, config.height, config.width),
                depth.reshape(*shape, 1, config.height, config.width),
            )
            depth = torch.where(depth > config.max_depth_m, torch.zeros_like(depth), depth)
            split = self.memory_frames
            yield {
                "rgb": rgb[:, split:],
                "depth": depth[:, split:],
                "cam_to_world": poses[:, split:],
                "intrinsics": intrinsics[:, split:],
                "actions": torch.tensor(actions[:, split:], dtype=torch.int64),
                "memory_rgb": rgb[:, :split],
                "memory_depth": depth[:, :split],
                "memory_cam_to_world": poses[:, :split],
                "memory_intrinsics": intrinsics[:, :split],
                "memory_mask": torch.ones(self.batch_size, split, dtype=torch.bool),
            }
            produced += 1
