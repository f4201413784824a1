"""Memory per GPU for the model states of a training run, at each ZeRO stage and tensor-parallel size.

Examples:
    python scripts/estimate_memory.py                          # CogView's 4B model on 64 nodes x 8 GPUs
    python scripts/estimate_memory.py --num-layers 24 --hidden-size 1024 --nodes 1 --gpus-per-node 8

Model states only (weights, gradients, optimizer states, mixed precision with fp32 master weights and
Adam): activations come on top and depend on the micro-batch and --checkpoint-activations. ZeRO 2 and 3
use DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`, no CPU offload). DeepSpeed has none for stages 0 and 1; they
follow the same byte counts: 16-bit weights and gradients on every rank (2 + 2 bytes a parameter), the
fp32 master weights and Adam's two moments (12 bytes) partitioned at stage 1 and not at stage 0.

Tensor parallelism splits every weight matrix and the vocabulary-parallel embedding across the TP group,
so each TP rank holds 1/TP of the parameters (the LayerNorms and biases of the row-parallel outputs,
replicated, are under 0.1% of a 4B model and are counted as split) and ZeRO partitions across the
data-parallel ranks only (GPUs / TP).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import LAYERNORM_ORDERS, ModelConfig, count_parameters  # noqa: E402
from mpu import prepare_accelerator_env  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402

GIB = 2**30
# Bytes per parameter: 16-bit weights and gradients; fp32 master weights plus Adam's two fp32 moments.
HALF_WEIGHTS_AND_GRADS = 2 + 2
FP32_MASTER_AND_ADAM = 4 + 4 + 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model (defaults: CogView's released 4B model)")
    model.add_argument("--num-layers", type=int, default=48)
    model.add_argument("--hidden-size", type=int, default=2560)
    model.add_argument("--num-attention-heads", type=int, default=40)
    model.add_argument("--vocab-size", type=int, default=58240)
    model.add_argument("--max-position-embeddings", type=int, default=1089)
    model.add_argument("--layernorm-order", choices=LAYERNORM_ORDERS, default="sandwich")
    cluster = parser.add_argument_group("cluster (defaults: CogView's 512 GPUs)")
    cluster.add_argument("--nodes", type=int, default=64)
    cluster.add_argument("--gpus-per-node", type=int, default=8)
    cluster.add_argument("--tp-sizes", default="1,2,4,8", help="comma-separated tensor-parallel sizes")
    return parser.parse_args(argv)


def tp_sizes(text: str, gpus_per_node: int, hidden_size: int, heads: int) -> list[int]:
    """Tensor-parallel sizes that fit one node and split the heads evenly (TP stays inside a node)."""
    try:
        sizes = [int(item) for item in text.split(",")]
    except ValueError:
        raise UserError(f"--tp-sizes must be comma-separated integers, got {text!r}") from None
    for size in sizes:
        if size < 1 or gpus_per_node % size or heads % size or hidden_size % size:
            raise UserError(f"tensor-parallel size {size} must divide --gpus-per-node ({gpus_per_node}), the "
                            f"heads ({heads}) and the hidden size ({hidden_size})")
    return sizes


def per_gpu_bytes(stage: int, params: int, largest_layer: int, gpus: int) -> int:
    """Model-state bytes on one GPU holding `params` parameters, partitioned over `gpus` data-parallel ranks."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 0:
        return (HALF_WEIGHTS_AND_GRADS + FP32_MASTER_AND_ADAM) * params
    if stage == 1:
        return HALF_WEIGHTS_AND_GRADS * params + FP32_MASTER_AND_ADAM * params // gpus
    if stage == 2:
        return estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus, cpu_offload=False)[1]
    return estimate_zero3_model_states_mem_needs(params, largest_layer, num_gpus_per_node=gpus,
                                                 cpu_offload=False)[1]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = ModelConfig(vocab_size=args.vocab_size, num_layers=args.num_layers, hidden_size=args.hidden_size,
                         num_attention_heads=args.num_attention_heads,
                         max_position_embeddings=args.max_position_embeddings, layernorm_order=args.layernorm_order)
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise UserError("--nodes and --gpus-per-node must be positive")
    sizes = tp_sizes(args.tp_sizes, args.gpus_per_node, args.hidden_size, args.num_attention_heads)
    prepare_accelerator_env()  # DeepSpeed probes for an accelerator on import
    params = count_parameters(config)
    # ZeRO-3 gathers one module at a time: the largest is the word embedding or the MLP's first matrix.
    largest = max(config.vocab_size * config.hidden_size, config.ffn_size * config.hidden_size + config.ffn_size)
    gpus = args.nodes * args.gpus_per_node
    print(f"{params / 1e9:.2f}B parameters ({config.num_layers} layers, hidden {config.hidden_size}, "
          f"vocabulary {config.vocab_size}) on {args.nodes} x {args.gpus_per_node} = {gpus} GPUs; "
          f"GiB of model states per GPU")
    stages = (0, 1, 2, 3)
    print(f"| TP | data-parallel ranks | {' | '.join(f'ZeRO-{s}' for s in stages)} |")
    print(f"|---:|---:|{'---:|' * len(stages)}")
    for tp in sizes:
        dp = gpus // tp
        cells = [per_gpu_bytes(stage, params // tp, largest // tp, dp) / GIB for stage in stages]
        print(f"| {tp} | {dp} | {' | '.join(f'{cell:.1f}' for cell in cells)} |")


if __name__ == "__main__":
    run_main(main)
