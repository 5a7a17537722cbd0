"""The persistent world model: camera geometry, 3D memory, RGB-D video diffusion, rollouts.

The names most code needs are importable from the package itself (``from worldsim import
WorldModel``); they load on first use, so ``import worldsim.geometry`` stays light.

=====================  ==============================================================
name                   what it is
=====================  ==============================================================
``WorldModel``         the RGB-D video diffusion world model (:mod:`worldsim.models.world_model`)
``SamplerConfig``      how a chunk is sampled from it (:mod:`worldsim.simulator.sampler`)
``Memory``             the persistent-memory interface (:mod:`worldsim.memory`)
``build_memory``       a memory from its name and config fields
``RolloutStart``       start states of the rollout protocol (:mod:`worldsim.simulator.protocol`)
``RolloutResult``      what a simulator predicts for action sequences
``RolloutModel``       the protocol planners talk to (ground truth or learned)
``LearnedSimulator``   episodes and that protocol (:mod:`worldsim.simulator.learned`)
``WorldModelRollout``  its former name
``load_learned_simulator``  a checkpoint and its memory (:mod:`worldsim.simulator.checkpoints`)
``LPIPS``              LPIPS v0.1 without torchvision (:mod:`worldsim.metrics.lpips`)
``psnr``, ``ssim``     video metrics (:mod:`worldsim.metrics.video`)
=====================  ==============================================================

Dimension letters used in shape comments and docstrings across the project:

    B batch        T frames       C channels     H, W pixels (rows, columns)
    N tokens       D width        M map voxels   K candidates
    E elites       L horizon      A action dims

Conventions (frames, units, actions) are written down once, in :mod:`worldsim.geometry`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "WorldModel": "worldsim.models.world_model",
    "Memory": "worldsim.memory",
    "build_memory": "worldsim.memory",
    "RolloutStart": "worldsim.simulator.protocol",
    "RolloutResult": "worldsim.simulator.protocol",
    "RolloutModel": "worldsim.simulator.protocol",
    "LearnedSimulator": "worldsim.simulator.learned",
    "SamplerConfig": "worldsim.simulator.sampler",
    "WorldModelRollout": "worldsim.simulator.learned",
    "load_learned_simulator": "worldsim.simulator.checkpoints",
    "LPIPS": "worldsim.metrics.lpips",
    "psnr": "worldsim.metrics.video",
    "ssim": "worldsim.metrics.video",
}

__all__ = [
    "LPIPS",
    "LearnedSimulator",
    "Memory",
    "RolloutModel",
    "RolloutResult",
    "RolloutStart",
    "SamplerConfig",
    "WorldModel",
    "WorldModelRollout",
    "build_memory",
    "load_learned_simulator",
    "psnr",
    "ssim",
]

if TYPE_CHECKING:
    from worldsim.memory import Memory, build_memory
    from worldsim.metrics.lpips import LPIPS
    from worldsim.metrics.video import psnr, ssim
    from worldsim.models.world_model import WorldModel
    from worldsim.simulator.checkpoints import load_learned_simulator
    from worldsim.simulator.learned import LearnedSimulator, WorldModelRollout
    from worldsim.simulator.protocol import RolloutModel, RolloutResult, RolloutStart
    from worldsim.simulator.sampler import SamplerConfig


def __getattr__(name: str) -> Any:
    """Load an exported name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worldsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
