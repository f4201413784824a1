#!/usr/bin/env bash
# Pretrain on several machines with tensor parallelism inside each machine and ZeRO data parallelism
# across the replicas (docs/training.md, "Tensor parallelism"). Started once, on the first machine.
#
#   HOSTFILE=hostfile TP_SIZE=8 ZERO_STAGE=1 DATA=/shared/data SAVE=/shared/gpt \
#     NUM_LAYERS=48 HIDDEN_SIZE=2560 NUM_HEADS=40 scripts/pretrain_tp_zero_multinode.sh
#
# TP_SIZE (default 2): GPUs that split every layer of one model replica; it must divide NUM_HEADS and the
# GPUs of every machine, so that a replica's per-layer all-reduces never leave its machine (ranks are
# numbered machine by machine and a replica is TP_SIZE consecutive ranks). The other settings are those of
# scripts/pretrain_multiple_nodes.sh (HOSTFILE, MASTER_ADDR, MASTER_PORT, shared SAVE, .deepspeed_env) and
# scripts/pretrain_flags.sh; ZERO_STAGE must be 1 or 2. The global batch is BATCH_SIZE x GRAD_ACCUM x
# GPUs / TP_SIZE. A run resumes at the TP_SIZE it was saved with; generation reads its checkpoints at any size.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${HOSTFILE:-}" || ! -f "${HOSTFILE}" ]]; then
  echo "error: set HOSTFILE to a DeepSpeed hostfile (lines of 'hostname slots=GPUS'), got '${HOSTFILE:-}'" >&2
  exit 2
fi
TP_SIZE=${TP_SIZE:-2}
if ! [[ "$TP_SIZE" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: TP_SIZE must be a positive integer, got '$TP_SIZE'" >&2
  exit 2
fi
while read -r host slots _; do
  gpus=${slots#slots=}
  if ! [[ "$gpus" =~ ^[0-9]+$ ]] || (( gpus % TP_SIZE )); then
    echo "error: $host has '$slots' in $HOSTFILE; every machine needs a multiple of TP_SIZE=$TP_SIZE GPUs" >&2
    exit 2
  fi
done < <(awk 'NF && $1 !~ /^#/' "$HOSTFILE")
source scripts/pretrain_flags.sh

MASTER_ADDR=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
MASTER_PORT=${MASTER_PORT:-29500}
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" \
  --master_port "$MASTER_PORT" pretrain_gpt2.py "${PRETRAIN_ARGS[@]}" --tensor-parallel-size "$TP_SIZE" "$@"
