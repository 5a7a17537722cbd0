"""Tiny world-model fixtures: real classes at test size, seeded, no downloads."""

import pytest
import torch

from worldsim.data.synthetic import SyntheticRoomClips
from worldsim.models.world_model import WorldModel


def make_tiny(seed: int = 0, **overrides) -> WorldModel:
    """The tiny configuration, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WorldModel.from_config_name("tiny", **overrides)
    return model.eval()


def randomise_memory_gates(model: WorldModel, seed: int = 0) -> None:
    """Give the memory blocks non-zero gates, as after some stage-2 training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.transformer.memory_blocks:
            weight = block.norm.video.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)


@pytest.fixture
def tiny_model() -> WorldModel:
    return make_tiny()


@pytest.fixture(scope="session")
def tiny_batch() -> dict[str, torch.Tensor]:
    """One batch of 2 synthetic box-room clips for the tiny config (3 memory frames each)."""
    config = WorldModel.from_config_name("tiny").config
    return next(iter(SyntheticRoomClips(config, batch_size=2, memory_frames=3, seed=0)))
