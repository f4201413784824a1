#!/usr/bin/env bash
# Teach a trained shapes model the `sks square` (../shared/datasets/subject.md) with LoRA, prior
# preservation and placement pictures (the subject cut out of its four images and moved; PLACEMENT_IMAGES=0
# for the four alone), then draw it somewhere no instance image shows it.
#
# Usage: scripts/finetune_subject.sh BASE_CHECKPOINT OUTPUT_DIR [more finetune_subject.py flags]
#   scripts/finetune_subject.sh runs/bench_subject_base/shapes/gpt-5715 runs/subject
#   MODE=full LR=3e-4 scripts/finetune_subject.sh runs/gpt runs/subject_full
#   PRIOR_LOSS_WEIGHT=0 scripts/finetune_subject.sh runs/gpt runs/subject_noprior   # no prior preservation
# Writes OUTPUT_DIR/instances (the four instance images with captions), OUTPUT_DIR/class_prompts.txt,
# OUTPUT_DIR/run (checkpoints, class images, TensorBoard, adapter/) and OUTPUT_DIR/samples. After a kill,
# run the same command again: it resumes from the last checkpoint. Defaults below can be changed with
# environment variables; a flag given on the command line wins over them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BASE="${1:?usage: $0 BASE_CHECKPOINT OUTPUT_DIR [finetune_subject.py flags]}"
OUT="${2:?usage: $0 BASE_CHECKPOINT OUTPUT_DIR [finetune_subject.py flags]}"
shift 2

(cd "$ROOT" && "$PYTHON" -m data_utils.subject "$OUT" "${NUM_CLASS_IMAGES:-200}" >/dev/null)
RESUME=()
[[ -f "$OUT/run/latest_checkpointed_iteration.txt" ]] && RESUME=(--load "$OUT/run")
PRIOR=(--prior-loss-weight "${PRIOR_LOSS_WEIGHT:-1}")
[[ "${PRIOR_LOSS_WEIGHT:-1}" != 0 ]] && PRIOR+=(--class-prompts "$OUT/class_prompts.txt" \
    --num-class-images "${NUM_CLASS_IMAGES:-200}")
"$PYTHON" "$ROOT/finetune_subject.py" --base "$BASE" --instance-data "$OUT/instances" "${PRIOR[@]}" \
    --mode "${MODE:-lora}" --lr "${LR:-1e-2}" --train-iters "${TRAIN_ITERS:-400}" --batch-size "${BATCH_SIZE:-4}" \
    --placement-images "${PLACEMENT_IMAGES:-400}" --bf16 --save "$OUT/run" "${RESUME[@]}" "$@"
exec "$PYTHON" "$ROOT/generate_samples.py" --load "$BASE" --adapter "$OUT/run/adapter" \
    --prompt "a small sks square at the bottom left" --prompt "a large sks square at the right and a small red circle at the top left" \
    --batch-size 4 --cfg-scale 1.5 --temperature 0.4 --output-path "$OUT/samples"
