"""``IndoorNav-v0``: point-goal navigation in the ground-truth indoor simulator."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.backends import make_simulator
from envs.simulator import GroundTruthSimulator, SimulatorConfig, check_action
from worldsim.geometry import NUM_ACTIONS, Action
from worldsim.metrics.task import SUCCESS_RADIUS_M, spl

POSE_BOUND_M = 1000.0
"""Largest absolute camera coordinate, metres: the bound of the ``pose`` space. Indoor scenes are
far smaller; a scene or few-shot frames beyond it are refused rather than observed outside the
space."""


def pose_space() -> spaces.Box:
    """The ``pose`` space: (4, 4) float32 rigid ``cam_to_world`` matrices.

    Rotation entries lie in [-1, 1], the translation column in ``[-POSE_BOUND_M, POSE_BOUND_M]``
    metres; the last row, always ``(0, 0, 0, 1)``, is bounded by [0, 1] (Gymnasium's checker
    takes equal bounds for a mistake).
    """
    low = np.full((4, 4), -1.0, dtype=np.float32)
    high = np.full((4, 4), 1.0, dtype=np.float32)
    low[:3, 3], high[:3, 3] = -POSE_BOUND_M, POSE_BOUND_M
    low[3], high[3] = 0.0, 1.0
    return spaces.Box(low, high, dtype=np.float32)


def reset_options(options: Any) -> dict[str, Any]:
    """``reset(options=...)`` as a new dict: ``None`` is empty, anything but a mapping is refused.

    Raises:
        ValueError: for options that are not a dict, e.g. a bare scene id.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        example = f"{{'scene': {options!r}}}" if isinstance(options, str) else "{'scene': ...}"
        raise ValueError(
            f"reset options must be a dict such as options={example}, got "
            f"{type(options).__name__} {options!r}"
        )
    return dict(options)


def check_pose_bound(positions: np.ndarray, what: str) -> None:
    """Raise unless every position lies within :data:`POSE_BOUND_M` of the origin (per axis).

    Args:
        positions: (..., 3) world positions, metres.
        what: what they are, for the message.

    Raises:
        ValueError: naming the largest coordinate and the bound.
    """
    largest = float(np.abs(np.asarray(positions, dtype=np.float64)).max(initial=0.0))
    if not largest <= POSE_BOUND_M:
        raise ValueError(
            f"{what} lie {largest:.4g} m from the origin along an axis, beyond the pose space's "
            f"bound of {POSE_BOUND_M:g} m: move the scene or frames near the origin"
        )


ACTION_TYPES = ("discrete", "waypoint")
"""Action spaces both envs offer (:func:`action_space`)."""
WAYPOINT_BOUND = (1.0, 1.0, 1.0)
"""Largest ``|dx|`` and ``|dz|`` (metres) and ``|dyaw|`` (radians, 57°) of one waypoint action:
the space is ``[-1, 1]^3``, as reinforcement-learning libraries expect."""


def action_space(action_type: str) -> spaces.Space:
    """The action space shared by ``IndoorNav-v0`` and ``PersistentWorld-v0``.

    Args:
        action_type: ``"discrete"`` (Habitat's ids, :class:`worldsim.geometry.Action`) or
            ``"waypoint"`` (a local-frame ``(dx, dz, dyaw)``: metres right, metres forward,
            radians left, as NoMaD-style policies emit; within :data:`WAYPOINT_BOUND`).

    Raises:
        ValueError: for another action type.
    """
    if action_type == "discrete":
        return spaces.Discrete(NUM_ACTIONS)
    if action_type == "waypoint":
        bound = np.asarray(WAYPOINT_BOUND, dtype=np.float32)
        return spaces.Box(-bound, bound, dtype=np.float32)
    raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {action_type!r}")


def check_waypoint(action: Any) -> np.ndarray:
    """Return a waypoint action as (3,) float64, or raise naming what is wrong.

    The zero waypoint is ``stop`` (it ends the episode), as ``action_to_waypoint(STOP)`` is.

    Raises:
        ValueError: for another shape, a non-finite value or a value beyond
            :data:`WAYPOINT_BOUND`.
    """
    waypoint = np.asarray(action, dtype=np.float64)
    if waypoint.shape != (3,) or not np.isfinite(waypoint).all():
        raise ValueError(
            f"a waypoint action is 3 finite numbers (dx, dz, dyaw) in metres right, metres "
            f"forward and radians left, got {action!r}"
        )
    if (np.abs(waypoint) > np.asarray(WAYPOINT_BOUND) + 1e-6).any():
        raise ValueError(
            f"waypoint {waypoint.tolist()} exceeds the bound (|dx|, |dz|, |dyaw|) <= "
            f"{WAYPOINT_BOUND}: split the move into several steps"
        )
    return waypoint


def is_stop(action: int | np.ndarray) -> bool:
    """Whether a checked action (an id or a waypoint) is ``stop``."""
    if isinstance(action, np.ndarray):
        return not action.any()
    return action == Action.STOP


def observation_space(config: SimulatorConfig) -> spaces.Dict:
    """The observation space shared by ``IndoorNav-v0`` and ``PersistentWorld-v0``.

    Args:
        config: sensor settings (image size, depth range).

    Returns:
        A Dict space of ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W, 1) in
        ``[0, max_depth]`` metres and ``pose`` float32 (4, 4) ``cam_to_world``
        (:func:`pose_space`).
    """
    height, width = config.height, config.width
    return spaces.Dict(
        {
            "rgb": spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8),
            "depth": spaces.Box(0.0, config.max_depth, shape=(height, width, 1), dtype=np.float32),
            "pose": pose_space(),
        }
    )


class IndoorNavEnv(gym.Env):
    """Point-goal navigation with metric RGB-D in multi-room houses (the ground truth).

    ## Description
    An agent moves through a textured multi-room house (a procedural scene of
    :mod:`envs.embedded.scenes`, a user's own ``.glb``, or a Habitat scene) and sees metric RGB-D
    from a head-mounted pinhole camera. Each episode has a start pose and a goal position; the
    environment is the ground truth that trains and scores the learned simulator
    ``PersistentWorld-v0``, and shares its spaces.

    ## Action Space
    ``Discrete(4)``, as Habitat: ``0`` stop, ``1`` move forward (0.25 m), ``2`` turn left (10°),
    ``3`` turn right (10°); step sizes are arguments. A forward move into an obstacle slides along
    it or stops at it (``info["collided"]``). Any other value raises ``ValueError``.
    With ``action_type="waypoint"``: ``Box(3)`` of local waypoints ``(dx, dz, dyaw)`` (metres
    right, metres forward, radians left; :data:`WAYPOINT_BOUND`), as NoMaD-style policies emit:
    the agent moves to the point (sliding along obstacles as above), then turns; ``(0, 0, 0)`` is
    ``stop``. A waypoint equal to a discrete action's (``worldsim.geometry.action_to_waypoint``)
    reaches the same pose.

    ## Observation Space
    ``Dict`` of ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W, 1) metric z-depth in metres
    (0 where nothing was hit or beyond ``max_depth``) and ``pose`` float32 (4, 4) ``cam_to_world``
    (OpenCV camera axes, world y up; see :mod:`worldsim.geometry`), bounded: translation within
    ``POSE_BOUND_M`` (1 km) per axis, rotation entries in [-1, 1] (a scene whose start lies
    farther is refused). Camera intrinsics are in ``info["intrinsics"]``.

    ## Rewards
    The decrease of the geodesic distance to the goal in metres at each step (positive when
    the agent gets closer along walkable paths); 0 on ``stop``.

    ## Starting State
    Start and goal are sampled on the navigable floor of the scene, the goal reachable and at a
    geodesic distance of at least ``min_goal_distance``, the heading uniform; or given in
    ``reset(options={"scene": ..., "start": ..., "goal": ...})`` where ``start`` is
    ``(x, y, z, yaw)`` or ``{"position": (x, y, z), "yaw": yaw}`` and ``goal`` is ``(x, y, z)``.

    ## Episode End
    Terminated when the agent takes ``stop`` (``info["success"]`` is true if it stops within
    ``success_distance`` of the goal). Truncated after ``max_episode_steps`` (500 by default,
    from the registration).

    ## Info
    The keys of ``PersistentWorld-v0``'s info, so the two envs swap: ``intrinsics`` (3, 3)
    float32, ``distance_to_goal`` (the geodesic distance, metres), ``collided``, ``success``,
    ``spl`` (success weighted by path length, Anderson et al. 2018; 0 until the episode ends),
    ``position`` (3,), ``yaw``, ``goal`` (3,), ``scene``.

    ## Arguments
    ``scene`` a scene id (``"house-train-0003"``) or ``.glb`` path, fixed for every episode; when
    ``None`` each reset draws one of the first ``num_scenes`` scenes of ``split``.
    ``width``, ``height``, ``hfov_deg``, ``max_depth``, ``sensor_height``, ``forward_step_m``,
    ``turn_step_deg``, ``agent_radius``, ``agent_height``, ``up_axis`` (``"z"`` for Habitat's
    MP3D / HM3D files; ``None`` reads a Habitat stage config beside the file, else y) as
    :class:`SimulatorConfig`; ``success_distance`` (0.2 m), ``min_goal_distance`` (1.0 m),
    ``backend`` (``"embedded"`` or ``"habitat"``), ``render_mode`` (``None`` or ``"rgb_array"``),
    ``action_type`` (``"discrete"`` or ``"waypoint"``, :data:`ACTION_TYPES`).

    ## Version History
    * v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        scene: str | Path | None = None,
        split: str = "train",
        num_scenes: int = 20,
        width: int = 128,
        height: int = 128,
        hfov_deg: float = 90.0,
        max_depth: float = 10.0,
        sensor_height: float = 1.25,
        forward_step_m: float = 0.25,
        turn_step_deg: float = 10.0,
        agent_radius: float = 0.1,
        agent_height: float = 1.5,
        success_distance: float = SUCCESS_RADIUS_M,
        min_goal_distance: float = 1.0,
        backend: str = "embedded",
        render_mode: str | None = None,
        up_axis: str | None = None,
        action_type: str = "discrete",
    ) -> None:
        from envs.embedded.scenes import SPLITS

        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
        if success_distance <= 0:
            raise ValueError(f"success_distance must be > 0 metres, got {success_distance}")
        if min_goal_distance < 0:
            raise ValueError(f"min_goal_distance must be >= 0 metres, got {min_goal_distance}")
        self.config = SimulatorConfig(
            width=width,
            height=height,
            hfov_deg=hfov_deg,
            max_depth=max_depth,
            sensor_height=sensor_height,
            forward_step_m=forward_step_m,
            turn_step_deg=turn_step_deg,
            agent_radius=agent_radius,
            agent_height=agent_height,
            up_axis=up_axis,
        )
        self.render_mode = render_mode
        self.observation_space = observation_space(self.config)
        self.action_space = action_space(action_type)
        self.action_type = action_type
        self._fixed_scene = None if scene is None else str(scene)
        self._split = split
        self._num_scenes = num_scenes
        self._success_distance = success_distance
        self._min_goal_distance = min_goal_distance
        self._backend = backend
        self._sim: GroundTruthSimulator | None = None
        self._goal = np.zeros(3)
        self._last_observation: dict[str, np.ndarray] | None = None

    @property
    def sim(self) -> GroundTruthSimulator:
        """The underlying ground-truth simulator (created on first use)."""
        if self._sim is None:
            self._sim = make_simulator(self.config, self._backend)
        return self._sim

    @property
    def goal(self) -> np.ndarray:
        """(3,) goal floor position of the current episode."""
        return self._goal.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; see the class docstring for ``options``."""
        super().reset(seed=seed)
        options = reset_options(options)
        unknown = set(options) - {"scene", "start", "goal"}
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}: allowed are 'scene', 'start', 'goal'"
            )
        sim = self.sim
        sim.load_scene(self._choose_scene(options.get("scene")))
        position, yaw = self._choose_start(options.get("start"))
        sim.reset_agent(position, yaw)
        self._goal = self._choose_goal(options.get("goal"), position)
        self._shortest = sim.geodesic_distance(position, self._goal)
        self._distance = self._shortest
        self._path_length = 0.0
        self._last_observation = sim.observe()
        check_pose_bound(self._last_observation["pose"][:3, 3], "the start camera's coordinates")
        return self._last_observation, self._info(collided=False, success=False, done=False)

    def _choose_scene(self, scene: str | Path | None) -> str:
        from envs.embedded.scenes import scene_ids

        if scene is not None:
            return str(scene)
        if self._fixed_scene is not None:
            return self._fixed_scene
        index = int(self.np_random.integers(self._num_scenes))
        return scene_ids(self._split, index + 1)[index]

    def _choose_start(self, start: Any) -> tuple[np.ndarray, float]:
        if start is None:
            position = self.sim.sample_navigable_point(self.np_random)
            return position, float(self.np_random.uniform(-np.pi, np.pi))
        if isinstance(start, dict):
            position, yaw = start.get("position"), start.get("yaw", 0.0)
        else:
            values = np.asarray(start, dtype=np.float64).reshape(-1)
            if values.shape != (4,):
                raise ValueError(
                    f"start must be (x, y, z, yaw) or {{'position': (x, y, z), 'yaw': yaw}}, "
                    f"got {start!r}"
                )
            position, yaw = values[:3], float(values[3])
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (3,):
            raise ValueError(f"start position must be (x, y, z), got {position!r}")
        if not self.sim.is_navigable(position):
            raise ValueError(
                f"start position {position.round(3).tolist()} is not on the navigable area of "
                f"scene {self.sim.scene_id!r}"
            )
        return position, float(yaw)

    def _choose_goal(self, goal: Any, start: np.ndarray) -> np.ndarray:
        sim = self.sim
        if goal is not None:
            goal = np.asarray(goal, dtype=np.float64)
            if goal.shape != (3,):
                raise ValueError(f"goal must be a floor position (x, y, z), got {goal!r}")
            if not sim.is_navigable(goal):
                raise ValueError(
                    f"goal {goal.round(3).tolist()} is not on the navigable area of scene "
                    f"{sim.scene_id!r}"
                )
            if not np.isfinite(sim.geodesic_distance(start, goal)):
                raise ValueError(f"goal {goal.round(3).tolist()} is not reachable from the start")
            return goal
        best, best_distance = start, 0.0
        for _ in range(100):
            candidate = sim.sample_navigable_point(self.np_random)
            distance = sim.geodesic_distance(candidate, start)  # one field (the start's) serves all
            if np.isfinite(distance) and distance >= self._min_goal_distance:
                return candidate
            if np.isfinite(distance) and distance > best_distance:
                best, best_distance = candidate, distance
        if best_distance == 0.0:
            raise RuntimeError(f"found no reachable goal in scene {sim.scene_id!r}")
        return best

    def step(
        self, action: int | np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply an action; see the class docstring."""
        if self._last_observation is None:
            raise RuntimeError("call reset() before step()")
        waypoint = self.action_type == "waypoint"
        action = check_waypoint(action) if waypoint else check_action(action)
        sim = self.sim
        before = sim.position
        collided = sim.move(action) if waypoint else sim.step(action)
        self._path_length += float(np.linalg.norm(sim.position - before))
        distance = sim.geodesic_distance(sim.position, self._goal)
        reward = float(self._distance - distance)
        self._distance = distance
        terminated = is_stop(action)
        success = terminated and distance <= self._success_distance
        self._last_observation = sim.observe()
        info = self._info(collided=collided, success=success, done=terminated)
        return self._last_observation, reward, terminated, False, info

    def _info(self, collided: bool, success: bool, done: bool) -> dict[str, Any]:
        # A start on the goal has a shortest path of 0: count its length as 1 nm.
        score = spl([success], [max(self._shortest, 1e-9)], [self._path_length])
        return {
            "intrinsics": self.sim.intrinsics,
            "distance_to_goal": float(self._distance),
            "collided": bool(collided),
            "success": bool(success),
            "spl": score if done else 0.0,
            "position": self.sim.position,
            "yaw": float(self.sim.yaw),
            "goal": self._goal.copy(),
            "scene": self.sim.scene_id,
        }

    def render(self) -> np.ndarray | None:
        """The current RGB frame (uint8 (H, W, 3)) in ``rgb_array`` mode, else ``None``."""
        if self.render_mode != "rgb_array" or self._last_observation is None:
            return None
        return self._last_observation["rgb"].copy()
