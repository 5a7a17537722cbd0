"""Loaded models live in ordinary, aligned memory; broken checkpoint folders are named."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worldsim.models.pretrained import WEIGHTS_FILE, rehome_tensors

ALIGNMENT = 64  # bytes: torch's CPU allocator aligns every fresh allocation to 64


def _tied_model() -> nn.Module:
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=True), nn.BatchNorm1d(5))
    model[1].weight = model[0].weight  # tied, as a language model's input and output embeddings
    model[1].weight.requires_grad_(False)
    shared = torch.arange(7, dtype=torch.int16)
    model[0].register_buffer("shared", shared)
    model[2].register_buffer("shared", shared)
    return model


def test_rehome_tensors_aligns_and_keeps_identity_dtype_and_grad(tmp_path):
    model = _tied_model()
    # A safetensors file packs tensors back to back: 5x3 float32 after a 7-element int16 tensor
    # starts 14 bytes later, so loaded tensors sit at unaligned offsets inside one buffer.
    save_file({"a": torch.arange(7, dtype=torch.int16), "b": torch.ones(5, 3)}, tmp_path / "f")
    loaded = load_file(tmp_path / "f")
    with torch.no_grad():
        model[0].weight.data = loaded["b"]
        model[0].shared = loaded["a"]
        model[2].shared = model[0].shared
    assert any(t.data_ptr() % ALIGNMENT for t in loaded.values())  # the case being fixed
    parameter = model[0].weight
    before = {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()}

    assert rehome_tensors(model) is model

    assert all(t.data_ptr() % ALIGNMENT == 0 for t in [*model.parameters(), *model.buffers()])
    assert model[0].weight is parameter and model[1].weight is parameter  # still tied
    assert model[0].shared is model[2].shared  # a shared buffer stays shared
    assert not parameter.requires_grad and model[1].bias.requires_grad
    for key, value in model.state_dict().items():
        assert value.dtype == before[key][0] and torch.equal(value, before[key][1]), key


def _broken_copy(tmp_path, name, change):
    from worldsim.models.world_model import DEFAULT_CHECKPOINT

    folder = tmp_path / name
    shutil.copytree(DEFAULT_CHECKPOINT, folder)
    change(folder)
    return folder


def _truncate(folder):
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])


def _config(**changes):
    def change(folder):
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return change


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda f: (f / WEIGHTS_FILE).unlink(), FileNotFoundError, r"no weights file 'diffusion"),
        (_truncate, ValueError, r"safetensors' is not a complete safetensors file.*truncated"),
        (_config(height="64"), ValueError, r"config\.json': height must be an integer, got '64'"),
        (_config(use_depth=1), ValueError, r"use_depth must be true or false, got 1"),
        (_config(vae_block_out_channels=16), ValueError, r"vae_block_out_channels must be a list"),
        (
            lambda f: (f / "config.json").write_text('{"height": 64,'),
            ValueError,
            r"config\.json' is not valid JSON",
        ),
    ],
)
def test_a_broken_checkpoint_folder_names_the_file_and_the_problem(
    tmp_path, change, error, message
):
    from worldsim.models.world_model import WorldModel

    folder = _broken_copy(tmp_path, "broken", change)
    with pytest.raises(error, match=message):
        WorldModel.from_pretrained(folder)
    WorldModel.from_pretrained(_broken_copy(tmp_path, "intact", lambda f: None))  # the control
