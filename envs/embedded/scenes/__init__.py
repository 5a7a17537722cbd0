"""The embedded houses: procedural multi-room scenes as textured ``.glb``, and loading any ``.glb``.

=============  ==================================================================
module         what it holds
=============  ==================================================================
``ids``        scene ids ``house-{split}-NNNN``, the fixed splits, one seed per house
``layout``     floor plans: rooms, doorways, furniture, pictures
``textures``   wall and floor patterns, the pictures' photographs
``meshes``     a layout as a textured triangle mesh
``files``      ``.glb`` in and out, the house cache, the up axis of other scenes
``basis``      Basis Universal (KTX2) textures in ``.glb``: decoded to PNG, encoded
=============  ==================================================================

Their public names are importable from this package (``from envs.embedded.scenes import
load_scene``).
"""

from __future__ import annotations

from envs.embedded.scenes.basis import (
    BasisEncodeConfig,
    decode_basis_image,
    decode_basis_textures,
    encode_basis_image,
    encode_basis_textures,
)
from envs.embedded.scenes.files import (
    CACHE_ENV_VAR,
    UP_AXES,
    decoded_texture_dir,
    default_cache_dir,
    export_glb,
    habitat_up_front,
    load_glb,
    load_scene,
    scene_mesh,
    scene_meshes,
    to_y_up,
)
from envs.embedded.scenes.ids import (
    GENERATOR_VERSION,
    SCENES_PER_SPLIT,
    SPLITS,
    parse_scene_id,
    scene_ids,
    scene_seed,
)
from envs.embedded.scenes.layout import (
    CLEARANCE_RADIUS_M,
    Door,
    Furniture,
    HouseLayout,
    MaterialSpec,
    Picture,
    Room,
    generate_layout,
    room_is_navigable,
)
from envs.embedded.scenes.meshes import (
    STOREY_SLAB_M,
    build_scene,
    generate_house,
    storey_house,
)
from envs.embedded.scenes.textures import (
    material_texture,
    picture_image,
)

__all__ = [
    "CACHE_ENV_VAR",
    "CLEARANCE_RADIUS_M",
    "GENERATOR_VERSION",
    "SCENES_PER_SPLIT",
    "SPLITS",
    "STOREY_SLAB_M",
    "UP_AXES",
    "BasisEncodeConfig",
    "Door",
    "Furniture",
    "HouseLayout",
    "MaterialSpec",
    "Picture",
    "Room",
    "build_scene",
    "decode_basis_image",
    "decode_basis_textures",
    "decoded_texture_dir",
    "default_cache_dir",
    "encode_basis_image",
    "encode_basis_textures",
    "export_glb",
    "generate_house",
    "generate_layout",
    "habitat_up_front",
    "load_glb",
    "load_scene",
    "material_texture",
    "parse_scene_id",
    "picture_image",
    "room_is_navigable",
    "scene_ids",
    "scene_mesh",
    "scene_meshes",
    "scene_seed",
    "storey_house",
    "to_y_up",
]
