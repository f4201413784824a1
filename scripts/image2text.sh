#!/usr/bin/env bash
# Captions for images (CogView's scripts/image2text.sh): one line "path<TAB>caption" per image on stdout.
#
# Usage: scripts/image2text.sh CHECKPOINT IMAGE_OR_FOLDER... [-- more generate_samples.py flags]
#   scripts/image2text.sh runs/gpt photos/
#   scripts/image2text.sh runs/gpt a.png b.png -- --top-k 1      # greedy captions
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}"
CHECKPOINT="${1:?usage: $0 CHECKPOINT IMAGE_OR_FOLDER... [-- generate_samples.py flags]}"
shift
IMAGES=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do IMAGES+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
[ ${#IMAGES[@]} -gt 0 ] || { echo "error: give at least one image or folder" >&2; exit 2; }

exec "$PYTHON" "$ROOT/generate_samples.py" --load "$CHECKPOINT" --generation-task image2text \
    --input-images "${IMAGES[@]}" --top-k "${TOP_K:-200}" --temperature "${TEMPERATURE:-1.0}" \
    --output-path "${OUTPUT_PATH:-samples/image2text}" "$@"
