#!/usr/bin/env bash
# Pretrain on the GPUs of one machine (or its CPU). Settings are environment variables (listed in
# scripts/pretrain_flags.sh); arguments are appended to pretrain_gpt2.py's flags and win over them.
#
#   DATA=runs/data SAVE=runs/gpt NUM_GPUS=8 scripts/pretrain_single_node.sh
#   NUM_LAYERS=4 HIDDEN_SIZE=256 NUM_HEADS=8 scripts/pretrain_single_node.sh --checkpoint-activations
#
# NUM_GPUS: processes to start (default: every visible GPU, 1 without GPUs); pick GPUs with
# CUDA_VISIBLE_DEVICES. LAUNCHER: torchrun (default) or deepspeed. MASTER_PORT: default 29500.
# Running it again after a stop resumes from $SAVE.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pretrain_flags.sh

NUM_GPUS=${NUM_GPUS:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
MASTER_PORT=${MASTER_PORT:-29500}
case "${LAUNCHER:-torchrun}" in
  torchrun)
    exec "$PYTHON" -m torch.distributed.run --nnodes 1 --nproc_per_node "$NUM_GPUS" \
      --master_addr 127.0.0.1 --master_port "$MASTER_PORT" pretrain_gpt2.py "${PRETRAIN_ARGS[@]}" "$@" ;;
  deepspeed)
    exec "$PYTHON" -m deepspeed.launcher.runner --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT" \
      pretrain_gpt2.py "${PRETRAIN_ARGS[@]}" "$@" ;;
  *)
    echo "error: LAUNCHER must be torchrun or deepspeed, got ${LAUNCHER}" >&2; exit 2 ;;
esac
