"""The ground-truth simulator: metric RGB-D and exact poses of an agent moving through a scene.

Two backends share one protocol, :class:`GroundTruthSimulator`
(:func:`envs.backends.make_simulator` creates either):

- ``"embedded"`` (:class:`envs.embedded.simulator.Simulator`, every machine): textured ``.glb``
  scenes — the procedural houses of :mod:`envs.embedded.scenes` or a user's own file — rendered
  headless with OpenGL through EGL (:mod:`envs.embedded.render`), with a navigability grid
  derived from the mesh (:mod:`envs.embedded.navmesh`, the role of Habitat's navmesh).
- ``"habitat"`` (:class:`envs.habitat.HabitatSimulator`, optional): habitat-sim with HM3D scenes,
  where a user has installed it from conda.

Agent state is a floor position ``(x, y, z)`` in metres and a heading ``yaw`` in radians, in the
world frame of :mod:`worldsim.geometry` (y up, ``yaw = 0`` looks along -z, positive turns left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from worldsim.geometry import (
    DEFAULT_HFOV_DEG,
    DEFAULT_MAX_DEPTH_M,
    DEFAULT_SENSOR_HEIGHT_M,
    NUM_ACTIONS,
    Action,
    ActionSpec,
    intrinsics_from_hfov,
)

MAX_RESOLUTION = 4096
"""Largest rendered width or height, pixels."""


@dataclass(frozen=True)
class SimulatorConfig:
    """Sensor, action and agent-body settings shared by every backend.

    Attributes:
        width: image columns, in [1, 4096].
        height: image rows, in [1, 4096].
        hfov_deg: horizontal field of view, degrees, in (0, 180).
        max_depth: depth sensor range, metres, > 0; farther surfaces read 0.
        sensor_height: camera height above the floor, metres, in (0, agent_height].
        forward_step_m: ``move_forward`` distance, metres, in (0, 5].
        turn_step_deg: ``turn_left`` / ``turn_right`` angle, degrees, in (0, 180].
        agent_radius: radius of the agent's cylindrical body, metres, in (0, 1].
        agent_height: height of the agent's body, metres, in (0, 3].
        scene_cache_size: scenes kept loaded (navigation grid and GPU buffers) for fast switching.
        up_axis: up axis of scene files, ``"y"`` or ``"z"`` (Habitat's MP3D / HM3D files);
            ``None`` reads it from a Habitat stage or scene-dataset config beside the file, else
            takes y (see :func:`envs.embedded.scenes.load_scene`). Generated houses are always
            y-up. The habitat backend reads Habitat's configs itself and ignores this field.
    """

    width: int = 128
    height: int = 128
    hfov_deg: float = DEFAULT_HFOV_DEG
    max_depth: float = DEFAULT_MAX_DEPTH_M
    sensor_height: float = DEFAULT_SENSOR_HEIGHT_M
    forward_step_m: float = 0.25
    turn_step_deg: float = 10.0
    agent_radius: float = 0.1
    agent_height: float = 1.5
    scene_cache_size: int = 4
    up_axis: str | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_RESOLUTION:
                raise ValueError(
                    f"{name} must be an integer in [1, {MAX_RESOLUTION}], got {value!r}"
                )
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"hfov_deg must be in (0, 180) degrees, got {self.hfov_deg}")
        if not self.max_depth > 0.0:
            raise ValueError(f"max_depth must be > 0 metres, got {self.max_depth}")
        if not 0.0 < self.agent_radius <= 1.0:
            raise ValueError(f"agent_radius must be in (0, 1] metres, got {self.agent_radius}")
        if not 0.0 < self.agent_height <= 3.0:
            raise ValueError(f"agent_height must be in (0, 3] metres, got {self.agent_height}")
        if not 0.0 < self.sensor_height <= self.agent_height:
            raise ValueError(
                f"sensor_height must be in (0, agent_height={self.agent_height}] metres, "
                f"got {self.sensor_height}"
            )
        if self.scene_cache_size < 1:
            raise ValueError(f"scene_cache_size must be >= 1, got {self.scene_cache_size}")
        from envs.embedded.scenes import UP_AXES

        if self.up_axis is not None and self.up_axis not in UP_AXES:
            raise ValueError(f"unknown up_axis {self.up_axis!r}: allowed are {UP_AXES} (or None)")
        self.action_spec  # validates the step sizes  # noqa: B018

    @property
    def action_spec(self) -> ActionSpec:
        """Step sizes of the discrete actions."""
        return ActionSpec(forward_step_m=self.forward_step_m, turn_step_deg=self.turn_step_deg)

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) float32 pinhole intrinsics of the sensor, pixels."""
        return intrinsics_from_hfov(self.hfov_deg, self.width, self.height).numpy()


@runtime_checkable
class GroundTruthSimulator(Protocol):
    """What every ground-truth backend provides.

    See :class:`envs.embedded.simulator.Simulator` for the semantics.
    """

    config: SimulatorConfig

    @property
    def scene_id(self) -> str: ...  # noqa: D102

    @property
    def position(self) -> np.ndarray: ...  # noqa: D102

    @property
    def yaw(self) -> float: ...  # noqa: D102

    @property
    def intrinsics(self) -> np.ndarray: ...  # noqa: D102

    def load_scene(self, scene: str | Path) -> None: ...  # noqa: D102

    def reset_agent(self, position: np.ndarray, yaw: float) -> None: ...  # noqa: D102

    def step(self, action: int) -> bool: ...  # noqa: D102

    def move(self, waypoint: np.ndarray) -> bool: ...  # noqa: D102

    def observe(self) -> dict[str, np.ndarray]: ...  # noqa: D102

    def render(self, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # noqa: D102

    def is_navigable(self, position: np.ndarray) -> bool: ...  # noqa: D102

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray: ...  # noqa: D102

    def geodesic_distance(self, start: np.ndarray, goal: np.ndarray) -> float: ...  # noqa: D102

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray: ...  # noqa: D102

    def oracle_action(self, goal: np.ndarray) -> int: ...  # noqa: D102


def check_action(action: object) -> int:
    """Return ``action`` as an int, or raise if it is not one of the discrete action ids."""
    if isinstance(action, np.ndarray) and action.shape == ():
        action = action.item()
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
        raise ValueError(f"action must be an integer id, got {action!r} ({type(action).__name__})")
    if not 0 <= int(action) < NUM_ACTIONS:
        allowed = ", ".join(f"{a.value} = {a.name.lower()}" for a in Action)
        raise ValueError(f"unknown action {int(action)}: allowed are {allowed}")
    return int(action)


def wrap_angle(angle: float) -> float:
    """Wrap an angle in radians to (-pi, pi]."""
    wrapped = math.remainder(angle, 2.0 * math.pi)
    return math.pi if wrapped == -math.pi else wrapped
