"""Inference: sampling, KV-cache decoding, classifier-free guidance and the `Pipeline` Python API."""
