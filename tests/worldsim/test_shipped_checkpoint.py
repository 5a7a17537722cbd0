"""The embedded default checkpoint: it ships, loads with no arguments and beats a baseline."""

import json

import pytest
import torch

from envs.collection import CollectionConfig, collect
from worldsim.data import ClipConfig, ClipDataset
from worldsim.evaluation.clips import (
    LAST_FRAME,
    EvaluationConfig,
    evaluation_rows,
    predict_clips,
    with_last_frame_baseline,
)
from worldsim.models.world_model import DEFAULT_CHECKPOINT, MEMORY_FILE, WorldModel
from worldsim.simulator.checkpoints import resolve_memory
from worldsim.simulator.chunks import check_memory_fits
from worldsim.simulator.sampler import SamplerConfig, load_sampler_config

MEMORY_GAIN_DB = 9.0
"""Least PSNR gain on memory-only pixels, own memory over none and another episode's (dB)."""
MAX_FILE_MB = 40  # the package's limit per shipped file


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return WorldModel.from_pretrained()


def test_the_checkpoint_ships_as_small_safetensors_with_its_card_and_memory(model):
    files = sorted(DEFAULT_CHECKPOINT.iterdir())
    names = {path.name for path in files}
    assert {"config.json", MEMORY_FILE, "README.md"} <= names
    weights = [path for path in files if path.suffix == ".safetensors"]
    assert weights and all(path.stat().st_size < MAX_FILE_MB * 1e6 for path in weights)
    assert not any(path.suffix in (".bin", ".pt", ".pth") for path in files)
    config = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert "_name_or_path" not in config  # no path of the machine that exported it
    spec = json.loads((DEFAULT_CHECKPOINT / MEMORY_FILE).read_text())
    memory = resolve_memory(None, model, DEFAULT_CHECKPOINT)
    check_memory_fits(model, memory)  # the memory it was trained with, by memory.json
    assert spec == {"name": "rendered"} and model.config.memory_render
    assert (model.config.height, model.config.width) == (64, 64)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _record_test_houses(folder, max_steps, **settings):
    """One episode in each of two held-out houses, at the model's size and action steps."""
    collect(
        CollectionConfig(
            output_dir=folder,
            split="test",
            scene_count=2,
            episodes_per_scene=1,
            episodes_per_shard=1,
            max_steps=max_steps,
            workers=1,
            **settings,
        ),
        progress=False,
    )


def test_the_checkpoint_beats_repeating_the_last_frame_on_an_unseen_scene(model, tmp_path):
    _record_test_houses(tmp_path, max_steps=150)
    config = model.config
    clips = ClipDataset(
        tmp_path,
        ClipConfig(n_context=config.n_context, n_future=config.n_future, max_memory_frames=8),
    )
    evaluation = EvaluationConfig(
        max_clips=16, batch_size=16, sampler=SamplerConfig(num_inference_steps=10)
    )
    memory = resolve_memory(None, model, DEFAULT_CHECKPOINT)
    variants = {"memory": memory, "none": None}
    predictions = predict_clips(model, clips, variants, evaluation)
    rows = evaluation_rows(with_last_frame_baseline(predictions, clips))
    scores = {row["memory"]: row for row in rows if row["subset"] == "all"}
    # The generated chunk follows the camera; the last frame only stands still. The model is
    # used with its memory (the clips' earlier frames). Without any it guesses: measured when
    # shipped, PSNR 17.44 against the last frame's 17.67 dB (worse on the first frame, better on
    # the later ones, as the camera moves away), and its depth is no better (model card); the
    # bound asks that the guess does not fall clearly below standing still.
    assert scores["memory"]["psnr"].value > scores[LAST_FRAME]["psnr"].value + 3.0
    assert scores["memory"]["depth_l1"].value < scores[LAST_FRAME]["depth_l1"].value
    assert scores["none"]["psnr"].value > scores[LAST_FRAME]["psnr"].value - 1.0
    none_steps, last_steps = (scores[k]["psnr"].per_step for k in ("none", LAST_FRAME))
    assert none_steps[-1] > last_steps[-1]


def test_the_checkpoint_uses_its_memory_on_revisits_in_unseen_houses(model, tmp_path):
    """Multi-chunk rollouts where only the memory saw the future: own memory vs the controls.

    Two look-around episodes in two test houses (turning in place: after a few turns the view is
    one the context never saw and earlier frames did), 2 windows of 2 chunks, 10 DDIM steps.
    Measured when shipped (PSNR on memory-only pixels): own memory 35.7 dB, another episode's
    13.5, none 17.1; the bound is half the smaller gap.
    """
    from worldsim.data import TrajectoryStore
    from worldsim.evaluation.revisits import Variant, episode_memory, no_memory, predict_windows
    from worldsim.evaluation.windows import WindowConfig, find_windows, load_windows

    _record_test_houses(tmp_path, max_steps=80, policy_mix={"look_around": 1.0})
    store = TrajectoryStore(tmp_path)
    config = model.config
    length = 2 * config.n_future
    windows = find_windows(
        store,
        WindowConfig(
            n_context=config.n_context,
            length=length,
            memory_frames=16,
            max_windows=2,
            max_per_episode=1,
        ),
    )
    assert len(windows) == 2
    batch = load_windows(store, windows, config.n_context, length)
    memory = resolve_memory(None, model, DEFAULT_CHECKPOINT)
    sampler = load_sampler_config(DEFAULT_CHECKPOINT).with_steps(10)
    variants = [
        Variant("own", model, episode_memory(memory), sampler),
        Variant("shuffled", model, episode_memory(memory, shuffled=True), sampler),
        Variant("none", model, no_memory, sampler),
    ]
    predictions = predict_windows(windows, batch, variants)
    truth = batch.future.rgb
    only = batch.memory_only  # (W, L, 1, H, W) pixels only the memory saw

    def psnr_on_memory_only(name):
        error = ((predictions.rgb[name] - truth) ** 2 * only).sum() / (only.sum() * 3)
        return float(-10 * torch.log10(error))

    own, shuffled, none = (psnr_on_memory_only(n) for n in ("own", "shuffled", "none"))
    assert own > none + MEMORY_GAIN_DB and own > shuffled + MEMORY_GAIN_DB, (own, shuffled, none)
