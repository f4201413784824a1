#!/usr/bin/env bash
# Text-to-image from a trained checkpoint (CogView's scripts/text2image.sh, without hard-coded paths or GPUs).
#
# Usage: scripts/text2image.sh CHECKPOINT [more generate_samples.py flags]
#   scripts/text2image.sh runs/gpt --prompt "a large red circle at the top left"
#   scripts/text2image.sh runs/gpt --input-source prompts.txt --cfg-scale 3 --negative-prompt "blurry"
# Defaults below can be changed with environment variables (BATCH_SIZE=16 scripts/text2image.sh ...);
# a flag given on the command line wins over them. Pick a GPU with CUDA_VISIBLE_DEVICES as usual.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CHECKPOINT="${1:?usage: $0 CHECKPOINT [generate_samples.py flags]}"
shift

exec "$PYTHON" "$ROOT/generate_samples.py" --load "$CHECKPOINT" --generation-task text2image \
    --batch-size "${BATCH_SIZE:-8}" --max-inference-batch-size "${MAX_INFERENCE_BATCH_SIZE:-32}" \
    --top-k "${TOP_K:-200}" --temperature "${TEMPERATURE:-1.0}" --cfg-scale "${CFG_SCALE:-1.0}" \
    --output-path "${OUTPUT_PATH:-samples/text2image}" "$@"
