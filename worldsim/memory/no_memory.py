"""No memory: the Navigation World Models baseline, which conditions on context frames only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from worldsim.memory.base import Memory


@dataclass(frozen=True)
class NoMemoryConfig:
    """Settings of :class:`NoMemory`.

    Attributes:
        token_dim: D reported to consumers (no token is ever produced), >= 1.
    """

    token_dim: int = 1

    def __post_init__(self) -> None:
        if self.token_dim < 1:
            raise ValueError(f"NoMemoryConfig.token_dim must be >= 1, got {self.token_dim}")


class NoMemory(Memory):
    """A memory that remembers nothing: :meth:`tokens` always returns N = 0.

    Inputs are still validated, so swapping memories never hides a bad call.

    Args:
        config: settings; default :class:`NoMemoryConfig`.
    """

    def __init__(self, config: NoMemoryConfig | None = None) -> None:
        super().__init__()
        self.config = config or NoMemoryConfig()
        self.token_dim = self.config.token_dim

    def reset(self, batch_size: int, device: torch.device | str | None = None) -> None:
        """Set the batch size (see :meth:`Memory.reset`)."""
        self._start_reset(batch_size, device)

    def update(
        self,
        rgb: Tensor,
        depth: Tensor,
        intrinsics: Tensor,
        cam_to_world: Tensor,
        valid: Tensor | None = None,
        source: str | Tensor = "observed",
    ) -> None:
        """Validate the frames and forget them (see :meth:`Memory.update`)."""
        self._check_frames(rgb, depth, intrinsics, cam_to_world, valid)

    def tokens(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Empty tokens (B, 0, D) and mask (B, 0)."""
        self._check_targets(target_cam_to_world, target_intrinsics, image_size)
        batch = self.batch_size
        return (
            torch.zeros(batch, 0, self.token_dim, device=self.device),
            torch.zeros(batch, 0, dtype=torch.bool, device=self.device),
        )

    def select(self, index: Tensor) -> NoMemory:
        """A NoMemory of batch size ``len(index)``."""
        index = self._check_select_index(index)
        out = NoMemory(self.config)
        out.device, out.batch_size = self.device, index.numel()
        return out
