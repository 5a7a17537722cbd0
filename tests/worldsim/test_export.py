"""Exporting a trained run as the checkpoint WorldModel.from_pretrained() loads."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.worldsim.conftest import make_tiny, randomise_memory_gates
from worldsim.evaluation.report import write_report
from worldsim.models.world_model import MEMORY_FILE, WorldModel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "export_checkpoint.py"
SHARD_LIMIT = 40 * 10**6  # bytes: the package's limit per file


def _example():
    spec = importlib.util.spec_from_file_location("example_export_checkpoint", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_dir(tmp_path):
    """A finished tiny run: memory/model with memory.json, a metrics log, a validation report."""
    model = make_tiny(memory_token_dim=16)
    randomise_memory_gates(model)
    with torch.no_grad():
        model.transformer.memory_blocks[0].norm.video.weight[0, 0] = 1e5  # beyond float16
    folder = tmp_path / "run" / "memory" / "model"
    model.save_pretrained(folder)
    (folder / MEMORY_FILE).write_text(json.dumps({"name": "feature_map", "encoder": "vgg16"}))
    log = [{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.5}]
    (tmp_path / "run" / "memory" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in log)
    )
    write_report(
        [{"subset": "all", "memory": "none", "psnr": 12.5}], tmp_path / "eval", "validation"
    )
    return tmp_path / "run", model


def test_export_loads_back_equal_in_small_shards(run_dir, tmp_path):
    run, model = run_dir
    example = _example()
    args = example.Args(
        run_dir=run,
        output_dir=tmp_path / "checkpoint",
        validation=tmp_path / "eval" / "validation.json",
        machine="test CPU",
        train_command="python examples/train_world_model.py --config tiny",
        max_shard_mb=1,
    )
    folder = example.export(args)
    loaded = WorldModel.from_pretrained(folder)
    assert loaded.dtype == torch.float32
    expected = model.state_dict()
    too_large = "transformer.memory_blocks.0.norm.video.weight"
    for name, value in loaded.state_dict().items():
        if name == too_large:  # outside float16's range: stored as float32, exactly
            assert torch.equal(value, expected[name])
        else:  # the others went through float16 (or stayed float32 where that was unsafe)
            reference = expected[name].half().float()
            assert torch.equal(value, reference) or torch.equal(value, expected[name]), name
    files = sorted(folder.iterdir())
    shards = [f for f in files if f.suffix == ".safetensors"]
    assert len(shards) > 1 and all(f.stat().st_size < 10**6 + 10**5 for f in shards)
    assert all(f.stat().st_size < SHARD_LIMIT for f in files)
    assert json.loads((folder / MEMORY_FILE).read_text())["encoder"] == "vgg16"
    card = (folder / "README.md").read_text()
    for fact in (
        "test CPU",
        "| memory | 2 | 0.9 | 0.5 |",
        "| all | none | 12.5 |",
        "--config tiny",
    ):
        assert fact in card
    assert not (tmp_path / "checkpoint.partial").exists()


def test_export_refuses_to_overwrite_and_names_missing_runs(run_dir, tmp_path):
    run, _ = run_dir
    example = _example()
    output = tmp_path / "checkpoint"
    example.export(example.Args(run_dir=run, output_dir=output))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        example.export(example.Args(run_dir=run, output_dir=output))
    example.export(
        example.Args(run_dir=run, output_dir=output, overwrite=True, half_precision=False)
    )
    loaded = WorldModel.from_pretrained(output)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, run_dir[1].state_dict()[name]), name  # float32: exact
    with pytest.raises(FileNotFoundError, match="no trained model at"):
        example.export(example.Args(run_dir=tmp_path / "nothing", output_dir=tmp_path / "x"))


def test_half_where_safe_keeps_what_float16_cannot_hold():
    example = _example()
    model = make_tiny()
    with torch.no_grad():
        model.transformer.norm_out.norm.weight.fill_(1e-7)  # below float16's subnormals
    kept = example.half_where_safe(model, 1e-3)
    assert "transformer.norm_out.norm.weight" in kept
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert all((dtypes[n] == torch.float32) == (n in kept) for n in dtypes)
    with pytest.raises(ValueError, match="half_tolerance must be > 0, got 0"):
        example.half_where_safe(model, 0)
