"""Validation with vs. without memory: clip choice, paired sampling, metric rows."""

import numpy as np
import pytest
import torch

from tests.worldsim.conftest import make_tiny, randomise_memory_gates
from worldsim.data import ClipConfig, ClipDataset, collate_clips
from worldsim.evaluation.clips import (
    LAST_FRAME,
    REPROJECTION,
    EvaluationConfig,
    choose_clips,
    depth_error,
    evaluation_rows,
    predict_clips,
    predict_future,
    with_last_frame_baseline,
    with_reprojection_baseline,
)
from worldsim.memory import build_memory
from worldsim.simulator.sampler import SamplerConfig


def _memory():
    return build_memory("feature_map", encoder="pooled_color", voxel_size=0.25)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Out-and-back walks in an unseen scene (32x32): some clips are revisits."""
    from envs.collection import CollectionConfig, collect
    from envs.simulator import SimulatorConfig

    root = tmp_path_factory.mktemp("val")
    collect(
        CollectionConfig(
            output_dir=root,
            split="val",
            scene_count=1,
            episodes_per_scene=2,
            episodes_per_shard=1,
            max_steps=40,
            policy_mix={"out_and_back": 1.0},
            workers=1,
            simulator=SimulatorConfig(width=32, height=32),
        ),
        progress=False,
    )
    return ClipDataset(root, ClipConfig(n_context=1, n_future=2, max_memory_frames=2))


@pytest.fixture(scope="module")
def model():
    model = make_tiny(memory_token_dim=_memory().token_dim)
    randomise_memory_gates(model)  # so that the memory changes what is generated
    return model


def _spread(indices, count):
    """Slow reference: ``count`` evenly spaced picks, first and last included, halves up."""
    if len(indices) <= count:
        return list(indices)
    span = len(indices) - 1
    return [indices[(2 * j * span + (count - 1)) // (2 * (count - 1))] for j in range(count)]


def test_choose_clips_spreads_each_subset_evenly(clips):
    assert clips.is_revisit.any() and not clips.is_revisit.all()
    revisit, everything = choose_clips(clips, 3)
    assert revisit.tolist() == _spread(np.flatnonzero(clips.is_revisit).tolist(), 3)
    assert everything.tolist() == _spread(list(range(len(clips))), 3)
    few, _ = choose_clips(clips, 1000)
    assert few.tolist() == np.flatnonzero(clips.is_revisit).tolist()


def test_without_memory_equals_a_zero_gated_model_with_memory(clips):
    """Fresh memory blocks are zero-gated: with or without map tokens gives the same frames."""
    fresh = make_tiny(memory_token_dim=_memory().token_dim)
    batch = collate_clips([clips[int(i)] for i in np.flatnonzero(clips.is_revisit)[:2]])

    def run(memory):
        generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
        return predict_future(
            fresh, batch, memory, generators, SamplerConfig(num_inference_steps=2)
        )

    with_memory, without = run(_memory()), run(None)
    assert with_memory[0].shape == (2, 2, 3, 32, 32) and with_memory[1].shape == (2, 2, 1, 32, 32)
    # Zero gates add exact zeros; only the attention's floating-point path differs.
    torch.testing.assert_close(with_memory[0], without[0], atol=1e-6, rtol=0)


def test_variants_share_the_noise_and_the_memory_changes_the_frames(clips, model):
    config = EvaluationConfig(
        max_clips=2, batch_size=2, sampler=SamplerConfig(num_inference_steps=1)
    )
    predictions = predict_clips(model, clips, {"feature_map": _memory(), "none": None}, config)
    count = len(predictions.clips)
    assert predictions.rgb.shape == (count, 2, 3, 32, 32)
    assert torch.equal(predictions.rgb[0], clips[int(predictions.clips[0])]["rgb"][1:])
    assert not torch.equal(
        predictions.generated_rgb["feature_map"], predictions.generated_rgb["none"]
    )
    # The no-memory variant of one clip alone, from the clip's own noise, is the same frame.
    index = int(predictions.clips[-1])
    alone, _ = predict_future(
        model,
        collate_clips([clips[index]]),
        None,
        [torch.Generator().manual_seed(index)],
        SamplerConfig(num_inference_steps=1),
    )
    # Batched and single-row matrix products round differently on the CPU.
    torch.testing.assert_close(alone[0], predictions.generated_rgb["none"][-1], atol=1e-4, rtol=0)

    rows = evaluation_rows(predictions)
    assert [(r["subset"], r["memory"]) for r in rows] == [
        ("revisit", "feature_map"),
        ("revisit", "none"),
        ("all", "feature_map"),
        ("all", "none"),
    ]
    revisit = predictions.is_revisit
    assert rows[0]["clips"] == revisit.sum() and rows[2]["clips"] == count
    # PSNR by hand: mean over frames of 10 log10(1 / MSE).
    pred, truth = predictions.generated_rgb["none"][revisit], predictions.rgb[revisit]
    mse = ((pred - truth) ** 2).mean(dim=(2, 3, 4)).double()
    # torchmetrics computes in float32.
    assert rows[1]["psnr"].value == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), 1e-5)
    assert rows[1]["lpips"].available and rows[1]["lpips"].value > 0
    assert rows[1]["depth_l1"].unit == "m"


def test_last_frame_baseline_repeats_the_last_context_frame(clips, model):
    config = EvaluationConfig(
        max_clips=2, batch_size=2, sampler=SamplerConfig(num_inference_steps=1)
    )
    predictions = with_last_frame_baseline(
        predict_clips(model, clips, {"none": None}, config), clips
    )
    assert list(predictions.generated_rgb) == ["none", LAST_FRAME]
    for row, index in enumerate(predictions.clips):
        item = clips[int(index)]  # 1 context frame, 2 future frames
        for t in range(2):
            assert torch.equal(predictions.generated_rgb[LAST_FRAME][row, t], item["rgb"][0])
            assert torch.equal(predictions.generated_depth[LAST_FRAME][row, t], item["depth"][0])
    rows = evaluation_rows(predictions)
    assert [(r["subset"], r["memory"]) for r in rows][-2:] == [("all", "none"), ("all", LAST_FRAME)]


def test_reprojection_baseline_renders_the_memory_and_repeats_the_last_frame_elsewhere(
    clips, model
):
    config = EvaluationConfig(
        max_clips=4, batch_size=4, sampler=SamplerConfig(num_inference_steps=1)
    )
    base = with_last_frame_baseline(predict_clips(model, clips, {"none": None}, config), clips)
    predictions = with_reprojection_baseline(base, clips)
    assert list(predictions.generated_rgb) == ["none", LAST_FRAME, REPROJECTION]
    reprojected = predictions.generated_rgb[REPROJECTION]
    last = predictions.generated_rgb[LAST_FRAME]
    truth = predictions.rgb
    # Pixels the map leaves empty repeat the last frame; the others come from the render.
    changed = (reprojected != last).any(dim=2)
    assert changed.any() and not changed.all()
    # The render of remembered frames at the future cameras explains the future better.
    error = [((p - truth) ** 2).mean() for p in (reprojected, last)]
    assert error[0] < 0.8 * error[1]
    rows = evaluation_rows(predictions)
    assert [r["memory"] for r in rows][-1] == REPROJECTION


def test_depth_error_by_hand():
    target = torch.zeros(1, 1, 1, 2, 2)
    target[..., 0, :] = 2.0  # two hits, two misses
    pred = torch.full_like(target, 3.0)
    assert depth_error(pred, target).value == pytest.approx(1.0)  # misses are not scored
    with pytest.raises(ValueError, match="depth shapes differ"):
        depth_error(pred[..., :1], target)


def test_bad_settings_and_clips_raise(clips, model):
    with pytest.raises(ValueError, match="max_clips must be >= 1, got 0"):
        EvaluationConfig(max_clips=0)
    longer = ClipDataset(clips.store, ClipConfig(n_context=1, n_future=3))
    with pytest.raises(ValueError, match="clips have 4 frames but the model needs"):
        predict_future(
            model, collate_clips([longer[0]]), None, [torch.Generator()], SamplerConfig()
        )
    with pytest.raises(ValueError, match="at least one memory variant"):
        predict_clips(model, clips, {}, EvaluationConfig())
