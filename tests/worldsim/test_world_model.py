import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

from worldsim.geometry import plucker_rays, pose_from_position_yaw
from worldsim.models.vae import RGBDAutoencoder
from worldsim.models.world_model import DEFAULT_CHECKPOINT, WorldModel, world_model_config
from worldsim.simulator.chunks import chain_poses, step_poses


def test_named_configs_build_and_validate():
    small = WorldModel.from_config_name("small")
    assert small.latent_size == (16, 16) and small.latent_channels == 8
    assert small.transformer.config.ray_channels == 6 * 4 * 4
    cogvideox = world_model_config("cogvideox")
    assert cogvideox["num_layers"] == 30 and cogvideox["vae_temporal_compression_ratio"] == 4
    with pytest.raises(ValueError, match="unknown world model config 'huge'"):
        world_model_config("huge")
    with pytest.raises(ValueError, match="unknown WorldModel settings \\['layers'\\]"):
        world_model_config("tiny", layers=3)
    with pytest.raises(ValueError, match="n_future=4: this VAE compresses time by 4"):
        WorldModel.from_config_name("cogvideox", n_future=4, num_layers=1)
    with pytest.raises(ValueError, match="multiples of 4"):
        WorldModel.from_config_name("tiny", height=30)


def test_chunk_rays_match_pixel_unshuffled_plucker_rays(tiny_model):
    k = tiny_model.default_intrinsics(2)
    poses = pose_from_position_yaw(torch.randn(2, 2, 3), torch.randn(2, 2))
    rays = tiny_model.chunk_rays(k, poses)
    assert rays.shape == (2, 2, 24, 16, 16)
    full = plucker_rays(k.repeat_interleave(2, 0), poses.reshape(4, 4, 4), 32, 32)
    reference = F.pixel_unshuffle(full, 2).reshape(2, 2, 24, 16, 16)
    torch.testing.assert_close(rays, reference, rtol=0, atol=0)


def test_chunk_rays_with_temporal_compression_group_frames():
    model = WorldModel.from_config_name(
        "tiny",
        vae_block_out_channels=(8, 8, 16),
        vae_norm_num_groups=4,
        vae_temporal_compression_ratio=4,
        n_future=5,
        height=32,
        width=32,
        patch_size=1,
    )
    k = model.default_intrinsics(1)
    poses = pose_from_position_yaw(torch.randn(1, 5, 3), torch.randn(1, 5))
    rays = model.chunk_rays(k, poses)  # (1, 2, 4 * 6 * 16, 8, 8)
    assert rays.shape == (1, 2, 384, 8, 8)
    frames = F.pixel_unshuffle(plucker_rays(k.expand(5, 3, 3), poses[0], 32, 32), 4)
    grouped = rays.reshape(1, 2, 4, 96, 8, 8)
    for slot in range(4):  # the first latent frame is frame 0 four times
        assert torch.equal(grouped[0, 0, slot], frames[0])
        assert torch.equal(grouped[0, 1, slot], frames[1 + slot])


def test_chained_step_poses_hand_computed(tiny_model):
    actions = torch.tensor([[1, 2, 1]])  # forward, turn left 10 deg, forward
    poses = chain_poses(step_poses(actions, tiny_model))[0]
    torch.testing.assert_close(poses[0, :3, 3], torch.tensor([0.0, 0.0, 0.25]))
    # after turning left, forward (camera +z) points to camera -x by sin(10 deg)
    angle = math.radians(10.0)
    expected = torch.tensor([-0.25 * math.sin(angle), 0.0, 0.25 + 0.25 * math.cos(angle)])
    torch.testing.assert_close(poses[2, :3, 3], expected)  # float32 trig, default tolerance


def test_save_load_equality_and_errors(tmp_path, tiny_model, tiny_batch):
    tiny_model.set_latent_scaling_factor(0.8)
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = WorldModel.from_pretrained(tmp_path / "model")
    # loaded tensors sit in fresh, 64-byte aligned memory: kernels take the same path as before
    assert all(t.data_ptr() % 64 == 0 for t in [*loaded.parameters(), *loaded.buffers()])
    assert loaded.vae.scaling_factor == 0.8
    public = [k for k in tiny_model.config if not k.startswith("_")]
    assert all(json.dumps(loaded.config[k]) == json.dumps(tiny_model.config[k]) for k in public)
    for (name, a), (_, b) in zip(
        tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with torch.no_grad():
        latents = tiny_model.encode(tiny_batch["rgb"], tiny_batch["depth"])
        assert torch.equal(latents, loaded.encode(tiny_batch["rgb"], tiny_batch["depth"]))
    # A re-saved loaded model does not record the folder it came from (machine-local path).
    loaded.save_pretrained(tmp_path / "again")
    assert "_name_or_path" not in json.loads((tmp_path / "again" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no world model checkpoint"):
        WorldModel.from_pretrained(tmp_path / "missing")
    RGBDAutoencoder(block_out_channels=(8,), norm_num_groups=4).save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="holds a 'RGBDAutoencoder' checkpoint"):
        WorldModel.from_pretrained(tmp_path / "vae")


def test_default_checkpoint_loads_with_no_arguments():
    model = WorldModel.from_pretrained()
    assert model.config.height == 64 and not model.training
    assert str(DEFAULT_CHECKPOINT).endswith("worldsim/checkpoints/world_model_small")


def test_frames_of_wrong_size_are_rejected(tiny_model, tiny_batch):
    with pytest.raises(ValueError, match="frames of 32x32 pixels"):
        tiny_model.encode(tiny_batch["rgb"][..., :16, :16], tiny_batch["depth"][..., :16, :16])
    with pytest.raises(ValueError, match="depth is required"):
        tiny_model.encode(tiny_batch["rgb"], None)


def test_from_cogvideox_at_reduced_width(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3,
            block_out_channels=(8, 8, 16),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=4,
            temporal_compression_ratio=4,
            scaling_factor=1.2,
        )
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=8,
            out_channels=4,
            time_embed_dim=16,
            text_embed_dim=8,
            num_layers=1,
            sample_width=8,
            sample_height=8,
            sample_frames=5,
            patch_size=2,
            max_text_seq_length=4,
        )
    vae.save_pretrained(tmp_path / "vae")
    transformer.save_pretrained(tmp_path / "transformer")
    model = WorldModel.from_cogvideox(tmp_path, n_future=5, height=32, width=32, memory_token_dim=8)
    assert model.vae.scaling_factor == 1.2 and model.vae.temporal_compression == 4
    source, target = transformer.state_dict(), model.transformer.state_dict()
    for name in source:
        if name.startswith(("transformer_blocks", "time_embedding", "norm_out")):
            assert torch.equal(source[name], target[name]), name
    kernel = target["patch_embed.proj.weight"]  # noisy RGB, noisy depth, context RGB-D, rays
    assert torch.equal(kernel[:, :4], source["patch_embed.proj.weight"][:, :4])
    assert torch.equal(kernel[:, 8:12], source["patch_embed.proj.weight"][:, 4:])
    assert kernel[:, 4:8].abs().sum() == 0 and kernel[:, 16:].abs().sum() == 0
    rows = source["proj_out.weight"].shape[0]
    assert torch.equal(target["proj_out.weight"][rows:], source["proj_out.weight"])
    assert model.future_latent_shape(1) == (1, 2, 8, 8, 8)
    rgb, depth = torch.rand(1, 1, 3, 32, 32), torch.rand(1, 1, 1, 32, 32)
    with torch.no_grad():
        context = model.encode(rgb, depth)  # one conditioning frame -> one latent frame
        rays = model.chunk_rays(model.default_intrinsics(1), torch.eye(4).expand(1, 5, 4, 4))
        out = model.predict(torch.randn(1, 2, 8, 8, 8), torch.tensor([500]), context, rays)
    assert out.shape == (1, 2, 8, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(FileNotFoundError, match="no CogVideoX transformer"):
        WorldModel.from_cogvideox(tmp_path / "missing")
