"""Long image sequences: 32x32-token images end to end on CPU at a tiny width, and the local image window.

- a 256 px image through an 8x VQ-VAE becomes a 32x32-token row (preprocess_data.py), a tiny model trains on
  those 1,000-token sequences, and generation at the recorded grid makes a 256 px image;
- `image_coordinates` finds each code's row and column from the ids alone, in every task's sequence;
- the local image window hides exactly the codes outside it, and decoding with a KV cache computes what
  the full forward computes;
- `image_attention_window` and its `image_tokens` survive model_config.json; an old config loads dense.
"""
from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

import preprocess_data
from data_utils.dataset import TaskSequenceDataset, collate_sequences
from data_utils.image_sources import open_dataset
from data_utils.sequences import (image2text, image_coordinates, image_tokens_of, super_resolution, text2image)
from data_utils.shards import ShardedRows
from data_utils.text_tokenizer import train_sentencepiece
from data_utils.tokenizer import UnifiedTokenizer
from generation.loading import geometry_from
from generation.sampling import SamplingSettings
from generation.tasks import generate_image_codes, image_ids_mask
from generation_helpers import reference_decode, tiny_tokenizer
from model import CogViewGPT, ModelConfig
from model.gpt import build_attention_mask, image_window_mask
from model.kernels import set_attention_backend
from training.loss import next_token_loss
from utils.errors import UserError
from vqvae.api import code2img, load_vqvae, save_vqvae
from vqvae.config import VQVAEConfig
from vqvae.model import VQVAE


def windowed_model(tok: UnifiedTokenizer, window: int, layers: int = 2, positions: int = 128,
                   seed: int = 0, position_layout: str = "consecutive") -> CogViewGPT:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=layers, hidden_size=32, num_attention_heads=2,
                         max_position_embeddings=positions, hidden_dropout=0.0, attention_dropout=0.0,
                         image_attention_window=window, image_tokens=image_tokens_of(tok),
                         position_layout=position_layout)
    return CogViewGPT(config).eval()


# ---------------------------------------------------------------- coordinates and the window

def test_coordinates_of_every_task_follow_the_grid_tokens():
    tok = tiny_tokenizer()
    text = tok.encode_text("a red")
    lo, hi = torch.arange(16) % 16, torch.arange(64) % 16
    cases = {
        "text2image": (text2image(tok, text, 8, hi), [(8, hi)]),
        "image2text": (image2text(tok, lo, 4, text), [(4, lo)]),
        "super_resolution": (super_resolution(tok, text, lo, 4, 8, hi), [(4, lo), (8, hi)]),
    }
    for task, (sequence, images) in cases.items():
        coords = image_coordinates(torch.tensor([sequence.ids]), image_tokens_of(tok))
        code_at = coords.is_code[0].nonzero().flatten().tolist()
        expected = [(number, r, c) for number, (side, codes) in enumerate(images, 1)
                    for r in range(side) for c in range(side)]
        found = [(int(coords.image[0, i]), int(coords.row[0, i]), int(coords.col[0, i])) for i in code_at]
        assert found == expected, task
        assert len(code_at) == sum(len(codes) for _, codes in images)


def test_window_hides_exactly_the_codes_outside_it():
    tok = tiny_tokenizer()
    text = tok.encode_text("ab")
    sequence = text2image(tok, text, 4, torch.zeros(16, dtype=torch.long))
    ids = torch.tensor([sequence.ids])
    first_code = 1 + len(text) + 2  # [ROI1] text G [BOI1]
    allowed = image_window_mask(image_coordinates(ids, image_tokens_of(tok)), ids.shape[1], window=1)[0]
    query = first_code + 2 * 4 + 2  # code (2, 2)
    seen_codes = {divmod(k - first_code, 4) for k in range(first_code, query + 1) if allowed[query, k]}
    assert seen_codes == {(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)}
    assert allowed[query, :first_code].all()  # the text and the command tokens stay global
    assert allowed[:first_code].all()  # text queries are not windowed


def test_window_changes_only_what_a_code_may_see():
    """One layer: changing a code outside a later code's window leaves that code's logits as they were,
    changing one inside does not; a dense model with the same weights sees both."""
    tok = tiny_tokenizer()
    windowed = windowed_model(tok, window=1, layers=1)
    dense = CogViewGPT(ModelConfig(**{**windowed.config.to_dict(), "image_attention_window": 0,
                                      "image_tokens": None})).eval()
    dense.load_state_dict(windowed.state_dict())
    codes = torch.arange(64) % 16
    base = text2image(tok, tok.encode_text("ab"), 8, codes)
    first_code = base.ids.index(tok["[BOI1]"]) + 1
    query = first_code + 5 * 8 + 5  # code (5, 5)

    def logits_at_query(model: CogViewGPT, changed: int) -> torch.Tensor:
        ids = list(base.ids)
        ids[first_code + changed] = (ids[first_code + changed] + 7) % 16
        return model(torch.tensor([ids]), torch.tensor([base.position_ids]))[0, query]

    with torch.no_grad():
        reference = windowed(torch.tensor([base.ids]), torch.tensor([base.position_ids]))[0, query]
        far, near = 2 * 8 + 5, 4 * 8 + 4  # (2, 5) is 3 rows above; (4, 4) is a diagonal neighbour
        torch.testing.assert_close(logits_at_query(windowed, far), reference)
        assert not torch.allclose(logits_at_query(windowed, near), reference)
        dense_reference = dense(torch.tensor([base.ids]), torch.tensor([base.position_ids]))[0, query]
        assert not torch.allclose(logits_at_query(dense, far), dense_reference)


def test_kv_cache_decoding_matches_the_full_forward_under_the_window():
    tok = tiny_tokenizer()
    model = windowed_model(tok, window=1, positions=112)
    with torch.no_grad():
        model.word_embeddings.weight.mul_(40.0)  # sharper logits, so samples depend on the context
    geometry = geometry_from({"data": {"image_grid": 8, "text_max_tokens": 16}}, model.config)
    settings = SamplingSettings(temperature=1.0, top_k=0)
    text = tok.encode_text("a red")
    codes = generate_image_codes(model, tok, geometry, [text], n=2, seed=3, settings=settings, max_batch_rows=4)
    for j in range(2):
        expected = reference_decode(model, text2image(tok, text, 8), 3 + j, 64, image_ids_mask(tok), settings)
        assert codes[0, j].flatten().tolist() == expected


def padded_rows(tok, grid: int, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two text-to-image rows of different text lengths, right-padded: ids, positions, real-token mask."""
    rows = [text2image(tok, tok.encode_text(text), grid, codes) for text in ("a red circle", "ab")]
    batch = collate_sequences([{"input_ids": torch.tensor(r.ids), "position_ids": torch.tensor(r.position_ids),
                                "task": "text2image"} for r in rows], tok.pad_id)
    return batch["input_ids"], batch["position_ids"], batch["input_ids"] != tok.pad_id


def test_skipping_unseen_keys_in_query_blocks_computes_the_same_logits_and_gradients(monkeypatch):
    """A 16x16 grid (290 tokens: three query blocks), rows of different text lengths, right padding."""
    tok = tiny_tokenizer()
    model = windowed_model(tok, window=2, positions=300)
    codes = torch.arange(256) % 16
    ids, positions, padding = padded_rows(tok, 16, codes)

    def logits_and_grads(query_block: int):
        monkeypatch.setattr("model.gpt.QUERY_BLOCK", query_block)
        model.zero_grad()
        logits = model(ids, positions, key_padding_mask=padding)
        logits[padding].square().mean().backward()
        return logits[padding].detach(), [p.grad.clone() for p in model.parameters()]

    blocked, blocked_grads = logits_and_grads(128)
    whole, whole_grads = logits_and_grads(10**6)
    torch.testing.assert_close(blocked, whole, atol=1e-5, rtol=1e-4)
    for got, want in zip(blocked_grads, whole_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_the_triton_kernel_skips_the_windows_empty_tiles_and_computes_what_torch_computes():
    """Under Triton's interpreter (tests/conftest.py): logits and gradients of a windowed model, rows of
    different text lengths with padding, equal the torch backend's, and the tile table has empty tiles."""
    from model.kernels.flash_attention import _seen_tiles, block_sizes

    tok = tiny_tokenizer()
    model = windowed_model(tok, window=1, positions=96)
    codes = torch.arange(64) % 16
    ids, positions, padding = padded_rows(tok, 8, codes)

    def logits_and_grads(backend: str):
        set_attention_backend(backend)
        try:
            model.zero_grad()
            logits = model(ids, positions, key_padding_mask=padding)
            logits[padding].square().mean().backward()
        finally:
            set_attention_backend("auto")
        return logits[padding].detach(), [p.grad.clone() for p in model.parameters()]

    kernel, kernel_grads = logits_and_grads("triton")
    torch_out, torch_grads = logits_and_grads("torch")
    torch.testing.assert_close(kernel, torch_out, atol=1e-4, rtol=1e-4)
    for got, want in zip(kernel_grads, torch_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    coords = image_coordinates(ids, image_tokens_of(tok))
    mask = build_attention_mask(ids.shape[1], 0, padding, allowed=image_window_mask(coords, ids.shape[1], 1))
    seen = _seen_tiles(mask[:, 0], *block_sizes(torch.device("cpu")))
    causal_tiles = torch.ones(seen.shape[1:], dtype=torch.bool).tril()
    assert (seen.bool() < causal_tiles).any(), "the window leaves tiles below the diagonal empty"


def test_window_survives_model_config_json_and_old_configs_load_dense():
    tok = tiny_tokenizer()
    config = windowed_model(tok, window=3).config
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    new_fields = ("image_attention_window", "image_positions", "image_tokens")
    old = {k: v for k, v in config.to_dict().items() if k not in new_fields}
    assert ModelConfig.from_dict(old).image_attention_window == 0
    with pytest.raises(UserError, match="need image_tokens"):
        ModelConfig.from_dict({**old, "image_attention_window": 2})


# ---------------------------------------------------------------- 32x32 tokens end to end

@pytest.fixture(scope="module")
def rows_32(tmp_path_factory) -> SimpleNamespace:
    """256 px shapes images through an untrained 8x VQ-VAE: 32x32-token rows, as preprocess_data.py writes them."""
    folder = tmp_path_factory.mktemp("long")
    captions = open_dataset("shapes", num_items=300)
    sp_model = train_sentencepiece((captions.caption(i) for i in range(len(captions))), folder / "sp", 300)
    torch.manual_seed(0)
    save_vqvae(VQVAE(VQVAEConfig(codebook_size=64, embed_dim=16, hidden_channels=16, downsample=8)), folder / "vq")
    preprocess_data.main(["--text-tokenizer", str(sp_model), "--vqvae", str(folder / "vq"), "--output",
                          str(folder / "rows"), "--dataset", "shapes", "--num-items", "4", "--image-size", "256",
                          "--text-max-tokens", "16", "--workers", "0"])
    tokenizer = UnifiedTokenizer.from_files(sp_model, 64)
    return SimpleNamespace(rows=ShardedRows(folder / "rows", tokenizer=tokenizer), tokenizer=tokenizer,
                           vqvae=load_vqvae(folder / "vq"))


def test_32x32_token_images_train_and_generate_on_cpu(rows_32):
    tok, rows = rows_32.tokenizer, rows_32.rows
    assert rows.format.image_grid == 32
    dataset = TaskSequenceDataset(rows, tok, position_layout="fixed-image")
    batch = collate_sequences([dataset[i] for i in range(2)], tok.pad_id)
    assert batch["input_ids"].shape[1] > 32 * 32
    model = windowed_model(tok, window=2, positions=16 + 32 * 32 + 4, position_layout="fixed-image").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, positions = batch["input_ids"], batch["position_ids"]
    losses = []
    for _ in range(8):
        logits = model(ids[:, :-1], positions[:, :-1])
        loss = next_token_loss(logits, ids[:, 1:], tok.pad_id, tok.codebook_size, 1.0).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses

    model.eval()
    geometry = geometry_from({"data": {"image_grid": 32, "text_max_tokens": 16}}, model.config)
    codes = generate_image_codes(model, tok, geometry, [rows[0].text_ids], n=1, seed=0,
                                 settings=SamplingSettings(top_k=8), max_batch_rows=1)
    assert codes.shape == (1, 1, 32, 32)
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    with torch.no_grad():
        image = code2img(rows_32.vqvae, codes[0])
    assert image.shape == (1, 3, 256, 256)
