"""Optional Habitat backend: habitat-sim with HM3D (or any Habitat) scenes, same protocol.

habitat-sim is not on PyPI; install it from conda where you want this backend::

    conda install habitat-sim headless -c conda-forge -c aihabitat

This module imports ``habitat_sim`` only when a :class:`HabitatSimulator` is created, so the rest
of the library never needs it.

Frames: Habitat's world frame is ours (y up, metres); its cameras use OpenGL axes (x right, y up,
z backward), converted here to the OpenCV axes of :mod:`worldsim.geometry`. Habitat's depth sensor
already reports metric z-depth.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from envs.simulator import SimulatorConfig, check_action, wrap_angle
from worldsim.geometry import Action, pose_from_position_yaw

INSTALL_HINT = (
    "the 'habitat' backend needs habitat-sim, which is not on PyPI: install it with "
    "`conda install habitat-sim headless -c conda-forge -c aihabitat`, or use the default "
    "backend='embedded'"
)

# OpenGL camera axes (x right, y up, z back) -> OpenCV camera axes (x right, y down, z forward).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _import_habitat_sim():
    try:
        import habitat_sim
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return habitat_sim


class HabitatSimulator:
    """Ground-truth simulator on habitat-sim; see :class:`envs.simulator.Simulator` for semantics.

    Args:
        config: sensor, action and agent settings.

    Raises:
        ImportError: if habitat-sim is not installed (the message says how to install it).
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._habitat_sim = _import_habitat_sim()
        self.config = config or SimulatorConfig()
        self._sim = None
        self._scene_id = ""
        self._follower = None

    def _sim_config(self, scene: str):
        hs = self._habitat_sim
        backend = hs.SimulatorConfiguration()
        backend.scene_id = scene
        sensors = []
        for uuid, kind in (("rgb", hs.SensorType.COLOR), ("depth", hs.SensorType.DEPTH)):
            spec = hs.CameraSensorSpec()
            spec.uuid = uuid
            spec.sensor_type = kind
            spec.resolution = [self.config.height, self.config.width]
            spec.position = [0.0, self.config.sensor_height, 0.0]
            spec.hfov = self.config.hfov_deg
            sensors.append(spec)
        agent = hs.agent.AgentConfiguration()
        agent.radius = self.config.agent_radius
        agent.height = self.config.agent_height
        agent.sensor_specifications = sensors
        agent.action_space = {
            "move_forward": hs.agent.ActionSpec(
                "move_forward", hs.agent.ActuationSpec(amount=self.config.forward_step_m)
            ),
            "turn_left": hs.agent.ActionSpec(
                "turn_left", hs.agent.ActuationSpec(amount=self.config.turn_step_deg)
            ),
            "turn_right": hs.agent.ActionSpec(
                "turn_right", hs.agent.ActuationSpec(amount=self.config.turn_step_deg)
            ),
        }
        return hs.Configuration(backend, [agent])

    @property
    def scene_id(self) -> str:
        """Path of the loaded scene."""
        return self._scene_id

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) float32 intrinsics, pixels."""
        return self.config.intrinsics

    def load_scene(self, scene: str | Path) -> None:
        """Load a Habitat scene file (``.glb`` / ``.basis.glb``, HM3D scene dataset paths)."""
        path = Path(scene)
        if not path.exists():
            raise FileNotFoundError(f"Habitat scene file {str(path)!r} does not exist")
        config = self._sim_config(str(path))
        if self._sim is None:
            self._sim = self._habitat_sim.Simulator(config)
        else:
            self._sim.reconfigure(config)
        if not self._sim.pathfinder.is_loaded:
            raise ValueError(f"scene {str(path)!r} has no navmesh; Habitat needs one to navigate")
        self._scene_id = str(path)
        self._follower = self._habitat_sim.nav.GreedyGeodesicFollower(
            self._sim.pathfinder, self._sim.get_agent(0), goal_radius=0.2
        )

    def _agent_state(self):
        if self._sim is None:
            raise RuntimeError("no scene loaded: call load_scene(path) first")
        return self._sim.get_agent(0).get_state()

    @property
    def position(self) -> np.ndarray:
        """(3,) agent floor position."""
        return np.asarray(self._agent_state().position, dtype=np.float64)

    @property
    def yaw(self) -> float:
        """Heading in radians (0 looks along -z, positive turns left)."""
        rotation = self._agent_state().rotation  # quaternion about +y
        return wrap_angle(2.0 * math.atan2(rotation.y, rotation.w))

    def reset_agent(self, position: np.ndarray, yaw: float) -> None:
        """Place the agent at a navigable ``position`` (3,) with heading ``yaw``."""
        if not self.is_navigable(position):
            raise ValueError(f"position {np.asarray(position).tolist()} is not navigable")
        state = self._agent_state()
        state.position = np.asarray(position, dtype=np.float32)
        half = yaw / 2.0
        state.rotation = self._habitat_sim.utils.common.quat_from_coeffs(
            [0.0, math.sin(half), 0.0, math.cos(half)]
        )
        self._sim.get_agent(0).set_state(state)

    def step(self, action: int) -> bool:
        """Apply one action; returns whether a forward move collided."""
        action = check_action(action)
        if action == Action.STOP:
            return False
        name = Action(action).name.lower()
        self._sim.get_agent(0).act(name)
        return bool(self._sim.previous_step_collided)

    def move(self, waypoint: np.ndarray) -> bool:
        """Go to a local waypoint ``(dx, dz, dyaw)``, sliding along the navmesh, then turn.

        The move is habitat-sim's ``pathfinder.try_step`` (its sliding, as its own forward step);
        returns whether it was cut short.
        """
        dx, dz, dyaw = (float(value) for value in waypoint)
        yaw = self.yaw
        start = self.position
        # The agent's right is (cos, -sin) and its forward (-sin, -cos) on the floor (x, z).
        target = start + np.array(
            [dx * math.cos(yaw) - dz * math.sin(yaw), 0.0, -dx * math.sin(yaw) - dz * math.cos(yaw)]
        )
        end = np.asarray(
            self._sim.pathfinder.try_step(start.astype(np.float32), target.astype(np.float32)),
            dtype=np.float64,
        )
        self.reset_agent(end, wrap_angle(yaw + dyaw))
        return bool(np.linalg.norm((end - target)[[0, 2]]) > 1e-3)

    def render(self, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render an arbitrary camera pose (moves the sensors, then restores them)."""
        agent = self._sim.get_agent(0)
        saved = agent.get_state()
        pose_gl = np.asarray(cam_to_world, dtype=np.float64) @ _GL_TO_CV
        state = agent.get_state()
        for sensor_state in state.sensor_states.values():
            sensor_state.position = pose_gl[:3, 3].astype(np.float32)
            sensor_state.rotation = self._habitat_sim.utils.common.quat_from_rotation_matrix(
                pose_gl[:3, :3]
            )
        agent.set_state(state, infer_sensor_states=False)
        observation = self._sim.get_sensor_observations()
        agent.set_state(saved)
        rgb = np.ascontiguousarray(observation["rgb"][..., :3], dtype=np.uint8)
        depth = np.asarray(observation["depth"], dtype=np.float32)
        depth = np.where(depth > self.config.max_depth, 0.0, depth)[..., None]
        return rgb, depth.astype(np.float32)

    def observe(self) -> dict[str, np.ndarray]:
        """``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W, 1), ``pose`` float32 (4, 4)."""
        import torch

        pose = (
            pose_from_position_yaw(
                torch.as_tensor(self.position),
                torch.tensor(self.yaw, dtype=torch.float64),
                self.config.sensor_height,
            )
            .numpy()
            .astype(np.float32)
        )
        rgb, depth = self.render(pose)
        return {"rgb": rgb, "depth": depth, "pose": pose}

    def is_navigable(self, position: np.ndarray) -> bool:
        """Whether ``position`` lies on the navmesh."""
        return bool(self._sim.pathfinder.is_navigable(np.asarray(position, dtype=np.float32)))

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray:
        """A random navigable point, seeded from ``rng``."""
        self._sim.pathfinder.seed(int(rng.integers(2**31 - 1)))
        return np.asarray(self._sim.pathfinder.get_random_navigable_point(), dtype=np.float64)

    def _path(self, start: np.ndarray, goal: np.ndarray):
        path = self._habitat_sim.ShortestPath()
        path.requested_start = np.asarray(start, dtype=np.float32)
        path.requested_end = np.asarray(goal, dtype=np.float32)
        self._sim.pathfinder.find_path(path)
        return path

    def geodesic_distance(self, start: np.ndarray, goal: np.ndarray) -> float:
        """Navmesh geodesic distance in metres (``inf`` if unreachable)."""
        return float(self._path(start, goal).geodesic_distance)

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """(N, 3) navmesh path points."""
        return np.asarray(self._path(start, goal).points, dtype=np.float64)

    def oracle_action(self, goal: np.ndarray) -> int:
        """Habitat's greedy geodesic follower's next action (0 = stop)."""
        name = self._follower.next_action_along(np.asarray(goal, dtype=np.float32))
        return 0 if name is None else int(Action[name.upper()])
