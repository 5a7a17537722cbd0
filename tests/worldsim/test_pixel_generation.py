"""The world model generating in pixel space: a PixelDenoiser attached to it."""

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from envs.embedded.simulator import Simulator
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from tests.worldsim.conftest import make_tiny
from worldsim.memory import build_memory
from worldsim.models.pixel_denoiser import EDMSamplerConfig, PixelDenoiser
from worldsim.models.pretrained import WEIGHTS_FILE
from worldsim.models.world_model import PIXEL_GENERATOR_FOLDER, WorldModel
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.sampler import SamplerConfig

SCENE = "house-train-0000"


def _pixel_model():
    model = make_tiny(memory_token_dim=0, memory_render=True, turn_step_deg=30.0)
    torch.manual_seed(0)
    generator = PixelDenoiser.from_config_name("tiny")
    return model.attach_pixel_generator(generator, EDMSamplerConfig(num_steps=2))


@pytest.fixture(scope="module")
def start():
    sim = Simulator(SimulatorConfig(width=32, height=32))
    sim.load_scene(SCENE)
    rng = np.random.default_rng(0)
    positions = np.stack([sim.sample_navigable_point(rng) for _ in range(2)])
    return OracleRollout(sim).start(SCENE, positions, rng.uniform(-math.pi, math.pi, size=2))


def _simulator(model):
    sampler = SamplerConfig(num_inference_steps=1, render_init=0.0, render_fill=0)
    return LearnedSimulator(model, build_memory("rendered", voxel_size=0.05), sampler=sampler)


def test_chunks_come_from_the_pixel_generator_and_keep_what_the_map_shows(start):
    model = _pixel_model()
    actions = torch.tensor([[2, 2], [0, 0]])  # turns: new borders; stay: the map shows all
    result = _simulator(model).rollout(start, actions, generator=torch.Generator().manual_seed(1))
    assert result.rgb.shape == (2, 2, 3, 32, 32) and result.depth.shape == (2, 2, 1, 32, 32)
    assert 0 <= result.rgb.min() and result.rgb.max() <= 1 and result.depth.min() >= 0
    staying = (result.rgb[1] - start.rgb[1, -1]).abs().mean()
    assert staying < 0.02  # standing still, the render of the start frame is the answer
    latent = _simulator(model.attach_pixel_generator(None)).rollout(
        start, actions, generator=torch.Generator().manual_seed(1)
    )
    assert (latent.rgb[0] - result.rgb[0]).abs().mean() > 0.01  # the control: another path


def test_seeds_differ_in_unseen_space_only_and_rows_are_independent(start):
    model = _pixel_model()
    sim = _simulator(model)
    actions = torch.tensor([[2, 2], [2, 2]])
    first = sim.rollout(start, actions, generator=torch.Generator().manual_seed(1))
    second = sim.rollout(start, actions, generator=torch.Generator().manual_seed(2))
    differs = (first.rgb - second.rgb).abs().amax(2)  # (B, F, H, W)
    assert differs.mean() > 0.005  # the turn shows unseen space, where samples differ
    one_by_one = sim.rollout(
        start, actions, generator=torch.Generator().manual_seed(1), batch_size=1
    )
    torch.testing.assert_close(first.rgb, one_by_one.rgb, atol=1e-4, rtol=0)


def test_the_pixel_generator_saves_and_loads_with_the_world_model(tmp_path, start):
    model = _pixel_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / PIXEL_GENERATOR_FOLDER / "sampler.json").is_file()
    with safe_open(tmp_path / WEIGHTS_FILE, "pt") as weights:
        assert not [key for key in weights.keys() if key.startswith("pixel_generator")]
    loaded = WorldModel.from_pretrained(tmp_path)
    assert loaded.pixel_generator is not None and loaded.pixel_sampler.num_steps == 2
    actions = torch.tensor([[2, 2], [1, 1]])
    before = _simulator(model).rollout(start, actions, generator=torch.Generator().manual_seed(3))
    after = _simulator(loaded).rollout(start, actions, generator=torch.Generator().manual_seed(3))
    assert torch.equal(before.rgb, after.rgb)


def test_a_generator_that_does_not_fit_is_refused():
    model = make_tiny(memory_token_dim=0, memory_render=True)
    with pytest.raises(ValueError, match="height 64"):
        model.attach_pixel_generator(PixelDenoiser.from_config_name("small"))
    tokens = make_tiny()
    with pytest.raises(ValueError, match="memory_render"):
        tokens.attach_pixel_generator(PixelDenoiser.from_config_name("tiny"))


def test_a_malformed_pixel_sampler_file_is_named(tmp_path):
    _pixel_model().save_pretrained(tmp_path)
    sampler_file = tmp_path / PIXEL_GENERATOR_FOLDER / "sampler.json"
    sampler_file.write_text('{"num_steps": 9}')
    with pytest.raises(ValueError, match=r"sampler\.json.*num_steps"):
        WorldModel.from_pretrained(tmp_path)
    sampler_file.write_text('{"steps": 2}')
    with pytest.raises(ValueError, match="unknown settings"):
        WorldModel.from_pretrained(tmp_path)
