# Sourced by pretrain_single_node.sh and pretrain_multiple_nodes.sh: the pretrain_gpt2.py flags of a run,
# each from an environment variable with a default. Sets PYTHON and PRETRAIN_ARGS.
#
#   DATA=runs/data      folder with train/ and val/ written by preprocess_data.py (or TRAIN_DATA, VALID_DATA)
#   SAVE=runs/gpt       checkpoint folder; a run resumes from it when it holds a checkpoint
#   NUM_LAYERS=12 HIDDEN_SIZE=768 NUM_HEADS=12 LAYERNORM_ORDER=sandwich
#   TASK_MIX=text2image=0.7,image2text=0.2,super_resolution=0.1 (needs lowres codes; else text2image=0.8,...)
#   TRAIN_ITERS=20000 BATCH_SIZE=16 (per GPU) GRAD_ACCUM=1 LR=3e-4 WARMUP=0.01 CLIP_GRAD=1.0
#   PRECISION=bf16 (fp32, fp16 or bf16) ZERO_STAGE=1, or DS_CONFIG=scripts/ds_config_zero2.json (which then sets both)
#   SAVE_INTERVAL=1000 EVAL_INTERVAL=1000 LOG_INTERVAL=10 NUM_WORKERS=2 SEED=1234
#   PYTHON              the interpreter (default: .venv/bin/python when present, else python3)

DATA=${DATA:-runs/data}
TRAIN_DATA=${TRAIN_DATA:-$DATA/train}
VALID_DATA=${VALID_DATA:-$DATA/val}
SAVE=${SAVE:-runs/gpt}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PRETRAIN_ARGS=(
  --train-data "$TRAIN_DATA"
  --num-layers "${NUM_LAYERS:-12}" --hidden-size "${HIDDEN_SIZE:-768}" --num-attention-heads "${NUM_HEADS:-12}"
  --layernorm-order "${LAYERNORM_ORDER:-sandwich}"
  --task-mix "${TASK_MIX:-text2image=0.7,image2text=0.2,super_resolution=0.1}"
  --train-iters "${TRAIN_ITERS:-20000}" --batch-size "${BATCH_SIZE:-16}"
  --gradient-accumulation-steps "${GRAD_ACCUM:-1}" --lr "${LR:-3e-4}" --warmup "${WARMUP:-0.01}"
  --clip-grad "${CLIP_GRAD:-1.0}" --seed "${SEED:-1234}" --num-workers "${NUM_WORKERS:-2}"
  --save "$SAVE" --save-interval "${SAVE_INTERVAL:-1000}" --log-interval "${LOG_INTERVAL:-10}"
)
if [[ -d "$VALID_DATA" ]]; then
  PRETRAIN_ARGS+=(--valid-data "$VALID_DATA" --eval-interval "${EVAL_INTERVAL:-1000}")
fi
if [[ -n "${DS_CONFIG:-}" ]]; then
  PRETRAIN_ARGS+=(--deepspeed_config "$DS_CONFIG")  # precision and ZeRO stage come from the file
else
  case "${PRECISION:-bf16}" in
    fp32) ;;
    fp16) PRETRAIN_ARGS+=(--fp16) ;;
    bf16) PRETRAIN_ARGS+=(--bf16) ;;
    *) echo "error: PRECISION must be fp32, fp16 or bf16, got ${PRECISION}" >&2; exit 2 ;;
  esac
  PRETRAIN_ARGS+=(--zero-stage "${ZERO_STAGE:-1}")
fi
if [[ -f "$SAVE/latest_checkpointed_iteration.txt" ]]; then
  PRETRAIN_ARGS+=(--load "$SAVE")  # continue exactly where the last checkpoint left off
fi
