"""What ``PersistentWorld-v0`` and its vector env add to the learned simulator: the task.

The learned world itself (model, memory, sampler, each episode's context window, map, noise and
walls) is :class:`worldsim.simulator.learned.LearnedSimulator`, the same object planners imagine
in. :class:`LearnedWorld` adds what makes it a navigation env: the ground-truth env that renders
scene starts, few-shot starts from a user's frames, goals, rewards and ``info``. An
:class:`Episode` is one row: its :class:`~worldsim.simulator.learned.EpisodeState` plus the task's
state. Both envs run the same code on their rows: :meth:`LearnedWorld.step` advances any set of
episodes with one :meth:`LearnedSimulator.step` call.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from envs.indoor_nav import (
    IndoorNavEnv,
    action_space,
    check_pose_bound,
    check_waypoint,
    is_stop,
    reset_options,
)
from envs.simulator import SimulatorConfig, check_action
from worldsim.data import frames_to_tensors
from worldsim.devices import check_device
from worldsim.geometry import (
    check_rigid,
    pose_from_position_yaw,
    position_yaw_from_pose,
)
from worldsim.memory import Memory
from worldsim.memory.base import check_intrinsics
from worldsim.metrics.task import spl
from worldsim.models.world_model import WorldModel
from worldsim.simulator.checkpoints import load_learned_simulator
from worldsim.simulator.collision import MapCollisionConfig
from worldsim.simulator.learned import EpisodeState, row_generators
from worldsim.simulator.protocol import RolloutStart

RESET_OPTIONS = ("scene", "start", "goal", "frames")
"""Keys ``reset(options=...)`` accepts."""
FRAME_KEYS = ("rgb", "depth", "pose", "intrinsics")
"""Keys of few-shot ``frames``."""
_GROUND_TRUTH_SEED_HIGH = 2**31 - 1
"""Seeds of the ground-truth start sampler are drawn from ``[0, 2**31 - 1)``."""


@dataclass
class Episode:
    """One episode of ``PersistentWorld-v0`` (one row of a batch).

    Attributes:
        rng: the row's numpy random source (derives the noise generator at each reset).
        state: the learned world's state of the row (context, map, noise, walls).
        goal: (3,) float64 goal floor position, NaN without a goal.
        distance: Euclidean distance from the integrated position to the goal, metres (NaN).
        scene: ground-truth scene id of a scene start, ``None`` for few-shot frames.
        observation: the last observation returned.
        options: the options of the last explicit reset (reused by autoresets).
        steps: steps taken in this episode.
        done: the episode has ended (terminated or truncated).
        start_distance: ``distance`` at the start, metres (the shortest path in free space).
        path_length: floor distance the integrated pose has moved, metres.
    """

    rng: np.random.Generator
    state: EpisodeState
    goal: np.ndarray
    distance: float
    scene: str | None
    observation: dict[str, np.ndarray]
    options: dict[str, Any] | None
    steps: int = 0
    done: bool = False
    start_distance: float = math.nan
    path_length: float = 0.0

    @property
    def pose(self) -> Tensor:
        """(4, 4) float64 current ``cam_to_world``."""
        return self.state.pose

    @property
    def memory(self) -> Memory | None:
        """The episode's map (one row), or ``None``."""
        return self.state.memory


class LearnedWorld:
    """What the single and the vector env share: the model, the memory and the ground truth.

    Args:
        checkpoint, memory, device, num_sampling_steps, width, height: see
            :class:`PersistentWorldEnv`.
        ground_truth: keyword arguments of the ground-truth :class:`IndoorNavEnv` that renders
            scene starts (its sensor comes from the model).
        collisions: the walls of each episode's observed frames block its moves
            (:mod:`worldsim.simulator.collision`, with the ground truth's body); needs a
            :class:`~worldsim.memory.RenderedMemory`.
        action_type: ``"discrete"`` ids or ``"waypoint"`` ``(dx, dz, dyaw)`` actions
            (:func:`envs.indoor_nav.action_space`).
    """

    def __init__(
        self,
        checkpoint: str | Path | WorldModel | None,
        memory: str | dict[str, Any] | Memory | None,
        device: str | torch.device | None,
        num_sampling_steps: int | None,
        width: int | None,
        height: int | None,
        sensor_height: float,
        success_distance: float,
        ground_truth: dict[str, Any],
        collisions: bool = False,
        action_type: str = "discrete",
    ) -> None:
        self.action_space = action_space(action_type)  # refuses an unknown type first
        self.action_type = action_type
        if num_sampling_steps is not None and num_sampling_steps < 1:
            raise ValueError(f"num_sampling_steps must be >= 1 or None, got {num_sampling_steps}")
        if not success_distance > 0:
            raise ValueError(f"success_distance must be > 0 metres, got {success_distance}")
        if device is not None:
            check_device(device, "device")
        ground_truth = dict(ground_truth)
        agent_radius = ground_truth.pop("agent_radius")
        agent_height = ground_truth.pop("agent_height")
        up_axis = ground_truth.pop("up_axis", None)
        body = MapCollisionConfig(
            agent_radius=agent_radius, agent_height=agent_height, sensor_height=sensor_height
        )
        self.simulator = load_learned_simulator(
            checkpoint, device, memory, num_inference_steps=num_sampling_steps
        )
        if collisions:
            if self.simulator.memory is None or not self.simulator.memory.gives_render:
                memory = self.simulator.memory
                kind = None if memory is None else type(memory).__name__
                raise ValueError(
                    "collisions=True needs the walls of a map of points: a rendered memory "
                    f"(memory='rendered'), got {kind}"
                )
            self.simulator.collisions = body
        self.model, self.memory = self.simulator.model, self.simulator.memory
        config = self.model.config
        for name, requested in (("width", width), ("height", height)):
            if requested is not None and requested != getattr(config, name):
                raise ValueError(
                    f"{name}={requested} was requested but the checkpoint generates frames of "
                    f"{config.width}x{config.height} pixels (width x height); leave {name} unset "
                    "or use a checkpoint trained at that size"
                )
        self.success_distance = success_distance
        self.sensor_height = sensor_height
        self.config = SimulatorConfig(
            width=config.width,
            height=config.height,
            hfov_deg=config.hfov_deg,
            max_depth=config.max_depth_m,
            sensor_height=sensor_height,
            forward_step_m=config.forward_step_m,
            turn_step_deg=config.turn_step_deg,
            agent_radius=agent_radius,
            agent_height=agent_height,
            up_axis=up_axis,
        )
        self._ground_truth_settings = ground_truth
        self._ground_truth: IndoorNavEnv | None = None

    @property
    def ground_truth(self) -> IndoorNavEnv:
        """The ground-truth env that renders scene starts (created on first use)."""
        if self._ground_truth is None:
            keywords = inspect.signature(IndoorNavEnv).parameters
            # The env's sensor keywords are fields of the config: hand over those it takes.
            sensor = {k: v for k, v in asdict(self.config).items() if k in keywords}
            self._ground_truth = IndoorNavEnv(
                **sensor,
                success_distance=self.success_distance,
                **self._ground_truth_settings,
            )
        return self._ground_truth

    # ----------------------------------------------------------------------------- reset

    def reset(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Episode:
        """Start an episode from a scene or from few-shot frames (see the env docstring)."""
        options = reset_options(options)
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown reset options {unknown}: allowed are {list(RESET_OPTIONS)} "
                "('frames' for few-shot frames, or 'scene' / 'start' for a ground-truth start)"
            )
        # Both seeds are drawn whatever the start, so a row's stream does not depend on it.
        ground_truth_seed = int(rng.integers(_GROUND_TRUTH_SEED_HIGH))
        generator = row_generators(1, rng)[0]
        if "frames" in options:
            clash = sorted({"scene", "start"} & set(options))
            if clash:
                raise ValueError(
                    f"reset options {clash} cannot be combined with 'frames': start either from "
                    "few-shot frames or from a ground-truth scene"
                )
            frames, observation = self._few_shot_frames(options["frames"])
            goal, scene = _goal(options.get("goal")), None
        else:
            gt_options = {key: options[key] for key in ("scene", "start", "goal") if key in options}
            observation, info = self.ground_truth.reset(seed=ground_truth_seed, options=gt_options)
            position = torch.as_tensor(info["position"], dtype=torch.float64)
            pose = pose_from_position_yaw(
                position, torch.tensor(info["yaw"], dtype=torch.float64), self.sensor_height
            )
            frames = frames_to_tensors(
                {
                    "rgb": observation["rgb"][None],
                    "depth": observation["depth"][None],
                    "cam_to_world": observation["pose"][None],
                    "intrinsics": info["intrinsics"][None],
                }
            )
            frames["cam_to_world"] = pose[None]  # exact, float64
            goal, scene = np.asarray(info["goal"], dtype=np.float64), info["scene"]
            observation = {key: value.copy() for key, value in observation.items()}
        state = self.simulator.start(
            frames["rgb"],
            frames["depth"],
            frames["cam_to_world"],
            frames["intrinsics"],
            generator,
        )
        episode = Episode(
            rng=rng,
            state=state,
            goal=goal,
            distance=math.nan,
            scene=scene,
            observation=observation,
            options=options,
        )
        episode.distance = episode.start_distance = self._distance(episode, episode.pose)
        return episode

    def _few_shot_frames(self, frames: Any) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
        """Validate few-shot frames; return them as tensors and the last one as observation."""
        if not isinstance(frames, dict):
            raise ValueError(
                f"options['frames'] must be a dict with keys {list(FRAME_KEYS)}, got "
                f"{type(frames).__name__}"
            )
        unknown = sorted(set(frames) - set(FRAME_KEYS))
        if unknown:
            raise ValueError(
                f"unknown keys {unknown} in options['frames']: allowed are {list(FRAME_KEYS)}"
            )
        if frames.get("pose") is None:
            raise ValueError(
                "few-shot frames need their camera poses: options['frames']['pose'] as (T, 4, 4) "
                "cam_to_world matrices (world y up, OpenCV camera axes)"
            )
        if frames.get("rgb") is None:
            raise ValueError("few-shot frames need options['frames']['rgb'], (T, H, W, 3) uint8")
        height, width = self.config.height, self.config.width
        rgb = np.asarray(frames["rgb"])
        if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[0] < 1 or rgb.shape[3] != 3:
            raise ValueError(
                f"frames['rgb'] must be (T, H, W, 3) uint8 with T >= 1, got {rgb.dtype} {rgb.shape}"
            )
        count = rgb.shape[0]
        if rgb.shape[1:3] != (height, width):
            raise ValueError(
                f"frames['rgb'] are {rgb.shape[2]}x{rgb.shape[1]} pixels (W x H) but the world "
                f"model works at {width}x{height}; resize the frames (and scale the intrinsics)"
            )
        needs_depth = self.model.config.use_depth or self.memory is not None
        depth = frames.get("depth")
        if depth is None:
            if needs_depth:
                raise ValueError(
                    f"few-shot frames need frames['depth'], ({count}, {height}, {width}, 1) "
                    "float32 metres: the model is RGB-D or the memory unprojects depth"
                )
            depth = np.zeros((count, height, width, 1), dtype=np.float32)
        depth = np.asarray(depth)
        if depth.shape != (count, height, width, 1) or not np.issubdtype(depth.dtype, np.floating):
            raise ValueError(
                f"frames['depth'] must be float ({count}, {height}, {width}, 1) metres to match "
                f"frames['rgb'] {rgb.shape}, got {depth.dtype} {depth.shape}"
            )
        max_depth = self.config.max_depth
        if not np.isfinite(depth).all() or depth.min() < 0 or depth.max() > max_depth:
            raise ValueError(
                f"frames['depth'] must be finite metres in [0, {max_depth}] (0 = no hit), got "
                f"[{np.nanmin(depth):.4g}, {np.nanmax(depth):.4g}]"
            )
        pose = np.asarray(frames["pose"], dtype=np.float64)
        if pose.shape != (count, 4, 4):
            raise ValueError(
                f"frames['pose'] must be ({count}, 4, 4) cam_to_world, one per frame, got "
                f"{pose.shape}"
            )
        pose_tensor = torch.from_numpy(pose)
        check_rigid(pose_tensor, "frames['pose']")
        check_pose_bound(pose[:, :3, 3], "frames['pose'] positions")
        intrinsics = frames.get("intrinsics")
        intrinsics = self.config.intrinsics if intrinsics is None else np.asarray(intrinsics)
        if intrinsics.shape != (3, 3):
            raise ValueError(f"frames['intrinsics'] must be (3, 3) K, got {intrinsics.shape}")
        check_intrinsics(torch.as_tensor(intrinsics, dtype=torch.float64), "frames['intrinsics']")
        tensors = frames_to_tensors(
            {
                "rgb": rgb,
                "depth": depth.astype(np.float32),
                "cam_to_world": pose,
                "intrinsics": np.repeat(np.asarray(intrinsics, np.float32)[None], count, axis=0),
            }
        )
        tensors["cam_to_world"] = pose_tensor
        observation = {
            "rgb": rgb[-1].copy(),
            "depth": depth[-1].astype(np.float32),
            "pose": pose[-1].astype(np.float32),
        }
        return tensors, observation

    # ----------------------------------------------------------------------------- step

    def check_action(self, action: Any) -> int | np.ndarray:
        """One action of this env's action type, checked (an id, or a (3,) waypoint)."""
        return check_waypoint(action) if self.action_type == "waypoint" else check_action(action)

    def step(
        self,
        episodes: list[Episode],
        actions: list[int | np.ndarray],
        batch_size: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Advance every episode by its action; moving rows share one model call.

        Args:
            episodes: the rows to step (not done).
            actions: one action per row, checked by :meth:`check_action`.
            batch_size: most rows per model call; ``None`` = all moving rows in one call.

        Returns:
            ``(reward, terminated)`` per row; each episode's observation and state are updated.
        """
        poses = [episode.pose for episode in episodes]  # before the step
        motions = [
            torch.as_tensor(action, dtype=torch.float32)
            if isinstance(action, np.ndarray)
            else action
            for action in actions
        ]
        views = self.simulator.step([episode.state for episode in episodes], motions, batch_size)
        results = []
        for episode, action, view, pose in zip(episodes, actions, views, poses, strict=True):
            if view is not None:
                self._observe(episode, *view, pose)
            episode.steps += 1
            before = episode.distance
            episode.distance = self._distance(episode, episode.pose)
            reward = 0.0 if math.isnan(before) else float(before - episode.distance)
            results.append((reward, is_stop(action)))
        return results

    def _observe(
        self, episode: Episode, rgb: Tensor, depth: Tensor, pose: Tensor, before: Tensor
    ) -> None:
        """Make a generated view the episode's observation and add its move to the path."""
        moved = (pose[:3, 3] - before[:3, 3])[[0, 2]]  # floor-plane displacement
        episode.path_length += float(torch.linalg.norm(moved))
        colour = (rgb * 255.0).round().to(torch.uint8)  # the decoder clips RGB to [0, 1]
        episode.observation = {
            "rgb": rearrange(colour, "c h w -> h w c").numpy(),
            "depth": rearrange(depth, "c h w -> h w c").numpy().astype(np.float32),
            "pose": pose.numpy().astype(np.float32),
        }

    def _distance(self, episode: Episode, pose: Tensor) -> float:
        position, _ = position_yaw_from_pose(pose, self.sensor_height)
        return float(np.linalg.norm(position.numpy() - episode.goal))

    def info(self, episode: Episode, terminated: bool = False) -> dict[str, Any]:
        """The info dict of an episode's current state (see the env docstring)."""
        position, yaw = position_yaw_from_pose(episode.pose, self.sensor_height)
        success = terminated and episode.distance <= self.success_distance
        score = 0.0
        if terminated and not math.isnan(episode.start_distance):
            # The free-space shortest path is the straight line; a start on the goal counts 1 nm.
            shortest = max(episode.start_distance, 1e-9)
            score = spl([success], [shortest], [episode.path_length])
        return {
            "intrinsics": episode.state.intrinsics.numpy().copy(),
            "distance_to_goal": float(episode.distance),
            "collided": episode.state.collided,  # only with collisions: else free-space motion
            "success": bool(success),
            "spl": score,
            "position": position.numpy(),
            "yaw": float(yaw),
            "goal": episode.goal.copy(),
            "scene": episode.scene,
        }

    def rollout_start(self, episode: Episode) -> RolloutStart:
        """An episode's current state as a one-row planner start (its memory copied)."""
        return self.simulator.start_of(episode.state, episode.scene)


def _goal(goal: Any) -> np.ndarray:
    """A (3,) goal floor position, or NaN for none."""
    if goal is None:
        return np.full(3, np.nan)
    goal = np.asarray(goal, dtype=np.float64)
    if goal.shape != (3,) or not np.isfinite(goal).all():
        raise ValueError(f"goal must be a finite floor position (x, y, z) in metres, got {goal!r}")
    return goal
