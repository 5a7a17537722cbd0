"""``PersistentWorld-v0``: the learned simulator as a Gymnasium environment, single and batched.

The dynamics are the world model (:class:`~worldsim.models.world_model.WorldModel`), conditioned on
a persistent memory (:mod:`worldsim.memory`) that lives for the whole episode. The spaces are those
of the ground-truth ``IndoorNav-v0`` (:func:`envs.indoor_nav.observation_space`), so a policy or a
planner moves between the two without change.

:class:`PersistentWorldEnv` is one episode at a time; :class:`PersistentWorldVectorEnv`
(``gym.make_vec("PersistentWorld-v0", num_envs=N)``) steps N episodes with one batched model call
per step. Both run the same code on their rows, and a row's noise comes from its own generator,
so sub-env ``i`` of a vector env reset with ``seed`` sees what a single env reset with
``seed + i`` sees (up to floating-point rounding of batched matrix products).

The world model, its default memory and its sampler come from a checkpoint folder
(:mod:`worldsim.simulator.checkpoints`: ``config.json``, safetensors weights, an optional
``memory.json`` and an optional ``sampler_config.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.indoor_nav import observation_space, reset_options
from envs.learned_world import Episode, LearnedWorld
from worldsim.geometry import DEFAULT_SENSOR_HEIGHT_M
from worldsim.memory import Memory
from worldsim.metrics.task import SUCCESS_RADIUS_M
from worldsim.models.world_model import WorldModel
from worldsim.simulator.protocol import RolloutStart

# ================================================================================= envs


class PersistentWorldEnv(gym.Env):
    """Point-goal navigation inside the learned simulator, with a persistent 3D memory.

    ## Description
    The world model plays the simulator: every step it generates the RGB-D view after the
    action, conditioned on the last frames and on the tokens of a memory that persists through
    the episode (paper Algorithm 1a). Each generated frame is unprojected into the memory, so a
    place seen earlier in the episode (or in the few-shot frames) shapes how it looks when the
    agent comes back. Spaces are those of ``IndoorNav-v0``.

    ## Action Space
    ``Discrete(4)``, as Habitat: ``0`` stop, ``1`` move forward, ``2`` turn left, ``3`` turn
    right, with the step sizes the model was trained with (``forward_step_m``,
    ``turn_step_deg`` of its config). Any other value raises ``ValueError``. With
    ``action_type="waypoint"``, ``IndoorNav-v0``'s ``Box(3)`` of local waypoints ``(dx, dz,
    dyaw)`` (the zero waypoint is ``stop``): the model imagines the camera moved by the waypoint's
    relative pose (:func:`worldsim.geometry.waypoint_to_relative_pose`, the conversion the
    planners use); waypoints far from the model's training steps are extrapolation.

    Actions and chunks: the model generates chunks of ``n_future`` frames, one per action. Each
    step generates one chunk whose first action is the step's and whose other actions are
    ``stop`` (no motion); the chunk's first frame is the observation and the only frame written
    into the memory, the rest is discarded. Every step is therefore conditioned on everything
    seen so far (no buffered frames, no look-ahead), at the price of one chunk per step; planners
    that know a whole action sequence use :class:`worldsim.simulator.learned.LearnedSimulator`,
    which spends one chunk per ``n_future`` actions. ``stop`` generates nothing.

    ## Observation Space
    ``Dict`` of ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W, 1) metric z-depth in
    ``[0, max_depth]`` metres (all 0 for an RGB-only model) and ``pose`` float32 (4, 4)
    ``cam_to_world`` (translation within 1 km per axis, :func:`envs.indoor_nav.pose_space`), at
    the model's frame size (:func:`envs.indoor_nav.observation_space`).

    ## Rewards
    A learned world knows no walls: the pose integrates each action's free-space motion and no
    move is blocked (``info["collided"]`` is false), unless ``collisions=True`` gives the agent
    the ground truth's body: then the walls of the episode's observed frames (the start, or the
    few-shot frames) block its moves, which slide or stop as in ``IndoorNav-v0``, and
    ``info["collided"]`` says when (:mod:`worldsim.simulator.collision`). The reward is the decrease
    of the Euclidean distance from the integrated floor position to the goal, metres; 0 on ``stop``
    and for episodes without a goal.

    ## Starting State
    ``reset(seed=..., options=...)`` starts in one of two ways:

    - *ground-truth scene* (default): ``{"scene": id_or_glb, "start": (x, y, z, yaw) or
      {"position": ..., "yaw": ...}, "goal": (x, y, z)}``, each optional and sampled as in
      ``IndoorNav-v0`` when missing. The ground-truth simulator renders the start view, which is
      the first observation, the model's context (repeated: the agent stood still) and the first
      frame in the memory.
    - *few-shot frames of an unseen scene*: ``{"frames": {"rgb": (T, H, W, 3) uint8, "depth":
      (T, H, W, 1) float32 metres, "pose": (T, 4, 4) cam_to_world, "intrinsics": (3, 3)},
      "goal": (x, y, z)}``. All T frames initialise the memory; the last ones are the context
      and the last one is the first observation. ``intrinsics`` default to the model's camera,
      ``depth`` is needed by RGB-D models and memories, ``goal`` is optional.

    Unknown options, ``frames`` combined with ``scene`` / ``start``, frames without poses and
    frames or depth of another size raise ``ValueError``.

    ## Episode End
    Terminated when the agent takes ``stop``; ``info["success"]`` is true if it stops within
    ``success_distance`` of the goal (by the integrated pose). Truncated after
    ``max_episode_steps`` (500 by default, from the registration).

    ## Info
    The keys of ``IndoorNav-v0``'s info, so the two envs swap: ``intrinsics`` (3, 3) float32,
    ``distance_to_goal`` (straight-line floor distance from the integrated position, metres; NaN
    without a goal), ``collided`` (false unless ``collisions`` and a wall blocked the step),
    ``success``, ``spl`` (with the straight line as shortest path and the integrated path; 0
    until the episode ends), ``position`` (3,) integrated floor position, ``yaw`` radians,
    ``goal`` (3,) (NaN without a goal), ``scene`` (the ground-truth scene of a scene start, else
    ``None``).

    ## Arguments
    ``checkpoint``: a ``WorldModel.save_pretrained`` folder or a ready ``WorldModel``; ``None``
    loads the shipped default checkpoint; ``"tiny-untrained"`` an untrained tiny model (32x32
    frames, a cheap memory) for smoke tests, e.g. ``gym.make("PersistentWorld-v0",
    checkpoint="tiny-untrained", num_sampling_steps=2)``. ``memory``: see
    :func:`worldsim.simulator.checkpoints.resolve_memory` (``"none"`` runs the model without
    memory).
    ``device``: torch device of the model and the memory (default: where the model is; the CPU for a
    loaded checkpoint). ``num_sampling_steps``: DDIM steps per chunk (default: the checkpoint's
    ``sampler_config.json``, :class:`worldsim.simulator.sampler.SamplerConfig`).
    ``width``, ``height``: the requested frame size, which must be the checkpoint's (``ValueError``
    otherwise). ``scene``, ``split``, ``num_scenes``, ``min_goal_distance``, ``backend``,
    ``agent_radius``, ``agent_height``: the ground-truth starts, as ``IndoorNav-v0``.
    ``sensor_height``: camera height above the floor, metres (positions in ``info``).
    ``success_distance`` (0.2 m). ``collisions``: observed walls block moves (a rendered
    memory only; ``ValueError`` otherwise). ``render_mode``: ``None`` or ``"rgb_array"``.
    ``up_axis``: the up axis of a scene file the ground truth loads, as ``IndoorNav-v0``
    (``"z"`` for Habitat's files). ``action_type``: ``"discrete"`` or ``"waypoint"``.

    ## Version History
    * v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        checkpoint: str | Path | WorldModel | None = None,
        memory: str | dict[str, Any] | Memory | None = None,
        device: str | torch.device | None = None,
        num_sampling_steps: int | None = None,
        width: int | None = None,
        height: int | None = None,
        scene: str | Path | None = None,
        split: str = "train",
        num_scenes: int = 20,
        sensor_height: float = DEFAULT_SENSOR_HEIGHT_M,
        agent_radius: float = 0.1,
        agent_height: float = 1.5,
        success_distance: float = SUCCESS_RADIUS_M,
        min_goal_distance: float = 1.0,
        backend: str = "embedded",
        collisions: bool = False,
        render_mode: str | None = None,
        up_axis: str | None = None,
        action_type: str = "discrete",
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.world = LearnedWorld(
            checkpoint,
            memory,
            device,
            num_sampling_steps,
            width,
            height,
            sensor_height,
            success_distance,
            dict(
                scene=scene,
                split=split,
                num_scenes=num_scenes,
                min_goal_distance=min_goal_distance,
                backend=backend,
                agent_radius=agent_radius,
                agent_height=agent_height,
                up_axis=up_axis,
            ),
            collisions,
            action_type,
        )
        self.render_mode = render_mode
        self.observation_space = observation_space(self.world.config)
        self.action_space = self.world.action_space
        self._episode: Episode | None = None

    @property
    def model(self) -> WorldModel:
        """The world model that plays the simulator."""
        return self.world.model

    @property
    def memory(self) -> Memory | None:
        """The current episode's memory (one row), or ``None``."""
        return None if self._episode is None else self._episode.memory

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; see the class docstring for ``options``."""
        super().reset(seed=seed)
        self._episode = self.world.reset(self.np_random, options)
        return _copy(self._episode.observation), self.world.info(self._episode)

    def step(
        self, action: int | np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Generate the view after ``action``; see the class docstring."""
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        action = self.world.check_action(action)
        [(reward, terminated)] = self.world.step([self._episode], [action])
        info = self.world.info(self._episode, terminated)
        return _copy(self._episode.observation), reward, terminated, False, info

    def rollout_start(self) -> RolloutStart:
        """The current state as a one-row start for the planners' rollout protocol.

        Returns:
            The context frames, their poses, the intrinsics, the scene (``None`` for few-shot
            starts) and a copy of the memory; ``agent_state`` is ``None`` (the integrated pose
            is not the ground truth).
        """
        if self._episode is None:
            raise RuntimeError("call reset() before rollout_start()")
        return self.world.rollout_start(self._episode)

    def render(self) -> np.ndarray | None:
        """The generated RGB frame, uint8 (H, W, 3), in ``rgb_array`` mode; else ``None``."""
        if self.render_mode != "rgb_array" or self._episode is None:
            return None
        return self._episode.observation["rgb"].copy()


class PersistentWorldVectorEnv(VectorEnv):
    """N ``PersistentWorld-v0`` episodes stepped together, one batched model call per step.

    Every row behaves as a :class:`PersistentWorldEnv` (same spaces, rewards, options and info),
    with its own random stream and memory; the rows that move in a step share one world-model
    call. ``reset(seed=s)`` seeds row ``i`` with ``s + i`` (a list seeds each row), as Gymnasium's
    vector envs do, so row ``i`` matches a single env reset with ``seed=s + i``.

    Autoreset: ``next-step`` (Gymnasium's default): the step after a row's episode ended resets
    it (its action is ignored, its reward is 0) with the options of that row's last explicit
    reset. ``reset(options=...)`` applies the same options to every row; ``options["reset_mask"]``
    ((N,) bool) resets only those rows.

    Args:
        num_envs: N, >= 1.
        max_episode_steps: steps after which an episode is truncated; ``None`` for never (the
            registration passes 500).
        batch_size: most rows per world-model call; ``None`` (default) steps all N rows in one
            call, the fastest on a GPU. On a CPU, calls of a few rows can be faster for large
            models (``benchmarks/bench_persistent_world.py`` measures it); results do not depend
            on it (up to floating-point rounding).
        **kwargs: the arguments of :class:`PersistentWorldEnv`.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": 10,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.batch_size = batch_size
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        render_mode = kwargs.pop("render_mode", None)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        env = PersistentWorldEnv(**kwargs)  # validates the arguments and loads the model once
        self.world = env.world
        self.num_envs = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._episodes: list[Episode | None] = [None] * self.num_envs

    @property
    def model(self) -> WorldModel:
        """The world model shared by all rows."""
        return self.world.model

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all rows (or those of ``options["reset_mask"]``); see the class docstring."""
        seeds = self._seeds(seed)
        options = reset_options(options)
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, dtype=bool)))
        if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
            raise ValueError(
                f"options['reset_mask'] must be a ({self.num_envs},) bool array, got "
                f"{mask.dtype} {mask.shape}"
            )
        if not mask.any():
            raise ValueError("options['reset_mask'] selects no row to reset")
        if self._episodes[0] is None and not mask.all():
            raise ValueError("the first reset must reset every row (no reset_mask)")
        infos: dict[str, Any] = {}
        for row in range(self.num_envs):
            if mask[row]:
                self._reset_row(row, seeds[row], options)
            infos = self._add_info(infos, self.world.info(self._episodes[row]), row)
        return self._observations(), infos

    def _seeds(self, seed: int | list[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + row for row in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed must be an int, None or {self.num_envs} seeds, got {seed!r}")
        return seeds

    def _reset_row(self, row: int, seed: int | None, options: dict[str, Any] | None) -> None:
        if seed is not None or self._rngs[row] is None:
            self._rngs[row], _ = seeding.np_random(seed)
        self._episodes[row] = self.world.reset(self._rngs[row], options)

    def step(
        self, actions: np.ndarray | list[int]
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every row; rows whose episode ended at the last step are reset instead."""
        if self._episodes[0] is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        expected = self.action_space.shape
        if actions.shape != expected:
            what = "action ids" if self.world.action_type == "discrete" else "waypoints"
            raise ValueError(
                f"actions must be {expected} {what}, one per row, got shape {actions.shape}"
            )
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        ended = [episode.done for episode in self._episodes]
        stepping = [
            (row, self.world.check_action(actions[row]))
            for row in range(self.num_envs)
            if not ended[row]
        ]
        for row in range(self.num_envs):
            if ended[row]:
                self._reset_row(row, None, self._episodes[row].options)
        results = self.world.step(
            [self._episodes[row] for row, _ in stepping],
            [action for _, action in stepping],
            self.batch_size,
        )
        finished = {}
        for (row, _), (reward, ended) in zip(stepping, results, strict=True):
            episode = self._episodes[row]
            rewards[row], terminated[row] = reward, ended
            limit = self.max_episode_steps
            truncated[row] = not ended and limit is not None and episode.steps >= limit
            episode.done = bool(terminated[row] or truncated[row])
            finished[row] = ended
        infos: dict[str, Any] = {}
        for row in range(self.num_envs):
            info = self.world.info(self._episodes[row], finished.get(row, False))
            infos = self._add_info(infos, info, row)
        return self._observations(), rewards, terminated, truncated, infos

    def _observations(self) -> dict[str, np.ndarray]:
        return {
            key: np.stack([episode.observation[key] for episode in self._episodes])
            for key in ("rgb", "depth", "pose")
        }

    def rollout_start(self, row: int) -> RolloutStart:
        """Row ``row``'s current state as a one-row planner start (see the single env)."""
        if not 0 <= row < self.num_envs:
            raise IndexError(f"row must be in [0, {self.num_envs}), got {row}")
        if self._episodes[row] is None:
            raise RuntimeError("call reset() before rollout_start()")
        return self.world.rollout_start(self._episodes[row])

    def render(self) -> tuple[np.ndarray, ...] | None:
        """Each row's current generated RGB frame in ``rgb_array`` mode, else ``None``."""
        if self.render_mode != "rgb_array" or self._episodes[0] is None:
            return None
        return tuple(episode.observation["rgb"].copy() for episode in self._episodes)


def _copy(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value.copy() for key, value in observation.items()}
