"""Trajectory data: the on-disk format, the store, view overlap (revisits), clips and latents.

=================  ================================================================
module             what it holds
=================  ================================================================
``format``         episodes, ids, manifest and plans, atomic file writes
``shards``         HDF5 shards: one file per scene and episode range
``store``          a data set folder as one store of episodes
``revisits``       view overlap: revisits by pose; clip memory coverage by visibility
``clips``          the torch ``Dataset`` of clips, its sampler and collate function
``latents``        every frame's VAE latents, encoded once (:class:`LatentCache`)
=================  ================================================================

The public names of these modules are importable from the package, ``from worldsim.data import
ClipDataset``, except those of ``latents``, which needs the world model and is imported on its
own: ``from worldsim.data.latents import LatentCache``.
"""

from __future__ import annotations

from worldsim.data.clips import (
    COVERAGE_DIR,
    MEMORY_SELECTIONS,
    ClipConfig,
    ClipDataset,
    ClipDraw,
    ClipSampler,
    collate_clips,
    episode_keys,
    frames_to_tensors,
    memory_frame_indices,
    overlap_memory_indices,
)
from worldsim.data.format import (
    COMPRESSIONS,
    DEPTH_DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    NO_ACTION,
    PLAN_DIR,
    SHARD_DIR,
    SHARD_SUFFIX,
    TEMP_SUFFIX,
    DataFormatError,
    Episode,
    check_choice,
    check_scene_id,
    commit_file,
    complete_plan,
    parse_shard_name,
    read_manifest,
    read_plans,
    shard_name,
    temporary_path,
    write_json_atomic,
    write_manifest,
    write_plan,
)
from worldsim.data.revisits import (
    CoverageConfig,
    RevisitConfig,
    clip_coverage,
    frustum_overlap,
    frustum_samples,
    revisit_fraction,
    revisit_sources,
    subsample_depth,
)
from worldsim.data.shards import (
    EpisodeInfo,
    ShardReader,
    write_shard,
)
from worldsim.data.store import (
    TrajectoryStore,
    dataset_statistics,
)

__all__ = [
    "COMPRESSIONS",
    "COVERAGE_DIR",
    "DEPTH_DTYPES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MEMORY_SELECTIONS",
    "NO_ACTION",
    "PLAN_DIR",
    "SHARD_DIR",
    "SHARD_SUFFIX",
    "TEMP_SUFFIX",
    "ClipConfig",
    "ClipDataset",
    "ClipDraw",
    "ClipSampler",
    "CoverageConfig",
    "DataFormatError",
    "Episode",
    "EpisodeInfo",
    "RevisitConfig",
    "ShardReader",
    "TrajectoryStore",
    "check_choice",
    "check_scene_id",
    "clip_coverage",
    "collate_clips",
    "commit_file",
    "complete_plan",
    "dataset_statistics",
    "episode_keys",
    "frames_to_tensors",
    "frustum_overlap",
    "frustum_samples",
    "memory_frame_indices",
    "overlap_memory_indices",
    "parse_shard_name",
    "read_manifest",
    "read_plans",
    "revisit_fraction",
    "revisit_sources",
    "shard_name",
    "subsample_depth",
    "temporary_path",
    "write_json_atomic",
    "write_manifest",
    "write_plan",
    "write_shard",
]
