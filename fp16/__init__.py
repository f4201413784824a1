"""Precision: DeepSpeed's fp16/bf16 config sections and autocast for inference (no loss scaler of our own)."""
from fp16.precision import PRECISIONS, inference_autocast, precision_config, precision_of_config, torch_dtype

__all__ = ["PRECISIONS", "inference_autocast", "precision_config", "precision_of_config", "torch_dtype"]
