"""The embedded default checkpoint: it ships, loads with no arguments and beats a baseline."""

import json

import pytest
import torch

from envs.collection import CollectionConfig, collect
from worldsim.checkpoints import resolve_memory
from worldsim.data import ClipConfig, ClipDataset
from worldsim.evaluation import (
    LAST_FRAME,
    EvaluationConfig,
    evaluation_rows,
    predict_clips,
    with_last_frame_baseline,
)
from worldsim.world_model import DEFAULT_CHECKPOINT, MEMORY_FILE, WorldModel

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
    assert memory.token_dim == model.config.memory_token_dim, spec
    assert (model.config.height, model.config.width) == (64, 64)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_checkpoint_beats_repeating_the_last_frame_on_an_unseen_scene(model, tmp_path):
    # Two held-out houses the model never saw, recorded at the model's size and action steps.
    collect(
        CollectionConfig(
            output_dir=tmp_path,
            split="test",
            scene_count=2,
            episodes_per_scene=1,
            episodes_per_shard=1,
            max_steps=150,
            workers=1,
        ),
        progress=False,
    )
    config = model.config
    clips = ClipDataset(
        tmp_path,
        ClipConfig(n_context=config.n_context, n_future=config.n_future, max_memory_frames=8),
    )
    evaluation = EvaluationConfig(max_clips=16, batch_size=16, num_inference_steps=10)
    predictions = predict_clips(model, clips, {"none": None}, evaluation)
    rows = evaluation_rows(with_last_frame_baseline(predictions, clips))
    scores = {row["memory"]: row for row in rows if row["subset"] == "all"}
    # The generated chunk follows the camera; the last frame only stands still.
    assert scores["none"]["psnr"].value > scores[LAST_FRAME]["psnr"].value
    assert scores["none"]["depth_l1"].value < scores[LAST_FRAME]["depth_l1"].value
