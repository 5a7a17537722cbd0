"""``PersistentWorld-v0``: the learned simulator as a Gymnasium environment, single and batched.

The dynamics are the world model (:class:`~worldsim.world_model.WorldModel`), conditioned on a
persistent memory (:mod:`worldsim.memory`) that lives for the whole episode. The spaces are those
of the ground-truth ``IndoorNav-v0`` (:func:`envs.indoor_nav.observation_space`), so a policy or a
planner moves between the two without change.

:class:`PersistentWorldEnv` is one episode at a time; :class:`PersistentWorldVectorEnv`
(``gym.make_vec("PersistentWorld-v0", num_envs=N)``) steps N episodes with one batched model call
per step. Both run the same code on their rows, and a row's noise comes from its own generator,
so sub-env ``i`` of a vector env reset with ``seed`` sees what a single env reset with
``seed + i`` sees (up to floating-point rounding of batched matrix products).

Checkpoint folders may hold a ``memory.json`` next to the model's ``config.json``: the keyword
arguments of :func:`worldsim.memory.build_memory` (``{"name": "feature_map", "encoder":
"vgg16", ...}``) describing the memory the model was trained with. It is the default memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from einops import rearrange
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from envs.indoor_nav import SUCCESS_DISTANCE_M, IndoorNavEnv, observation_space
from envs.learned_rollout import (
    WorldModelRollout,
    chain_poses,
    check_memory_fits,
    generate_chunk,
    row_generators,
    step_poses,
)
from envs.simulator import SimulatorConfig, check_action
from planners.rollout import RolloutStart
from worldsim.data import frames_to_tensors
from worldsim.geometry import (
    DEFAULT_SENSOR_HEIGHT_M,
    NUM_ACTIONS,
    Action,
    check_rigid,
    pose_from_position_yaw,
    position_yaw_from_pose,
)
from worldsim.memory import Memory, build_memory
from worldsim.memory.base import check_intrinsics
from worldsim.world_model import DEFAULT_CHECKPOINT, MEMORY_FILE, WorldModel

RESET_OPTIONS = ("scene", "start", "goal", "frames")
"""Keys ``reset(options=...)`` accepts."""
FRAME_KEYS = ("rgb", "depth", "pose", "intrinsics")
"""Keys of few-shot ``frames``."""
_GROUND_TRUTH_SEED_HIGH = 2**31 - 1
"""Seeds of the ground-truth start sampler are drawn from ``[0, 2**31 - 1)``."""


# ================================================================================= loading


def load_world_model(
    checkpoint: str | Path | WorldModel | None, device: str | torch.device | None = None
) -> tuple[WorldModel, Path | None]:
    """The world model of an environment, in eval mode.

    Args:
        checkpoint: a folder written by ``WorldModel.save_pretrained``, a ready model (used as
            is), or ``None`` for the shipped default checkpoint.
        device: where to put the model; ``None`` keeps it where it is (the CPU when loaded).

    Returns:
        ``(model, folder)``: the model and the folder it came from (``None`` for a ready model).

    Raises:
        FileNotFoundError: if the folder (or the default checkpoint) does not exist.
    """
    if isinstance(checkpoint, WorldModel):
        model, folder = checkpoint, None
    else:
        folder = DEFAULT_CHECKPOINT if checkpoint is None else Path(checkpoint)
        try:
            model = WorldModel.from_pretrained(checkpoint)
        except FileNotFoundError as error:
            if checkpoint is not None:
                raise
            raise FileNotFoundError(
                "PersistentWorld-v0 without a checkpoint loads the shipped default world model "
                f"from {str(folder)!r}, which is not installed yet: train one with "
                "examples/train_world_model.py and pass gym.make('PersistentWorld-v0', "
                "checkpoint=FOLDER)"
            ) from error
    if device is not None:
        model = model.to(device)
    return model.eval(), folder


TINY_UNTRAINED = "tiny-untrained"
"""Checkpoint name of an untrained tiny world model with a cheap memory, for smoke tests."""
TINY_UNTRAINED_MEMORY = {"name": "feature_map", "encoder": "pooled_color", "voxel_size": 0.25}
"""The memory of :data:`TINY_UNTRAINED`."""


def load_learned_simulator(
    checkpoint: str | Path | None,
    device: str | torch.device | None = None,
    memory: str | dict[str, Any] | Memory | None = None,
    turn_step_deg: float | None = None,
) -> tuple[WorldModel, Memory | None]:
    """A world model and the memory it reads, for planners and examples.

    Args:
        checkpoint: a ``WorldModel.save_pretrained`` folder, or :data:`TINY_UNTRAINED` for an
            untrained tiny model (32x32 frames) with :data:`TINY_UNTRAINED_MEMORY`.
        device: where to put the model.
        memory: as :func:`resolve_memory` (``None``: the checkpoint's ``memory.json``).
        turn_step_deg: the turn step the caller acts with; a checkpoint turning by another angle
            is refused, and the tiny model is built with it. ``None`` accepts the model's own.

    Returns:
        ``(model, memory)`` with the model in eval mode.

    Raises:
        ValueError: a checkpoint whose turn step differs from ``turn_step_deg``.
    """
    if str(checkpoint) == TINY_UNTRAINED:
        default = memory if isinstance(memory, Memory) else build_memory(**TINY_UNTRAINED_MEMORY)
        turn = {} if turn_step_deg is None else {"turn_step_deg": turn_step_deg}
        model = WorldModel.from_config_name("tiny", memory_token_dim=default.token_dim, **turn)
        model = model.to(device).eval() if device is not None else model.eval()
        return model, resolve_memory(default if memory is None else memory, model)
    model, folder = load_world_model(checkpoint, device)
    if turn_step_deg is not None and model.action_spec.turn_step_deg != turn_step_deg:
        raise ValueError(
            f"the world model turns by {model.action_spec.turn_step_deg} deg per action but "
            f"{turn_step_deg} deg was asked for; use the model's turn step"
        )
    return model, resolve_memory(memory, model, folder)


def learned_planning_rollout(
    checkpoint: str | Path | None,
    device: str | torch.device | None = None,
    memory: str | dict[str, Any] | Memory | None = None,
    turn_step_deg: float | None = None,
    num_inference_steps: int | None = None,
    size: int | None = None,
) -> WorldModelRollout:
    """The learned simulator planners imagine in, for square frames of the ground truth.

    Args:
        checkpoint: as :func:`load_learned_simulator`.
        device: as :func:`load_learned_simulator`.
        memory: as :func:`load_learned_simulator`.
        turn_step_deg: as :func:`load_learned_simulator`.
        num_inference_steps: denoising steps per chunk; the model's default if ``None``.
        size: the frame size the caller renders the ground truth at; ``None`` takes the
            model's own.

    Returns:
        The world model behind the rollout protocol; ``image_size`` is its frame size.

    Raises:
        ValueError: for a model with non-square frames, or one whose frames differ from
            ``size``.
    """
    model, memory = load_learned_simulator(checkpoint, device, memory, turn_step_deg)
    height, width = model.config.height, model.config.width
    if height != width:
        raise ValueError(f"square frames expected, the world model's are {height}x{width}")
    if size not in (None, height):
        raise ValueError(
            f"--size {size} differs from the world model's frames ({height}); leave it out"
        )
    return WorldModelRollout(model, memory, num_inference_steps=num_inference_steps)


ORACLE_TURN_STEP_DEG = 30.0
"""Turn step of planning examples with the oracle when none is asked for (coarse turns keep the
ground-truth episodes short)."""


def planning_simulator(
    planner: str,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    memory: str | dict[str, Any] | Memory | None = None,
    turn_step_deg: float | None = None,
    num_inference_steps: int | None = None,
    size: int | None = None,
) -> tuple[WorldModelRollout | None, int, float]:
    """What a planning example imagines in, at which frame size, turning by which angle.

    Args:
        planner: ``"oracle"`` (the ground truth imagines) or ``"world-model"``.
        checkpoint: the world model, as :func:`load_learned_simulator`; ``None``: the embedded
            checkpoint.
        device: as :func:`load_learned_simulator`.
        memory: as :func:`load_learned_simulator`.
        turn_step_deg: the turn step to act with; ``None``: the world model's own, or
            :data:`ORACLE_TURN_STEP_DEG` with the oracle.
        num_inference_steps: as :func:`learned_planning_rollout`.
        size: square frame size; ``None``: the world model's, or 64 with the oracle.

    Returns:
        ``(rollout, size, turn_step_deg)``: the learned rollout (``None`` for the oracle), the
        frame size and the turn step the ground truth must execute with.
    """
    if planner == "oracle":
        turn = ORACLE_TURN_STEP_DEG if turn_step_deg is None else turn_step_deg
        return None, size or 64, turn
    if planner != "world-model":
        raise ValueError(f"planner must be 'oracle' or 'world-model', got {planner!r}")
    rollout = learned_planning_rollout(
        checkpoint, device, memory, turn_step_deg, num_inference_steps, size
    )
    return rollout, rollout.image_size[0], rollout.model.action_spec.turn_step_deg


def resolve_memory(
    memory: str | dict[str, Any] | Memory | None, model: WorldModel, folder: Path | None = None
) -> Memory | None:
    """The memory prototype of an environment.

    Args:
        memory: ``None`` for the default (the checkpoint's ``memory.json`` if there is one, else
            the 3D feature map with its default settings for a model with a memory branch, else
            no memory); ``"none"`` for no memory (the model runs without map tokens, the "w/o
            memory" comparison); another name of :func:`worldsim.memory.build_memory`; a dict
            ``{"name": ..., **fields}``; or a ready :class:`~worldsim.memory.Memory`.
        model: the world model the memory conditions.
        folder: the checkpoint folder, searched for ``memory.json``.

    Returns:
        The memory (reset to one empty row on the model's device) or ``None``.

    Raises:
        ValueError: for an unknown name or field, a malformed ``memory.json``, or a memory
            that does not fit the model (:func:`envs.learned_rollout.check_memory_fits`).
        TypeError: for an argument of another type.
    """
    if memory is None:
        spec_file = None if folder is None else folder / MEMORY_FILE
        if spec_file is not None and spec_file.is_file():
            try:
                memory = json.loads(spec_file.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{str(spec_file)!r} is not valid JSON: {error}") from None
            if not isinstance(memory, dict) or "name" not in memory:
                raise ValueError(
                    f"{str(spec_file)!r} must hold a JSON object with a 'name' and the fields of "
                    f"that memory's config (build_memory arguments), got {memory!r}"
                )
        elif model.transformer.has_memory and model.config.use_depth:
            memory = "feature_map"
        else:
            return None
    if isinstance(memory, str):
        memory = None if memory == "none" else build_memory(memory)
    elif isinstance(memory, dict):
        fields = dict(memory)
        if "name" not in fields:
            raise ValueError(f"a memory dict needs a 'name' (a build_memory name), got {memory!r}")
        name = fields.pop("name")
        memory = None if name == "none" else build_memory(name, **fields)
    elif not isinstance(memory, Memory):
        raise TypeError(
            "memory must be None, 'none', a build_memory name, a dict {'name': ..., **fields} or "
            f"a worldsim.memory.Memory, got {type(memory).__name__}"
        )
    check_memory_fits(model, memory)
    if memory is not None:
        memory.reset(1, model.device)
    return memory


# ================================================================================= episodes


@dataclass
class _Episode:
    """State of one episode of the learned simulator (one row of a batch).

    Attributes:
        rng: the row's numpy random source (derives the noise generator at each reset).
        generator: the row's noise generator (CPU), seeded at reset.
        context_rgb: (n_context, 3, H, W) float32 last frames in [0, 1], oldest first.
        context_depth: (n_context, 1, H, W) float32 metres.
        context_pose: (n_context, 4, 4) float64 ``cam_to_world`` of those frames.
        intrinsics: (3, 3) float32 ``K`` in pixels.
        memory: the row's memory (one row), or ``None``.
        goal: (3,) float64 goal floor position, NaN without a goal.
        distance: Euclidean distance from the integrated position to the goal, metres (NaN).
        scene: ground-truth scene id of a scene start, ``None`` for few-shot frames.
        observation: the last observation returned.
        options: the options of the last explicit reset (reused by autoresets).
        steps: steps taken in this episode.
        done: the episode has ended (terminated or truncated).
    """

    rng: np.random.Generator
    generator: torch.Generator
    context_rgb: Tensor
    context_depth: Tensor
    context_pose: Tensor
    intrinsics: Tensor
    memory: Memory | None
    goal: np.ndarray
    distance: float
    scene: str | None
    observation: dict[str, np.ndarray]
    options: dict[str, Any] | None
    steps: int = 0
    done: bool = False

    @property
    def pose(self) -> Tensor:
        """(4, 4) float64 current ``cam_to_world``."""
        return self.context_pose[-1]


class _LearnedWorld:
    """What the single and the vector env share: the model, the memory and the ground truth.

    Args:
        checkpoint, memory, device, num_sampling_steps, width, height: see
            :class:`PersistentWorldEnv`.
        ground_truth: keyword arguments of the ground-truth :class:`IndoorNavEnv` that renders
            scene starts (its sensor comes from the model).
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
    ) -> None:
        if num_sampling_steps is not None and num_sampling_steps < 1:
            raise ValueError(f"num_sampling_steps must be >= 1 or None, got {num_sampling_steps}")
        if not success_distance > 0:
            raise ValueError(f"success_distance must be > 0 metres, got {success_distance}")
        ground_truth = dict(ground_truth)
        self.model, folder = load_world_model(checkpoint, device)
        config = self.model.config
        limit = config.num_train_timesteps
        if num_sampling_steps is not None and num_sampling_steps > limit:
            raise ValueError(
                f"num_sampling_steps must be in [1, {limit}] (the model's training steps), got "
                f"{num_sampling_steps}"
            )
        for name, requested in (("width", width), ("height", height)):
            if requested is not None and requested != getattr(config, name):
                raise ValueError(
                    f"{name}={requested} was requested but the checkpoint generates frames of "
                    f"{config.width}x{config.height} pixels (width x height); leave {name} unset "
                    "or use a checkpoint trained at that size"
                )
        self.memory = resolve_memory(memory, self.model, folder)
        self.num_sampling_steps = num_sampling_steps
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
            agent_radius=ground_truth.pop("agent_radius"),
            agent_height=ground_truth.pop("agent_height"),
        )
        self._ground_truth_settings = ground_truth
        self._ground_truth: IndoorNavEnv | None = None

    @property
    def ground_truth(self) -> IndoorNavEnv:
        """The ground-truth env that renders scene starts (created on first use)."""
        if self._ground_truth is None:
            config = self.config
            self._ground_truth = IndoorNavEnv(
                width=config.width,
                height=config.height,
                hfov_deg=config.hfov_deg,
                max_depth=config.max_depth,
                sensor_height=config.sensor_height,
                forward_step_m=config.forward_step_m,
                turn_step_deg=config.turn_step_deg,
                agent_radius=config.agent_radius,
                agent_height=config.agent_height,
                success_distance=self.success_distance,
                **self._ground_truth_settings,
            )
        return self._ground_truth

    # ----------------------------------------------------------------------------- reset

    def reset(self, rng: np.random.Generator, options: dict[str, Any] | None) -> _Episode:
        """Start an episode from a scene or from few-shot frames (see the env docstring)."""
        options = dict(options or {})
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
        memory = None
        if self.memory is not None:
            memory = self.memory.select(torch.zeros(1, dtype=torch.int64))
            count = frames["rgb"].shape[0]
            device = memory.device
            memory.update(
                frames["rgb"][None].to(device),
                frames["depth"][None].to(device),
                frames["intrinsics"][None].expand(1, count, 3, 3).to(device),
                frames["cam_to_world"][None].float().to(device),
            )
        context = self.model.config.n_context
        episode = _Episode(
            rng=rng,
            generator=generator,
            context_rgb=_last(frames["rgb"], context),
            context_depth=_last(frames["depth"], context),
            context_pose=_last(frames["cam_to_world"].double(), context),
            intrinsics=frames["intrinsics"][-1].float(),
            memory=memory,
            goal=goal,
            distance=math.nan,
            scene=scene,
            observation=observation,
            options=options,
        )
        episode.distance = self._distance(episode, episode.pose)
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

    def step(
        self, episodes: list[_Episode], actions: list[int], batch_size: int | None = None
    ) -> list[tuple[float, bool]]:
        """Advance every episode by its action; moving rows share one model call.

        Args:
            episodes: the rows to step (not done).
            actions: one checked action id per row.
            batch_size: most rows per model call; ``None`` = all moving rows in one call.

        Returns:
            ``(reward, terminated)`` per row; each episode's observation and state are updated.
        """
        model = self.model
        n_future = model.config.n_future
        moving = [i for i, action in enumerate(actions) if action != Action.STOP]
        if moving:
            chunk = torch.zeros(len(moving), n_future, dtype=torch.int64)  # padded with stop
            chunk[:, 0] = torch.tensor([actions[i] for i in moving])
            cam_to_ref = chain_poses(step_poses(chunk, model).double())  # (B, n_future, 4, 4)
            rows = [episodes[i] for i in moving]
            poses = torch.stack([episode.pose for episode in rows])  # (B, 4, 4) f64
            targets = poses[:, None] @ cam_to_ref  # (B, n_future, 4, 4) cam_to_world
            intrinsics = torch.stack([episode.intrinsics for episode in rows])  # (B, 3, 3)
            size = len(rows) if batch_size is None else batch_size
            for first in range(0, len(rows), size):
                part = slice(first, first + size)
                tokens, mask = self._tokens(rows[part], targets[part], intrinsics[part])
                rgb, depth = generate_chunk(
                    model,
                    torch.stack([episode.context_rgb for episode in rows[part]]),
                    torch.stack([episode.context_depth for episode in rows[part]]),
                    cam_to_ref[part].float(),
                    intrinsics[part],
                    tokens,
                    mask,
                    [episode.generator for episode in rows[part]],
                    self.num_sampling_steps,
                )
                # The step's frame is the chunk's first; the padded frames are discarded.
                rgb = rgb[:, 0].cpu()  # (b, 3, H, W)
                depth = torch.zeros_like(rgb[:, :1]) if depth is None else depth[:, 0].cpu()
                for row, episode in enumerate(rows[part]):
                    self._advance(episode, rgb[row], depth[row], targets[first + row, 0])
        results = []
        for episode, action in zip(episodes, actions, strict=True):
            episode.steps += 1
            before = episode.distance
            episode.distance = self._distance(episode, episode.pose)
            reward = 0.0 if math.isnan(before) else float(before - episode.distance)
            results.append((reward, action == Action.STOP))
        return results

    def _tokens(
        self, rows: list[_Episode], targets: Tensor, intrinsics: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """Each row's map tokens for its chunk cameras, zero-padded to a common count."""
        if self.memory is None:
            return None, None
        size = (self.config.height, self.config.width)
        frames = targets.shape[1]
        parts = []
        for row, episode in enumerate(rows):
            device = episode.memory.device
            parts.append(
                episode.memory.tokens(
                    targets[row : row + 1].float().to(device),
                    intrinsics[row].expand(1, frames, 3, 3).to(device),
                    size,
                )
            )
        count = max(tokens.shape[1] for tokens, _ in parts)
        tokens = torch.stack(
            [torch.nn.functional.pad(t[0], (0, 0, 0, count - t.shape[1])) for t, _ in parts]
        )  # (B, N, D)
        mask = torch.stack(
            [torch.nn.functional.pad(m[0], (0, count - m.shape[1])) for _, m in parts]
        )  # (B, N)
        return tokens, mask

    def _advance(self, episode: _Episode, rgb: Tensor, depth: Tensor, pose: Tensor) -> None:
        """Append a generated frame to the episode and write it into its memory."""
        if episode.memory is not None:
            device = episode.memory.device
            episode.memory.update(
                rgb[None, None].to(device),
                depth[None, None].to(device),
                episode.intrinsics[None, None].to(device),
                pose[None, None].float().to(device),
            )
        episode.context_rgb = torch.cat([episode.context_rgb[1:], rgb[None]])
        episode.context_depth = torch.cat([episode.context_depth[1:], depth[None]])
        episode.context_pose = torch.cat([episode.context_pose[1:], pose[None]])
        colour = (rgb * 255.0).round().to(torch.uint8)  # the decoder clips RGB to [0, 1]
        episode.observation = {
            "rgb": rearrange(colour, "c h w -> h w c").numpy(),
            "depth": rearrange(depth, "c h w -> h w c").numpy().astype(np.float32),
            "pose": pose.numpy().astype(np.float32),
        }

    def _distance(self, episode: _Episode, pose: Tensor) -> float:
        position, _ = position_yaw_from_pose(pose, self.sensor_height)
        return float(np.linalg.norm(position.numpy() - episode.goal))

    def info(self, episode: _Episode, terminated: bool = False) -> dict[str, Any]:
        """The info dict of an episode's current state (see the env docstring)."""
        position, yaw = position_yaw_from_pose(episode.pose, self.sensor_height)
        success = terminated and episode.distance <= self.success_distance
        return {
            "intrinsics": episode.intrinsics.numpy().copy(),
            "position": position.numpy(),
            "yaw": float(yaw),
            "goal": episode.goal.copy(),
            "distance_to_goal": float(episode.distance),
            "success": bool(success),
            "scene": episode.scene,
        }

    def rollout_start(self, episode: _Episode) -> RolloutStart:
        """An episode's current state as a one-row planner start (its memory copied)."""
        memory = None
        if episode.memory is not None:
            memory = episode.memory.select(torch.zeros(1, dtype=torch.int64))
        return RolloutStart(
            rgb=episode.context_rgb[None],
            depth=episode.context_depth[None],
            cam_to_world=episode.context_pose[None].float(),
            intrinsics=episode.intrinsics[None],
            scene=None if episode.scene is None else (episode.scene,),
            memory=memory,
        )


def _last(frames: Tensor, count: int) -> Tensor:
    """The last ``count`` of (T, ...) frames, the oldest repeated if there are fewer."""
    if frames.shape[0] < count:
        frames = torch.cat([frames[:1].expand(count - frames.shape[0], *frames.shape[1:]), frames])
    return frames[-count:].clone()


def _goal(goal: Any) -> np.ndarray:
    """A (3,) goal floor position, or NaN for none."""
    if goal is None:
        return np.full(3, np.nan)
    goal = np.asarray(goal, dtype=np.float64)
    if goal.shape != (3,) or not np.isfinite(goal).all():
        raise ValueError(f"goal must be a finite floor position (x, y, z) in metres, got {goal!r}")
    return goal


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
    ``turn_step_deg`` of its config). Any other value raises ``ValueError``.

    Actions and chunks: the model generates chunks of ``n_future`` frames, one per action. Each
    step generates one chunk whose first action is the step's and whose other actions are
    ``stop`` (no motion); the chunk's first frame is the observation and the only frame written
    into the memory, the rest is discarded. Every step is therefore conditioned on everything
    seen so far (no buffered frames, no look-ahead), at the price of one chunk per step; planners
    that know a whole action sequence use :class:`envs.learned_rollout.WorldModelRollout`, which
    spends one chunk per ``n_future`` actions. ``stop`` generates nothing.

    ## Observation Space
    ``Dict`` of ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W, 1) metric z-depth in
    ``[0, max_depth]`` metres (all 0 for an RGB-only model) and ``pose`` float32 (4, 4)
    ``cam_to_world``, at the model's frame size (:func:`envs.indoor_nav.observation_space`).

    ## Rewards
    A learned world knows no walls: the pose integrates each action's free-space motion, and
    collisions are unknown (there is no ``collided`` in ``info``). The reward is the decrease of
    the Euclidean distance from the integrated floor position to the goal, metres; 0 on ``stop``
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
    ``intrinsics`` (3, 3) float32, ``position`` (3,) integrated floor position, ``yaw`` radians,
    ``goal`` (3,) (NaN without a goal), ``distance_to_goal`` metres (NaN without a goal),
    ``success``, ``scene`` (the ground-truth scene of a scene start, else ``None``).

    ## Arguments
    ``checkpoint``: a ``WorldModel.save_pretrained`` folder or a ready ``WorldModel``; ``None``
    loads the shipped default checkpoint (``FileNotFoundError`` saying how to train one while it
    is not installed). ``memory``: see :func:`resolve_memory` (``"none"`` runs the model without
    memory). ``device``: torch device of the model and the memory (default: where the model is; the
    CPU for a loaded checkpoint).
    ``num_sampling_steps``: DDIM steps per chunk (default: the model's). ``width``, ``height``:
    the requested frame size, which must be the checkpoint's (``ValueError`` otherwise).
    ``scene``, ``split``, ``num_scenes``, ``min_goal_distance``, ``backend``, ``agent_radius``,
    ``agent_height``: the ground-truth starts, as ``IndoorNav-v0``. ``sensor_height``: camera
    height above the floor, metres (positions in ``info``). ``success_distance`` (0.2 m).
    ``render_mode``: ``None`` or ``"rgb_array"``.

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
        success_distance: float = SUCCESS_DISTANCE_M,
        min_goal_distance: float = 1.0,
        backend: str = "embedded",
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.world = _LearnedWorld(
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
            ),
        )
        self.render_mode = render_mode
        self.observation_space = observation_space(self.world.config)
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self._episode: _Episode | None = None

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

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Generate the view after ``action``; see the class docstring."""
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        action = check_action(action)
        [(reward, terminated)] = self.world.step([self._episode], [action])
        info = self.world.info(self._episode, terminated)
        return _copy(self._episode.observation), reward, terminated, False, info

    def rollout_start(self) -> RolloutStart:
        """The current state as a one-row start for :class:`planners.rollout.RolloutModel`.

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
        self._episodes: list[_Episode | None] = [None] * self.num_envs

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
        options = dict(options or {})
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
        if actions.shape != (self.num_envs,):
            raise ValueError(
                f"actions must be ({self.num_envs},) action ids, one per row, got shape "
                f"{actions.shape}"
            )
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        ended = [episode.done for episode in self._episodes]
        stepping = [
            (row, check_action(actions[row])) for row in range(self.num_envs) if not ended[row]
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
