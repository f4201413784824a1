"""Precision: DeepSpeed's fp16/bf16 config sections, autocast and int8 quantisation for inference (no loss scaler
of our own)."""
from fp16.int8 import quantize_linear_layers, refuse_unless_cpu
from fp16.precision import PRECISIONS, inference_autocast, precision_config, precision_of_config, torch_dtype

__all__ = ["PRECISIONS", "inference_autocast", "precision_config", "precision_of_config", "quantize_linear_layers",
           "refuse_unless_cpu", "torch_dtype"]
