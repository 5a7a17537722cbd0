"""The pixel-space EDM denoiser and its sampler, at tiny size."""

import json
import math

import pytest
import torch

from worldsim.geometry import intrinsics_from_hfov
from worldsim.memory.fills import harmonic_fill
from worldsim.models.pixel_denoiser import (
    MAX_EVALUATIONS,
    EDMSamplerConfig,
    PixelDenoiser,
    edm_loss_weight,
    pixel_denoiser_config,
    sample_frames,
)

SIZE = 32


def make_tiny(seed: int = 0, **overrides) -> PixelDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PixelDenoiser.from_config_name("tiny", **overrides)
    return model.eval()


def make_inputs(seed: int = 0, batch: int = 3, n_context: int = 1) -> dict[str, torch.Tensor]:
    """Random frames and a render covering the left 20 columns of every row but the last."""
    generator = torch.Generator().manual_seed(seed)
    known = torch.zeros(batch, 1, SIZE, SIZE, dtype=torch.bool)
    known[:-1, :, :, :20] = True  # the last row's render is empty (no memory)
    yaw = torch.linspace(-0.3, 0.3, batch)
    cam_to_ref = torch.eye(4).repeat(batch, 1, 1)
    cam_to_ref[:, 0, 0], cam_to_ref[:, 0, 2] = torch.cos(yaw), torch.sin(yaw)
    cam_to_ref[:, 2, 0], cam_to_ref[:, 2, 2] = -torch.sin(yaw), torch.cos(yaw)
    cam_to_ref[:, 2, 3] = 0.25
    return {
        "context_rgb": torch.rand(batch, n_context, 3, SIZE, SIZE, generator=generator),
        "context_depth": 10 * torch.rand(batch, n_context, 1, SIZE, SIZE, generator=generator),
        "render_rgb": torch.rand(batch, 3, SIZE, SIZE, generator=generator) * known,
        "render_depth": 5 * torch.rand(batch, 1, SIZE, SIZE, generator=generator) * known,
        "render_known": known,
        "render_age": torch.randint(0, 300, (batch, 1, SIZE, SIZE), generator=generator).float(),
        "intrinsics": intrinsics_from_hfov(90.0, SIZE, SIZE).expand(batch, 3, 3),
        "cam_to_ref": cam_to_ref,
    }


def test_shapes_and_conditioning_channels():
    model = make_tiny()
    inputs = make_inputs()
    conditions = model.conditions(**inputs)
    assert conditions.channels.shape == (3, model.condition_channels, SIZE, SIZE)
    assert model.condition_channels == 4 * 1 + 6 + 4 + 6
    noisy = torch.zeros(3, 4, SIZE, SIZE)
    with torch.no_grad():
        assert model(noisy, torch.tensor([0.5, 1.0, 2.0]), conditions).shape == (3, 4, SIZE, SIZE)
        frames = sample_frames(model, conditions, EDMSamplerConfig(), torch.Generator())
    assert frames.shape == (3, 4, SIZE, SIZE)
    assert frames.min() >= -1 and frames.max() <= 1


def test_prefill_is_the_fill_of_the_render_or_the_last_frame_without_one():
    model = make_tiny()
    inputs = make_inputs()
    conditions = model.conditions(**inputs)
    render = model.to_pixels(inputs["render_rgb"], inputs["render_depth"])
    expected = harmonic_fill(render[:2], inputs["render_known"][:2])
    assert torch.equal(conditions.prefill[:2], expected)
    last = model.to_pixels(inputs["context_rgb"][2, -1], inputs["context_depth"][2, -1])
    assert torch.equal(conditions.prefill[2], last)


def test_pixels_round_trip_and_depth_range():
    model = make_tiny()
    rgb = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1)
    depth = torch.tensor([[[[0.0, 2.5, 10.0, 20.0]]]])  # (1, 1, 1, 4)
    pixels = model.to_pixels(rgb.expand(1, 3, 1, 4), depth)
    assert pixels[0, 3, 0].tolist() == [-1.0, -0.5, 1.0, 1.0]  # beyond the range clamps
    back_rgb, back_depth = model.from_pixels(pixels)
    assert torch.equal(back_rgb, rgb.expand(1, 3, 1, 4))
    assert back_depth[0, 0, 0].tolist() == [0.0, 2.5, 10.0, 10.0]


def test_preconditioning_matches_edm_table_1():
    model = make_tiny(sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = model.preconditioning(torch.tensor([0.5]))
    # At sigma = sigma_data: c_skip = 1/2, c_out = sd / sqrt 2, c_in = 1 / (sd sqrt 2).
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(0.5 / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (0.5 * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4)
    assert edm_loss_weight(torch.tensor(0.5), 0.5).item() == pytest.approx(8.0)


@pytest.mark.parametrize("residual", [True, False])
def test_denoiser_is_the_identity_at_vanishing_noise(residual):
    model = make_tiny(residual=residual)
    conditions = model.conditions(**make_inputs())
    noisy = torch.rand(3, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        denoised = model(noisy, torch.tensor(1e-6), conditions)
    # c_skip = 1 - 4e-12 and c_out = 2e-6: the network's output is scaled away.
    assert torch.allclose(denoised, noisy, atol=1e-4)


def test_sampling_is_deterministic_under_a_seed_and_keeps_the_known_pixels():
    model = make_tiny()
    conditions = model.conditions(**make_inputs())
    config = EDMSamplerConfig(num_steps=2, solver="heun")

    def sample(seed: int, keep_known: bool = True) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(seed + row) for row in range(3)]
        return sample_frames(model, conditions, config, generators, keep_known)

    first, again, other = sample(0), sample(0), sample(10)
    assert torch.equal(first, again)
    known = conditions.known.expand_as(first)
    # Where the map is known the samples agree (they are the render); elsewhere seeds differ.
    assert torch.equal(first[known], conditions.render[known])
    assert torch.equal(first[known], other[known])
    assert (first - other)[~known].abs().mean() > 1e-3
    assert (sample(0, keep_known=False) - first)[known].abs().max() > 0
    # One generator per row: a row does not depend on the other rows of its batch.
    row = sample_frames(
        model,
        type(conditions)(*(field[1:2] for field in conditions)),
        config,
        [torch.Generator().manual_seed(1)],
    )
    # Batched and single convolutions round differently (~1e-6), and the start at sigma_max = 5
    # scales that up: 7e-5 measured.
    assert torch.allclose(row[0], first[1], atol=5e-4)


def test_output_depends_on_every_conditioning_input():
    model = make_tiny()
    inputs = make_inputs()
    noisy = torch.zeros(3, 4, SIZE, SIZE)
    with torch.no_grad():
        base = model(noisy, torch.tensor(1.0), model.conditions(**inputs))
        for name in ("context_rgb", "render_rgb", "render_age", "cam_to_ref"):
            changed = dict(inputs)
            changed[name] = inputs[name].flip(0)  # another row's input
            output = model(noisy, torch.tensor(1.0), model.conditions(**changed))
            assert (output - base).abs().max() > 1e-4, name


def test_save_load_equality_and_no_sampler_settings_in_the_config(tmp_path):
    model = make_tiny()
    model.save_pretrained(tmp_path)
    loaded = PixelDenoiser.from_pretrained(tmp_path).eval()
    conditions = model.conditions(**make_inputs())
    noisy = torch.rand(3, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(
            model(noisy, torch.tensor(0.7), conditions),
            loaded(noisy, torch.tensor(0.7), loaded.conditions(**make_inputs())),
        )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "PixelDenoiser"
    for sampler_setting in ("num_steps", "sigma_min", "sigma_max", "rho", "solver"):
        assert sampler_setting not in saved


def test_gradients_reach_every_parameter():
    model = make_tiny().train()
    conditions = model.conditions(**make_inputs())
    target = torch.rand(3, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    sigma = torch.tensor([0.1, 0.8, 3.0])
    noisy = target + sigma[:, None, None, None] * torch.randn(
        target.shape, generator=torch.Generator().manual_seed(4)
    )
    loss = ((model(noisy, sigma, conditions) - target) ** 2).mean()
    loss.backward()
    missing = [
        name
        for name, parameter in model.named_parameters()
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert not missing


def test_channels_last_model_gives_the_same_output():
    model = make_tiny()
    conditions = model.conditions(**make_inputs())
    noisy = torch.rand(3, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = model(noisy, torch.tensor(0.3), conditions)
        fast = model.to(memory_format=torch.channels_last)(noisy, torch.tensor(0.3), conditions)
    assert torch.allclose(plain, fast, atol=1e-5)  # other convolution kernels, other rounding


def test_sampler_schedule_and_bad_settings():
    config = EDMSamplerConfig(num_steps=4, sigma_min=0.01, sigma_max=5.0, rho=7.0)
    sigmas = config.sigmas()
    assert sigmas[0].item() == pytest.approx(5.0) and sigmas[-2].item() == pytest.approx(0.01)
    assert sigmas[-1].item() == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
    assert EDMSamplerConfig(num_steps=1).sigmas().tolist() == [5.0, 0.0]
    assert EDMSamplerConfig(num_steps=2, solver="heun").evaluations == 3
    for bad in (
        dict(num_steps=0),
        dict(num_steps=MAX_EVALUATIONS + 1),
        dict(num_steps=3, solver="heun"),
        dict(solver="dpm"),
        dict(sigma_min=0.0),
        dict(sigma_min=6.0, sigma_max=5.0),
        dict(sigma_max=2000.0),
        dict(rho=0.5),
    ):
        with pytest.raises(ValueError, match="EDMSamplerConfig"):
            EDMSamplerConfig(**bad)


def test_model_settings_are_validated():
    with pytest.raises(ValueError, match="unknown PixelDenoiser settings"):
        pixel_denoiser_config("tiny", num_steps=3)
    with pytest.raises(ValueError, match="multiples of 2"):
        PixelDenoiser.from_config_name("tiny", height=33)
    with pytest.raises(ValueError, match="prefill"):
        PixelDenoiser.from_config_name("tiny", prefill="inpaint")
    with pytest.raises(ValueError, match="render_rgb must have shape"):
        model = make_tiny()
        inputs = make_inputs()
        inputs["render_rgb"] = inputs["render_rgb"][:, :, :16]
        model.conditions(**inputs)
    inputs = make_inputs()
    inputs["render_depth"] = inputs["render_depth"].clone()
    inputs["render_depth"][0, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="render_depth holds NaN"):
        model.conditions(**inputs)


def test_the_mean_solver_averages_one_step_estimates_and_varies_less_by_seed():
    model = make_tiny(residual=True)
    conditions = model.conditions(**make_inputs())

    def run(config: EDMSamplerConfig, seed: int) -> torch.Tensor:
        return sample_frames(model, conditions, config, torch.Generator().manual_seed(seed))

    one_euler = run(EDMSamplerConfig(num_steps=1), 0)
    one_mean = run(EDMSamplerConfig(num_steps=1, solver="mean"), 0)
    torch.testing.assert_close(one_mean, one_euler, atol=1e-5, rtol=0)  # D at sigma_max both
    four = EDMSamplerConfig(num_steps=4, solver="mean")
    assert four.evaluations == 4
    # By hand: four draws in turn from the same generator, each denoised once at sigma_max.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        estimates = [
            model(
                conditions.prefill
                + 5.0 * torch.randn(conditions.prefill.shape, generator=generator),
                torch.tensor(5.0),
                conditions,
            )
            for _ in range(4)
        ]
    expected = torch.where(
        conditions.known, conditions.render, (sum(estimates) / 4).clamp(-1.0, 1.0)
    )
    torch.testing.assert_close(run(four, 3), expected, atol=1e-5, rtol=0)
    # The control: averaging removes most of the seed's share of the output.
    holes = ~conditions.known.expand_as(one_euler)
    spread_one = (run(EDMSamplerConfig(num_steps=1), 1) - one_euler)[holes].std()
    spread_four = (run(four, 1) - run(four, 0))[holes].std()
    assert spread_four < 0.75 * spread_one
