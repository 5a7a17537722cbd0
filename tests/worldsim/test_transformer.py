import pytest
import torch

from worldsim.models.transformer import WorldTransformer


def build(seed=0, memory_token_dim=6, **overrides):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WorldTransformer(
            latent_channels=4,
            num_context_latent_frames=2,
            ray_channels=6,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            time_embed_dim=16,
            memory_token_dim=memory_token_dim,
            **overrides,
        ).eval()


def inputs(batch=2, frames=2, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(batch, frames, 4, 4, 6, generator=g)
    context = torch.randn(batch, 2, 4, 4, 6, generator=g)
    rays = torch.randn(batch, frames, 6, 4, 6, generator=g)
    memory = torch.randn(batch, tokens, 6, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    return noisy, torch.tensor([3, 700])[:batch], context, rays, memory, mask


def open_gates(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.memory_blocks:
            block.norm.video.weight.copy_(torch.randn(block.norm.video.weight.shape, generator=g))


def test_output_shape_and_determinism():
    noisy, t, context, rays, memory, mask = inputs()
    first = build()(noisy, t, context, rays, memory, mask)
    second = build()(noisy, t, context, rays, memory, mask)
    assert first.shape == noisy.shape
    assert torch.equal(first, second)
    assert not torch.equal(first, build(seed=1)(noisy, t, context, rays, memory, mask))


def test_fresh_memory_blocks_leave_backbone_output_unchanged():
    model = build()
    noisy, t, context, rays, memory, mask = inputs()
    backbone = build(memory_token_dim=0)
    backbone.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith(("memory", "camera"))}
    )
    with torch.no_grad():
        reference = backbone(noisy, t, context, rays)
        assert torch.equal(model(noisy, t, context, rays), reference)
        assert torch.equal(model(noisy, t, context, rays, memory, mask), reference)
        open_gates(model)
        assert not torch.allclose(model(noisy, t, context, rays, memory, mask), reference)


def test_empty_memory_gives_backbone_output_even_with_open_gates():
    model = build()
    open_gates(model)
    noisy, t, context, rays, memory, mask = inputs()
    with torch.no_grad():
        reference = model(noisy, t, context, rays)
        empty = model(noisy, t, context, rays, memory[:, :0], mask[:, :0])
        mask[1] = False  # row 1 has only padding
        mixed = model(noisy, t, context, rays, memory, mask)
        full = model(noisy, t, context, rays, memory, torch.ones_like(mask))
    assert torch.equal(empty, reference)
    assert torch.equal(mixed[1], reference[1])
    assert torch.equal(mixed[0], full[0])


def test_padding_tokens_are_ignored():
    model = build()
    open_gates(model)
    noisy, t, context, rays, memory, mask = inputs()
    mask[:, 3:] = False
    changed = memory.clone()
    changed[:, 3:] = 100.0
    with torch.no_grad():
        padded = model(noisy, t, context, rays, memory, mask)
        garbage = model(noisy, t, context, rays, changed, mask)
        trimmed = model(noisy, t, context, rays, memory[:, :3], mask[:, :3])
    assert torch.equal(padded, garbage)
    # a softmax over 3 vs 5 keys (2 masked) differs only by float32 summation order
    torch.testing.assert_close(padded, trimmed, rtol=1e-5, atol=1e-5)


def test_stage_two_gradients_reach_only_memory_branch():
    model = build().train()
    open_gates(model)
    memory_ids = {id(p) for p in model.memory_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in memory_ids)
    noisy, t, context, rays, memory, mask = inputs()
    model(noisy, t, context, rays, memory, mask).square().mean().backward()
    for name, parameter in model.named_parameters():
        if id(parameter) in memory_ids:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_stage_one_gradients_reach_every_backbone_parameter():
    model = build().train()
    noisy, t, context, rays, _, _ = inputs()
    model(noisy, t, context, rays).square().mean().backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("memory", "camera")):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bad_inputs():
    model = build()
    noisy, t, context, rays, memory, mask = inputs()
    with pytest.raises(ValueError, match="noisy latents have 3 channels"):
        model(noisy[:, :, :3], t, context, rays)
    with pytest.raises(ValueError, match="context latents must have shape"):
        model(noisy, t, context[:, :1], rays)
    with pytest.raises(ValueError, match="ray images must have shape"):
        model(noisy, t, context, rays[:, :1])
    with pytest.raises(ValueError, match="memory tokens must have shape"):
        model(noisy, t, context, rays, memory[..., :5], mask)
    with pytest.raises(ValueError, match="memory_mask must be"):
        model(noisy, t, context, rays, memory, None)
    with pytest.raises(ValueError, match="no memory branch"):
        build(memory_token_dim=0)(noisy, t, context, rays, memory, mask)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        WorldTransformer(num_layers=0)
