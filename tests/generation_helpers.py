"""Tiny, fast stand-ins shared by the generation tests: a character tokenizer and a random model."""
from __future__ import annotations

import hashlib

import torch

from data_utils.sequences import TokenSequence
from data_utils.tokenizer import UnifiedTokenizer
from generation.sampling import (SamplingSettings, cfg_combine, draw_uniforms, filter_logits, make_generators,
                                 mask_disallowed, sample_rows)
from generation.tasks import Geometry
from model import CogViewGPT, ModelConfig

ALPHABET = " abcdefghijklmnopqrstuvwxyz,.红色圆形左上角有一个大的"


class CharTokenizer:
    """One piece per character: what `UnifiedTokenizer` needs of a text tokenizer, nothing more."""

    vocab_size = len(ALPHABET)
    fingerprint = hashlib.sha256(ALPHABET.encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return [ALPHABET.index(c) for c in text if c in ALPHABET]

    def decode(self, ids) -> str:
        return "".join(ALPHABET[i] for i in ids)


def tiny_tokenizer(codebook_size: int = 16) -> UnifiedTokenizer:
    return UnifiedTokenizer(CharTokenizer(), codebook_size)


def tiny_model(tok: UnifiedTokenizer, max_positions: int = 112, seed: int = 0, layers: int = 2,
               hidden: int = 32) -> CogViewGPT:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=layers, hidden_size=hidden, num_attention_heads=2,
                         max_position_embeddings=max_positions, hidden_dropout=0.0, attention_dropout=0.0)
    model = CogViewGPT(config).eval()
    # Random init gives nearly uniform logits; sharpen them so sampling actually depends on the context.
    with torch.no_grad():
        model.word_embeddings.weight.mul_(40.0)
    return model


def sharpened_model(vocab_size: int, max_positions: int, layernorm_order: str = "sandwich") -> CogViewGPT:
    """Random weights scaled by 8: logits that depend on the context without collapsing onto one code (the
    models whose sampled codes are pinned by recorded values)."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab_size, num_layers=2, hidden_size=32, num_attention_heads=2,
                         max_position_embeddings=max_positions, layernorm_order=layernorm_order, hidden_dropout=0.0,
                         attention_dropout=0.0)
    model = CogViewGPT(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" not in name:
                param.mul_(8.0)
    return model


def tiny_geometry(grid: int = 8, max_positions: int = 112, magnifies: bool = True) -> Geometry:
    """A model's sizes; `magnifies`: as if its super-resolution trained the magnifying windows."""
    return Geometry(image_grid=grid, text_max_tokens=16, max_positions=max_positions, magnifies=magnifies)


@torch.inference_mode()
def reference_decode(model, prompt: TokenSequence, seed: int, steps: int, allowed: torch.Tensor,
                     settings: SamplingSettings, uncond: TokenSequence | None = None,
                     stop_id: int | None = None) -> list[int]:
    """The slowest correct decoder: one row, no padding, no cache, the whole sequence every step."""
    generator = make_generators([seed])
    rows = [(list(prompt.ids), list(prompt.position_ids))]
    if settings.uses_guidance:
        rows.append((list(uncond.ids), list(uncond.position_ids)))
    out: list[int] = []
    for _ in range(steps):
        last = [model(torch.tensor([ids]), torch.tensor([pos]))[:, -1].float() for ids, pos in rows]
        logits = cfg_combine(last[0], last[1], settings.cfg_scale) if settings.uses_guidance else last[0]
        filtered = filter_logits(mask_disallowed(logits, allowed), settings.temperature, settings.top_k, settings.top_p)
        token = int(sample_rows(filtered, draw_uniforms(generator)[:, 0])[0])
        out.append(token)
        if token == stop_id:
            break
        for ids, pos in rows:
            ids.append(token)
            pos.append(pos[-1] + 1)
    return out


class OutOfMemoryAbove(torch.nn.Module):
    """Wraps a model and raises out-of-memory for any forward with more than `limit` rows."""

    def __init__(self, model: torch.nn.Module, limit: int, error: type[BaseException] = torch.OutOfMemoryError):
        super().__init__()
        self.inner, self.limit, self.error = model, limit, error
        self.batch_sizes: list[int] = []

    def new_kv_cache(self, batch_size: int, max_length: int, dtype=None):
        return self.inner.new_kv_cache(batch_size, max_length, dtype=dtype)

    def forward(self, input_ids, position_ids, key_padding_mask=None, kv_cache=None):
        self.batch_sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise self.error("CUDA out of memory (simulated)")
        return self.inner(input_ids, position_ids, key_padding_mask=key_padding_mask, kv_cache=kv_cache)


class BiasedLogits(torch.nn.Module):
    """Wraps a model and adds a fixed bias to its logits (to make forbidden ids overwhelmingly likely)."""

    def __init__(self, model: torch.nn.Module, bias: torch.Tensor):
        super().__init__()
        self.inner, self.bias = model, bias

    def new_kv_cache(self, batch_size: int, max_length: int, dtype=None):
        return self.inner.new_kv_cache(batch_size, max_length, dtype=dtype)

    def forward(self, input_ids, position_ids, key_padding_mask=None, kv_cache=None):
        return self.inner(input_ids, position_ids, key_padding_mask=key_padding_mask, kv_cache=kv_cache) + self.bias




CAPTIONS = ["a large red circle at the top left", "a small blue square in the center",
            "a large green triangle at the bottom right", "a small yellow diamond at the top",
            "左上角有一个大的红色圆形", "中间有一个小的蓝色正方形"]


def write_tiny_checkpoint(folder, grid: int = 8, max_positions: int = 112, sr_windows: bool = True):
    """A complete generation checkpoint on disk: SentencePiece model, untrained VQ-VAE (8x, so a
    `grid * 8` px image), random transformer exported with the metadata training records (`sr_windows`:
    as if trained on data with highres codes, so it may magnify)."""
    from pathlib import Path

    from data_utils.text_tokenizer import TextTokenizer, train_sentencepiece
    from model.export import save_exported
    from vqvae.api import save_vqvae, vqvae_fingerprint
    from vqvae.config import VQVAEConfig
    from vqvae.model import VQVAE

    folder = Path(folder)
    sp_model = train_sentencepiece(CAPTIONS * 20, folder / "tok" / "sp", vocab_size=300)
    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, num_res_blocks=0)).eval()
    save_vqvae(vqvae, folder / "vqvae")
    tok = UnifiedTokenizer(TextTokenizer(sp_model), 16)
    model = tiny_model(tok, max_positions=max_positions)
    metadata = {"tokenizer": tok.describe(),
                "vqvae": {"path": str(folder / "vqvae"), "fingerprint": vqvae_fingerprint(vqvae)},
                "data": {"image_grid": grid, "text_max_tokens": 16, "lowres_grid": grid // 2,
                         "sr_windows": sr_windows}}
    save_exported(model, folder / "gpt", extra=metadata)
    return folder / "gpt"


def write_located_checkpoint(folder, captions: list[str], vocab_size: int, location_bins: int = 16):
    """An exported tiny checkpoint whose tokenizer has `location_bins` location bins (the understanding tasks;
    0 for none), with its SentencePiece model trained on `captions` and an untrained VQ-VAE; returns the
    model's folder."""
    from data_utils.text_tokenizer import TextTokenizer, train_sentencepiece
    from model.export import save_exported
    from vqvae.api import save_vqvae, vqvae_fingerprint
    from vqvae.config import VQVAEConfig
    from vqvae.model import VQVAE

    sp_model = train_sentencepiece(captions, folder / "tok" / "sp", vocab_size=vocab_size)
    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, num_res_blocks=0)).eval()
    save_vqvae(vqvae, folder / "vqvae")
    tok = UnifiedTokenizer(TextTokenizer(sp_model), 16, location_bins=location_bins)
    metadata = {"tokenizer": tok.describe(),
                "vqvae": {"path": str(folder / "vqvae"), "fingerprint": vqvae_fingerprint(vqvae)},
                "data": {"image_grid": 8, "text_max_tokens": 16, "lowres_grid": 4}}
    save_exported(tiny_model(tok, max_positions=160), folder / "gpt", extra=metadata)
    return folder / "gpt"
