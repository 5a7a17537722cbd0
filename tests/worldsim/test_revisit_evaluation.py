"""Multi-chunk revisit windows: choice, coverage bins, baselines and the memory control."""

import numpy as np
import pytest
import torch

from tests.worldsim.conftest import make_tiny, randomise_memory_gates
from worldsim.data import TrajectoryStore
from worldsim.data.visibility import memory_only_coverage
from worldsim.evaluation.revisits import (
    Variant,
    context_memory,
    coverage_bins,
    episode_memory,
    fill_render_holes,
    fill_variants,
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
from worldsim.memory import RenderedMemory, build_memory
from worldsim.memory.fills import fill_holes
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
        Variant("context only", model, context_memory(memory), one_step),
    ]
    first = predict_windows(chosen[:2], batch_rows(batch, 2), variants)
    again = predict_windows(chosen[:2], batch_rows(batch, 2), variants[:1])
    assert first.rgb["with"].shape == (2, 4, 3, 32, 32)
    assert torch.equal(first.rgb["with"], again.rgb["with"])  # the same seeds, the same frames
    assert not torch.equal(first.rgb["with"], first.rgb["without"])
    # The control pair: the context frames' own memory is a memory, and not the full one.
    assert not torch.equal(first.rgb["context only"], first.rgb["without"])
    assert not torch.equal(first.rgb["context only"], first.rgb["with"])
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


def test_fills_are_exact_in_a_hole_of_a_constant_region_and_keep_the_render():
    rgb = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # (B, L, ...)
    depth = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) + 1
    drawn = torch.zeros(1, 3, 1, 16, 16, dtype=torch.bool)
    # Frame 0: a constant wall (colour c, 2 m) drawn around a 4x4 hole that shows another colour.
    colour = torch.tensor([0.2, 0.5, 0.7])[:, None, None]
    rgb[0, 0], depth[0, 0] = colour.expand(3, 16, 16).clone(), torch.full((1, 16, 16), 2.0)
    rgb[0, 0, :, 6:10, 6:10], depth[0, 0, :, 6:10, 6:10] = 0.9, 5.0  # the last frame's pixels
    drawn[0, 0] = True
    drawn[0, 0, :, 6:10, 6:10] = False
    drawn[0, 1, :, :8] = True  # frame 1: half drawn; frame 2: nothing drawn
    for method in ("harmonic", "nearest"):
        out_rgb, out_depth = fill_render_holes(rgb, depth, drawn, method)
        # Every hole pixel's neighbours are c: both fills are exact (harmonic: the constant
        # solves Laplace's equation; float32 means of equal values stay equal).
        torch.testing.assert_close(out_rgb[0, 0], colour.expand(3, 16, 16), rtol=0, atol=1e-6)
        torch.testing.assert_close(out_depth[0, 0], torch.full((1, 16, 16), 2.0), rtol=0, atol=1e-6)
        assert torch.equal(out_rgb[drawn.expand_as(rgb)], rgb[drawn.expand_as(rgb)])
        assert torch.equal(out_depth[drawn], depth[drawn])
        assert not torch.equal(out_rgb[0, 1], rgb[0, 1])  # frame 1's holes are filled
        assert torch.equal(out_rgb[0, 2], rgb[0, 2]) and torch.equal(out_depth[0, 2], depth[0, 2])
    with pytest.raises(ValueError, match=r"Variant\.fill must be one of"):
        Variant("bad", None, no_memory, fill="telea")


def _scored_by_hand():
    """One window of 4 frames, 32x32, with hand-set holes, truths and two predictions.

    Holes: frame 0 a quarter (75 % rendered), frame 1 five pixels (< 1 %: not scored on holes),
    frame 2 90 % (10 % rendered: an exploration frame), frame 3 none.
    """
    from worldsim.evaluation.revisits import WindowPredictions
    from worldsim.evaluation.windows import Frames, Window, WindowBatch

    length, size = 4, 32
    truth = torch.rand(1, length, 3, size, size, generator=torch.Generator().manual_seed(0))
    truth = truth * 0.5 + 0.25
    truth_depth = torch.full((1, length, 1, size, size), 2.0)
    holes = torch.zeros(1, length, 1, size, size, dtype=torch.bool)
    holes[0, 0, :, :16, :16] = True  # 256 pixels, 25 %
    holes[0, 1, :, 0, :5] = True  # 5 pixels, 0.49 %
    holes[0, 2].view(-1)[: int(0.9 * size * size)] = True  # 90 %
    truth_depth[0, 0, :, :4, :16] = 0  # 64 hole pixels without a recorded depth
    off_rgb, off_depth = truth.clone(), truth_depth.clone()
    off_rgb[0, 0][holes[0, 0].expand(3, -1, -1)] += 0.1  # frame 0: 0.1 in its holes
    off_rgb[0, 1] += 0.05  # frame 1: 0.05 everywhere
    off_rgb[0, 2][holes[0, 2].expand(3, -1, -1)] -= 0.2  # frame 2: 0.2 in its holes
    off_depth[0, 0][holes[0, 0]] += 0.5  # 0.5 m in frame 0's holes (those without a hit too)
    frames = Frames(
        rgb=truth,
        depth=truth_depth,
        intrinsics=torch.eye(3).expand(1, length, 3, 3),
        cam_to_world=torch.eye(4).expand(1, length, 4, 4),
        valid=torch.ones(1, length, dtype=torch.bool),
    )
    batch = WindowBatch(
        context=frames,
        future=frames,
        memory=frames,
        shuffled=frames,
        coverage=torch.tensor([[0.0, 0.2, 0.6, 0.05]]),
        memory_only=torch.zeros(1, length, 1, size, size, dtype=torch.bool),
    )
    predictions = WindowPredictions(
        windows=[Window(0, "house", 1, (0,), 0.2)],
        batch=batch,
        rgb={"exact": truth.clone(), "off": off_rgb},
        depth={"exact": truth_depth.clone(), "off": off_depth},
        unmapped=holes,
    )
    return predictions, truth, off_rgb


def test_hole_scores_pooled_psnr_and_exploration_bin_by_hand():
    predictions, truth, off = _scored_by_hand()
    rows = score_windows(predictions, n_future=2)
    table = {(r["frames"], r["variant"]): r for r in rows}
    assert [r["frames"] for r in rows[::2]] == [
        "all",
        "0-10 %",
        "10-50 %",
        ">= 50 %",
        "exploration: render < 20 %",
        "chunk 1",
        "chunk 2",
    ]
    # Frame 2 alone is rendered < 20 %; frames 0 and 2 have >= 1 % holes, for both variants.
    assert table["exploration: render < 20 %", "off"]["frames_n"] == 1
    assert table["exploration: render < 20 %", "off"]["unmapped_share"].value == pytest.approx(
        int(0.9 * 1024) / 1024
    )
    assert [table["all", v]["holes_n"] for v in ("exact", "off")] == [2, 2]
    assert table["chunk 2", "off"]["holes_n"] == 1
    exact, off_row = table["all", "exact"], table["all", "off"]
    assert exact["psnr_holes"].value == np.inf and exact["psnr_holes_pooled"].value == np.inf
    assert exact["lpips_holes"].value == 0 and exact["depth_l1_holes"].value == 0
    # Frame 3 matches exactly: the mean of per-frame PSNR is infinite, the pooled one is not.
    squared = ((off - truth).double() ** 2)[0]  # (L, 3, H, W)
    pooled = 10 * np.log10(squared.numel() / float(squared.sum()))
    assert off_row["psnr"].value == np.inf
    assert off_row["psnr_pooled"].value == pytest.approx(pooled, rel=1e-12)
    # Holes: 0.1 on 256 pixels (frame 0), 0.2 on 921 (frame 2); frame 1 is not scored.
    hole_mse = (256 * 0.1**2 + 921 * 0.2**2) / (256 + 921)
    by_frame = [10 * np.log10(1 / 0.1**2), 10 * np.log10(1 / 0.2**2)]
    # float32 truths + 0.1 round to ~1e-8 of the error: relative 1e-5 in dB
    assert off_row["psnr_holes_pooled"].value == pytest.approx(10 * np.log10(1 / hole_mse), 1e-5)
    assert off_row["psnr_holes"].value == pytest.approx(np.mean(by_frame), rel=1e-5)
    # psnr_unmapped keeps its meaning: every frame with a hole, frame 1 (0.05 off) too.
    with_small = [*by_frame[:1], 10 * np.log10(1 / 0.05**2), by_frame[1]]
    assert off_row["psnr_unmapped"].value == pytest.approx(np.mean(with_small), rel=1e-5)
    # Depth: 0.5 m on frame 0's 192 hit hole pixels, 0 on frame 2's.
    assert off_row["depth_l1_holes"].value == pytest.approx(0.25, rel=1e-6)
    assert off_row["lpips_holes"].value > 0.01
    assert table["chunk 2", "off"]["psnr_pooled"].value == pytest.approx(
        10 * np.log10(squared[2:].numel() / float(squared[2:].sum())), rel=1e-12
    )


def test_masked_lpips_scores_the_masked_region(generator):
    from worldsim.evaluation.revisits import masked_lpips
    from worldsim.metrics.lpips import LPIPS

    model = LPIPS("alex")
    truth = torch.rand(2, 3, 32, 32, generator=generator)
    pred = truth.clone()
    pred[:, :, :, 20:] = torch.rand(2, 3, 32, 12, generator=generator)  # changed on the right
    left = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    left[..., :8] = True
    right = torch.zeros_like(left)
    right[..., 24:] = True
    with torch.no_grad():
        on_left = masked_lpips(pred, truth, left, model)
        on_right = masked_lpips(pred, truth, right, model)
        everywhere = masked_lpips(pred, truth, torch.ones_like(left), model, batch_size=1)
        distance = model(pred, truth).double()
    assert (on_right > 2 * on_left).all()
    # The upsampled map's mean is the distance up to the bilinear weights at the borders.
    torch.testing.assert_close(everywhere, distance, rtol=0.02, atol=0)
    assert torch.equal(masked_lpips(truth, truth, right, model), torch.zeros(2).double())
    assert torch.isnan(masked_lpips(pred, truth, torch.zeros_like(left), model)).all()


def test_fill_and_context_only_baselines_share_the_reprojection(windows):
    chosen, batch = windows
    variants = [
        reprojection_variant(),
        reprojection_variant("context", context_only=True),
        *fill_variants(),
        last_frame_variant(),
    ]
    predictions = predict_windows(chosen, batch, variants, batch_size=4)
    holes = predictions.unmapped
    drawn = ~holes
    reprojected = predictions.rgb["reprojection"]
    for name, method in (("harmonic fill", "harmonic"), ("nearest fill", "nearest")):
        rgb, depth = predictions.rgb[name], predictions.depth[name]
        assert torch.equal(rgb[drawn.expand_as(rgb)], reprojected[drawn.expand_as(rgb)])
        # The same composite filled by the classical fill, frame by frame, from the drawn pixels.
        frames = torch.cat([reprojected, predictions.depth["reprojection"]], 2).flatten(0, 1)
        filled = fill_holes(frames, drawn.flatten(0, 1), method)
        expected = filled.view(*rgb.shape[:2], 4, *rgb.shape[-2:])
        covered = drawn.flatten(2).any(-1)  # (N, L, 1) frames the render draws in
        assert covered.all()  # (no frame without any drawn pixel in these windows)
        assert torch.equal(rgb, expected[:, :, :3]) and torch.equal(depth, expected[:, :, 3:])
        assert not torch.equal(rgb[holes.expand_as(rgb)], reprojected[holes.expand_as(rgb)])
    # The context alone draws a part of what memory and context draw; the last frame elsewhere.
    context, last = predictions.rgb["context"], predictions.rgb["last frame"]
    by_context = ~unmapped_context(batch)
    assert (by_context & ~drawn).sum() == 0 and (drawn & ~by_context).sum() > 0
    empty = ~by_context.expand_as(context)
    assert torch.equal(context[empty], last[empty])
    assert not torch.equal(context[~empty], last[~empty])
    rows = score_windows(predictions, n_future=2)
    assert len({r.get("holes_n") for r in rows if r["frames"] == "all"}) == 1  # one mask


def unmapped_context(batch):
    """The holes of the context frames' own render at the future cameras."""
    from worldsim.evaluation.revisits import reproject_window

    memory = context_memory(RenderedMemory())(batch, torch.device("cpu"))
    return ~reproject_window(memory, batch)[2]


def test_scenes_choose_the_houses_windows_come_from(store):
    houses = sorted({e.scene_id for e in store.episodes})
    chosen = find_windows(store, CONFIG, scenes=[houses[1]])
    assert chosen and {w.scene_id for w in chosen} == {houses[1]}
    with pytest.raises(ValueError, match=rf"houses \['house-x'\]; it holds \['{houses[0]}'"):
        find_windows(store, CONFIG, scenes=["house-x"])
    with pytest.raises(ValueError, match="no house chosen"):
        find_windows(store, CONFIG, scenes=[])
