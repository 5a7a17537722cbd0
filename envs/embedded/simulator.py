"""The embedded ground-truth simulator: ``.glb`` scenes rendered headless, navigation on a grid.

The default backend of :class:`envs.simulator.GroundTruthSimulator` on every machine.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from envs.simulator import SimulatorConfig, check_action, wrap_angle
from worldsim.geometry import (
    Action,
    pose_from_position_yaw,
)

MIN_SEEN_FRACTION = 0.05
"""Share of the pixels of the first views of a scene that must see geometry (see ``load_scene``)."""
_FIRST_VIEWS = 4
"""Headings, evenly spaced, of the first views checked at a newly loaded scene's start point."""


@dataclass
class _LoadedScene:
    """A scene ready to simulate: its mesh and the navigation grid of each storey used so far.

    ``storeys`` maps a floor height (metres, rounded to 1 mm) to that storey's ``(NavGrid,
    ShortestPathFollower)``, or to ``None`` for an upward surface without room for the agent;
    ``floor`` is the storey the agent is on, ``first_floor`` the one detected at load (the
    dominant floor level, where episodes start unless told otherwise).
    """

    scene_id: str
    mesh: object  # trimesh.Trimesh, world frame
    storeys: dict
    floor: float
    first_floor: float

    @property
    def navigation(self):
        """The NavGrid of the agent's storey."""
        return self.storeys[self.floor][0]

    @property
    def follower(self):
        """The shortest-path follower on the agent's storey."""
        return self.storeys[self.floor][1]


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
        from envs.embedded.render import Renderer

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
        """The loaded scene's :class:`envs.embedded.navigation.NavGrid` (for top-down maps)."""
        return self._loaded().navigation

    @property
    def renderer(self):
        """The :class:`envs.embedded.render.Renderer` drawing the loaded scene."""
        return self._renderer

    def load_scene(self, scene: str | Path) -> None:
        """Load a scene by id or ``.glb`` path; keeps recently used scenes ready.

        A scene file is turned y-up as ``config.up_axis`` or its Habitat configs say
        (:func:`envs.embedded.scenes.load_scene`). A newly loaded scene is then checked: a
        navigation grid with floor under every navigable cell
        (:class:`envs.embedded.navigation.NavGrid`), and views from the start point in 4
        headings that see geometry (depth or colour) in at least :data:`MIN_SEEN_FRACTION` of
        their pixels; a scene on its side, or whose surfaces all face
        away from the agent, fails one or the other. Navigation starts on the scene's dominant
        floor level (the lowest storey, for storeys of similar area; see
        :attr:`envs.embedded.navmesh.NavConfig.floor_height`); :meth:`reset_agent` on another
        storey moves it there.

        Raises:
            ValueError: unknown scene id, a malformed ``.glb`` or Habitat config, no floor under
                the agent, or first views that see nothing (the message names the fix).
            FileNotFoundError: a path that does not exist.
        """
        from envs.embedded.navigation import NavGrid
        from envs.embedded.scenes import load_scene, scene_mesh

        key = str(scene)
        if self._scene is not None and self._scene.scene_id == key:
            return
        trimesh_scene = load_scene(scene, up_axis=self.config.up_axis)
        self._renderer.load_scene(trimesh_scene)
        if key in self._scenes:
            self._scenes.move_to_end(key)
        else:
            mesh = scene_mesh(trimesh_scene)
            navigation = NavGrid.from_mesh(mesh, self._nav_config())
            floor = round(navigation.floor_height, 3)
            storeys = {floor: (navigation, self._follower(navigation))}
            self._scene = _LoadedScene(key, mesh, storeys, floor, floor)
            self._position = self.sample_navigable_point(np.random.default_rng(0))
            self._check_first_views()
            self._scenes[key] = self._scene
            while len(self._scenes) > self.config.scene_cache_size:
                self._scenes.popitem(last=False)
        self._scene = self._scenes[key]
        self._scene.floor = self._scene.first_floor
        self._position = self.sample_navigable_point(np.random.default_rng(0))
        self._yaw = 0.0

    def _nav_config(self, floor_height: float | None = None):
        from envs.embedded.navmesh import NavConfig

        return NavConfig(
            agent_radius=self.config.agent_radius,
            agent_height=self.config.agent_height,
            floor_height=floor_height,
        )

    def _follower(self, navigation):
        from envs.embedded.follower import ShortestPathFollower

        return ShortestPathFollower(
            navigation,
            forward_step_m=self.config.forward_step_m,
            turn_step_deg=self.config.turn_step_deg,
        )

    def _storey_at(self, position: np.ndarray) -> float:
        """Key of the storey whose floor ``position`` stands on; its grid is built on first use.

        The agent's storey when ``position`` is at its floor level or stands on no floor at all
        (the caller then finds it not navigable there).
        """
        from envs.embedded.navigation import NavGrid
        from envs.embedded.navmesh import floor_height_at

        scene = self._loaded()
        tolerance = scene.navigation.config.floor_tolerance
        if abs(position[1] - scene.navigation.floor_height) <= tolerance:
            return scene.floor
        height = floor_height_at(scene.mesh, position, self._nav_config())
        if height is None:
            return scene.floor
        floor = round(height, 3)
        if floor not in scene.storeys:
            try:
                navigation = NavGrid.from_mesh(scene.mesh, self._nav_config(height))
            except ValueError:  # a surface with no room for the body (a shelf): no storey
                scene.storeys[floor] = None
            else:
                scene.storeys[floor] = (navigation, self._follower(navigation))
        return scene.floor if scene.storeys[floor] is None else floor

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

        In a scene of several storeys, a position on another storey's floor moves navigation
        there: collisions, sampled points, geodesics and the follower then use the grid of that
        storey (built on first use, kept with the scene). There are no stairs between storeys.

        Args:
            position: (3,) floor position in world metres, on the navigable area of any storey.
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
        self._loaded().floor = self._storey_at(position)
        self._position = position.copy()
        self._yaw = wrap_angle(float(yaw))
        # An episode's frames then depend on its own poses, not on what was rendered before.
        self._renderer.forget_visibility()

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

    def move(self, waypoint: np.ndarray) -> bool:
        """Go to a local waypoint, then turn: a continuous action.

        Args:
            waypoint: (3,) ``(dx, dz, dyaw)``: metres right, metres forward, radians left, in the
                agent's frame before the move (:func:`worldsim.geometry.waypoint_to_relative_pose`).

        Returns:
            Whether an obstacle blocked the move (the agent slid along or stopped at it, as a
            forward step does).
        """
        dx, dz, dyaw = (float(value) for value in waypoint)
        sin, cos = math.sin(self._yaw), math.cos(self._yaw)
        # The agent's right is (cos, -sin) and its forward (-sin, -cos) on the floor (x, z).
        displacement = np.array([dx * cos - dz * sin, -dx * sin - dz * cos])
        collided = False
        if displacement.any():
            position, collided = self._loaded().navigation.try_move(self._position, displacement)
            self._position = np.asarray(position, dtype=np.float64)
        self._yaw = wrap_angle(self._yaw + dyaw)
        return bool(collided)

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
        """Whether the agent's body fits at ``position`` (3,) on the navigable floor.

        Any storey's floor counts (see :meth:`reset_agent`); the agent's storey is unchanged.
        """
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (3,) or not np.isfinite(position).all():
            return bool(self._loaded().navigation.is_navigable(position))  # it names the problem
        navigation = self._loaded().storeys[self._storey_at(position)][0]
        return bool(navigation.is_navigable(position))

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
