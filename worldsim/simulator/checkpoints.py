"""Loading a learned simulator: checkpoint folders, memory.json, sampler_config.json, smoke models.

A checkpoint folder is what ``WorldModel.save_pretrained`` writes (``config.json``, the
architecture, and the weights as safetensors), optionally with a ``memory.json`` beside them (the
keyword arguments of :func:`worldsim.memory.build_memory`, ``{"name": "feature_map", "encoder":
"vgg16", ...}``, describing the memory the model was trained with, which is then the default
memory) and a ``sampler_config.json`` (the :class:`~worldsim.simulator.sampler.SamplerConfig`
measured best for it, which is then the default sampler). :data:`TINY_UNTRAINED` names an
untrained tiny model with a cheap memory for smoke tests.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

from worldsim.memory import Memory, RenderedMemory, build_memory
from worldsim.models.pretrained import read_config
from worldsim.models.world_model import DEFAULT_CHECKPOINT, MEMORY_FILE, WorldModel
from worldsim.simulator.chunks import check_memory_fits
from worldsim.simulator.collision import MapCollisionConfig
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.sampler import SamplerConfig, load_sampler_config


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
    checkpoint: str | Path | WorldModel | None,
    device: str | torch.device | None = None,
    memory: str | dict[str, Any] | Memory | None = None,
    turn_step_deg: float | None = None,
    *,
    sampler: SamplerConfig | None = None,
    num_inference_steps: int | None = None,
    **options: Any,
) -> LearnedSimulator:
    """A learned simulator: a world model, the memory it reads and how it is sampled.

    Args:
        checkpoint: a ``WorldModel.save_pretrained`` folder, a ready model, ``None`` for the
            shipped default, or :data:`TINY_UNTRAINED` for an untrained tiny model (32x32
            frames) with :data:`TINY_UNTRAINED_MEMORY`.
        device: where to put the model.
        memory: as :func:`resolve_memory` (``None``: the checkpoint's ``memory.json``).
        turn_step_deg: the turn step the caller acts with; a checkpoint turning by another angle
            is refused, and the tiny model is built with it. ``None`` accepts the model's own.
        sampler: how chunks are sampled; ``None``: the folder's ``sampler_config.json``
            (:func:`~worldsim.simulator.sampler.load_sampler_config`), else the defaults.
        num_inference_steps: overrides the sampler's steps (``None``: keep them).
        **options: further :class:`LearnedSimulator` keywords (``collisions``, ``map_views``, ...).

    Returns:
        The simulator, its model in eval mode.

    Raises:
        ValueError: a checkpoint whose turn step differs from ``turn_step_deg``, a malformed
            sampler file or setting.
    """
    if str(checkpoint) == TINY_UNTRAINED:
        default = memory if isinstance(memory, Memory) else build_memory(**TINY_UNTRAINED_MEMORY)
        turn = {} if turn_step_deg is None else {"turn_step_deg": turn_step_deg}
        model = WorldModel.from_config_name("tiny", memory_token_dim=default.token_dim, **turn)
        model = model.to(device).eval() if device is not None else model.eval()
        memory = resolve_memory(default if memory is None else memory, model)
        folder = None
    else:
        model, folder = load_world_model(checkpoint, device)
        if turn_step_deg is not None and model.action_spec.turn_step_deg != turn_step_deg:
            raise ValueError(
                f"the world model turns by {model.action_spec.turn_step_deg} deg per action but "
                f"{turn_step_deg} deg was asked for; use the model's turn step"
            )
        memory = resolve_memory(memory, model, folder)
    sampler = load_sampler_config(folder) if sampler is None else sampler
    return LearnedSimulator(
        model, memory, sampler=sampler.with_steps(num_inference_steps), **options
    )


def learned_planning_rollout(
    checkpoint: str | Path | None,
    device: str | torch.device | None = None,
    memory: str | dict[str, Any] | Memory | None = None,
    turn_step_deg: float | None = None,
    num_inference_steps: int | None = None,
    size: int | None = None,
    map_views: float | Literal["auto"] | None = "auto",
    level_of_detail: float | None = 1.0,
    collisions: bool = False,
) -> LearnedSimulator:
    """The learned simulator planners imagine in, for square frames of the ground truth.

    Args:
        checkpoint: as :func:`load_learned_simulator`.
        device: as :func:`load_learned_simulator`.
        memory: as :func:`load_learned_simulator`.
        turn_step_deg: as :func:`load_learned_simulator`.
        num_inference_steps: denoising steps per chunk; the checkpoint's sampler's if ``None``.
        size: the frame size the caller renders the ground truth at; ``None`` takes the
            model's own.
        map_views: as :class:`LearnedSimulator`; ``"auto"``: 1.0 for a model that pastes its
            render and reads observed points only (candidates whose frames the map covers
            entirely are answered by the render, exactly what the model would generate), else
            ``None``.
        level_of_detail: for a :class:`~worldsim.memory.RenderedMemory`, its
            ``level_of_detail`` while planning: far cells drawn from coarser voxels no wider than
            this many pixels (about 3x faster renders of a house-sized map at 1.0, 29-32 dB from
            the exact render); ``None`` draws every point.
        collisions: give the imagined camera the ground truth's body, which the walls of the
            map's observed points block (:mod:`worldsim.simulator.collision`); a memory that
            gives a render only (else a ``ValueError``).

    Returns:
        The learned simulator, with common noise over the candidate rows of a call, writing
        generated frames into a rollout's memory unless the model reads a render of observed
        points only; ``image_size`` is its frame size.

    Raises:
        ValueError: for a model with non-square frames, or one whose frames differ from
            ``size``.
    """
    loaded = load_learned_simulator(
        checkpoint, device, memory, turn_step_deg, num_inference_steps=num_inference_steps
    )
    model, memory, sampler = loaded.model, loaded.memory, loaded.sampler
    height, width = model.config.height, model.config.width
    if height != width:
        raise ValueError(f"square frames expected, the world model's are {height}x{width}")
    if size not in (None, height):
        raise ValueError(
            f"--size {size} differs from the world model's frames ({height}); leave it out"
        )
    if isinstance(memory, RenderedMemory):
        memory = RenderedMemory(dataclasses.replace(memory.config, level_of_detail=level_of_detail))
        memory.reset(1, model.device)
    reads_render = model.transformer.reads_render
    if map_views == "auto":
        exact = reads_render and sampler.render_composite
        map_views = 1.0 if exact and not sampler.render_generated else None
    # Planners compare candidates: common random numbers make them differ by actions alone;
    # they keep no candidate's memory, so generated frames go in only where they are read.
    return LearnedSimulator(
        model,
        memory,
        sampler=sampler,
        common_noise=True,
        map_views=map_views,
        write_generated=not reads_render or sampler.render_generated,
        collisions=MapCollisionConfig() if collisions else None,
    )


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
            that does not fit the model (:func:`worldsim.simulator.chunks.check_memory_fits`).
        TypeError: for an argument of another type.
    """
    if memory is None:
        spec_file = None if folder is None else folder / MEMORY_FILE
        if spec_file is not None and spec_file.is_file():
            memory = read_config(spec_file)
            if "name" not in memory:
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


def with_render_memory(model: WorldModel) -> WorldModel:
    """A copy of ``model`` that reads its memory as a pixel-aligned render.

    The VAE and the backbone transformer are copied; memory blocks are left out and the new
    render branch starts switched off (zero-initialised), so the copy generates what ``model``
    generates without memory until its memory stage is trained.

    Args:
        model: a trained world model (any memory kind).

    Returns:
        A new model with ``memory_render=True`` and ``memory_token_dim=0``, in eval mode.
    """
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config.update(memory_render=True, memory_token_dim=0)
    converted = WorldModel(**config)
    state = model.state_dict()
    target = converted.state_dict()
    copied = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    missing = sorted(set(target) - set(copied))
    if any(not key.startswith("transformer.render_embed") for key in missing):
        raise ValueError(f"cannot copy {missing} from the model; is it a WorldModel of this kind?")
    converted.load_state_dict(copied, strict=False)
    converted.set_latent_scaling_factor(model.vae.scaling_factor)
    return converted.to(model.device).eval()
