#!/usr/bin/env bash
# Pretrain on several machines with the deepspeed launcher, started once on the first machine.
# Settings are environment variables (listed in scripts/pretrain_flags.sh); arguments are appended to
# pretrain_gpt2.py's flags.
#
#   HOSTFILE=hostfile DATA=/shared/data SAVE=/shared/gpt scripts/pretrain_multiple_nodes.sh
#
# HOSTFILE (required): one line per machine, `hostname slots=GPUS`, as DeepSpeed reads it. The launcher
# reaches the machines over passwordless ssh (pdsh) and starts the same command in the same folder on
# each, so the repository, its .venv, DATA and SAVE must be at the same paths on every machine, and
# SAVE must be one shared file system (rank 0 renames checkpoint folders that every rank wrote into).
# MASTER_ADDR: default the first host of HOSTFILE; MASTER_PORT: default 29500. Variables the workers
# need (NCCL_*, ...) go into a `.deepspeed_env` file (DeepSpeed's convention).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${HOSTFILE:-}" || ! -f "${HOSTFILE}" ]]; then
  echo "error: set HOSTFILE to a DeepSpeed hostfile (lines of 'hostname slots=GPUS'), got '${HOSTFILE:-}'" >&2
  exit 2
fi
source scripts/pretrain_flags.sh

MASTER_ADDR=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
MASTER_PORT=${MASTER_PORT:-29500}
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" \
  --master_port "$MASTER_PORT" pretrain_gpt2.py "${PRETRAIN_ARGS[@]}" "$@"
