"""Non-square code grids: named in the sequence, 2-D positions, a training mix of shapes, generation at a
shape given by flag, and one-line refusals of shapes that cannot be named or do not fit.

Squares keep exactly their old sequences and models without the new fields load as before
(tests/test_sequences.py and tests/test_model_checkpoint.py pin those).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate_samples
from data_utils.dataset import TaskSequenceDataset
from data_utils.sequences import grid_with_tokens, image2text, image_coordinates, image_tokens_of, text2image
from data_utils.shards import FORMAT_VERSION, RowFormat, ShardedRows, write_manifest, write_shard
from generation.sampling import SamplingSettings
from generation.tasks import generate_image_codes, image_ids_mask, with_output_grid
from generation_helpers import reference_decode, tiny_geometry, tiny_tokenizer, write_tiny_checkpoint
from model import CogViewGPT, ModelConfig
from model.config import count_parameters
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def model_2d(tok, positions: int = 112, seed: int = 0) -> CogViewGPT:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=2, hidden_size=32, num_attention_heads=2,
                         max_position_embeddings=positions, hidden_dropout=0.0, attention_dropout=0.0,
                         image_positions="2d", image_tokens=image_tokens_of(tok))
    model = CogViewGPT(config).eval()
    with torch.no_grad():
        model.word_embeddings.weight.mul_(40.0)  # sharper logits, so samples depend on the context
    return model


# ---------------------------------------------------------------- sequences

def test_a_non_square_grid_is_named_rows_then_columns_and_read_back_row_major():
    tok = tiny_tokenizer()
    codes = torch.arange(32) % 16
    sequence = text2image(tok, tok.encode_text("ab"), (4, 8), codes)
    boi = sequence.ids.index(tok["[BOI1]"])
    assert sequence.ids[boi - 2:boi] == [tok.grid_token(4), tok.grid_token(8)]
    assert sequence.ids[boi + 1:boi + 33] == codes.tolist()
    coords = image_coordinates(torch.tensor([sequence.ids]), image_tokens_of(tok))
    at = coords.is_code[0].nonzero().flatten()
    assert [(int(coords.row[0, i]), int(coords.col[0, i])) for i in at] == [(r, c) for r in range(4) for c in range(8)]
    assert image2text(tok, codes, (8, 4)).ids[:2] == [tok.grid_token(8), tok.grid_token(4)]
    with pytest.raises(ValueError, match="a 4x8 grid needs 32"):
        text2image(tok, [], (4, 8), codes[:16])


@pytest.mark.parametrize("text, message", [("12x32", "not supported: each side must be one of 4, 8, 16, 32, 64"),
                                           ("16by32", "written ROWSxCOLUMNS"), ("0x8", "written ROWSxCOLUMNS")])
def test_an_unsupported_grid_is_one_line(text, message):
    with pytest.raises(UserError, match=message) as error:
        grid_with_tokens(text)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- training on a mix of shapes

def write_rows(folder, tok, grid: int, num_rows: int, vqvae: dict | None = None):
    """Rows of random 16-code images, as preprocess_data.py lays them out."""
    row_format = RowFormat(8, grid, None, RowFormat.dtype_for_vocab(tok.vocab_size))
    rng = np.random.default_rng(0)
    rows = np.stack([row_format.pack(np.array(tok.encode_text("a red circle"), dtype=np.int64)[:8],
                                     rng.integers(0, 16, (grid, grid)), None, tok.pad_id) for _ in range(num_rows)])
    shard = write_shard(folder, 0, rows, np.arange(num_rows), row_format)
    write_manifest(folder, {"format_version": FORMAT_VERSION, **row_format.to_dict(), "tokenizer": tok.describe(),
                            "vqvae": vqvae or {"path": "vqvae", "fingerprint": "0123456789abcdef"},
                            "num_chunks": 1, "complete": True, "shards": [shard]})
    return ShardedRows(folder, tokenizer=tok)


def test_grid_mix_crops_each_sample_to_a_listed_shape_reproducibly(tmp_path):
    tok = tiny_tokenizer()
    rows = write_rows(tmp_path, tok, 8, 4)
    mix = [(4, 8), (8, 4), (8, 8)]
    dataset = TaskSequenceDataset(rows, tok, {"text2image": 1.0, "image2text": 1.0}, seed=5, grid_mix=mix)
    seen = set()
    for position in range(40):
        sample = dataset[position]
        ids = sample["input_ids"]
        coords = image_coordinates(ids[None], image_tokens_of(tok))
        codes = ids[coords.is_code[0]]
        shape = (int(coords.row[0][coords.is_code[0]].max()) + 1, int(coords.col[0][coords.is_code[0]].max()) + 1)
        assert shape in mix
        seen.add(shape)
        full = torch.from_numpy(rows[dataset.row_index(position)].image)
        windows = full.unfold(0, shape[0], 1).unfold(1, shape[1], 1).reshape(-1, shape[0] * shape[1])
        assert (windows == codes).all(dim=1).any(), "the codes are a contiguous crop of the row's grid"
        assert torch.equal(ids, dataset[position]["input_ids"])  # a function of (seed, position)
    assert seen == set(mix)
    with pytest.raises(UserError, match="16x8 of the grid mix does not fit the data's 8x8"):
        TaskSequenceDataset(rows, tok, grid_mix=[(16, 8)])


# ---------------------------------------------------------------- 2-D positions

def test_2d_positions_place_codes_by_row_and_column_only():
    """The row and column tables move the logits of image codes, never of text or command tokens."""
    tok = tiny_tokenizer()
    model = model_2d(tok)
    sequence = text2image(tok, tok.encode_text("ab"), (4, 8), torch.arange(32) % 16)
    ids, positions = torch.tensor([sequence.ids]), torch.tensor([sequence.position_ids])
    is_code = image_coordinates(ids, image_tokens_of(tok)).is_code[0]
    with torch.no_grad():
        before = model(ids, positions)[0]
        model.transformer.col_embeddings.weight[3].add_(1.0)
        after = model(ids, positions)[0]
    first_col3 = int(is_code.nonzero()[3])  # code (0, 3)
    torch.testing.assert_close(after[:first_col3], before[:first_col3])
    assert not torch.allclose(after[first_col3], before[first_col3])


def test_2d_config_round_trips_and_names_its_tables():
    tok = tiny_tokenizer()
    model = model_2d(tok)
    config = ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))
    assert config == model.config
    assert {"transformer.row_embeddings.weight", "transformer.col_embeddings.weight"} <= set(model.state_dict())
    assert model.num_parameters() == count_parameters(config)


def test_non_square_generation_with_kv_cache_matches_the_full_forward():
    tok = tiny_tokenizer()
    model = model_2d(tok)
    geometry = with_output_grid(tiny_geometry(8, 112), (4, 8), tok)
    settings = SamplingSettings(top_k=0)
    text = tok.encode_text("a red")
    codes = generate_image_codes(model, tok, geometry, [text], n=2, seed=7, settings=settings, max_batch_rows=4)
    assert codes.shape == (1, 2, 4, 8)
    for j in range(2):
        expected = reference_decode(model, text2image(tok, text, (4, 8)), 7 + j, 32, image_ids_mask(tok), settings)
        assert codes[0, j].flatten().tolist() == expected


def test_a_grid_that_does_not_fit_the_positions_is_refused():
    tok = tiny_tokenizer()
    with pytest.raises(UserError, match="16x8 code grid needs 149 positions .* the model has 112"):
        with_output_grid(tiny_geometry(8, 112), (16, 8), tok)


# ---------------------------------------------------------------- end to end

def test_train_on_a_mix_of_shapes_then_generate_another_shape(tmp_path):
    """pretrain_gpt2.py with --grid-mix, --image-positions 2d and --image-attention-window records them in
    model_config.json; generate_samples.py then makes a 4x8 grid from the saved run."""
    from data_utils.text_tokenizer import TextTokenizer, train_sentencepiece
    from data_utils.tokenizer import UnifiedTokenizer
    from generation_helpers import CAPTIONS
    from vqvae.api import save_vqvae, vqvae_fingerprint
    from vqvae.config import VQVAEConfig
    from vqvae.model import VQVAE

    sp_model = train_sentencepiece(CAPTIONS * 20, tmp_path / "sp", vocab_size=300)
    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, num_res_blocks=0)).eval()
    save_vqvae(vqvae, tmp_path / "vqvae")
    tok = UnifiedTokenizer(TextTokenizer(sp_model), 16)
    data = tmp_path / "data"
    write_rows(data, tok, 8, 8, vqvae={"path": str(tmp_path / "vqvae"), "fingerprint": vqvae_fingerprint(vqvae)})
    save = tmp_path / "run"
    train = subprocess.run([sys.executable, "pretrain_gpt2.py", "--train-data", str(data), "--save", str(save),
                            "--train-iters", "2", "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads",
                            "2", "--batch-size", "2", "--num-workers", "0", "--grid-mix", "4x8,8x4,8x8",
                            "--image-positions", "2d", "--image-attention-window", "2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    recorded = json.loads((save / "2" / "model_config.json").read_text())
    assert (recorded["image_positions"], recorded["image_attention_window"]) == ("2d", 2)
    assert recorded["image_tokens"]["codebook_size"] == 16
    assert recorded["data"]["grid_mix"] == [[4, 8], [8, 4], [8, 8]]
    out = tmp_path / "out"
    generate_samples.main(["--load", str(save), "--prompt", "a red circle", "--batch-size", "1",
                           "--image-grid", "4x8", "--output-path", str(out), "--device", "cpu"])
    with Image.open(out / "0000_000.png") as image:
        assert image.size == (64, 32)


# ---------------------------------------------------------------- the flag

def test_generate_samples_makes_the_grid_given_by_flag(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    generate_samples.main(["--load", str(checkpoint), "--prompt", "a red circle", "--batch-size", "1",
                           "--image-grid", "4x8", "--output-path", str(out), "--device", "cpu"])
    with Image.open(out / "0000_000.png") as image:
        assert image.size == (64, 32)  # width 8 codes x 8 px, height 4 codes x 8 px
    with pytest.raises(UserError, match="not supported"):
        generate_samples.main(["--load", str(checkpoint), "--prompt", "x", "--image-grid", "6x8",
                               "--output-path", str(out)])
