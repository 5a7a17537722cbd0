"""The rollout interface: the one way planners talk to a simulator, learned or ground truth.

A planner hands a :class:`RolloutModel` a batch of start states (:class:`RolloutStart`) and a
batch of action sequences, and gets back what the simulator predicts would be seen
(:class:`RolloutResult`). The same planner therefore runs against the ground-truth simulator (the
oracle, :class:`envs.oracle.OracleRollout`, which renders the true frames) and against the learned
world model (:class:`worldsim.simulator.learned.LearnedSimulator`), and can be checked against the
truth first. The protocol lives here, in ``worldsim``, so that ``envs`` and ``planners`` both stand
on it without importing each other.

Actions (see :mod:`worldsim.geometry`) come in two kinds, told apart by shape and dtype:

- *discrete*: (B, L) int64 ids, ``0 = stop`` (a no-op inside a sequence: the agent stays),
  ``1 = move_forward``, ``2 = turn_left``, ``3 = turn_right``;
- *waypoint*: (B, L, 3) float local waypoints ``(dx, dz, dyaw)`` -- metres right, metres forward
  in the agent's current frame, then radians turned left.

Step ``l`` of a rollout is the state after ``actions[:, l]``; the start's last frame is the state
before the first action. Frames are channels-first torch tensors: RGB float32 in [0, 1], depth
float32 metres (0 = no hit), poses (4, 4) ``cam_to_world`` in the y-up world frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

from worldsim.geometry import NUM_ACTIONS, check_rigid
from worldsim.memory import Memory

ActionKind = Literal["discrete", "waypoint"]
ACTION_KINDS = ("discrete", "waypoint")
"""The two kinds of action sequences a rollout accepts."""


def _check_frames(name: str, frames: Tensor, channels: int) -> None:
    if not isinstance(frames, Tensor) or frames.dim() != 5 or frames.shape[2] != channels:
        shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"{name} must be a (B, T, {channels}, H, W) tensor, got {shape}")
    if not frames.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {frames.dtype}")
    if not torch.isfinite(frames).all():
        raise ValueError(f"{name} contains NaN or infinite values")


_Checked = TypeVar("_Checked", "RolloutStart", "RolloutResult")


def _derived(cls: type[_Checked], **values: Any) -> _Checked:
    """An instance built from parts of checked ones, without checking it again.

    ``select``, ``repeat`` and ``advance`` only index and concatenate validated tensors, so
    re-validating (several device-to-host syncs) in CEM's inner loop would be wasted work.
    """
    instance = object.__new__(cls)
    for field in fields(cls):
        object.__setattr__(instance, field.name, values[field.name])
    return instance


def _check_memory(memory: Memory | None, batch: int) -> None:
    if memory is None:
        return
    if not isinstance(memory, Memory):
        raise TypeError(
            f"memory must be a worldsim.memory.Memory or None, got {type(memory).__name__}"
        )
    if memory.batch_size != batch:
        raise ValueError(
            f"memory holds {memory.batch_size} rows but the start has {batch}; build starts "
            "with RolloutStart.select / repeat, which select the memory's rows too"
        )


@dataclass(frozen=True, eq=False)
class RolloutStart:
    """A batch of B start states: the latest frames of each row, and what a simulator needs.

    Attributes:
        rgb: (B, T, 3, H, W) float32 in [0, 1], the last T frames (oldest first); the last one is
            the current view.
        depth: (B, T, 1, H, W) float32 metric z-depth, metres (0 = no hit).
        cam_to_world: (B, T, 4, 4) float32 camera poses of those frames (world frame, y up).
        intrinsics: (B, 3, 3) float32 ``K`` in pixels.
        scene: ground-truth scene id (or ``.glb`` path) of each row, B strings, or ``None`` where
            no ground truth exists (the oracle needs it; a world model ignores it).
        agent_state: (B, 4) float64 exact ground-truth agent state ``(x, y, z, yaw)``: floor
            position in metres and heading in radians, or ``None`` (then the oracle derives it
            from the last camera pose).
        memory: a world model's memory of the B rows (:class:`~worldsim.memory.Memory` reset to
            B rows), opaque to planners, or ``None``.

    Raises:
        ValueError: for mismatched shapes or batch sizes, NaN, values out of range, or
            non-rigid poses.
    """

    rgb: Tensor
    depth: Tensor
    cam_to_world: Tensor
    intrinsics: Tensor
    scene: tuple[str, ...] | None = None
    agent_state: Tensor | None = None
    memory: Memory | None = None

    def __post_init__(self) -> None:
        _check_frames("rgb", self.rgb, 3)
        _check_frames("depth", self.depth, 1)
        batch, frames, _, height, width = self.rgb.shape
        if batch < 1 or frames < 1:
            raise ValueError(
                f"a start needs at least one row and one frame, got rgb {batch}x{frames}"
            )
        if float(self.rgb.min()) < 0.0 or float(self.rgb.max()) > 1.0:
            raise ValueError(
                f"rgb must lie in [0, 1], got [{float(self.rgb.min()):.4g}, "
                f"{float(self.rgb.max()):.4g}] (uint8 frames: divide by 255)"
            )
        if self.depth.shape != (batch, frames, 1, height, width):
            raise ValueError(
                f"depth must have shape {(batch, frames, 1, height, width)} to match rgb, "
                f"got {tuple(self.depth.shape)}"
            )
        if float(self.depth.min()) < 0.0:
            raise ValueError(f"depth must be >= 0 metres, got min {float(self.depth.min()):.4g}")
        if self.cam_to_world.shape != (batch, frames, 4, 4):
            raise ValueError(
                f"cam_to_world must have shape {(batch, frames, 4, 4)}, "
                f"got {tuple(self.cam_to_world.shape)}"
            )
        check_rigid(self.cam_to_world, "cam_to_world")
        if self.intrinsics.shape != (batch, 3, 3):
            raise ValueError(
                f"intrinsics must have shape {(batch, 3, 3)}, got {tuple(self.intrinsics.shape)}"
            )
        if self.scene is not None:
            if isinstance(self.scene, str) or len(self.scene) != batch:
                raise ValueError(
                    f"scene must be a sequence of {batch} scene ids (one per row) or None, "
                    f"got {self.scene!r}"
                )
            object.__setattr__(self, "scene", tuple(str(s) for s in self.scene))
        if self.agent_state is not None:
            if self.agent_state.shape != (batch, 4):
                raise ValueError(
                    f"agent_state must have shape {(batch, 4)} (x, y, z, yaw), "
                    f"got {tuple(self.agent_state.shape)}"
                )
            if not torch.isfinite(self.agent_state).all():
                raise ValueError("agent_state contains NaN or infinite values")
        _check_memory(self.memory, batch)

    @property
    def batch_size(self) -> int:
        """Rows B."""
        return self.rgb.shape[0]

    @property
    def num_frames(self) -> int:
        """Frames per row T."""
        return self.rgb.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames, pixels."""
        return (self.rgb.shape[-2], self.rgb.shape[-1])

    def select(self, index: Tensor | Sequence[int]) -> RolloutStart:
        """Rows ``index`` of this start, e.g. one start expanded into K candidate rows.

        Args:
            index: (K,) int64 row indices in ``[0, B)``, repeats allowed.

        Returns:
            A start of K rows.

        Raises:
            IndexError: for an index outside ``[0, B)``.
        """
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        if index.numel() and (index.min() < 0 or index.max() >= self.batch_size):
            raise IndexError(
                f"row indices must lie in [0, {self.batch_size}), got {index.tolist()}"
            )
        device_index = index.to(self.rgb.device)
        return _derived(
            RolloutStart,
            rgb=self.rgb[device_index],
            depth=self.depth[device_index],
            cam_to_world=self.cam_to_world[device_index],
            intrinsics=self.intrinsics[device_index],
            scene=None if self.scene is None else tuple(self.scene[i] for i in index.tolist()),
            agent_state=None if self.agent_state is None else self.agent_state[index],
            memory=None if self.memory is None else self.memory.select(index),
        )

    def repeat(self, count: int) -> RolloutStart:
        """Each row ``count`` times in a row (``r0, r0, ..., r1, r1, ...``), B * count rows."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        return self.select(torch.arange(self.batch_size).repeat_interleave(count))

    def advance(self, result: RolloutResult) -> RolloutStart:
        """The start after the actions of ``result``: its frames appended, the last T kept.

        Used by receding-horizon loops: the frames actually reached become the next start.

        Args:
            result: a rollout from this start that returned every step's frame
                (``num_frames`` equal to its horizon).

        Returns:
            A start with the same B and T; ``agent_state`` and ``memory`` are the result's where
            it has them, else this start's (``agent_state`` is dropped if the result has none,
            since it would be stale).

        Raises:
            ValueError: if the result does not match this start or lacks some steps' frames.
        """
        if result.batch_size != self.batch_size:
            raise ValueError(f"result has {result.batch_size} rows, the start {self.batch_size}")
        if result.num_frames != result.horizon:
            raise ValueError(
                f"advance needs every step's frame, but the result has {result.num_frames} "
                f"frames for {result.horizon} steps; roll out with num_frames=None"
            )
        if result.image_size != self.image_size:
            raise ValueError(
                f"result frames are {result.image_size}, the start's {self.image_size}"
            )
        frames = self.num_frames
        rgb = torch.cat([self.rgb, result.rgb.to(self.rgb)], dim=1)[:, -frames:]
        depth = torch.cat([self.depth, result.depth.to(self.depth)], dim=1)[:, -frames:]
        poses = torch.cat([self.cam_to_world, result.cam_to_world.to(self.cam_to_world)], dim=1)
        agent_state = None if result.agent_state is None else result.agent_state[:, -1]
        memory = self.memory if result.memory is None else result.memory
        return _derived(
            RolloutStart,
            rgb=rgb,
            depth=depth,
            cam_to_world=poses[:, -frames:],
            intrinsics=self.intrinsics,
            scene=self.scene,
            agent_state=agent_state,
            memory=memory,
        )


@dataclass(frozen=True, eq=False)
class RolloutResult:
    """What a simulator predicts for B action sequences of L steps.

    Frames may cover only the last F of the L steps (``num_frames`` of
    :meth:`RolloutModel.rollout`): ``rgb[:, i]`` is the frame after step ``L - F + i``, so
    ``rgb[:, -1]`` is always the frame after the last action. Poses cover every step.

    Attributes:
        rgb: (B, F, 3, H, W) float32 in [0, 1].
        depth: (B, F, 1, H, W) float32 metres (0 = no hit).
        cam_to_world: (B, L, 4, 4) float32 camera pose after each step.
        collided: (B, L) bool, whether each step was blocked by an obstacle, or ``None`` where
            the simulator cannot know (a learned world model).
        agent_state: (B, L, 4) float64 ground-truth ``(x, y, z, yaw)`` after each step, or
            ``None``.
        memory: the simulator's memory after the rollout (B rows), or ``None``.
    """

    rgb: Tensor
    depth: Tensor
    cam_to_world: Tensor
    collided: Tensor | None = None
    agent_state: Tensor | None = None
    memory: Memory | None = None

    def __post_init__(self) -> None:
        _check_frames("rgb", self.rgb, 3)
        _check_frames("depth", self.depth, 1)
        batch, frames = self.rgb.shape[:2]
        if self.depth.shape[:2] != (batch, frames) or self.depth.shape[3:] != self.rgb.shape[3:]:
            raise ValueError(
                f"depth {tuple(self.depth.shape)} does not match rgb {tuple(self.rgb.shape)}"
            )
        if (
            self.cam_to_world.dim() != 4
            or self.cam_to_world.shape[0] != batch
            or (self.cam_to_world.shape[2:] != (4, 4))
        ):
            raise ValueError(
                f"cam_to_world must be ({batch}, L, 4, 4), got {tuple(self.cam_to_world.shape)}"
            )
        horizon = self.cam_to_world.shape[1]
        if not 1 <= frames <= horizon:
            raise ValueError(f"a result holds 1 to L = {horizon} frames per row, got {frames}")
        if self.collided is not None and self.collided.shape != (batch, horizon):
            raise ValueError(
                f"collided must have shape {(batch, horizon)}, got {tuple(self.collided.shape)}"
            )
        if self.agent_state is not None and self.agent_state.shape != (batch, horizon, 4):
            raise ValueError(
                f"agent_state must have shape {(batch, horizon, 4)}, "
                f"got {tuple(self.agent_state.shape)}"
            )
        _check_memory(self.memory, batch)

    @property
    def batch_size(self) -> int:
        """Rows B."""
        return self.rgb.shape[0]

    @property
    def horizon(self) -> int:
        """Steps L."""
        return self.cam_to_world.shape[1]

    @property
    def num_frames(self) -> int:
        """Frames per row F (the last F steps)."""
        return self.rgb.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames, pixels."""
        return (self.rgb.shape[-2], self.rgb.shape[-1])


@runtime_checkable
class RolloutModel(Protocol):
    """A simulator that predicts the frames of action sequences from start states.

    Attributes:
        image_size: ``(H, W)`` of the frames it takes and returns, pixels.
        max_horizon: the most steps one rollout may have, or ``None`` for no limit.
    """

    image_size: tuple[int, int]
    max_horizon: int | None

    def rollout(
        self,
        start: RolloutStart,
        actions: Tensor,
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        num_frames: int | None = None,
    ) -> RolloutResult:
        """Predict what each row sees while taking its actions.

        Args:
            start: B start states.
            actions: (B, L) int64 discrete ids or (B, L, 3) float waypoints (module docstring).
            generator: random source of a stochastic simulator (ignored by deterministic ones).
            batch_size: most rows processed at once (memory bound); ``None`` = all.
            num_frames: return frames for only the last this many steps (``None`` = all L);
                poses always cover every step.

        Returns:
            The B rollouts.
        """
        ...


@runtime_checkable
class PersistentRolloutModel(RolloutModel, Protocol):
    """A simulator with a persistent memory that a planner keeps for a whole episode.

    The planner gives the episode's start one map (:meth:`with_episode_memory`), writes every
    executed observation into it (:meth:`observe`), and imagines every decision from it; a
    rollout copies the map, so imagination never writes into the episode's map.
    """

    def with_episode_memory(self, start: RolloutStart, prior: Memory | None = None) -> RolloutStart:
        """The one-row ``start`` with its episode map (a copy of ``prior``, else empty).

        The start's frames go into the map as observed.
        """
        ...

    def map_of(self, walk: RolloutStart) -> Memory | None:
        """A one-row map of every frame of a recorded walk (observed), or ``None``."""
        ...

    def observe(self, state: RolloutStart, executed: RolloutResult) -> None:
        """Write the frames of ``executed`` (observed, not imagined) into ``state.memory``."""
        ...


def action_kind(actions: Tensor) -> ActionKind:
    """Whether ``actions`` are discrete ids or waypoints, judged from dtype and shape."""
    if not isinstance(actions, Tensor):
        raise ValueError(f"actions must be a torch tensor, got {type(actions).__name__}")
    if actions.dim() == 2 and not actions.is_floating_point() and actions.dtype != torch.bool:
        return "discrete"
    if actions.dim() == 3 and actions.shape[-1] == 3 and actions.is_floating_point():
        return "waypoint"
    raise ValueError(
        f"actions must be (B, L) integer ids or (B, L, 3) float waypoints (dx, dz, dyaw), got "
        f"shape {tuple(actions.shape)} and dtype {actions.dtype}"
    )


def check_rollout_request(
    model: RolloutModel,
    start: RolloutStart,
    actions: Tensor,
    batch_size: int | None = None,
    num_frames: int | None = None,
) -> ActionKind:
    """Validate a rollout request; every :class:`RolloutModel` calls this first.

    Returns:
        The action kind.

    Raises:
        ValueError: for a start whose frame size differs from the model's, actions whose batch
            differs from the start's, an empty or too long horizon (beyond
            ``model.max_horizon``), unknown action ids, NaN waypoints, or a bad ``batch_size`` /
            ``num_frames``.
    """
    kind = action_kind(actions)
    if start.image_size != tuple(model.image_size):
        raise ValueError(
            f"start frames are {start.image_size} (H, W) but the model works at "
            f"{tuple(model.image_size)}; resize the frames or use a model of that size"
        )
    if actions.shape[0] != start.batch_size:
        raise ValueError(
            f"actions have {actions.shape[0]} rows but the start has {start.batch_size}; use "
            "start.select / start.repeat to give every action sequence its start"
        )
    horizon = actions.shape[1]
    if horizon < 1:
        raise ValueError("actions must have at least one step (L >= 1)")
    if model.max_horizon is not None and horizon > model.max_horizon:
        raise ValueError(
            f"horizon {horizon} is beyond what this model supports (max_horizon = "
            f"{model.max_horizon}); plan shorter sequences"
        )
    if kind == "discrete":
        bad = (actions < 0) | (actions >= NUM_ACTIONS)
        if bad.any():
            raise ValueError(
                f"unknown action id {int(actions[bad][0])}: allowed are 0 = stop, "
                "1 = move_forward, 2 = turn_left, 3 = turn_right"
            )
    elif not torch.isfinite(actions).all():
        raise ValueError("waypoints contain NaN or infinite values")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if num_frames is not None and not 1 <= num_frames <= horizon:
        raise ValueError(f"num_frames must be in [1, L = {horizon}] or None, got {num_frames}")
    return kind
