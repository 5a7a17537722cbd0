"""The latent cache: the same latents as encoding each clip, bound to one VAE and one data set."""

import numpy as np
import pytest
import torch

from tests.worldsim.conftest import make_tiny
from worldsim.data import (
    SHARD_DIR,
    ClipConfig,
    ClipDataset,
    Episode,
    TrajectoryStore,
    collate_clips,
    complete_plan,
    shard_name,
    write_manifest,
    write_plan,
    write_shard,
)
from worldsim.data.latents import LatentCache
from worldsim.geometry import action_to_relative_pose, intrinsics_from_hfov, pose_from_position_yaw
from worldsim.training.losses import diffusion_loss

SIZE = 32  # the tiny model's frame size


def write_dataset(root, seed=0, scenes=("scene-a", "scene-b"), frames=12):
    rng = np.random.default_rng(seed)
    write_manifest(root, {"seed": seed})
    names = [shard_name(scene, 0, 1) for scene in scenes]
    write_plan(root, "all", names)
    for scene, name in zip(scenes, names, strict=True):
        actions = rng.integers(1, 4, frames - 1)
        poses = [pose_from_position_yaw(torch.tensor([1.0, 0.0, 2.0]), torch.tensor(0.3))]
        for relative in action_to_relative_pose(torch.as_tensor(actions)):
            poses.append(poses[-1] @ relative)
        episode = Episode(
            scene_id=scene,
            episode=0,
            rgb=rng.integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8),
            depth=rng.uniform(0.0, 9.0, (frames, SIZE, SIZE, 1)).astype(np.float32),
            cam_to_world=torch.stack(poses).numpy().astype(np.float32),
            intrinsics=np.repeat(intrinsics_from_hfov(90.0, SIZE, SIZE).numpy()[None], frames, 0),
            actions=np.append(actions, 0),
            collided=np.zeros(frames, dtype=bool),
            metadata={"policy": "synthetic"},
        )
        write_shard(root / SHARD_DIR / name, [episode])
    complete_plan(root, "all", {"episodes": len(scenes)})
    return TrajectoryStore(root)


@pytest.fixture
def store(tmp_path):
    return write_dataset(tmp_path / "data")


def clip_config(model):
    return ClipConfig(
        n_context=model.config.n_context, n_future=model.config.n_future, max_memory_frames=2
    )


def test_cached_latents_are_the_encoded_clips(store):
    model = make_tiny()
    cache = LatentCache.build(model, store, batch_frames=5, progress=False)
    assert [len(latents) for latents in cache.latents] == [12, 12]
    plain = ClipDataset(store, clip_config(model))
    cached = ClipDataset(store, clip_config(model), latents=cache)
    for index in (0, 4, len(plain) - 1):
        item = plain[index]
        with torch.no_grad():
            expected = model.encode(item["rgb"][None], item["depth"][None])[0]
        got = cached[index]["latents"]
        assert got.shape == expected.shape == (3, 8, 16, 16)
        # float16 storage: relative error about 1e-3.
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
    batch = collate_clips([cached[0], cached[1]])
    assert batch["latents"].shape == (2, 3, 8, 16, 16)


def test_training_on_cached_latents_gives_the_same_loss(store):
    model = make_tiny()
    cache = LatentCache.build(model, store, progress=False)
    items = [ClipDataset(store, clip_config(model), latents=cache)[i] for i in (0, 3)]
    batch = collate_clips(items)
    without = {k: v for k, v in batch.items() if k != "latents"}
    with torch.no_grad():
        cached = diffusion_loss(model, batch, torch.Generator().manual_seed(3))
        encoded = diffusion_loss(model, without, torch.Generator().manual_seed(3))
    assert cached.item() == pytest.approx(encoded.item(), rel=1e-2)
    batch["latents"] = batch["latents"][:, :, :4]
    with pytest.raises(ValueError, match=r"batch\['latents'\] must have shape"):
        diffusion_loss(model, batch, torch.Generator().manual_seed(3))


def test_a_saved_cache_loads_only_for_its_vae_and_data_set(store, tmp_path):
    model = make_tiny()
    cache = LatentCache.build(model, store, progress=False)
    path = cache.save(tmp_path / "latents.safetensors")
    loaded = LatentCache.load(path, model, store)
    assert loaded.episodes == cache.episodes
    for a, b in zip(loaded.latents, cache.latents, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="another VAE"):
        LatentCache.load(path, make_tiny(seed=1), store)
    other = write_dataset(tmp_path / "other", scenes=("scene-c",))
    with pytest.raises(ValueError, match="another data set"):
        LatentCache.load(path, model, other)
    with pytest.raises(ValueError, match="another data set"):
        ClipDataset(other, clip_config(model), latents=cache)
    with pytest.raises(FileNotFoundError, match="no latent cache"):
        LatentCache.load(tmp_path / "missing.safetensors", model, store)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable"):
        LatentCache.load(path, model, store)
    # load_or_build replaces a stale file.
    with pytest.warns(UserWarning, match="re-encoding: latent cache .* is unreadable"):
        rebuilt = LatentCache.load_or_build(path, model, store, progress=False)
    assert LatentCache.load(path, model, store).fingerprint == rebuilt.fingerprint


def test_a_vae_that_compresses_time_cannot_be_cached(store):
    model = make_tiny(
        n_context=1,
        n_future=5,
        vae_block_out_channels=(16, 32, 32),
        vae_temporal_compression_ratio=4,
    )
    with pytest.raises(ValueError, match="compresses time by 4"):
        LatentCache.build(model, store, progress=False)
