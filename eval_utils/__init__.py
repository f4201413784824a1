"""Evaluation metrics: prompt-following accuracy on `shapes`, PSNR, bits per token, FID/IS, codebook use.

One small module per metric; each function's docstring gives the exact definition, and
`docs/evaluation.md` collects them as the reference for every number we report.
"""
