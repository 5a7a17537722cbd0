"""Index, loss, resumable training and validation of the pixel denoiser, on a synthetic room."""

import json
import math

import numpy as np
import pytest
import torch

from worldsim.data import (
    NO_ACTION,
    SHARD_DIR,
    Episode,
    complete_plan,
    shard_name,
    write_manifest,
    write_plan,
    write_shard,
)
from worldsim.data.pixel_index import IndexConfig, PixelIndex, build_index
from worldsim.data.synthetic import render_box_room
from worldsim.geometry import intrinsics_from_hfov, pose_from_position_yaw
from worldsim.models.pixel_denoiser import EDMSamplerConfig, PixelDenoiser
from worldsim.training.pixels import (
    PixelTrainConfig,
    PixelTrainer,
    evaluate,
    hole_weighted_error,
    pixel_loss,
)

SIZE = 32
INDEX = IndexConfig(
    n_context=1,
    n_future=2,
    max_memory_frames=4,
    num_clips=6,
    clips_per_part=4,
    render_batch=3,
    memory_dependent_fraction=0.0,
    empty_memory_fraction=0.5,
)


def room_episode(yaws: list[float], scene: str, episode: int) -> Episode:
    """An episode in the synthetic box room: the camera at the centre turning through ``yaws``."""
    frames = len(yaws)
    poses = torch.stack(
        [pose_from_position_yaw(torch.tensor([0.3, 0.0, 0.2]), torch.tensor(yaw)) for yaw in yaws]
    ).float()  # (T, 4, 4)
    k = intrinsics_from_hfov(90.0, SIZE, SIZE)
    rgb, depth = render_box_room(poses, k.expand(frames, 3, 3), SIZE, SIZE)
    return Episode(
        scene_id=scene,
        episode=episode,
        rgb=(rgb.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy(),
        depth=depth.permute(0, 2, 3, 1).numpy(),
        cam_to_world=poses.numpy(),
        intrinsics=np.repeat(k.numpy()[None], frames, 0),
        actions=np.append(np.full(frames - 1, 2, dtype=np.int64), NO_ACTION),
        collided=np.zeros(frames, dtype=bool),
        metadata={"policy": "synthetic"},
    )


def write_store(root, episodes) -> None:
    write_manifest(root, {"seed": 0})
    names = [shard_name(e.scene_id, e.episode, 1) for e in episodes]
    write_plan(root, "run", names)
    for name, episode in zip(names, episodes, strict=True):
        write_shard(root / SHARD_DIR / name, [episode], depth_dtype="float32")
    complete_plan(root, "run", {})


@pytest.fixture(scope="module")
def room_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("room")
    turning = [math.radians(20 * i) for i in range(10)]  # turns: borders the map never saw
    still = [0.4] * 10  # a camera standing still: the map shows every future pixel
    write_store(root, [room_episode(turning, "room-a", 0), room_episode(still, "room-b", 0)])
    return root


@pytest.fixture(scope="module")
def room_index(room_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index")
    return build_index(room_data, folder, INDEX, 10.0, progress=False)


def make_tiny(seed: int = 0) -> PixelDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PixelDenoiser.from_config_name("tiny")


def test_index_samples_and_their_renders(room_index):
    index = PixelIndex(room_index)
    assert len(index) == INDEX.num_clips * INDEX.n_future
    samples = index.batch(np.arange(len(index)))
    assert samples["target_rgb"].shape == (12, 3, SIZE, SIZE)
    assert samples["context_rgb"].shape == (12, 1, 3, SIZE, SIZE)
    known = samples["render_known"]
    # The render shows the map's colours, which come from the same uint8 frames: where a still
    # camera's map covers a pixel it is that pixel exactly; the turning camera leaves holes.
    still = (samples["cam_to_ref"] - torch.eye(4)).abs().amax((1, 2)) < 1e-6
    assert still.any() and (~still).any()
    for row in np.flatnonzero(still.numpy()):
        covered = known[row].expand(3, -1, -1)
        assert covered.float().mean() > 0.9
        assert torch.equal(samples["render_rgb"][row][covered], samples["target_rgb"][row][covered])
    assert (~known[~still]).float().mean() > 0.1
    assert torch.equal(samples["render_rgb"] * ~known, torch.zeros_like(samples["render_rgb"]))


def test_index_resumes_and_refuses_other_settings(room_data, room_index):
    parts = sorted(room_index.glob("part-*"))
    assert len(parts) == 2  # 6 clips in parts of 4
    stamps = [(part / "done").stat().st_mtime_ns for part in parts]
    build_index(room_data, room_index, INDEX, 10.0, progress=False)
    assert [(part / "done").stat().st_mtime_ns for part in parts] == stamps
    with pytest.raises(ValueError, match="other settings"):
        build_index(room_data, room_index, IndexConfig(n_context=1, n_future=3), 10.0, False)


def test_loss_ignores_covered_pixels_at_zero_known_weight(room_index):
    generator = torch.Generator().manual_seed(0)
    samples = PixelIndex(room_index).batch(np.arange(8))
    known = samples["render_known"]
    target = torch.rand(8, 4, SIZE, SIZE, generator=generator)
    denoised = torch.rand(8, 4, SIZE, SIZE, generator=generator)
    level = torch.rand(8, generator=generator) + 0.5
    changed = torch.where(known, -denoised, denoised)  # other values on covered pixels only
    for weight, same in ((0.0, True), (0.3, False)):
        first = hole_weighted_error(denoised, target, known, level, weight)
        second = hole_weighted_error(changed, target, known, level, weight)
        assert torch.equal(first, second) == same
    holes_only = hole_weighted_error(denoised, target, known, level, 0.0)
    reference = (level[:, None, None, None] * (denoised - target) ** 2 * ~known).mean()
    assert torch.allclose(holes_only, reference, rtol=1e-6)  # another summation order


def test_loss_runs_and_reports_the_hole_share(room_index):
    model = make_tiny()
    samples = PixelIndex(room_index).batch(np.arange(8))
    loss, parts = pixel_loss(model, samples, PixelTrainConfig(), torch.Generator().manual_seed(0))
    assert loss.item() > 0 and 0 < parts["hole_share"] < 1
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_training_resumes_to_the_same_weights(room_index, tmp_path):
    config = PixelTrainConfig(batch_size=4, warmup_steps=2, max_steps=4, eval_every=100)
    sampler = EDMSamplerConfig(num_steps=1)
    index = PixelIndex(room_index)
    straight = PixelTrainer(make_tiny(), config, tmp_path / "straight", sampler)
    straight.fit(index, progress=False)
    first = PixelTrainer(
        make_tiny(),
        PixelTrainConfig(**{**vars(config), "max_steps": 2}),
        tmp_path / "split",
        sampler,
    )
    first.fit(index, progress=False)
    resumed = PixelTrainer(make_tiny(seed=1), config, tmp_path / "split", sampler)
    resumed.fit(index, progress=False)
    assert resumed.step == 4
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    exported = PixelDenoiser.from_pretrained(tmp_path / "split" / "model")
    assert json.loads((tmp_path / "split" / "model" / "sampler.json").read_text())["num_steps"] == 1
    ema = resumed.ema_model()
    for a, b in zip(exported.parameters(), ema.parameters(), strict=True):
        assert torch.equal(a, b)
    lines = (tmp_path / "split" / "curve.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines][-1] == 4


def test_budget_ends_the_run_with_a_checkpoint_and_a_model(room_index, tmp_path):
    config = PixelTrainConfig(batch_size=2, max_steps=1000, budget_minutes=1e-6, eval_every=100)
    trainer = PixelTrainer(make_tiny(), config, tmp_path, EDMSamplerConfig(num_steps=1))
    trainer.fit(PixelIndex(room_index), PixelIndex(room_index), progress=False)
    assert trainer.step == 1
    assert [path.name for path in trainer.checkpoints()] == ["step-00000001.pt"]
    assert (tmp_path / "model" / "config.json").is_file()
    record = json.loads((tmp_path / "curve.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and "hole_psnr_harmonic" in record["validation"]


def test_evaluation_scores_the_render_where_it_covers(room_index):
    model = make_tiny().eval()
    index = PixelIndex(room_index)
    chosen = np.arange(len(index))
    result = evaluate(model, index, chosen, EDMSamplerConfig(num_steps=1))
    assert result["samples"] == len(index)
    assert 0 < result["hole_share"] < 1
    for method in ("model", "harmonic", "nearest", "last_frame"):
        assert math.isfinite(result[f"hole_psnr_{method}"])
    # Without a map everything is a hole, and the fills have nothing to fill from.
    dropped = evaluate(model, index, chosen, EDMSamplerConfig(num_steps=1), drop_render=True)
    assert dropped["hole_share"] == 1.0
    assert dropped["explore_samples"] == len(index)
    assert dropped["psnr_model"] == dropped["hole_psnr_model"]


def test_hole_shares_and_hole_weighted_sampling(room_index):
    index = PixelIndex(room_index)
    shares = index.hole_shares()
    samples = index.batch(np.arange(len(index)))
    expected = (~samples["render_known"]).float().mean((1, 2, 3)).numpy()
    assert np.allclose(shares, expected, atol=1e-6)  # float32 means of 1024 pixels
    assert np.array_equal(index.memory_dropped(), samples["memory_dropped"].numpy())
    assert index.memory_dropped().any()
    with pytest.raises(ValueError, match="hole_sampling_floor"):
        PixelTrainConfig(hole_sampling_floor=-0.1)


def test_a_share_of_samples_trains_at_the_samplers_first_level(room_index, monkeypatch):
    model = make_tiny()
    samples = PixelIndex(room_index).batch(np.arange(8))
    seen = []
    forward = model.forward

    def recording(noisy, sigma, conditions):
        seen.append(sigma.clone())
        return forward(noisy, sigma, conditions)

    monkeypatch.setattr(model, "forward", recording)
    for share, at_high in ((0.0, 0), (1.0, 8)):
        config = PixelTrainConfig(high_noise_share=share, high_noise_sigma=5.0)
        pixel_loss(model, samples, config, torch.Generator().manual_seed(0))
        assert int((seen[-1] == 5.0).sum()) == at_high
    with pytest.raises(ValueError, match="high_noise_share"):
        PixelTrainConfig(high_noise_share=1.5)
    with pytest.raises(ValueError, match="high_noise_sigma"):
        PixelTrainConfig(high_noise_sigma=0.0)
