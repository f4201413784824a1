"""Evaluation: the metrics (shapes accuracy, PSNR, bits per token, caption loss, FID/IS, self-FID, VQ-VAE
round trip and codebook use) and the sections of `evaluate.py` that run them on held-out data.

One small module per metric family; each function's docstring gives the exact definition, and
`docs/evaluation.md` collects them as the reference for every number we report.
"""
