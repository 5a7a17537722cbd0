"""The learned simulator: one object that owns the learned world's state and steps it.

:class:`LearnedSimulator` holds a :class:`~worldsim.models.world_model.WorldModel`, its memory
prototype, the :class:`~worldsim.simulator.sampler.SamplerConfig` and the camera's body
(:mod:`worldsim.simulator.collision`). It has two thin faces over the one chunk stepper
(:func:`worldsim.simulator.chunks.generate_next_chunk`):

- **episodes**: :meth:`LearnedSimulator.start` makes an :class:`EpisodeState` (context window,
  episode map, noise generator, pose, the walls of its observed frames) and
  :meth:`LearnedSimulator.step` advances any set of them by one action each, all moving rows in
  one model call; ``PersistentWorld-v0`` and its vector env are this face.
- **planners**: :meth:`LearnedSimulator.rollout` implements
  :class:`~worldsim.simulator.protocol.RolloutModel`, so every planner that runs against the
  ground-truth oracle (:class:`envs.oracle.OracleRollout`) runs unchanged against the learned
  simulator; a planner's imagination never writes into the episode's map, executed
  observations do (:meth:`LearnedSimulator.observe`).

Chunks
    The model generates ``n_future`` frames per call, one per action (paper Algorithm 1a). A
    sequence of ``L`` actions is cut into ``ceil(L / n_future)`` chunks; the last chunk is padded
    with ``stop`` (no motion) and the padded frames are discarded: they are neither returned nor
    written into the memory. The chunk loop is :func:`worldsim.simulator.chunks.rollout`.

Actions
    Discrete ids become relative camera poses with the model's step sizes and waypoints through
    :func:`worldsim.geometry.waypoint_to_relative_pose`
    (:func:`worldsim.simulator.chunks.step_poses`). Motion is free-space: a learned world knows no
    collisions (``RolloutResult.collided`` is
    ``None``), unless ``collisions`` gives its camera a body: then every move is made against
    the walls that the memory's observed points show (:mod:`worldsim.simulator.collision`), a
    blocked move slides or stops much as in the ground truth, the frames are imagined from where the
    body really ends, and ``RolloutResult.collided`` says which steps were blocked.

Map views
    With ``map_views = c``, a row whose returned frames the memory's *observed* points cover
    (drawn, within the sensor's range) on at least a share ``c`` of the pixels of each frame is
    answered by the map's render at those cameras, without generating: the render's pixels (a
    point beyond the sensor's range gives its colour and depth 0, as in the model's composite),
    and the empty ones filled from their nearest drawn neighbours. It only applies to a model
    that pastes the render where it covers (``render_composite``) and reads only observed points
    (``render_generated`` off): at ``c = 1`` the answer is then exactly the frames the model
    would generate, since generated frames never change the observed points' render. Rows
    below ``c`` are generated as usual, with the noise they would have drawn in the full batch.
    Planners use it to score candidates that end in mapped space at the cost of a render. The
    result's ``memory`` is the rollout's memory when every row is answered by the map (nothing
    was generated), ``None`` when only some are.

Batching and randomness
    All rows of a chunk go through one model call, ``batch_size`` rows at a time. Each row gets
    its own noise generator, seeded from the caller's generator before any row is processed, so
    a row's rollout does not depend on ``batch_size`` or on the other rows (up to floating-point
    rounding of batched matrix products).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from worldsim.geometry import Action
from worldsim.memory import Memory
from worldsim.memory.splatting import MemoryRender, fill_rings
from worldsim.simulator.chunks import (
    camera_path,
    check_memory_fits,
    generate_next_chunk,
    insert_frames,
    render_memory,
    rollout,
    step_poses,
)
from worldsim.simulator.collision import MapCollider, MapCollisionConfig
from worldsim.simulator.protocol import RolloutResult, RolloutStart, check_rollout_request
from worldsim.simulator.sampler import SamplerConfig, composite_render

if TYPE_CHECKING:
    from worldsim.models.world_model import WorldModel

_SEED_HIGH = 2**62
"""Row seeds are drawn uniformly from ``[0, _SEED_HIGH)``."""


def row_generators(
    count: int, generator: torch.Generator | np.random.Generator | None = None
) -> list[torch.Generator]:
    """Independent CPU noise generators, one per row, seeded from one random source.

    CPU generators make the noise identical on every device (diffusers draws it on the CPU and
    moves it).

    Args:
        count: number of rows, >= 0.
        generator: the source of the seeds; ``None`` draws them from fresh OS entropy (without
            touching any global random state).

    Returns:
        ``count`` seeded ``torch.Generator`` objects.
    """
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(
            0, _SEED_HIGH, (count,), generator=generator, device=generator.device
        ).tolist()
    else:
        rng = generator if generator is not None else np.random.default_rng()
        seeds = rng.integers(0, _SEED_HIGH, size=count).tolist()
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


@dataclass
class EpisodeState:
    """One episode's learned-world state (a row of :meth:`LearnedSimulator.step`).

    Attributes:
        context_rgb: (n_context, 3, H, W) float32 last frames in [0, 1], oldest first.
        context_depth: (n_context, 1, H, W) float32 metres.
        context_pose: (n_context, 4, 4) float64 ``cam_to_world`` of those frames.
        intrinsics: (3, 3) float32 ``K`` in pixels.
        memory: the episode's map (one row), or ``None`` for a simulator without memory.
        generator: the row's noise generator (CPU).
        collider: the walls of the episode's observed frames that block its moves
            (``collisions``), or ``None``: free-space motion.
        collided: whether a wall blocked the last step.
    """

    context_rgb: Tensor
    context_depth: Tensor
    context_pose: Tensor
    intrinsics: Tensor
    memory: Memory | None
    generator: torch.Generator
    collider: MapCollider | None = None
    collided: bool = False

    @property
    def pose(self) -> Tensor:
        """(4, 4) float64 current ``cam_to_world``."""
        return self.context_pose[-1]


class LearnedSimulator:
    """The world model as a simulator, batched, with its persistent memory.

    Episodes (:meth:`start`, :meth:`step`): each holds its own map, started from its frames.
    Rollouts (:meth:`rollout`): the memory of a rollout is a copy of ``start.memory`` when the
    start has one (for example an episode's map, :meth:`start_of`), otherwise a fresh memory
    like ``memory``; with ``insert_start_frames`` the start's frames are unprojected into it first
    (harmless for the 3D feature map, whose max-pooling ignores frames it has already seen).
    ``start.memory`` is never modified; the memory after the rollout is
    ``RolloutResult.memory``. Without any memory the model is conditioned on its context frames
    only.

    Args:
        model: the world model (its device and dtype are used).
        memory: prototype of fresh memories, or ``None`` for no memory (it is reset by every
            rollout that uses it; its rows are copied, so results never share storage with it).
        sampler: how each chunk is sampled; ``None``: :class:`SamplerConfig`'s defaults.
        collisions: the camera's body, whose moves the walls of the map's observed points
            block (module docstring); ``None``: free-space motion. Needs a memory that gives a
            render (its points).
        insert_start_frames: unproject every rollout start's frames into its memory first.
        common_noise: every row of one rollout call draws the same noise (common random
            numbers): candidates a planner compares then differ by their actions, not by their
            sampling luck. Off, each row has its own noise.
        map_views: answer rollout rows whose returned frames the map covers at least this share
            of (module docstring), in (0, 1]; ``None`` generates every row.
        write_generated: write a rollout's generated frames into its memory (its
            ``RolloutResult.memory``). Off saves the time where nothing reads them: a model
            that reads only observed points of its render never reads its generated ones, and
            planners do not keep a candidate's memory. Episodes always write them.

    Attributes:
        image_size: ``(H, W)`` of the model's frames.
        max_horizon: ``None``: the model rolls out autoregressively without a limit.

    Raises:
        ValueError: for a memory that does not fit the model (:func:`check_memory_fits`), a
            sampler whose steps the model's schedule cannot give, or settings that need what
            the model or memory lacks.
    """

    max_horizon: int | None = None

    def __init__(
        self,
        model: WorldModel,
        memory: Memory | None = None,
        *,
        sampler: SamplerConfig | None = None,
        collisions: MapCollisionConfig | None = None,
        insert_start_frames: bool = True,
        common_noise: bool = False,
        map_views: float | None = None,
        write_generated: bool = True,
    ) -> None:
        check_memory_fits(model, memory)
        sampler = SamplerConfig() if sampler is None else sampler
        sampler.check_model(model)
        if collisions is not None and (memory is None or not memory.gives_render):
            raise ValueError(
                "collisions need the walls of a map of points: a memory that gives a render "
                f"('rendered'), got {type(memory).__name__ if memory is not None else None}; "
                "use collisions=None"
            )
        if map_views is not None:
            if not 0 < map_views <= 1:
                raise ValueError(f"map_views must be in (0, 1] or None, got {map_views}")
            reads_render = model.transformer.reads_render
            if not (reads_render and sampler.render_composite and not sampler.render_generated):
                raise ValueError(
                    "map_views needs a model that reads the rendered memory (memory_render) and "
                    "a sampler that pastes it where it covers and reads observed points only "
                    f"(render_composite, not render_generated); here memory_render="
                    f"{reads_render}, render_composite={sampler.render_composite}, "
                    f"render_generated={sampler.render_generated}. Use map_views=None"
                )
        self.model = model
        self.memory = memory
        self.sampler = sampler
        self.collisions = collisions
        self.insert_start_frames = insert_start_frames
        self.common_noise = common_noise
        self.map_views = map_views
        self.write_generated = write_generated
        self.image_size = (model.config.height, model.config.width)

    # ----------------------------------------------------------------------------- episodes

    def start(
        self,
        rgb: Tensor,
        depth: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        generator: torch.Generator,
    ) -> EpisodeState:
        """An episode that starts from T observed frames: all enter its map, the last are context.

        Args:
            rgb: (T, 3, H, W) float32 in [0, 1], T >= 1, oldest first.
            depth: (T, 1, H, W) float32 metres.
            cam_to_world: (T, 4, 4) poses (float64 keeps them exact).
            intrinsics: (T, 3, 3) ``K``; the last one is the episode's camera.
            generator: the episode's noise generator.

        Returns:
            The state; with fewer than ``n_context`` frames the oldest is repeated (the agent
            stood still).
        """
        memory = None
        if self.memory is not None:
            memory = self.memory.select(torch.zeros(1, dtype=torch.int64))
            memory.reset(1, self.model.device)
            insert_frames(memory, rgb[None], depth[None], intrinsics[None], cam_to_world[None])
        count = self.model.config.n_context
        state = EpisodeState(
            context_rgb=_context(rgb[None], count)[0],
            context_depth=_context(depth[None], count)[0],
            context_pose=_context(cam_to_world[None].double(), count)[0],
            intrinsics=intrinsics[-1].float(),
            memory=memory,
            generator=generator,
        )
        if self.collisions is not None:  # observed frames enter the map only here
            floor = float(state.pose[1, 3]) - self.collisions.sensor_height
            state.collider = MapCollider.from_memory(memory, 0, floor, self.collisions)
        return state

    def step(
        self,
        states: list[EpisodeState],
        actions: Sequence[int | Tensor],
        batch_size: int | None = None,
    ) -> list[tuple[Tensor, Tensor, Tensor] | None]:
        """Advance every episode by one action; moving rows share one model call.

        Each moving row generates one chunk whose first motion is the row's and whose others
        are ``stop``; the chunk's first frame is the new view and the only one written into the
        episode's map (no buffered frames, no look-ahead). ``stop`` generates nothing.

        Args:
            states: the rows to step, updated in place (context, map, ``collided``).
            actions: one checked action per row: an action id, or a (3,) float waypoint
                ``(dx, dz, dyaw)`` (the zero waypoint is ``stop``).
            batch_size: most rows per model call; ``None`` = all moving rows in one call.

        Returns:
            Per row, ``(rgb, depth, cam_to_world)`` of the new view ((3, H, W) float32 in
            [0, 1], (1, H, W) float32 metres, 0 for an RGB-only model, (4, 4) float64), or
            ``None`` for ``stop``.
        """
        model = self.model
        n_future = model.config.n_future
        results: list[tuple[Tensor, Tensor, Tensor] | None] = [None] * len(states)
        motions = [self._motion(action) for action in actions]  # (4, 4) each, None for stop
        moving = [i for i, motion in enumerate(motions) if motion is not None]
        for i, state in enumerate(states):
            if motions[i] is None:
                state.collided = False
        if not moving:
            return results
        rows = [states[i] for i in moving]
        # The step's motion, then stops: its frame is the chunk's first, the padding discarded.
        steps = torch.eye(4).repeat(len(rows), n_future, 1, 1)  # (B, n_future, 4, 4)
        steps[:, 0] = torch.stack([motions[i] for i in moving])
        keep = torch.zeros(len(rows), n_future, dtype=torch.bool)
        keep[:, 0] = True
        for row, state in enumerate(rows):
            if state.collider is not None:
                first, hit = state.collider.constrain(state.pose, steps[row, :1])
                steps[row, 0], state.collided = first[0], bool(hit[0])
        new = generate_next_chunk(
            model,
            torch.stack([state.context_rgb for state in rows]),
            torch.stack([state.context_depth for state in rows]),
            torch.stack([state.pose for state in rows]),  # (B, 4, 4) f64
            steps,
            torch.stack([state.intrinsics for state in rows]),  # (B, 3, 3)
            memory=None if self.memory is None else [state.memory for state in rows],
            generator=[state.generator for state in rows],
            sampler=self.sampler,
            memory_frames=keep,
            batch_size=batch_size,
        )
        rgb = new.rgb[:, 0].cpu()  # (B, 3, H, W)
        depth = torch.zeros_like(rgb[:, :1]) if new.depth is None else new.depth[:, 0].cpu()
        for row, state in enumerate(rows):
            pose = new.cam_to_world[row, 0].cpu()
            state.context_rgb = torch.cat([state.context_rgb[1:], rgb[row][None]])
            state.context_depth = torch.cat([state.context_depth[1:], depth[row][None]])
            state.context_pose = torch.cat([state.context_pose[1:], pose[None]])
            results[moving[row]] = (rgb[row], depth[row], pose)
        return results

    def _motion(self, action: int | Tensor) -> Tensor | None:
        """(4, 4) float32 relative camera pose of one action id or waypoint; ``None`` for stop."""
        if isinstance(action, Tensor) and action.is_floating_point():
            if not bool(action.any()):
                return None
            return step_poses(action.reshape(1, 1, 3), self.model)[0, 0]
        if int(action) == Action.STOP:
            return None
        return step_poses(torch.tensor([[int(action)]]), self.model)[0, 0]

    def start_of(self, state: EpisodeState, scene: str | None = None) -> RolloutStart:
        """An episode's current state as a one-row planner start (its map copied)."""
        memory = None
        if state.memory is not None:
            memory = state.memory.select(torch.zeros(1, dtype=torch.int64))
        return RolloutStart(
            rgb=state.context_rgb[None],
            depth=state.context_depth[None],
            cam_to_world=state.context_pose[None].float(),
            intrinsics=state.intrinsics[None],
            scene=None if scene is None else (scene,),
            memory=memory,
        )

    # ----------------------------------------------------------------------------- planners

    def rollout(
        self,
        start: RolloutStart,
        actions: Tensor,
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        num_frames: int | None = None,
    ) -> RolloutResult:
        """Imagine what each row sees while taking its actions (see :class:`RolloutModel`).

        Args:
            start: B start states at the model's frame size; with fewer than ``n_context``
                frames the oldest is repeated (the agent stood still before).
            actions: (B, L) int64 ids or (B, L, 3) float waypoints.
            generator: seeds one noise generator per row; ``None`` seeds them from OS entropy.
            batch_size: most rows per model call; ``None`` = all B.
            num_frames: return the frames of only the last this many steps (all are generated).

        Returns:
            ``rgb`` (B, F, 3, H, W) and ``depth`` (B, F, 1, H, W) float32 on the CPU (depth is 0
            for an RGB-only model), ``cam_to_world`` (B, L, 4, 4) float32 integrated from the
            start's last pose, ``collided`` (B, L) with ``collisions``, else ``None``,
            ``agent_state`` ``None``, ``memory`` the updated memory (``None`` without one, or
            when ``map_views`` answered some rows but not all).

        Raises:
            ValueError: for an invalid request (:func:`check_rollout_request`) or a start memory
                that does not fit the model or the start.
        """
        check_rollout_request(self, start, actions, batch_size, num_frames)
        rows, horizon = actions.shape[:2]
        num_frames = horizon if num_frames is None else num_frames
        memory = self._rollout_memory(start)
        noise = self._noise(rows, generator)
        steps, collided = self._padded_steps(start, actions, memory)  # (B, L', 4, 4), (B, L)
        answered = None
        if self.map_views is not None and memory is not None:
            views, answered = self._map_views(start, steps, memory, horizon, num_frames)
            if bool(answered.all()):
                return replace(views, memory=memory, collided=collided)
        if answered is None or not bool(answered.any()):
            generated = self._generate(start, steps, memory, noise, horizon, num_frames, batch_size)
            return replace(generated, collided=collided)
        # Some rows from the map, the others generated with the noise they would have drawn.
        rest = (~answered).nonzero()[:, 0]
        generated = self._generate(
            start.select(rest),
            steps[rest],
            memory.select(rest),
            [noise[i] for i in rest.tolist()],
            horizon,
            num_frames,
            batch_size,
        )
        rgb, depth = views.rgb.clone(), views.depth.clone()
        rgb[rest], depth[rest] = generated.rgb, generated.depth
        # The rows' memories now live in two objects: the result carries none (module docstring).
        return RolloutResult(
            rgb=rgb, depth=depth, cam_to_world=views.cam_to_world, collided=collided
        )

    def _padded_steps(
        self, start: RolloutStart, actions: Tensor, memory: Memory | None
    ) -> tuple[Tensor, Tensor | None]:
        """Step poses, the last chunk padded with stops, and which steps a wall blocked.

        Returns:
            ``(steps, collided)``: (B, chunks * n_future, 4, 4) float64, and (B, L) bool with
            ``collisions`` (else ``None``).
        """
        rows, horizon = actions.shape[:2]
        n_future = self.model.config.n_future
        chunks = math.ceil(horizon / n_future)
        steps = step_poses(actions.cpu(), self.model).double()  # (B, L, 4, 4)
        collided = None
        if self.collisions is not None and memory is not None:
            steps, collided = self._collide(start, steps, memory)
        padding = torch.eye(4, dtype=steps.dtype).expand(rows, chunks * n_future - horizon, 4, 4)
        return torch.cat([steps, padding], dim=1), collided

    def _collide(self, start: RolloutStart, steps: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """Every row's steps made against the walls of its map (``collisions``)."""
        config = self.collisions
        references = start.cam_to_world[:, -1].double().cpu()  # (B, 4, 4)
        colliders: dict[int, MapCollider] = {}
        alike = memory.rows_alike()
        out, collided = torch.empty_like(steps), torch.zeros(steps.shape[:2], dtype=torch.bool)
        for row in range(steps.shape[0]):
            floor = float(references[row, 1, 3]) - config.sensor_height
            source = 0 if alike else row
            if source not in colliders or colliders[source].floor_height != floor:
                colliders[source] = MapCollider.from_memory(memory, source, floor, config)
            out[row], collided[row] = colliders[source].constrain(references[row], steps[row])
        return out, collided

    def _generate(
        self,
        start: RolloutStart,
        steps: Tensor,
        memory: Memory | None,
        noise: list[torch.Generator],
        horizon: int,
        num_frames: int,
        batch_size: int | None,
    ) -> RolloutResult:
        """Generate every row chunk by chunk (Algorithm 1a); padded steps never reach memory."""
        model = self.model
        rows = steps.shape[0]
        real = torch.zeros(rows, steps.shape[1], dtype=torch.bool)
        real[:, :horizon] = self.write_generated  # padded frames never reach the memory
        n_context = model.config.n_context
        generated = rollout(
            model,
            _context(start.rgb, n_context).float(),  # (B, n_context, 3, H, W)
            _context(start.depth, n_context).float() if model.config.use_depth else None,
            _context(start.cam_to_world, n_context).float(),  # (B, n_context, 4, 4)
            steps,
            sampler=self.sampler,
            intrinsics=start.intrinsics.float(),
            memory=memory,
            insert_start_frames=False,  # done by _rollout_memory, without the repeated frames
            generator=noise,
            memory_frames=real,
            batch_size=batch_size,
        )
        rgb = generated.rgb[:, :horizon].cpu()  # (B, L, 3, H, W): padding dropped
        if generated.depth is None:
            depth = torch.zeros_like(rgb[:, :, :1])  # an RGB-only model: no depth (0)
        else:
            depth = generated.depth[:, :horizon].cpu()
        return RolloutResult(
            rgb=rgb[:, horizon - num_frames :],
            depth=depth[:, horizon - num_frames :],
            cam_to_world=generated.cam_to_world[:, :horizon].cpu(),
            memory=memory,
        )

    def map_coverage(
        self, start: RolloutStart, actions: Tensor, num_frames: int | None = None
    ) -> Tensor:
        """Per row, the least share of a returned frame's pixels the map's observed points cover.

        A row is answered by the map when this is at least ``map_views``.

        Args:
            start: B start states (their memory, or this simulator's, is read, never written).
            actions: (B, L) int64 ids or (B, L, 3) float waypoints.
            num_frames: the frames of the last this many steps count (``None``: every step).

        Returns:
            (B,) float in [0, 1], on the CPU.

        Raises:
            ValueError: as :meth:`rollout`, or for a simulator without memory.
        """
        check_rollout_request(self, start, actions, None, num_frames)
        horizon = actions.shape[1]
        memory = self._rollout_memory(start)
        if memory is None:
            raise ValueError("map_coverage needs a simulator with a memory")
        steps, _ = self._padded_steps(start, actions, memory)
        num_frames = horizon if num_frames is None else num_frames
        _, _, share, _ = self._map_render(start, steps, memory, horizon, num_frames)
        return share.cpu()

    def _map_render(
        self, start: RolloutStart, steps: Tensor, memory: Memory, horizon: int, num_frames: int
    ) -> tuple[MemoryRender, Tensor, Tensor, Tensor]:
        """The map's observed points rendered at the returned frames' cameras.

        Returns:
            ``(render, covered, share, poses)``: the render (B, F, ...), (B, F, 1, H, W) bool
            where it covers (drawn, within the sensor's range), (B,) the least covered share of
            a row's frames, and (B, L', 4, 4) float64 cameras of every (padded) step.
        """
        model = self.model
        reference = start.cam_to_world[:, -1].to(model.device)
        poses = camera_path(reference, steps.to(model.device), model.config.n_future)
        cameras = poses[:, horizon - num_frames : horizon]  # (B, F, 4, 4)
        rows = cameras.shape[0]
        k = start.intrinsics.float().to(model.device)[:, None].expand(rows, num_frames, 3, 3)
        render = render_memory(memory, cameras, k, self.image_size).observed_only()
        covered = model.render_coverage(render.depth, render.mask)  # (B, F, 1, H, W)
        share = covered.flatten(2).float().mean(-1).amin(-1)  # (B,)
        return render, covered, share, poses

    def _map_views(
        self, start: RolloutStart, steps: Tensor, memory: Memory, horizon: int, num_frames: int
    ) -> tuple[RolloutResult, Tensor]:
        """The map's render at the returned frames' cameras, and which rows it answers.

        Returns:
            ``(views, answered)``: a result of every row (frames: the render with holes
            filled; ``memory`` None) and (B,) bool, True where each returned frame's coverage
            is at least ``map_views``.
        """
        render, covered, share, poses = self._map_render(start, steps, memory, horizon, num_frames)
        answered = share >= self.map_views  # (B,)
        # The composite over the nearest drawn neighbours' colour and in-range depth.
        rgb, depth = composite_render(
            render,
            fill_rings(render.rgb, render.mask, 0.5),
            fill_rings(render.depth, covered, 0.0),
            self.model.config.max_depth_m,
        )
        views = RolloutResult(
            rgb=rgb.cpu(), depth=depth.cpu(), cam_to_world=poses[:, :horizon].float().cpu()
        )
        return views, answered.cpu()

    def _noise(self, rows: int, generator: torch.Generator | None) -> list[torch.Generator]:
        """One noise generator per row: independent, or all alike with ``common_noise``."""
        if not self.common_noise:
            return row_generators(rows, generator)
        seed = row_generators(1, generator)[0].initial_seed()
        return [torch.Generator().manual_seed(seed) for _ in range(rows)]

    def with_episode_memory(self, start: RolloutStart, prior: Memory | None = None) -> RolloutStart:
        """The one-row ``start`` with an episode map holding its frames (observed).

        A planner keeps this map for the whole episode and writes what it executes into it
        (:meth:`observe`); every rollout from the start copies it first. Without a memory
        prototype the start is returned unchanged.

        Args:
            start: the episode's start, one row.
            prior: a map of the same house from before the episode (:meth:`map_of` of a
                :meth:`envs.oracle.OracleRollout.tour`, say) that the episode map starts from;
                it is copied, never written. ``None``: the map starts empty.

        Raises:
            ValueError: for a start of more than one row, or a prior of another row count or
                kind than this simulator's memory.
        """
        if start.batch_size != 1:
            raise ValueError(f"an episode memory is for one start row, got {start.batch_size}")
        if self.memory is None:
            return start
        if prior is None:
            memory = self.memory.select(torch.zeros(1, dtype=torch.int64))  # a fresh copy
            memory.reset(1, self.model.device)
        else:
            if type(prior) is not type(self.memory) or prior.batch_size != 1:
                raise ValueError(
                    f"the prior map must be a one-row {type(self.memory).__name__} like this "
                    f"simulator's memory, got a {prior.batch_size}-row {type(prior).__name__}"
                )
            memory = prior.select(torch.zeros(1, dtype=torch.int64))  # a copy to write into
        _insert_start(memory, start)
        return replace(start, memory=memory)

    def map_of(self, walk: RolloutStart) -> Memory | None:
        """A one-row map (this simulator's memory kind) of every frame of a recorded walk.

        Args:
            walk: one row of observed frames, e.g. :meth:`envs.oracle.OracleRollout.tour`.

        Returns:
            The map, its frames inserted as observed; ``None`` for a simulator without memory.
        """
        if walk.batch_size != 1:
            raise ValueError(f"a map is made of one walk, got {walk.batch_size} rows")
        return self.with_episode_memory(replace(walk, memory=None)).memory  # a fresh map of it

    def observe(self, state: RolloutStart, executed: RolloutResult) -> None:
        """Write the executed frames of a one-row state into its episode map (observed).

        Args:
            state: the state whose ``memory`` is the episode map (``None``: nothing to do).
            executed: what the ground truth showed, every step's frame.
        """
        if state.memory is None:
            return
        frames = executed.num_frames
        poses = executed.cam_to_world[:, -frames:]
        insert_frames(state.memory, executed.rgb, executed.depth, state.intrinsics, poses)

    def _rollout_memory(self, start: RolloutStart) -> Memory | None:
        """The memory a rollout from ``start`` updates: a copy of the start's or a fresh one."""
        rows = start.batch_size
        if start.memory is not None:
            check_memory_fits(self.model, start.memory)
            if self.insert_start_frames and start.memory.rows_alike() and _rows_alike(start):
                # One start repeated for K candidates (planners): its frames go in once.
                memory = start.memory.select(torch.zeros(1, dtype=torch.int64))
                _insert_start(memory, start.select([0]))
                return memory.select(torch.zeros(rows, dtype=torch.int64))
            memory = start.memory.select(torch.arange(rows))
        elif self.memory is not None:
            self.memory.reset(1, self.model.device)
            if self.insert_start_frames and _rows_alike(start):
                # One start repeated for K candidates (planners): its frames go in once.
                _insert_start(self.memory, start.select([0]))
                return self.memory.select(torch.zeros(rows, dtype=torch.int64))
            memory = self.memory.select(torch.zeros(rows, dtype=torch.int64))
        else:
            return None
        if self.insert_start_frames:
            _insert_start(memory, start)
        return memory


def _rows_alike(start: RolloutStart) -> bool:
    """Whether every row of a start has the first row's frames, poses and intrinsics."""
    return all(
        torch.equal(values, values[:1].expand_as(values))
        for values in (start.rgb, start.depth, start.cam_to_world, start.intrinsics)
    )


def _context(frames: Tensor, count: int) -> Tensor:
    """The last ``count`` of (B, T, ...) frames or poses, the oldest repeated if there are fewer.

    Returns a new tensor in ``frames``' dtype.
    """
    if frames.shape[1] < count:
        repeats = frames[:, :1].expand(-1, count - frames.shape[1], *frames.shape[2:])
        frames = torch.cat([repeats, frames], dim=1)
    return frames[:, -count:].clone()


def _insert_start(memory: Memory, start: RolloutStart) -> None:
    """Write a start's frames into a memory of as many rows."""
    insert_frames(memory, start.rgb, start.depth, start.intrinsics, start.cam_to_world)


WorldModelRollout = LearnedSimulator
"""The name :class:`LearnedSimulator` had when it only served planners (kept for old code)."""
