"""Sampler settings: their own config beside the checkpoint, not in the model's config."""

import dataclasses
import json

import pytest
import torch

from tests.worldsim.conftest import make_tiny
from worldsim.models.world_model import LEGACY_SAMPLER_KEYS, WorldModel
from worldsim.simulator.chunks import rollout
from worldsim.simulator.sampler import SAMPLER_FILE, SamplerConfig, load_sampler_config


def test_defaults_are_the_shipped_checkpoints_measured_settings():
    from worldsim.models.world_model import DEFAULT_CHECKPOINT

    assert load_sampler_config(DEFAULT_CHECKPOINT) == SamplerConfig()
    assert SamplerConfig() == SamplerConfig(4, 0.75, 2, True, False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_inference_steps", 0, r"num_inference_steps must be an int >= 1, got 0"),
        ("num_inference_steps", 2.5, r"num_inference_steps must be an int >= 1, got 2\.5"),
        ("render_init", 1.5, r"render_init must be a share of the steps in \[0, 1\], got 1\.5"),
        ("render_init", "half", r"render_init must be a number in \[0, 1\], got 'half'"),
        ("render_fill", 17, r"render_fill must be an int in \[0, 16\] rings of pixels, got 17"),
        ("render_composite", 1, r"render_composite must be true or false, got 1"),
    ],
)
def test_a_setting_out_of_range_names_the_field_and_the_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**{field: value})


def test_more_steps_than_the_schedule_has_are_refused_for_that_model(tiny_model):
    SamplerConfig(num_inference_steps=1000).check_model(tiny_model)
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 1000\]"):
        SamplerConfig(num_inference_steps=1001).check_model(tiny_model)


def test_saved_beside_the_checkpoint_and_loaded_back(tmp_path):
    sampler = SamplerConfig(num_inference_steps=7, render_init=0.5, render_fill=0)
    path = sampler.save(tmp_path)
    assert path == tmp_path / SAMPLER_FILE
    assert load_sampler_config(tmp_path) == sampler
    assert load_sampler_config(tmp_path / "elsewhere") == SamplerConfig()  # no file: defaults
    assert load_sampler_config(None) == SamplerConfig()
    assert sampler.with_steps(None) is sampler and sampler.with_steps(2).num_inference_steps == 2


def test_a_checkpoint_of_the_old_kind_loads_and_its_sampler_settings_are_converted(tmp_path):
    model = make_tiny()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(LEGACY_SAMPLER_KEYS).isdisjoint(config)  # new checkpoints: architecture only
    config.update(num_inference_steps=3, render_init=0.25, render_fill=1)  # as written before
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = WorldModel.from_pretrained(tmp_path)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters(), strict=True)
    )
    assert load_sampler_config(tmp_path) == SamplerConfig(3, 0.25, 1)


def test_bad_sampler_files_name_the_file_and_the_problem(tmp_path):
    path = tmp_path / SAMPLER_FILE
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{SAMPLER_FILE}' is not valid JSON"):
        load_sampler_config(tmp_path)
    path.write_text(json.dumps({"steps": 4}))
    with pytest.raises(ValueError, match=r"unknown sampler settings \['steps'\]"):
        load_sampler_config(tmp_path)
    path.write_text(json.dumps({"render_init": 2.0}))
    with pytest.raises(ValueError, match=rf"{SAMPLER_FILE}': render_init must be a share"):
        load_sampler_config(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        load_sampler_config(tmp_path)


def test_render_settings_act_on_a_model_that_reads_a_render_and_no_other(tiny_batch):
    """The render settings change a render model's chunk; a token model ignores them."""
    actions = torch.full((2, 2), 2, dtype=torch.int64)  # turn left

    def chunk(model, sampler):
        return rollout(
            model,
            tiny_batch["rgb"][:, :1],
            tiny_batch["depth"][:, :1],
            tiny_batch["cam_to_world"][:, :1],
            actions,
            sampler=sampler,
            intrinsics=tiny_batch["intrinsics"][:, 0],
            generator=torch.Generator().manual_seed(0),
        ).rgb

    plain = SamplerConfig(num_inference_steps=2, render_init=0.0, render_fill=0)
    guessed = dataclasses.replace(plain, render_init=1.0)
    tokens = make_tiny()
    assert torch.equal(chunk(tokens, plain), chunk(tokens, guessed))
    render = make_tiny(memory_token_dim=0, memory_render=True)
    assert not torch.equal(chunk(render, plain), chunk(render, guessed))  # the control
