"""The classical hole fills against hand-computed cases and a brute-force reference."""

import pytest
import torch

from worldsim.memory.fills import fill_holes, harmonic_fill, nearest_fill, nearest_index


def random_known(generator: torch.Generator, shape: tuple[int, ...], share: float) -> torch.Tensor:
    return torch.rand(shape, generator=generator) < share


def brute_force_nearest_distance(known: torch.Tensor) -> torch.Tensor:
    """(B, H, W) squared distance to the nearest known pixel, by trying every pair."""
    batch, _, height, width = known.shape
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = torch.stack([rows.flatten(), columns.flatten()], dim=1)  # (HW, 2)
    out = torch.empty(batch, height * width, dtype=torch.int64)
    for b in range(batch):
        seeds = pixels[known[b, 0].flatten()]  # (S, 2)
        squared = ((pixels[:, None] - seeds[None]) ** 2).sum(-1)  # (HW, S)
        out[b] = squared.min(dim=1).values
    return out.view(batch, height, width)


def test_nearest_index_is_the_exact_nearest_known_pixel(generator):
    known = random_known(generator, (3, 1, 23, 31), 0.05)
    index = nearest_index(known)
    width = known.shape[-1]
    rows, columns = torch.div(index, width, rounding_mode="floor"), index % width
    grid_rows, grid_columns = torch.meshgrid(torch.arange(23), torch.arange(31), indexing="ij")
    squared = (rows - grid_rows) ** 2 + (columns - grid_columns) ** 2
    assert torch.equal(squared, brute_force_nearest_distance(known))
    # The chosen pixel is known, and a known pixel is its own nearest.
    assert known.flatten(1).gather(1, index.flatten(1)).all()
    flat = torch.arange(23 * 31).view(1, 23, 31).expand(3, -1, -1)
    assert torch.equal(index[known[:, 0]], flat[known[:, 0]])


def test_nearest_fill_copies_the_nearest_value_and_breaks_ties_to_the_left():
    image = torch.zeros(1, 1, 1, 5)
    image[0, 0, 0, 0], image[0, 0, 0, 4] = 1.0, 3.0
    known = torch.zeros(1, 1, 1, 5, dtype=torch.bool)
    known[..., 0] = known[..., 4] = True
    filled = nearest_fill(image, known)
    # Pixel 2 is 2 px from both: the smaller column wins.
    assert filled.flatten().tolist() == [1.0, 1.0, 1.0, 3.0, 3.0]


def test_fills_keep_known_pixels_bitwise_and_constants_constant(generator):
    image = torch.rand(2, 4, 16, 16, generator=generator)
    known = random_known(generator, (2, 1, 16, 16), 0.3)
    for method in ("nearest", "harmonic"):
        filled = fill_holes(image, known, method)
        assert torch.equal(filled[known.expand_as(image)], image[known.expand_as(image)])
        constant = torch.where(known, torch.full_like(image, 0.625), image)
        # 0.625 is exact in binary, and means of equal values are that value again.
        assert torch.equal(fill_holes(constant, known, method), torch.full_like(image, 0.625))


def test_harmonic_fill_reproduces_a_linear_ramp_inside_a_hole():
    rows, columns = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = (0.02 * rows - 0.015 * columns + 0.3).expand(2, 1, 32, 32)
    known = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    known[0, :, 8:20, 5:27] = False  # a wide hole enclosed by known pixels
    known[1, :, 3:29, 3:29] = False  # most of the image
    image = torch.where(known, ramp, torch.zeros_like(ramp))
    filled = harmonic_fill(image, known, iterations=400)
    # The ramp is the discrete harmonic solution; 400 sweeps per level converge to float32
    # rounding (values ~0.5, a few ulps of accumulated summation error).
    assert torch.allclose(filled, ramp, atol=1e-5)
    # The nearest fill is no harmonic solution: a control that the test can fail.
    assert (nearest_fill(image, known) - ramp).abs().max() > 0.05


def test_harmonic_fill_obeys_the_mean_value_and_maximum_principles(generator):
    image = torch.rand(3, 2, 16, 24, generator=generator)
    known = random_known(generator, (3, 1, 16, 24), 0.2)
    filled = harmonic_fill(image, known, iterations=600)
    padded = torch.nn.functional.pad(filled, (1, 1, 1, 1), mode="replicate")
    mean = 0.25 * (
        padded[..., :-2, 1:-1]
        + padded[..., 2:, 1:-1]
        + padded[..., 1:-1, :-2]
        + padded[..., 1:-1, 2:]
    )
    holes = ~known.expand_as(image)
    # Converged Jacobi: every hole is the mean of its neighbours up to float32 rounding.
    assert (filled - mean)[holes].abs().max() < 1e-5
    for b in range(3):
        for c in range(2):
            values = image[b, c][known[b, 0]]
            assert filled[b, c].min() >= values.min() and filled[b, c].max() <= values.max()


def test_harmonic_fill_converges_faster_with_the_pyramid(generator):
    rows, columns = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    truth = (0.01 * rows + 0.005 * columns).expand(1, 1, 64, 64)
    known = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    known[..., :, :4] = known[..., :, 60:] = known[..., :4, :] = known[..., 60:, :] = True
    image = torch.where(known, truth, torch.zeros_like(truth))
    pyramid = (harmonic_fill(image, known, iterations=16) - truth).abs().max()
    flat = (harmonic_fill(image, known, iterations=16, coarsest=64) - truth).abs().max()
    assert pyramid < 0.01 < flat


def test_images_without_known_pixels_take_the_empty_value(generator):
    image = torch.rand(2, 3, 8, 8, generator=generator)
    known = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    known[1, 0, 4, 4] = True
    for method in ("nearest", "harmonic"):
        filled = fill_holes(image, known, method, empty_value=0.5)
        assert torch.equal(filled[0], torch.full_like(filled[0], 0.5))
        assert torch.equal(filled[1], image[1, :, 4:5, 4:5].expand(3, 8, 8))


def test_bad_inputs_raise():
    image = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="known must be a bool"):
        nearest_fill(image, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="iterations"):
        harmonic_fill(image, torch.ones(1, 1, 8, 8, dtype=torch.bool), iterations=-1)
    with pytest.raises(ValueError, match="unknown fill"):
        fill_holes(image, torch.ones(1, 1, 8, 8, dtype=torch.bool), "inpaint")
