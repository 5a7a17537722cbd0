#!/usr/bin/env bash
# The recipe of the shipped world model on a one-GPU machine: collect the training houses on
# every CPU core, measure clip coverage, cache latents on the GPU, then fine-tune the rendered-
# memory model for a fixed wall-clock budget, and export its EMA weights.
#
#   bash scripts/train_world_model_gpu.sh OUTPUT_DIR
#
# Settings (environment variables, with their defaults): SCENES=32 training houses,
# EPISODES=10 per house, BATCH=64 clips, LR=3e-4, SECONDS_BUDGET=270 of training,
# INIT=worldsim/checkpoints/world_model_small (the model to start from), WORKERS=$(nproc),
# PYTHON=python3. Re-running the same command resumes each step where it stopped.
set -euo pipefail
out=${1:?usage: bash scripts/train_world_model_gpu.sh OUTPUT_DIR}
python=${PYTHON:-python3}
workers=${WORKERS:-$(nproc)}
loaders=$(( workers > 4 ? workers - 4 : 1 ))  # leave cores to the main process
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }

stamp "collecting ${SCENES:-32} houses x ${EPISODES:-10} episodes on $workers processes"
$python examples/collect_data.py --output-dir "$out/data" --scene-count "${SCENES:-32}" \
    --episodes-per-scene "${EPISODES:-10}" --workers "$workers" --quiet

stamp "training (coverage and latents first)"
$python examples/train_world_model.py --stage memory --init "${INIT:-worldsim/checkpoints/world_model_small}" \
    --memory rendered --data-dir "$out/data" --output-dir "$out/train" --workers "$loaders" \
    --batch-size "${BATCH:-64}" --train.steps 1000000 --train.max-seconds "${SECONDS_BUDGET:-270}" \
    --train.learning-rate "${LR:-3e-4}" --train.warmup-steps 200 --train.ema-decay 0.999 \
    --train.context-noise 0.2 --train.checkpoint-every 1000 --train.sample-every 0 \
    --train.log-every 50 --threads "$loaders"
stamp "done: $out/train/memory/model"
