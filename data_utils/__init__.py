"""Tokenizers, datasets and the sharded token data pipeline."""
