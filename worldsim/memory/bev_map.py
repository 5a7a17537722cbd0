"""Bird's-eye (2D) feature map: the paper's "w/ 2D-Map" ablation.

The same lifted features as :class:`~worldsim.memory.feature_map.FeatureMap3D`, max-pooled into
square floor cells ``floor((x, z) / cell_size)`` (world x and z, metres; height discarded).
Tokens: cell features, then a 2D sinusoidal embedding of the cell centre relative to the first
target camera: the centre, placed at that camera's height, is expressed in the camera's OpenCV
frame and its (x right, z forward) coordinates are embedded. Selection and ordering follow the
feature map's rule with the planar distance to the target cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from worldsim.geometry import invert_rigid
from worldsim.memory.base import DEFAULT_MAX_DEPTH, PositionEncoding
from worldsim.memory.feature_map import GridMemory, _check_grid_fields
from worldsim.models.encoders import EncoderConfig, FeatureEncoder


@dataclass(frozen=True)
class BEVMapConfig:
    """Settings of :class:`BEVMap` (fields as :class:`FeatureMapConfig`; cells are 2D).

    Attributes:
        encoder: image encoder (default VGG16 ``relu3_3``, ImageNet weights).
        voxel_size: floor cell edge, metres, in [0.001, 10].
        max_voxels: most cells per map, >= 1 (least recently observed evicted beyond it).
        max_tokens: most tokens per row, >= 1, or None.
        token_radius: only cells within this planar distance of a target camera, metres, or None.
        depth_sampling: ``"median"`` or ``"nearest"``.
        max_depth: depths above this are no hit, metres, in (0, 1000].
        position: the sinusoidal position embedding (2 axes).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    voxel_size: float = 0.1
    max_voxels: int = 1 << 16
    max_tokens: int | None = 4096
    token_radius: float | None = None
    depth_sampling: str = "median"
    max_depth: float = DEFAULT_MAX_DEPTH
    position: PositionEncoding = field(default_factory=PositionEncoding)

    def __post_init__(self) -> None:
        _check_grid_fields(self, type(self).__name__)


class BEVMap(GridMemory):
    """Bird's-eye feature map (see the module docstring).

    Args:
        config: settings; default :class:`BEVMapConfig`.
        encoder: a ready encoder to use instead of building ``config.encoder``.
    """

    axes = 2

    def __init__(
        self, config: BEVMapConfig | None = None, encoder: FeatureEncoder | None = None
    ) -> None:
        super().__init__(config or BEVMapConfig(), encoder)

    def cells_of(self, points: Tensor) -> Tensor:
        """Floor cells ``floor((x, z) / cell_size)`` (P, 2) of world points (P, 3)."""
        return torch.floor(points[:, [0, 2]] / self.config.voxel_size).long()

    def token_coords(self, centres: Tensor, world_to_reference: Tensor) -> Tensor:
        """Planar offsets (P, 2): (x right, z forward) of the centres in the reference camera."""
        camera_height = invert_rigid(world_to_reference)[:, 1, 3]
        lifted = torch.stack([centres[:, 0], camera_height, centres[:, 1]], dim=-1)  # (P, 3)
        rotation, translation = world_to_reference[:, :3, :3], world_to_reference[:, :3, 3]
        local = torch.einsum("pij,pj->pi", rotation, lifted) + translation
        return local[:, [0, 2]]

    def camera_distance(self, centres: Tensor, cameras: Tensor) -> Tensor:
        """Planar (x, z) distance (P,) to the nearest camera of (P, L, 3)."""
        return (centres[:, None, :] - cameras[..., [0, 2]]).norm(dim=-1).amin(dim=-1)
