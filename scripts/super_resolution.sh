#!/usr/bin/env bash
# Super-resolution in token space (CogView's scripts/super_resolution.sh): each image at twice its side,
# conditioned on a text. An image at the model's image size is magnified with 9 overlapping windows,
# all images' windows batched together, by a model that trained them (data made with --with-highres;
# others refuse). Decoding is greedy, super-resolution's default; TOP_K / TEMPERATURE sample instead
# (docs/tasks/super_resolution.md).
#
# Usage: scripts/super_resolution.sh CHECKPOINT "TEXT" IMAGE_OR_FOLDER... [-- more generate_samples.py flags]
#   scripts/super_resolution.sh runs/gpt "a small blue square in the center" samples/text2image/0000_000.png
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CHECKPOINT="${1:?usage: $0 CHECKPOINT TEXT IMAGE_OR_FOLDER... [-- generate_samples.py flags]}"
TEXT="${2:?usage: $0 CHECKPOINT TEXT IMAGE_OR_FOLDER... [-- generate_samples.py flags]}"
shift 2
split_images "$@"
SAMPLING=()
[[ -n "${TOP_K:-}" ]] && SAMPLING+=(--top-k "$TOP_K")
[[ -n "${TEMPERATURE:-}" ]] && SAMPLING+=(--temperature "$TEMPERATURE")

exec "$PYTHON" "$ROOT/generate_samples.py" --load "$CHECKPOINT" --generation-task super-resolution \
    --prompt "$TEXT" --input-images "${IMAGES[@]}" "${SAMPLING[@]}" \
    --max-inference-batch-size "${MAX_INFERENCE_BATCH_SIZE:-32}" \
    --output-path "${OUTPUT_PATH:-samples/super_resolution}" "${FLAGS[@]}"
