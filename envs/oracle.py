"""The ground-truth rollout: the oracle every planner is checked against first.

:class:`OracleRollout` implements :class:`worldsim.simulator.protocol.RolloutModel` with the
ground-truth simulator: for each row it places the agent at the row's start state, applies the
actions with the simulator's own dynamics (collisions included) and renders the true frames. The
simulator's scene and agent state are restored afterwards, so an oracle can share a simulator with
an environment.

Waypoint actions ``(dx, dz, dyaw)`` (the ground truth has only discrete actions) are applied as
one move and one turn: the agent moves by ``(dx, dz)`` in its current frame with the simulator's
collision handling (it slides along obstacles, never passes through them), then turns left by
``dyaw``. In free space this is exactly :func:`worldsim.geometry.waypoint_to_relative_pose`. This
needs a backend with a navigation grid (the embedded one).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from envs.backends import make_simulator
from envs.simulator import GroundTruthSimulator, SimulatorConfig, wrap_angle
from worldsim.data import frames_to_tensors
from worldsim.geometry import position_yaw_from_pose
from worldsim.simulator.protocol import RolloutResult, RolloutStart, check_rollout_request


def apply_waypoint(sim: GroundTruthSimulator, waypoint: np.ndarray) -> bool:
    """Move the simulator's agent by one local waypoint, with collisions.

    Args:
        sim: a ground-truth simulator with a scene loaded and a ``navigation`` grid.
        waypoint: (3,) ``(dx, dz, dyaw)``: metres right, metres forward, radians left.

    Returns:
        Whether the move was blocked (the agent slid along or stopped at an obstacle).

    Raises:
        ValueError: for a waypoint that is not 3 finite numbers.
        NotImplementedError: for a backend without a navigation grid.
    """
    waypoint = np.asarray(waypoint, dtype=np.float64)
    if waypoint.shape != (3,) or not np.isfinite(waypoint).all():
        raise ValueError(f"waypoint must be 3 finite numbers (dx, dz, dyaw), got {waypoint!r}")
    navigation = getattr(sim, "navigation", None)
    if navigation is None or not hasattr(navigation, "try_move"):
        raise NotImplementedError(
            f"{type(sim).__name__} has no navigation grid to move by waypoints; use discrete "
            "actions or the embedded backend"
        )
    dx, dz, dyaw = waypoint.tolist()
    yaw = sim.yaw
    # Agent frame -> world floor plane: right = (cos, -sin), forward = (-sin, -cos) in (x, z).
    displacement = np.array(
        [dx * math.cos(yaw) - dz * math.sin(yaw), -dx * math.sin(yaw) - dz * math.cos(yaw)]
    )
    position, collided = navigation.try_move(sim.position, displacement)
    sim.reset_agent(np.asarray(position, dtype=np.float64), wrap_angle(yaw + dyaw))
    return bool(collided)


class OracleRollout:
    """Rollouts in the ground-truth simulator: the true frames of every action sequence.

    Deterministic (the ``generator`` is ignored) and sequential (``batch_size`` is ignored);
    rows are processed scene by scene. Only the frames asked for are rendered (``num_frames``),
    so cost functions that look at the last frame are cheap.

    Args:
        simulator: the ground-truth simulator to use (shared; its state is restored after each
            rollout), or ``None`` to create one from ``config``.
        config: sensor settings of a new simulator; must be ``None`` when ``simulator`` is given.
        backend: backend of a new simulator (``"embedded"`` or ``"habitat"``).

    Attributes:
        image_size: ``(H, W)`` of the simulator's frames.
        max_horizon: ``None``: the ground truth has no horizon limit.
    """

    max_horizon: int | None = None

    def __init__(
        self,
        simulator: GroundTruthSimulator | None = None,
        config: SimulatorConfig | None = None,
        backend: str = "embedded",
    ) -> None:
        if simulator is not None and config is not None:
            raise ValueError("give either a simulator or a config for a new one, not both")
        self.sim = simulator if simulator is not None else make_simulator(config, backend)
        self.image_size = (self.sim.config.height, self.sim.config.width)

    # ----------------------------------------------------------------------------- starts
    def start(
        self,
        scene: str | Path | list[str | Path],
        position: np.ndarray,
        yaw: float | np.ndarray,
        num_frames: int = 1,
    ) -> RolloutStart:
        """Start states rendered by the ground truth.

        Args:
            scene: one scene id / ``.glb`` path for every row, or one per row.
            position: (3,) or (B, 3) navigable floor positions, metres.
            yaw: heading(s) in radians, scalar or (B,).
            num_frames: frames T per row; the agent has been standing still, so the current view
                is repeated T times.

        Returns:
            A start of B rows with ``scene`` and the exact ``agent_state``.

        Raises:
            ValueError: for a non-navigable position, mismatched sizes or ``num_frames < 1``.
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        positions = np.atleast_2d(np.asarray(position, dtype=np.float64))
        yaws = np.broadcast_to(np.asarray(yaw, dtype=np.float64), positions.shape[:1])
        scenes = [scene] * len(positions) if isinstance(scene, (str, Path)) else list(scene)
        if positions.shape[1:] != (3,) or len(scenes) != len(positions):
            raise ValueError(
                f"need (B, 3) positions with one scene and yaw per row, got positions "
                f"{positions.shape}, {len(scenes)} scenes, yaws {yaws.shape}"
            )
        saved = self._save()
        try:
            observations = []
            for row_scene, row_position, row_yaw in zip(scenes, positions, yaws, strict=True):
                self.sim.load_scene(row_scene)
                self.sim.reset_agent(row_position, float(row_yaw))
                observations.append(self.sim.observe())
        finally:
            self._restore(saved)
        frames = self._frames(observations)
        yaws_wrapped = np.array([wrap_angle(float(y)) for y in yaws])
        state = np.concatenate([positions, yaws_wrapped[:, None]], axis=1)
        return RolloutStart(
            rgb=frames["rgb"][:, None].repeat(1, num_frames, 1, 1, 1),
            depth=frames["depth"][:, None].repeat(1, num_frames, 1, 1, 1),
            cam_to_world=frames["cam_to_world"][:, None].repeat(1, num_frames, 1, 1),
            intrinsics=frames["intrinsics"],
            scene=tuple(str(s) for s in scenes),
            agent_state=torch.from_numpy(state),
        )

    def tour(self, scene: str | Path, steps: int, rng: np.random.Generator) -> RolloutStart:
        """An earlier walk through a house: what an agent saw there before an episode.

        The walk starts at a random navigable pose and goes from one random waypoint to the next
        by the shortest path (:class:`envs.exploration.WaypointPolicy`), ``steps`` frames in
        all. Put it into a map to give a planner a memory of the house
        (:meth:`worldsim.simulator.learned.LearnedSimulator.map_of`); the simulator's state is
        restored afterwards.

        Args:
            scene: scene id or ``.glb`` path.
            steps: frames of the walk, >= 1.
            rng: the random source of the start and the waypoints.

        Returns:
            One row of ``steps`` frames (``rgb``, ``depth``, ``cam_to_world``, ``intrinsics``,
            the ``agent_state`` of its last frame).
        """
        from envs.exploration import WaypointPolicy

        if steps < 1:
            raise ValueError(f"a tour needs steps >= 1, got {steps}")
        saved = self._save()
        try:
            self.sim.load_scene(scene)
            self.sim.reset_agent(
                self.sim.sample_navigable_point(rng), float(rng.uniform(-math.pi, math.pi))
            )
            observations = [self.sim.observe()]
            for action in WaypointPolicy().actions(self.sim, rng):
                if len(observations) == steps:
                    break
                self.sim.step(action)
                observations.append(self.sim.observe())
            state = np.array([*self.sim.position, self.sim.yaw], dtype=np.float64)
        finally:
            self._restore(saved)
        frames = self._frames(observations)
        return RolloutStart(
            rgb=frames["rgb"][None],
            depth=frames["depth"][None],
            cam_to_world=frames["cam_to_world"][None],
            intrinsics=frames["intrinsics"][:1],
            scene=(str(scene),),
            agent_state=torch.from_numpy(state)[None],
        )

    # ----------------------------------------------------------------------------- rollouts
    def rollout(
        self,
        start: RolloutStart,
        actions: Tensor,
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        num_frames: int | None = None,
    ) -> RolloutResult:
        """The ground-truth frames of each row's actions (see :class:`RolloutModel`).

        Raises:
            ValueError: for an invalid request (:func:`check_rollout_request`), a start without
                ``scene``, or a start state that is not navigable in its scene.
        """
        kind = check_rollout_request(self, start, actions, batch_size, num_frames)
        if start.scene is None:
            raise ValueError(
                "the oracle needs the ground-truth scene of each row: build the start with "
                "OracleRollout.start or give RolloutStart(scene=...)"
            )
        rows, horizon = actions.shape[:2]
        num_frames = horizon if num_frames is None else num_frames
        first_rendered = horizon - num_frames
        height, width = self.image_size
        rgb = np.zeros((rows, num_frames, height, width, 3), dtype=np.uint8)
        depth = np.zeros((rows, num_frames, height, width, 1), dtype=np.float32)
        poses = np.zeros((rows, horizon, 4, 4), dtype=np.float32)
        collided = np.zeros((rows, horizon), dtype=bool)
        states = np.zeros((rows, horizon, 4), dtype=np.float64)
        action_array = actions.detach().cpu().numpy()
        start_states = self._start_states(start)
        saved = self._save()
        try:
            for row in sorted(range(rows), key=lambda r: start.scene[r]):  # few scene switches
                self.sim.load_scene(start.scene[row])
                self.sim.reset_agent(start_states[row, :3], float(start_states[row, 3]))
                for step in range(horizon):
                    if kind == "discrete":
                        collided[row, step] = self.sim.step(int(action_array[row, step]))
                    else:
                        collided[row, step] = apply_waypoint(self.sim, action_array[row, step])
                    states[row, step, :3] = self.sim.position
                    states[row, step, 3] = self.sim.yaw
                    if step >= first_rendered:
                        observation = self.sim.observe()
                        poses[row, step] = observation["pose"]
                        rgb[row, step - first_rendered] = observation["rgb"]
                        depth[row, step - first_rendered] = observation["depth"]
                    else:
                        poses[row, step] = self.sim.camera_pose(self.sim.position, self.sim.yaw)
        finally:
            self._restore(saved)
        frames = frames_to_tensors(
            {
                "rgb": rgb.reshape(rows * num_frames, height, width, 3),
                "depth": depth.reshape(rows * num_frames, height, width, 1),
                "cam_to_world": poses[:, first_rendered:].reshape(rows * num_frames, 4, 4),
                "intrinsics": np.repeat(self.sim.intrinsics[None], rows * num_frames, axis=0),
            }
        )
        return RolloutResult(
            rgb=frames["rgb"].reshape(rows, num_frames, 3, height, width),  # (B, F, 3, H, W)
            depth=frames["depth"].reshape(rows, num_frames, 1, height, width),
            cam_to_world=torch.from_numpy(poses),
            collided=torch.from_numpy(collided),
            agent_state=torch.from_numpy(states),
        )

    def _start_states(self, start: RolloutStart) -> np.ndarray:
        """(B, 4) float64 ``(x, y, z, yaw)`` of each row: exact, or from the last camera pose."""
        if start.agent_state is not None:
            return start.agent_state.detach().cpu().double().numpy()
        position, yaw = position_yaw_from_pose(
            start.cam_to_world[:, -1].detach().cpu().double(), self.sim.config.sensor_height
        )
        return torch.cat([position, yaw[:, None]], dim=1).numpy()

    def _frames(self, observations: list[dict[str, np.ndarray]]) -> dict[str, Tensor]:
        """The simulator's observations as the tensors of :func:`frames_to_tensors`."""
        return frames_to_tensors(
            {
                "rgb": np.stack([o["rgb"] for o in observations]),
                "depth": np.stack([o["depth"] for o in observations]),
                "cam_to_world": np.stack([o["pose"] for o in observations]),
                "intrinsics": np.repeat(self.sim.intrinsics[None], len(observations), axis=0),
            }
        )

    def _save(self) -> tuple[str, np.ndarray, float] | None:
        """The simulator's scene and agent state, or ``None`` if no scene is loaded."""
        try:
            return self.sim.scene_id, self.sim.position, self.sim.yaw
        except RuntimeError:
            return None

    def _restore(self, saved: tuple[str, np.ndarray, float] | None) -> None:
        if saved is not None:
            scene_id, position, yaw = saved
            self.sim.load_scene(scene_id)
            self.sim.reset_agent(position, yaw)
