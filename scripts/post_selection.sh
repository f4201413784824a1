#!/usr/bin/env bash
# Post-selection (CogView's self-reranking): rank candidate images by how well they explain a text.
# Prints "rank<TAB>score<TAB>path", best first; the scores are in OUTPUT_PATH/manifest.jsonl too.
#
# Usage: scripts/post_selection.sh CHECKPOINT "TEXT" IMAGE_OR_FOLDER... [-- more generate_samples.py flags]
#   scripts/post_selection.sh runs/gpt "a large red circle at the top left" samples/text2image/
#   CAPTION_MODEL=runs/captioner scripts/post_selection.sh runs/gpt "左上角有一个大的红色圆形" candidates/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CHECKPOINT="${1:?usage: $0 CHECKPOINT TEXT IMAGE_OR_FOLDER... [-- generate_samples.py flags]}"
TEXT="${2:?usage: $0 CHECKPOINT TEXT IMAGE_OR_FOLDER... [-- generate_samples.py flags]}"
shift 2
split_images "$@"
EXTRA=()
[ -n "${CAPTION_MODEL:-}" ] && EXTRA+=(--caption-model "$CAPTION_MODEL")

exec "$PYTHON" "$ROOT/generate_samples.py" --load "$CHECKPOINT" --generation-task post-selection \
    --prompt "$TEXT" --input-images "${IMAGES[@]}" "${EXTRA[@]}" \
    --output-path "${OUTPUT_PATH:-samples/post_selection}" "${FLAGS[@]}"
