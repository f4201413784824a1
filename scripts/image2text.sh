#!/usr/bin/env bash
# Captions for images (CogView's scripts/image2text.sh): one line "path<TAB>caption" per image on stdout.
#
# Usage: scripts/image2text.sh CHECKPOINT IMAGE_OR_FOLDER... [-- more generate_samples.py flags]
#   scripts/image2text.sh runs/gpt photos/
#   scripts/image2text.sh runs/gpt a.png b.png -- --top-k 1      # greedy captions
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CHECKPOINT="${1:?usage: $0 CHECKPOINT IMAGE_OR_FOLDER... [-- generate_samples.py flags]}"
shift
split_images "$@"

exec "$PYTHON" "$ROOT/generate_samples.py" --load "$CHECKPOINT" --generation-task image2text \
    --input-images "${IMAGES[@]}" --top-k "${TOP_K:-200}" --temperature "${TEMPERATURE:-1.0}" \
    --output-path "${OUTPUT_PATH:-samples/image2text}" "${FLAGS[@]}"
