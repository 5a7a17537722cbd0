"""Write pairs.npz: image pairs for the LPIPS reference values (see README.md here).

Run from the repository root: .venv/bin/python tests/data/lpips/make_pairs.py
"""

from pathlib import Path

import numpy as np
import skimage.data
from skimage.filters import gaussian
from skimage.transform import resize

OUT = Path(__file__).with_name("pairs.npz")
SIZES = {"64x64": (64, 64), "48x80": (48, 80)}


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A skimage sample photograph as float RGB in [0, 1], resized (anti-aliased)."""
    image = getattr(skimage.data, name)()[..., :3].astype(np.float64) / 255.0
    return resize(image, size, anti_aliasing=True)


def pairs_of_size(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    astronaut, chelsea = photo("astronaut", size), photo("chelsea", size)
    coffee, rocket = photo("coffee", size), photo("rocket", size)
    pairs = {
        "identical": (astronaut, astronaut),
        "gaussian_noise": (astronaut, astronaut + rng.normal(0.0, 0.08, astronaut.shape)),
        "blur": (astronaut, gaussian(astronaut, sigma=1.5, channel_axis=-1)),
        "different_photos": (chelsea, coffee),
        "shift_2px": (chelsea, np.roll(chelsea, 2, axis=1)),
        "brightness": (coffee, coffee * 0.7 + 0.1),
        "inverted": (rocket, 1.0 - rocket),
        "uniform_noise": (rng.uniform(size=astronaut.shape), rng.uniform(size=astronaut.shape)),
    }
    images = np.stack([np.stack(pair) for pair in pairs.values()])  # (N, 2, H, W, 3)
    images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images.transpose(0, 1, 4, 2, 3), list(pairs)  # (N, 2, 3, H, W) uint8


def main() -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for key, size in SIZES.items():
        images, names = pairs_of_size(size, rng)
        arrays[f"pairs_{key}"] = images
        arrays[f"names_{key}"] = np.array(names)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
