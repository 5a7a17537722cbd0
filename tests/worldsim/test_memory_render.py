"""The world model reading its memory as a pixel-aligned render (memory_render=True)."""

import dataclasses

import pytest
import torch

from tests.worldsim.conftest import make_tiny
from tests.worldsim.test_transformer import build
from worldsim.memory import MemoryRender, build_memory
from worldsim.simulator.chunks import chain_poses, check_memory_fits, rollout, step_poses
from worldsim.simulator.sampler import (
    SamplerConfig,
    _skipped_steps,
    composite_render,
    generate_chunk,
    sample_chunk,
)
from worldsim.training.losses import diffusion_loss
from worldsim.training.trainer import freeze_for_stage

PLAIN = SamplerConfig(num_inference_steps=2, render_init=0.0, render_fill=0)
"""Two steps from pure noise, no fill rings: the network's own pixels wherever the map is empty."""


def _transformer(render_channels=5, seed=0):
    return build(seed, memory_token_dim=0, render_channels=render_channels)


def _inputs(batch=2, frames=2, render_channels=5):
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(batch, frames, 4, 4, 6, generator=g)
    context = torch.randn(batch, 2, 4, 4, 6, generator=g)
    rays = torch.randn(batch, frames, 6, 4, 6, generator=g)
    render = torch.randn(batch, frames, render_channels, 4, 6, generator=g)
    return noisy, torch.tensor([3, 700])[:batch], context, rays, render


def _rendered_memory():
    return build_memory("rendered", voxel_size=0.05)


def test_a_fresh_render_branch_leaves_the_backbone_unchanged_until_trained():
    model = _transformer()
    backbone = _transformer(render_channels=0)
    backbone.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("render_embed")}
    )
    noisy, t, context, rays, render = _inputs()
    with torch.no_grad():
        reference = backbone(noisy, t, context, rays)
        assert torch.equal(model(noisy, t, context, rays, render=render), reference)
        model.render_embed.weight.normal_(generator=torch.Generator().manual_seed(1))
        changed = model(noisy, t, context, rays, render=render)
        assert (changed - reference).abs().mean() > 1e-3  # the render now reaches the output
        other = model(noisy, t, context, rays, render=render.roll(1, 0))
        assert (other - changed).abs().mean() > 1e-3  # and its content matters


def test_render_shapes_are_checked():
    model = _transformer()
    noisy, t, context, rays, render = _inputs()
    with pytest.raises(ValueError, match=r"memory render must have shape \(2, 2, 5, 4, 6\)"):
        model(noisy, t, context, rays, render=render[:, :, :3])
    with pytest.raises(ValueError, match="reads no memory render"):
        _transformer(render_channels=0)(noisy, t, context, rays, render=render)
    assert model.memory_parameters() == list(model.render_embed.parameters())


def test_encode_render_gives_latents_and_cell_coverage():
    model = make_tiny(memory_token_dim=0, memory_render=True)
    rgb = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    depth = torch.full((2, 3, 1, 32, 32), 2.0)
    mask = torch.zeros(2, 3, 1, 32, 32, dtype=torch.bool)
    mask[..., :16] = True  # the left half is covered
    encoded = model.encode_render(rgb, depth, mask)
    channels = model.latent_channels
    assert encoded.shape == (2, 3, channels + 1, *model.latent_size)
    coverage = encoded[:, :, -1]
    half = model.latent_size[1] // 2
    assert torch.equal(coverage[..., :half], torch.ones_like(coverage[..., :half]))
    assert torch.equal(coverage[..., half:], torch.zeros_like(coverage[..., half:]))
    # Uncovered pixels are mid-grey without depth, whatever the render held there.
    noisy_rgb = rgb.clone()
    noisy_rgb[..., 16:] = 0.0
    assert torch.equal(model.encode_render(noisy_rgb, depth, mask), encoded)


def test_memory_kinds_must_match_the_model():
    render_model = make_tiny(memory_token_dim=0, memory_render=True)
    token_memory = build_memory("feature_map", encoder="pooled_color", voxel_size=0.25)
    token_model = make_tiny(memory_token_dim=token_memory.token_dim)
    check_memory_fits(render_model, _rendered_memory())
    with pytest.raises(ValueError, match="needs a memory that gives one"):
        check_memory_fits(render_model, token_memory)
    with pytest.raises(ValueError, match="reads map tokens but RenderedMemory gives none"):
        check_memory_fits(token_model, _rendered_memory())
    with pytest.raises(ValueError, match="needs use_depth=True"):
        make_tiny(memory_token_dim=0, memory_render=True, use_depth=False)


def _turn_left(model, tiny_batch, memory, insert_start_frames=True, sampler=PLAIN):
    """Roll the batch's start frames out by one chunk of left turns (fixed noise)."""
    n_context = model.config.n_context
    actions = torch.full((2, model.config.n_future), 2, dtype=torch.int64)
    return rollout(
        model,
        tiny_batch["rgb"][:, :n_context],
        tiny_batch["depth"][:, :n_context],
        tiny_batch["cam_to_world"][:, :n_context],
        actions,
        sampler=sampler,
        intrinsics=tiny_batch["intrinsics"][:, 0],
        memory=memory,
        insert_start_frames=insert_start_frames,
        generator=torch.Generator().manual_seed(0),
    )


def test_rollout_renders_the_memory_and_writes_generated_points(tiny_batch):
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=90.0)
    with torch.no_grad():  # open the render branch, as after training
        model.transformer.render_embed.weight.normal_(generator=torch.Generator().manual_seed(0))
    n_context = model.config.n_context
    rgb, depth = tiny_batch["rgb"][:, :n_context], tiny_batch["depth"][:, :n_context]
    poses = tiny_batch["cam_to_world"][:, :n_context]

    memory = _rendered_memory()
    memory.reset(2)
    result = _turn_left(model, tiny_batch, memory)
    points = memory.points()
    assert points.observed.any() and (~points.observed).any()  # start frames, generated frames
    # The render is read: other start frames in the map change the generated chunk.
    other = _rendered_memory()
    other.reset(2)
    other.update(rgb.roll(1, 0), depth.roll(1, 0), tiny_batch["intrinsics"][:, :n_context], poses)
    shuffled = _turn_left(model, tiny_batch, other, insert_start_frames=False)
    assert (shuffled.rgb - result.rgb).abs().mean() > 1e-4


def test_memory_stage_of_a_render_model_trains_the_transformer(tiny_batch):
    model = make_tiny(memory_token_dim=0, memory_render=True).train()
    trained = freeze_for_stage(model, "memory")
    assert {id(p) for p in trained} == {id(p) for p in model.transformer.parameters()}
    loss = diffusion_loss(
        model,
        tiny_batch,
        torch.Generator().manual_seed(0),
        memory=_rendered_memory(),
        context_noise=0.1,
        render_pose_noise=(0.02, 1.0),
    )
    loss.backward()
    assert model.transformer.render_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters())


def test_a_tiny_render_model_trained_on_look_arounds_uses_the_memory_content(tmp_path):
    """The control: another scene's memory frames (the clip's own context kept) score worse.

    Look-arounds with 90-degree turns make the memory matter: after two turns the future view
    faces away from the context frame, and only earlier frames of the turn saw it. 200 steps of
    batch 8 (about a minute on one core) reach, measured: loss 0.172 with the clip's memory,
    0.199 with another clip's, 0.223 without any. The bounds keep half of those gaps.
    """
    from torch.utils.data import DataLoader, RandomSampler

    from envs.collection import CollectionConfig, collect
    from envs.simulator import SimulatorConfig
    from worldsim.data import ClipConfig, ClipDataset, collate_clips

    collect(
        CollectionConfig(
            output_dir=tmp_path,
            split="train",
            scene_count=3,
            episodes_per_scene=2,
            episodes_per_shard=1,
            max_steps=60,
            policy_mix={"look_around": 1.0},
            workers=1,
            simulator=SimulatorConfig(width=32, height=32, turn_step_deg=90.0),
        ),
        progress=False,
    )
    clips = ClipDataset(
        tmp_path, ClipConfig(n_context=1, n_future=2, max_memory_frames=6, min_memory_frames=2)
    )
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=90.0).train()
    optimizer = torch.optim.AdamW(freeze_for_stage(model, "memory"), lr=2e-3)
    memory = _rendered_memory()
    generator = torch.Generator().manual_seed(0)
    sampler = RandomSampler(clips, replacement=True, num_samples=200 * 8, generator=generator)
    for batch in DataLoader(clips, batch_size=8, sampler=sampler, collate_fn=collate_clips):
        loss = diffusion_loss(model, batch, generator, memory)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    chosen = list(range(0, len(clips), max(1, len(clips) // 32)))[:32]
    batch = collate_clips([clips[i] for i in chosen])
    shuffled = {
        key: value.roll(len(chosen) // 2, 0) if key.startswith("memory_") else value
        for key, value in batch.items()
    }

    def mean_loss(clip_batch, clip_memory):
        with torch.no_grad():
            losses = [
                diffusion_loss(model, clip_batch, torch.Generator().manual_seed(seed), clip_memory)
                for seed in range(4)
            ]
        return float(torch.stack(losses).mean())

    own, other, none = mean_loss(batch, memory), mean_loss(shuffled, memory), mean_loss(batch, None)
    assert own < other - 0.013, (own, other)
    assert other < none, (other, none)


def test_composite_keeps_the_render_where_it_covers_and_generates_elsewhere(tiny_batch):
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=90.0)
    pasting, generated = PLAIN, dataclasses.replace(PLAIN, render_composite=False)
    n_context = model.config.n_context
    rgb, depth = tiny_batch["rgb"][:, :n_context], tiny_batch["depth"][:, :n_context]
    poses = tiny_batch["cam_to_world"][:, :n_context]
    actions = torch.full((2, model.config.n_future), 2, dtype=torch.int64)  # turn left

    def run(chosen, sampler, source="observed"):
        memory = _rendered_memory()
        memory.reset(2)
        memory.update(rgb, depth, tiny_batch["intrinsics"][:, :n_context], poses, source=source)
        render = memory.render(
            *_chunk_cameras(chosen, poses[:, -1], actions, tiny_batch["intrinsics"][:, 0]),
            (32, 32),
        )
        return _turn_left(chosen, tiny_batch, memory, False, sampler), render

    mixed, render = run(model, pasting)
    pure, _ = run(model, generated)
    kept = render.mask & render.observed  # the start frames are observed
    covered = model.render_coverage(render.depth, kept).expand_as(mixed.rgb)
    assert covered.any() and not covered.all()
    assert torch.equal(mixed.rgb[covered], render.rgb.expand_as(mixed.rgb)[covered])
    assert torch.equal(mixed.rgb[~covered], pure.rgb[~covered])  # the same noise elsewhere
    assert not torch.equal(pure.rgb[covered], mixed.rgb[covered])
    # Points the model generated itself are never pasted, and by default not even read.
    hinted, _ = run(model, pasting, source="generated")
    assert torch.equal(hinted.rgb, run(model, generated, source="generated")[0].rgb)
    blind = rollout(
        model,
        rgb,
        depth,
        poses,
        actions,
        sampler=PLAIN,
        intrinsics=tiny_batch["intrinsics"][:, 0],
        memory=None,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(hinted.rgb, blind.rgb)  # render_generated=False: as without memory
    with torch.no_grad():  # open the render branch so that what it reads shows
        model.transformer.render_embed.weight.normal_(generator=torch.Generator().manual_seed(0))
    reading = dataclasses.replace(PLAIN, render_generated=True)
    read, _ = run(model, reading, source="generated")
    assert not torch.equal(read.rgb, run(model, pasting, source="generated")[0].rgb)


def _chunk_cameras(model, reference, actions, intrinsics):
    from worldsim.simulator.chunks import chain_poses, step_poses

    targets = reference.double()[:, None] @ chain_poses(step_poses(actions, model).double())
    frames = actions.shape[1]
    return targets.float(), intrinsics[:, None].expand(-1, frames, 3, 3)


def _render(rgb, depth, mask):
    """A render of observed points drawn where ``mask`` says."""
    return MemoryRender(rgb, depth, mask, mask, torch.where(mask, 0, -1))


def test_render_fill_takes_rings_next_to_the_render_from_it_and_generates_the_rest():
    shape = (1, 1, 1, 32, 32)
    generated_rgb, generated_depth = torch.zeros(1, 1, 3, 32, 32), torch.full(shape, 3.0)
    render_rgb, render_depth = torch.full((1, 1, 3, 32, 32), 0.8), torch.full(shape, 1.0)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., :10] = True  # the render covers the left ten columns
    render = _render(render_rgb, render_depth, mask)
    rgb, depth = composite_render(render, generated_rgb, generated_depth, 10.0, fill_rings=1)
    assert torch.equal(rgb[..., :11], render_rgb[..., :11])  # covered, and the ring next to it
    assert torch.equal(depth[..., :11], render_depth[..., :11])
    assert torch.equal(rgb[..., 11:], generated_rgb[..., 11:])  # beyond the ring: generated
    rgb, _ = composite_render(render, generated_rgb, generated_depth, 10.0, fill_rings=0)
    assert torch.equal(rgb[..., 10:], generated_rgb[..., 10:])  # the control: no ring
    # Generated points are never pasted, only observed ones.
    unobserved = render._replace(observed=torch.zeros_like(mask))
    rgb, depth = composite_render(unobserved, generated_rgb, generated_depth, 10.0, fill_rings=1)
    assert torch.equal(rgb, generated_rgb) and torch.equal(depth, generated_depth)
    with pytest.raises(ValueError, match=r"render_fill must be an int in \[0, 16\]"):
        SamplerConfig(render_fill=-1)


def test_a_point_beyond_the_sensors_range_gives_its_colour_and_no_depth():
    """As a camera sees a far wall while its depth sensor reads 0 there."""
    model = make_tiny(memory_token_dim=0, memory_render=True)
    far = model.config.max_depth_m + 2.0
    shape = (1, 1, 1, 32, 32)
    generated_rgb, generated_depth = torch.zeros(1, 1, 3, 32, 32), torch.full(shape, 3.0)
    render_rgb = torch.full((1, 1, 3, 32, 32), 0.8)
    render_depth = torch.full(shape, 1.0)
    render_depth[..., 5:10] = far  # columns 5-9 drawn beyond the range
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., :10] = True
    rgb, depth = composite_render(
        _render(render_rgb, render_depth, mask),
        generated_rgb,
        generated_depth,
        model.config.max_depth_m,
        fill_rings=1,
    )
    assert torch.equal(rgb[..., :11], render_rgb[..., :11])  # drawn at any depth, and the ring
    assert torch.equal(rgb[..., 11:], generated_rgb[..., 11:])
    assert torch.equal(depth[..., :5], render_depth[..., :5])
    assert (depth[..., 5:10] == 0).all()  # beyond the range: no depth, not the generated one
    assert (depth[..., 10:] == 3.0).all()  # no in-range neighbour grows depth into column 10
    # The network still reads far points as uncovered (what it was trained on).
    assert not model.render_coverage(render_depth, mask)[..., 5:10].any()


def test_sampling_from_a_guess_skips_the_first_steps_and_share_zero_changes_nothing(
    tiny_model, tiny_batch
):
    with torch.no_grad():
        context = tiny_model.encode(tiny_batch["rgb"][:, :1], tiny_batch["depth"][:, :1])
        rays = tiny_model.chunk_rays(
            tiny_model.default_intrinsics(2),
            chain_poses(step_poses(torch.ones(2, 2, dtype=torch.int64), tiny_model)),
        )
        shape = tiny_model.future_latent_shape(2)
        guess = torch.randn(shape, generator=torch.Generator().manual_seed(7))

        def sample(init_latents=None, init_share=0.0):
            generators = [torch.Generator().manual_seed(seed) for seed in (3, 4)]
            sampler = SamplerConfig(num_inference_steps=2, render_init=init_share)
            return sample_chunk(
                tiny_model, sampler, context, rays, generator=generators, init_latents=init_latents
            )

        assert torch.equal(sample(init_latents=guess, init_share=0.0), sample())
        assert torch.equal(sample(init_latents=guess, init_share=1.0), guess)  # nothing to run
        # Half of the trailing schedule (999, 499): the guess noised to t = 499 with the noise
        # the rows' generators draw, then one step to alpha_bar = 1, the predicted x0.
        noise = torch.cat(
            [torch.randn(1, *shape[1:], generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
        )
        alpha = tiny_model.make_scheduler().alphas_cumprod[499].float()
        noisy = alpha.sqrt() * guess + (1 - alpha).sqrt() * noise
        velocity = tiny_model.predict(noisy, torch.tensor([499, 499]), context, rays)
        expected = alpha.sqrt() * noisy - (1 - alpha).sqrt() * velocity
        # float32 rounding in add_noise and the scheduler step
        torch.testing.assert_close(
            sample(init_latents=guess, init_share=0.5), expected, rtol=1e-5, atol=1e-5
        )
        with pytest.raises(
            ValueError, match=r"render_init must be a share of the steps in \[0, 1\]"
        ):
            sample(init_latents=guess, init_share=1.5)
        with pytest.raises(ValueError, match=r"init_latents must have shape \(2, 2, 8, 16, 16\)"):
            sample(init_latents=guess[:, :1], init_share=0.5)


def test_render_init_starts_from_the_render_where_it_covers_and_the_last_frame_elsewhere(
    tiny_batch,
):
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=30.0)
    n_context = model.config.n_context
    rgb, depth = tiny_batch["rgb"][:, :n_context], tiny_batch["depth"][:, :n_context]
    poses, k = tiny_batch["cam_to_world"][:, :n_context], tiny_batch["intrinsics"][:, 0]
    actions = torch.full((2, model.config.n_future), 2, dtype=torch.int64)  # turn left
    memory = _rendered_memory()
    memory.reset(2)
    memory.update(rgb, depth, tiny_batch["intrinsics"][:, :n_context], poses)
    targets, chunk_k = _chunk_cameras(model, poses[:, -1], actions, k)
    render = memory.render(targets, chunk_k, (32, 32))
    cam_to_ref = poses[:, -1:].inverse() @ targets

    def generate(share, chosen=model):
        sampler = dataclasses.replace(PLAIN, render_init=share)
        generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
        return generate_chunk(
            chosen, sampler, rgb, depth, cam_to_ref, k, generators=generators, render=render
        )

    # By hand: the reprojection baseline's frames, whose latents a share of 1 decodes as they are.
    covered = (render.mask & (render.depth <= model.config.max_depth_m)).expand(-1, -1, 3, -1, -1)
    guess_rgb = torch.where(covered, render.rgb, rgb[:, -1:].expand_as(render.rgb))
    guess_depth = torch.where(
        covered[:, :, :1], render.depth, depth[:, -1:].expand_as(render.depth)
    )
    assert covered.any() and not covered.all()
    with torch.no_grad():
        decoded_rgb, _ = model.decode(model.encode(guess_rgb, guess_depth))
    guessed, _ = generate(1.0)
    assert torch.equal(guessed[~covered], decoded_rgb[~covered])
    assert torch.equal(guessed[covered], render.rgb.expand_as(guessed)[covered])  # composited
    # Starting halfway up the schedule lands nearer the guess than starting from pure noise.
    halfway, _ = generate(0.5)
    noise, _ = generate(0.0)
    distance = {
        name: (frames - decoded_rgb)[~covered].abs().mean()
        for name, frames in (("halfway", halfway), ("noise", noise))
    }
    assert distance["halfway"] < distance["noise"], distance
    for wrong in (-0.1, 1.5):
        with pytest.raises(
            ValueError, match=rf"render_init must be a share .* \[0, 1\], got {wrong}"
        ):
            SamplerConfig(render_init=wrong)


def test_a_guess_leaves_at_least_one_step_below_a_share_of_one():
    assert [_skipped_steps(0.75, steps) for steps in (1, 2, 4, 6, 10)] == [0, 1, 3, 5, 8]
    assert [_skipped_steps(0.5, steps) for steps in (1, 2, 3, 5)] == [0, 1, 2, 3]  # half up
    assert _skipped_steps(1.0, 4) == 4 and _skipped_steps(0.0, 4) == 0
