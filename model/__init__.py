"""The transformer: config, model, KV cache and checkpoint loading (see docs/model.md)."""
from model.config import ModelConfig, count_parameters, flops_per_token
from model.gpt import CogViewGPT
from model.kv_cache import KVCache

__all__ = ["ModelConfig", "CogViewGPT", "KVCache", "count_parameters", "flops_per_token"]
