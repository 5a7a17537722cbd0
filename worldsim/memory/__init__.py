"""Persistent memories behind one interface: the 3D feature map and its baselines.

==============  ======================  =============================================
name            class                   what it keeps / gives as tokens
==============  ======================  =============================================
``none``        :class:`NoMemory`       nothing (Navigation World Models)
``feature_map`` :class:`FeatureMap3D`   max-pooled features in sparse voxels (the paper)
``image``       :class:`ImageMemory`    a few informative snapshot frames (3D-Mem)
``bev``         :class:`BEVMap`         max-pooled features in floor cells (2D-Map)
``frame_bank``  :class:`FrameBank`      all frames; retrieval by view overlap (WorldMem)
``rendered``    :class:`RenderedMemory` coloured points; read by :meth:`~RenderedMemory.render`
==============  ======================  =============================================

:func:`build_memory` makes one from its name and config fields.
"""

from __future__ import annotations

import dataclasses

from worldsim.memory.base import Memory, PositionEncoding
from worldsim.memory.bev_map import BEVMap, BEVMapConfig
from worldsim.memory.feature_map import FeatureMap3D, FeatureMapConfig
from worldsim.memory.frame_bank import FrameBank, FrameBankConfig
from worldsim.memory.image_memory import ImageMemory, ImageMemoryConfig
from worldsim.memory.no_memory import NoMemory, NoMemoryConfig
from worldsim.memory.rendered import MapPoints, RenderedMemory, RenderedMemoryConfig
from worldsim.memory.splatting import MemoryRender
from worldsim.models.encoders import EncoderConfig, FeatureEncoder

MEMORIES = {
    "none": (NoMemory, NoMemoryConfig),
    "feature_map": (FeatureMap3D, FeatureMapConfig),
    "image": (ImageMemory, ImageMemoryConfig),
    "bev": (BEVMap, BEVMapConfig),
    "frame_bank": (FrameBank, FrameBankConfig),
    "rendered": (RenderedMemory, RenderedMemoryConfig),
}
"""Memory classes and their configs, by the name a world-model config stores."""


def build_memory(name: str, **config) -> Memory:
    """Make a memory from its name and config fields.

    Args:
        name: ``"none" | "feature_map" | "image" | "bev" | "frame_bank" | "rendered"``.
        **config: fields of that memory's config dataclass. ``encoder`` may be an
            :class:`EncoderConfig`, a dict of its fields, an encoder name, or a ready
            :class:`~worldsim.models.encoders.FeatureEncoder` (used as is, e.g. shared between
            memories); ``position`` may be a :class:`PositionEncoding` or a dict.

    Returns:
        The memory (call :meth:`Memory.reset` before use).

    Raises:
        ValueError: for an unknown name or an unknown config field.
    """
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}: allowed are {sorted(MEMORIES)}")
    memory_class, config_class = MEMORIES[name]
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(
            f"{config_class.__name__} has no fields {unknown}; allowed: {sorted(fields)}"
        )
    encoder = config.get("encoder")
    ready = encoder if isinstance(encoder, FeatureEncoder) else None
    if ready is not None:
        config = {k: v for k, v in config.items() if k != "encoder"}
    elif isinstance(encoder, str):
        config["encoder"] = EncoderConfig(name=encoder)
    elif isinstance(encoder, dict):
        config["encoder"] = EncoderConfig(**encoder)
    if isinstance(config.get("position"), dict):
        config["position"] = PositionEncoding(**config["position"])
    if name == "none":
        return memory_class(config_class(**config))
    return memory_class(config_class(**config), encoder=ready)


__all__ = [
    "MEMORIES",
    "BEVMap",
    "BEVMapConfig",
    "FeatureMap3D",
    "FeatureMapConfig",
    "FrameBank",
    "FrameBankConfig",
    "ImageMemory",
    "ImageMemoryConfig",
    "MapPoints",
    "Memory",
    "MemoryRender",
    "NoMemory",
    "NoMemoryConfig",
    "PositionEncoding",
    "RenderedMemory",
    "RenderedMemoryConfig",
    "build_memory",
]
