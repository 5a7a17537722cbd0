import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from worldsim.models.vae import RGBDAutoencoder, fold_single_frame_convolutions


def tiny_vae(**overrides) -> RGBDAutoencoder:
    settings = dict(block_out_channels=(8, 16), latent_channels=2, norm_num_groups=4)
    settings.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return RGBDAutoencoder(**settings).eval()


def clip(frames=3, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(2, frames, 3, size, size, generator=generator)
    depth = torch.rand(2, frames, 1, size, size, generator=generator) * 10.0
    return rgb, depth


def test_encode_shapes_and_separate_modalities():
    vae = tiny_vae()
    rgb, depth = clip()
    with torch.no_grad():
        latents = vae.encode(rgb, depth)
        rgb_only = vae.encode_images(rgb * 2 - 1)
        depth_only = vae.encode_images(vae.depth_to_image(depth))
    assert latents.shape == (2, 3, 4, 8, 8)  # RGB latents then depth latents, 2x spatial
    assert torch.equal(latents[:, :, :2], rgb_only)
    assert torch.equal(latents[:, :, 2:], depth_only)
    decoded_rgb, decoded_depth = vae.decode(latents, with_depth=True)
    assert decoded_rgb.shape == rgb.shape and decoded_depth.shape == depth.shape
    assert decoded_rgb.min() >= 0 and decoded_rgb.max() <= 1
    assert decoded_depth.min() >= 0 and decoded_depth.max() <= 10


def test_temporal_compression_frame_counts():
    vae = tiny_vae(block_out_channels=(8, 16, 16), temporal_compression_ratio=4)
    assert [vae.num_latent_frames(n) for n in (1, 5, 9)] == [1, 2, 3]
    rgb, depth = clip(frames=5)
    with torch.no_grad():
        latents = vae.encode(rgb, depth)
    assert latents.shape == (2, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="1 \\+ 4 \\* k frames"):
        vae.num_latent_frames(4)


def test_depth_image_mapping_hand_values():
    vae = tiny_vae()
    depth = torch.tensor([0.0, 5.0, 10.0]).reshape(1, 3, 1, 1, 1)
    image = vae.depth_to_image(depth)
    assert image.shape == (1, 3, 3, 1, 1)
    assert torch.equal(image[0, :, 0, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(vae.image_to_depth(image), depth)


def test_scaling_factor_scales_latents():
    vae = tiny_vae()
    rgb, depth = clip()
    with torch.no_grad():
        base = vae.encode(rgb, depth)
        vae.set_scaling_factor(2.5)
        scaled = vae.encode(rgb, depth)
        decoded = vae.decode(scaled, True)[0]
        vae.set_scaling_factor(1.0)
        reference = vae.decode(base, True)[0]
    # float32 rounding of x * 2.5 and the division back
    torch.testing.assert_close(scaled, base * 2.5, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(decoded, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="scaling_factor"):
        vae.set_scaling_factor(0.0)


def test_bad_input_errors():
    vae = tiny_vae()
    rgb, depth = clip()
    with pytest.raises(ValueError, match="depth must lie in"):
        vae.encode(rgb, depth + 20.0)
    with pytest.raises(ValueError, match="NaN"):
        vae.encode(rgb, depth.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="rgb must lie in"):
        vae.encode(rgb * 255, depth)
    with pytest.raises(ValueError, match="multiples"):
        vae.encode(rgb[..., :15, :15], None)
    with pytest.raises(ValueError, match="norm_num_groups"):
        RGBDAutoencoder(block_out_channels=(6, 16), norm_num_groups=4)


def test_save_load_and_training_losses(tmp_path):
    vae = tiny_vae()
    vae.set_scaling_factor(0.7)
    vae.save_pretrained(tmp_path)
    loaded = RGBDAutoencoder.from_pretrained(tmp_path).eval()
    # loaded tensors sit in fresh, 64-byte aligned memory: kernels take the same path as before
    assert all(t.data_ptr() % 64 == 0 for t in [*loaded.parameters(), *loaded.buffers()])
    assert loaded.scaling_factor == 0.7
    rgb, depth = clip()
    with torch.no_grad():
        assert torch.equal(vae.encode(rgb, depth), loaded.encode(rgb, depth))
    reconstruction, kl = vae(rgb, depth, torch.Generator().manual_seed(0))
    again, kl_again = vae(rgb, depth, torch.Generator().manual_seed(0))
    assert torch.equal(reconstruction, again) and torch.equal(kl, kl_again)
    assert reconstruction > 0 and kl >= 0


def test_loads_a_local_cogvideox_vae(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        original = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3,
            block_out_channels=(8, 16, 16),
            latent_channels=2,
            layers_per_block=1,
            norm_num_groups=4,
            temporal_compression_ratio=4,
            scaling_factor=0.9,
        ).eval()
    original.save_pretrained(tmp_path / "vae")
    wrapper = RGBDAutoencoder.from_cogvideox(tmp_path).eval()
    assert wrapper.scaling_factor == 0.9
    rgb, _ = clip(frames=5)
    with torch.no_grad():
        expected = original.encode(rgb.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode() * 0.9
        got = wrapper.encode(rgb)
    assert got.shape[1] == 2
    assert torch.equal(got, expected.permute(0, 2, 1, 3, 4))
    with pytest.raises(FileNotFoundError, match="no CogVideoX VAE"):
        RGBDAutoencoder.from_cogvideox(tmp_path / "missing")


def test_ratio_one_codes_each_frame_on_its_own():
    # An image VAE: a frame's latent is the same whichever clip it is cut from, so latents can
    # be cached per frame; and it equals the diffusers VAE run on that frame alone.
    vae = tiny_vae()
    rgb, depth = clip(frames=4)
    with torch.no_grad():
        whole = vae.encode(rgb, depth)
        for t in range(4):
            alone = vae.encode(rgb[:, t : t + 1], depth[:, t : t + 1])
            torch.testing.assert_close(whole[:, t : t + 1], alone, rtol=1e-5, atol=1e-6)
        frame = rgb[:, 2].unsqueeze(2) * 2 - 1  # (B, 3, 1, H, W)
        direct = vae.vae.encode(frame).latent_dist.mode() * vae.scaling_factor
        torch.testing.assert_close(whole[:, 2, :2], direct[:, :, 0], rtol=1e-5, atol=1e-6)
        # Decoding is per frame too: shuffling the latent frames shuffles the decoded frames.
        order = torch.tensor([3, 1, 0, 2])
        decoded, _ = vae.decode(whole, with_depth=True)
        shuffled, _ = vae.decode(whole[:, order], with_depth=True)
        torch.testing.assert_close(shuffled, decoded[:, order], rtol=1e-5, atol=1e-5)


def test_single_frame_convolutions_fold_to_2d_exactly():
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d

    vae = tiny_vae()
    convs = [m for m in vae.vae.modules() if isinstance(m, CogVideoXCausalConv3d)]
    assert convs and all("forward" in vars(m) for m in convs)  # folded at construction
    reference = tiny_vae()
    for module in reference.vae.modules():
        if isinstance(module, CogVideoXCausalConv3d):
            del module.forward  # the diffusers 3D path
    rgb, depth = clip(frames=2, seed=3)
    with torch.no_grad():
        latents = vae.encode(rgb, depth)
        torch.testing.assert_close(latents, reference.encode(rgb, depth), rtol=1e-5, atol=1e-5)
        decoded = vae.decode(latents, with_depth=True)
        expected = reference.decode(latents, with_depth=True)
    for ours, theirs in zip(decoded, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # a replicate-padded convolution and a several-frame input (the 3D path) agree as well
    conv = CogVideoXCausalConv3d(3, 5, kernel_size=3, pad_mode="replicate")
    x = torch.randn(2, 3, 1, 6, 6)
    three_d = CogVideoXCausalConv3d.forward(conv, x)[0]
    assert fold_single_frame_convolutions(conv) == 1
    torch.testing.assert_close(conv(x)[0], three_d, rtol=1e-5, atol=1e-5)
    frames = torch.randn(1, 3, 4, 6, 6)
    torch.testing.assert_close(conv(frames)[0], CogVideoXCausalConv3d.forward(conv, frames)[0])
    # gradients reach the 3D kernel through the fold
    conv(x)[0].sum().backward()
    assert conv.conv.weight.grad is not None and conv.conv.weight.grad.abs().sum() > 0
