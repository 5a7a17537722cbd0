"""Multi-chunk revisit windows: choice, coverage bins, baselines and the memory control."""

import numpy as np
import pytest
import torch

from tests.worldsim.conftest import make_tiny, randomise_memory_gates
from worldsim.data import TrajectoryStore
from worldsim.data.visibility import memory_only_coverage
from worldsim.evaluation.revisits import (
    Variant,
    coverage_bins,
    episode_memory,
    last_frame_variant,
    masked_psnr,
    no_memory,
    predict_windows,
    reprojection_variant,
    score_windows,
)
from worldsim.evaluation.windows import (
    WindowConfig,
    choose_windows,
    find_windows,
    load_windows,
    pairwise_seen,
    rank_starts,
)
from worldsim.memory import build_memory
from worldsim.simulator.sampler import SamplerConfig


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Out-and-back walks and look-arounds in two unseen scenes (32x32): the future revisits."""
    from envs.collection import CollectionConfig, collect
    from envs.simulator import SimulatorConfig

    root = tmp_path_factory.mktemp("test")
    collect(
        CollectionConfig(
            output_dir=root,
            split="test",
            scene_count=2,
            episodes_per_scene=2,
            episodes_per_shard=1,
            max_steps=60,
            policy_mix={"out_and_back": 0.5, "look_around": 0.5},
            workers=1,
            simulator=SimulatorConfig(width=32, height=32),
        ),
        progress=False,
    )
    return TrajectoryStore(root)


CONFIG = WindowConfig(n_context=1, length=4, memory_frames=8, max_windows=8, min_coverage=0.1)


@pytest.fixture(scope="module")
def windows(store):
    windows = find_windows(store, CONFIG)
    return windows, load_windows(store, windows, CONFIG.n_context, CONFIG.length)


def _hand_seen():
    """8 frames of 2 samples: each frame sees itself; frame 0 sees all of 5 and half of 6."""
    seen = torch.eye(8, dtype=torch.bool)[:, :, None].repeat(1, 1, 2)  # (S, T, P)
    seen[0, 5] = True
    seen[0, 6, 0] = True
    return seen, torch.ones(8, 2, dtype=torch.bool)


def test_rank_starts_by_hand():
    seen, valid = _hand_seen()
    config = WindowConfig(n_context=1, length=2, stride=1, min_coverage=0.2)
    ranked = rank_starts(seen, valid, config)
    # Start t: context {t}, future {t+1, t+2}, memory {0 .. t-1}; frame 5 is 100 %, 6 is 50 %.
    assert [(t, m, c) for t, m, c in ranked] == [
        (1, (0,), 0.0),
        (2, (0, 1), 0.0),
        (3, (0, 1, 2), 0.5),
        (4, (0, 1, 2, 3), 0.75),
        (5, (0, 1, 2, 3, 4), 0.25),
    ]
    # The best-seeing memory frame only: frame 0.
    best = rank_starts(seen, valid, WindowConfig(n_context=1, length=2, stride=1, memory_frames=1))
    assert [m for _, m, _ in best][2:] == [(0,), (0,), (0,)]
    # Best first; 3 and 5 overlap the future of 4 and are skipped; episode order breaks ties.
    chosen = choose_windows({0: ranked, 1: ranked}, {0: "a", 1: "b"}, config)
    assert [(w.episode, w.scene_id, w.start, w.coverage) for w in chosen] == [
        (0, "a", 4, 0.75),
        (1, "b", 4, 0.75),
    ]
    one = WindowConfig(n_context=1, length=2, stride=1, min_coverage=0.2, max_windows=1)
    scenes = {0: "a", 1: "b"}
    assert [(w.episode, w.start) for w in choose_windows({0: ranked, 1: ranked}, scenes, one)] == [
        (0, 4)
    ]


def test_coverage_bins_and_masked_psnr_by_hand():
    shares = torch.tensor([0.0, 0.0999, 0.1, 0.3, 0.4999, 0.5, 1.0])
    assert coverage_bins(shares).tolist() == [0, 0, 1, 1, 1, 2, 2]
    pred, target = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    pred[0, :, 0, 0] = 0.1  # an error of 0.1 on one masked pixel of frame 0
    pred[0, :, 1, 1] = 0.9  # and a large one outside the mask
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    mask[0, :, 0, :] = True  # 2 masked pixels in frame 0, none in frame 1
    values = masked_psnr(pred, target, mask)
    assert values[0].item() == pytest.approx(10 * np.log10(1 / (0.01 / 2)))
    assert torch.isnan(values[1])


def test_pairwise_seen_at_full_resolution_is_memory_only_coverage(store, windows):
    chosen, batch = windows
    window = chosen[0]
    arrays = store.read_frames(window.episode, slice(None))
    depth = torch.from_numpy(arrays["depth"].astype(np.float32)).permute(0, 3, 1, 2)
    k = torch.from_numpy(arrays["intrinsics"]).float()
    poses = torch.from_numpy(arrays["cam_to_world"]).float()
    seen, valid = pairwise_seen(depth, k, poses, grid=32)
    future = slice(window.start + 1, window.start + 1 + CONFIG.length)
    only = seen[list(window.memory), future].any(0) & ~seen[window.start, future]  # (L, P)
    share = only.sum(-1) / valid[future].sum(-1).clamp(min=1)
    # The same depth tests on the same pixels; only the order of the OR differs.
    torch.testing.assert_close(share.float(), batch.coverage[0].float(), atol=1e-6, rtol=0)
    assert len(window.memory) <= CONFIG.memory_frames and max(window.memory) < window.start
    fraction, _ = memory_only_coverage(
        batch.future.depth[:1],
        batch.future.intrinsics[:1],
        batch.future.cam_to_world[:1],
        batch.memory.depth[:1],
        batch.memory.intrinsics[:1],
        batch.memory.cam_to_world[:1],
        batch.context.depth[:1],
        batch.context.intrinsics[:1],
        batch.context.cam_to_world[:1],
        memory_valid=batch.memory.valid[:1],
    )
    assert torch.equal(fraction, batch.coverage[:1])


def test_reprojection_beats_last_frame_on_memory_pixels_and_a_shuffled_memory_does_not(windows):
    chosen, batch = windows
    assert len({w.episode for w in chosen}) >= 2 and (batch.coverage >= 0.1).any()
    variants = [
        reprojection_variant(),
        reprojection_variant("shuffled", shuffled=True),
        last_frame_variant(),
    ]
    predictions = predict_windows(chosen, batch, variants, batch_size=4)
    assert predictions.rgb["last frame"].shape == batch.future.rgb.shape
    assert torch.equal(predictions.rgb["last frame"][:, 2], batch.context.rgb[:, -1])
    rows = score_windows(predictions, n_future=2)
    covered = {
        r["variant"]: r["psnr_memory_only"].value
        for r in rows
        if r["frames"] in ("10-50 %", ">= 50 %") and r["frames_n"]
    }
    # Rendered memory points land on their own pixels at 32x32: several dB, not a rounding gain.
    assert covered["reprojection"] > covered["last frame"] + 3.0
    # The control: another scene's memory explains none of these pixels.
    assert covered["shuffled"] < covered["last frame"] + 1.0
    assert [r["frames"] for r in rows[::3]][:4] == ["all", "0-10 %", "10-50 %", ">= 50 %"]
    assert rows[0]["frames_n"] == batch.coverage.numel() and rows[0]["lpips"].available


def test_unmapped_pixels_are_where_reprojection_falls_back_to_the_last_frame(windows):
    chosen, batch = windows
    variants = [reprojection_variant(), last_frame_variant()]
    predictions = predict_windows(chosen, batch, variants, batch_size=4)
    unmapped = predictions.unmapped
    assert unmapped.shape == (*batch.future.rgb.shape[:2], 1, *batch.future.rgb.shape[-2:])
    assert 0 < unmapped.float().mean() < 0.5  # walls the windows saw before, some new ones
    reprojected, last = predictions.rgb["reprojection"], predictions.rgb["last frame"]
    hole = unmapped.expand_as(last)
    assert torch.equal(reprojected[hole], last[hole])
    assert not torch.equal(reprojected[~hole], last[~hole])
    rows = {r["variant"]: r for r in score_windows(predictions, n_future=2) if r["frames"] == "all"}
    assert rows["reprojection"]["psnr_unmapped"].value == rows["last frame"]["psnr_unmapped"].value
    share = rows["reprojection"]["unmapped_share"].value
    assert share == pytest.approx(float(unmapped.double().mean()))


def test_model_variants_share_noise_and_memory_changes_the_frames(windows):
    chosen, batch = windows
    memory = build_memory("feature_map", encoder="pooled_color", voxel_size=0.25)
    model = make_tiny(memory_token_dim=memory.token_dim)
    randomise_memory_gates(model)  # so that the memory changes what is generated
    one_step = SamplerConfig(num_inference_steps=1)
    variants = [
        Variant("with", model, episode_memory(memory), one_step),
        Variant("without", model, no_memory, one_step),
    ]
    first = predict_windows(chosen[:2], batch_rows(batch, 2), variants)
    again = predict_windows(chosen[:2], batch_rows(batch, 2), variants)
    assert first.rgb["with"].shape == (2, 4, 3, 32, 32)
    assert torch.equal(first.rgb["with"], again.rgb["with"])  # the same seeds, the same frames
    assert not torch.equal(first.rgb["with"], first.rgb["without"])
    with pytest.raises(ValueError, match="distinct names"):
        predict_windows(chosen, batch, [variants[0], variants[0]])


def batch_rows(batch, count):
    from worldsim.evaluation.windows import select

    return select(batch, torch.arange(count))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match=r"WindowConfig\.length must be >= 1, got 0"):
        WindowConfig(length=0)
    with pytest.raises(ValueError, match=r"min_coverage must be in \[0, 1\], got 2"):
        WindowConfig(min_coverage=2)
