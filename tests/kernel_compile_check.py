"""Compile every Triton kernel of model/kernels/ to a cubin for sm_90, with Triton's bundled ptxas.

No GPU is needed. Run by tests/test_kernels.py in its own process, because under TRITON_INTERPRET=1 (which
the kernel tests set) the kernels are interpreter functions that cannot be compiled. Compiles fp16 with
padding, a sparse mask, dropout and PB-relax on, the fullest paths.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from model.kernels import decode_attention, flash_attention, layernorm  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
ATTENTION_TENSORS = dict(Q="*fp16", K="*fp16", V="*fp16", O="*fp16", DO="*fp16", DQ="*fp16", DK="*fp16", DV="*fp16",
                         LSE="*fp32", DELTA="*fp32", PAD="*i8", M="*i8", SEEN="*i8")
ROW_TENSORS = dict(X="*fp16", R="*fp16", W="*fp16", Bias="*fp16", Y="*fp16", DY="*fp16", DX="*fp16", MEAN="*fp32",
                   RSTD="*fp32", SCALE="*fp32", DW_PARTIAL="*fp32", DB_PARTIAL="*fp32")


def compile_for_hopper(kernel, pointers: dict[str, str], floats: tuple[str, ...], constants: dict) -> None:
    """Arguments not named in `pointers`, `floats` or `constants` are 32-bit integers."""
    signature = {name: "constexpr" if name in constants else pointers.get(name, "fp32" if name in floats else "i32")
                 for name in kernel.arg_names}
    triton.compile(ASTSource(kernel, signature, constants), target=HOPPER)


def main() -> None:
    attention = dict(HAS_PAD=True, HAS_MASK=True, DROPOUT=True, HEAD_DIM=64, BLOCK_D=64, BLOCK_M=64, BLOCK_N=64,
                     PRECISION="tf32")
    scales = ("q_scale", "alpha", "dropout_p")
    kernels = [(flash_attention._forward_kernel, ATTENTION_TENSORS, scales, attention),
               (flash_attention._backward_dkdv_kernel, ATTENTION_TENSORS, scales, attention),
               (flash_attention._backward_dq_kernel, ATTENTION_TENSORS, scales, attention),
               (decode_attention._decode_kernel, ATTENTION_TENSORS, scales,
                dict(HAS_PAD=True, HEAD_DIM=64, BLOCK_D=64, BLOCK_N=64)),
               (layernorm._forward_kernel, ROW_TENSORS, ("eps", "tiny", "relax_range"),
                dict(PB_RELAX=True, BLOCK=1024)),
               (layernorm._backward_kernel, ROW_TENSORS, (), dict(BLOCK=1024))]
    for kernel, pointers, floats, constants in kernels:
        compile_for_hopper(kernel, pointers, floats, constants)
    print(f"compiled {len(kernels)} kernels")


if __name__ == "__main__":
    main()
