"""Pieces of `pretrain_gpt2.py`: lr schedule, optimizer groups, loss, data feed, checkpoints, metrics."""
