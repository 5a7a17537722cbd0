"""The ground-truth simulator: metric RGB-D and exact poses of an agent moving through a scene.

Two backends share one protocol, :class:`GroundTruthSimulator`:

- ``"embedded"`` (:class:`Simulator`, every machine): textured ``.glb`` scenes — the procedural
  houses of :mod:`envs.scenes` or a user's own file — rendered headless with OpenGL through EGL
  (:mod:`envs.render`), with a navigability grid derived from the mesh (:mod:`envs.navigation`,
  the role of Habitat's navmesh).
- ``"habitat"`` (:class:`envs.habitat.HabitatSimulator`, optional): habitat-sim with HM3D scenes,
  where a user has installed it from conda.

Agent state is a floor position ``(x, y, z)`` in metres and a heading ``yaw`` in radians, in the
world frame of :mod:`worldsim.geometry` (y up, ``yaw = 0`` looks along -z, positive turns left).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from worldsim.geometry import (
    DEFAULT_HFOV_DEG,
    DEFAULT_MAX_DEPTH_M,
    DEFAULT_SENSOR_HEIGHT_M,
    NUM_ACTIONS,
    Action,
    ActionSpec,
    intrinsics_from_hfov,
    pose_from_position_yaw,
)

MAX_RESOLUTION = 4096
"""Largest rendered width or height, pixels."""
MIN_SEEN_FRACTION = 0.05
"""Share of the pixels of the first views of a scene that must see geometry (see ``load_scene``)."""
_FIRST_VIEWS = 4
"""Headings, evenly spaced, of the first views checked at a newly loaded scene's start point."""


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
            takes y (see :func:`envs.scenes.load_scene`). Generated houses are always y-up. The
            habitat backend reads Habitat's configs itself and ignores this field.
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
        from envs.scenes import UP_AXES

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
    """What every ground-truth backend provides (see :class:`Simulator` for the semantics)."""

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

    def observe(self) -> dict[str, np.ndarray]: ...  # noqa: D102

    def render(self, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # noqa: D102

    def is_navigable(self, position: np.ndarray) -> bool: ...  # noqa: D102

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray: ...  # noqa: D102

    def geodesic_distance(self, start: np.ndarray, goal: np.ndarray) -> float: ...  # noqa: D102

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray: ...  # noqa: D102

    def oracle_action(self, goal: np.ndarray) -> int: ...  # noqa: D102


def make_simulator(
    config: SimulatorConfig | None = None, backend: str = "embedded"
) -> GroundTruthSimulator:
    """Create a ground-truth simulator.

    Args:
        config: sensor and agent settings; defaults if ``None``.
        backend: ``"embedded"`` (every machine) or ``"habitat"`` (needs habitat-sim).

    Returns:
        A simulator with no scene loaded yet.

    Raises:
        ValueError: for an unknown backend.
        ImportError: for ``"habitat"`` when habitat-sim is not installed, saying how to install it.
    """
    config = config or SimulatorConfig()
    if backend == "embedded":
        return Simulator(config)
    if backend == "habitat":
        from envs.habitat import HabitatSimulator

        return HabitatSimulator(config)
    raise ValueError(f"unknown simulator backend {backend!r}: allowed are 'embedded', 'habitat'")


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


@dataclass
class _LoadedScene:
    """A scene ready to simulate: its navigation grid and renderer buffers."""

    scene_id: str
    navigation: object  # envs.navigation.NavGrid
    follower: object  # envs.navigation.ShortestPathFollower


class Simulator:
    """The embedded ground-truth simulator (works headless on any machine).

    Scenes are ``.glb`` meshes: a procedural house id such as ``"house-train-0003"`` (generated on
    first use and cached) or a path to a user's own ``.glb``. The agent is a cylinder of
    ``config.agent_radius`` and ``config.agent_height`` standing on the navigable floor; a move
    into an obstacle slides along it or stops at it and never passes through it.

    Args:
        config: sensor, action and agent settings.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        from envs.render import Renderer

        self.config = config or SimulatorConfig()
        self._spec = self.config.action_spec
        self._intrinsics = self.config.intrinsics
        self._renderer = Renderer(
            self.config.width,
            self.config.height,
            hfov_deg=self.config.hfov_deg,
            max_depth=self.config.max_depth,
        )
        self._scenes: OrderedDict[str, _LoadedScene] = OrderedDict()
        self._scene: _LoadedScene | None = None
        self._position = np.zeros(3)
        self._yaw = 0.0

    # ----------------------------------------------------------------------------- scene
    @property
    def scene_id(self) -> str:
        """Id (or path) of the loaded scene."""
        return self._loaded().scene_id

    @property
    def navigation(self):
        """The loaded scene's :class:`envs.navigation.NavGrid` (for top-down maps)."""
        return self._loaded().navigation

    def load_scene(self, scene: str | Path) -> None:
        """Load a scene by id or ``.glb`` path; keeps recently used scenes ready.

        A scene file is turned y-up as ``config.up_axis`` or its Habitat configs say
        (:func:`envs.scenes.load_scene`). A newly loaded scene is then checked: a navigation grid
        with floor under every navigable cell (:class:`envs.navigation.NavGrid`), and views from
        the start point in 4 headings that see geometry (depth or colour) in at least
        :data:`MIN_SEEN_FRACTION` of their pixels; a scene on its side, or whose surfaces all face
        away from the agent, fails one or the other.

        Raises:
            ValueError: unknown scene id, a malformed ``.glb`` or Habitat config, no floor under
                the agent, or first views that see nothing (the message names the fix).
            FileNotFoundError: a path that does not exist.
        """
        from envs.navigation import NavConfig, NavGrid, ShortestPathFollower
        from envs.scenes import load_scene, scene_mesh

        key = str(scene)
        if self._scene is not None and self._scene.scene_id == key:
            return
        trimesh_scene = load_scene(scene, up_axis=self.config.up_axis)
        self._renderer.load_scene(trimesh_scene)
        if key in self._scenes:
            self._scenes.move_to_end(key)
        else:
            nav_config = NavConfig(
                agent_radius=self.config.agent_radius, agent_height=self.config.agent_height
            )
            navigation = NavGrid.from_mesh(scene_mesh(trimesh_scene), nav_config)
            follower = ShortestPathFollower(
                navigation,
                forward_step_m=self.config.forward_step_m,
                turn_step_deg=self.config.turn_step_deg,
            )
            self._scene = _LoadedScene(key, navigation, follower)
            self._position = self.sample_navigable_point(np.random.default_rng(0))
            self._check_first_views()
            self._scenes[key] = self._scene
            while len(self._scenes) > self.config.scene_cache_size:
                self._scenes.popitem(last=False)
        self._scene = self._scenes[key]
        self._position = self.sample_navigable_point(np.random.default_rng(0))
        self._yaw = 0.0

    def _check_first_views(self) -> None:
        """Refuse a scene whose views from the start point see (almost) nothing."""
        seen = []
        for yaw in np.arange(_FIRST_VIEWS) * (2 * math.pi / _FIRST_VIEWS):
            rgb, depth = self.render(self.camera_pose(self._position, yaw))
            seen.append((depth[..., 0] > 0) | rgb.any(axis=-1))
        fraction = float(np.mean(seen))
        if fraction < MIN_SEEN_FRACTION:
            scene_id, self._scene = self._scene.scene_id, None
            raise ValueError(
                f"scene {scene_id!r}: the agent stands on a surface at y = "
                f"{self._position[1]:.2f} m but its first views see geometry in only "
                f"{fraction:.1%} of their pixels (black frames, depth 0): the file is probably "
                "not y-up (Habitat's MP3D / HM3D scenes are z-up); pass up_axis='z' (IndoorNav, "
                'SimulatorConfig) or put a Habitat <name>.stage_config.json with "up" beside it'
            )

    def _loaded(self) -> _LoadedScene:
        if self._scene is None:
            raise RuntimeError("no scene loaded: call load_scene(scene_id_or_glb_path) first")
        return self._scene

    # ----------------------------------------------------------------------------- agent
    @property
    def position(self) -> np.ndarray:
        """(3,) float64 agent floor position, world metres."""
        return self._position.copy()

    @property
    def yaw(self) -> float:
        """Agent heading in radians, in (-pi, pi]."""
        return self._yaw

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) float32 camera intrinsics, pixels."""
        return self._intrinsics.copy()

    @property
    def pose(self) -> np.ndarray:
        """(4, 4) float32 ``cam_to_world`` of the agent's camera."""
        return self.camera_pose(self._position, self._yaw)

    def camera_pose(self, position: np.ndarray, yaw: float) -> np.ndarray:
        """(4, 4) float32 ``cam_to_world`` of a camera on an agent at ``position`` / ``yaw``."""
        pose = pose_from_position_yaw(
            torch.as_tensor(np.asarray(position, dtype=np.float64)),
            torch.tensor(float(yaw), dtype=torch.float64),
            self.config.sensor_height,
        )
        return pose.numpy().astype(np.float32)

    def reset_agent(self, position: np.ndarray, yaw: float) -> None:
        """Place the agent.

        Args:
            position: (3,) floor position in world metres, on the navigable area.
            yaw: heading in radians (wrapped to (-pi, pi]).

        Raises:
            ValueError: if the position is not navigable or the yaw is not finite.
        """
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (3,) or not np.isfinite(position).all():
            raise ValueError(f"position must be 3 finite numbers (x, y, z), got {position!r}")
        if not math.isfinite(yaw):
            raise ValueError(f"yaw must be a finite angle in radians, got {yaw!r}")
        if not self.is_navigable(position):
            raise ValueError(
                f"position {position.round(3).tolist()} is not on the navigable area of scene "
                f"{self.scene_id!r}; use sample_navigable_point() or is_navigable() to pick one"
            )
        self._position = position.copy()
        self._yaw = wrap_angle(float(yaw))

    def step(self, action: int) -> bool:
        """Apply one discrete action.

        Args:
            action: an id of :class:`worldsim.geometry.Action`.

        Returns:
            Whether a forward move was blocked (the agent slid along or stopped at an obstacle).

        Raises:
            ValueError: for an action outside the action space.
        """
        action = check_action(action)
        if action == Action.MOVE_FORWARD:
            step = self._spec.forward_step_m
            displacement = np.array([-math.sin(self._yaw), -math.cos(self._yaw)]) * step
            position, collided = self._loaded().navigation.try_move(self._position, displacement)
            self._position = np.asarray(position, dtype=np.float64)
            return bool(collided)
        if action == Action.TURN_LEFT:
            self._yaw = wrap_angle(self._yaw + self._spec.turn_step_rad)
        elif action == Action.TURN_RIGHT:
            self._yaw = wrap_angle(self._yaw - self._spec.turn_step_rad)
        return False

    # ----------------------------------------------------------------------------- sensing
    def render(self, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render any camera pose in the loaded scene.

        Args:
            cam_to_world: (4, 4) camera pose (OpenCV camera axes).

        Returns:
            ``(rgb, depth)``: uint8 (H, W, 3) and float32 (H, W, 1) metric z-depth (0 = no hit).
        """
        self._loaded()
        rgb, depth = self._renderer.render(np.asarray(cam_to_world, dtype=np.float32))
        return rgb, depth[..., None]

    def observe(self) -> dict[str, np.ndarray]:
        """The agent's observation.

        Returns:
            ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W, 1) metres, ``pose`` float32 (4, 4).
        """
        pose = self.pose
        rgb, depth = self.render(pose)
        return {"rgb": rgb, "depth": depth, "pose": pose}

    # ----------------------------------------------------------------------------- navigation
    def is_navigable(self, position: np.ndarray) -> bool:
        """Whether the agent's body fits at ``position`` (3,) on the navigable floor."""
        return bool(self._loaded().navigation.is_navigable(np.asarray(position, dtype=np.float64)))

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random navigable floor position, (3,) float64."""
        return np.asarray(self._loaded().navigation.sample_navigable_point(rng), dtype=np.float64)

    def geodesic_distance(self, start: np.ndarray, goal: np.ndarray) -> float:
        """Shortest walkable distance in metres (``inf`` if unreachable)."""
        return float(self._loaded().navigation.geodesic_distance(start, goal))

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """(N, 3) waypoints of a shortest walkable path from ``start`` to ``goal``."""
        return np.asarray(self._loaded().navigation.shortest_path(start, goal))

    def oracle_action(self, goal: np.ndarray) -> int:
        """The greedy shortest-path follower's next action towards ``goal`` (0 = stop at it)."""
        follower = self._loaded().follower
        return int(follower.next_action(self._position, self._yaw, np.asarray(goal, dtype=float)))
