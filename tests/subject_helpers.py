"""A tiny but complete base checkpoint for the subject tests: a SentencePiece model trained on shapes
captions (so `sks` tokenises as it does for a real base), an untrained 8x VQ-VAE and a random 2-layer
transformer exported with the metadata pretraining records (all three tasks, low-res codes)."""
from __future__ import annotations

from pathlib import Path

import torch

from data_utils.dataset import positions_needed
from data_utils.image_sources import open_dataset
from data_utils.shards import RowFormat
from data_utils.subject import instance_items
from data_utils.text_tokenizer import TextTokenizer, train_sentencepiece
from data_utils.tokenizer import UnifiedTokenizer
from model import CogViewGPT, ModelConfig
from model.export import save_exported
from vqvae.api import save_vqvae, vqvae_fingerprint
from vqvae.config import VQVAEConfig
from vqvae.model import VQVAE

TEXT_MAX, GRID, CODEBOOK = 48, 8, 16  # 48: a two-object placement caption with `sks` takes up to 44 pieces of this tiny tokenizer
MIX = {"text2image": 0.7, "image2text": 0.2, "super_resolution": 0.1}


def write_base(folder: Path, seed: int = 0) -> Path:
    folder = Path(folder)
    source = open_dataset("shapes", num_items=300)
    sp_model = train_sentencepiece((source.caption(i) for i in range(len(source))), folder / "tok" / "sp", 300)
    torch.manual_seed(seed)
    vqvae = VQVAE(VQVAEConfig(codebook_size=CODEBOOK, embed_dim=8, hidden_channels=16, num_res_blocks=0)).eval()
    save_vqvae(vqvae, folder / "vqvae")
    tok = UnifiedTokenizer(TextTokenizer(sp_model), CODEBOOK)
    positions = positions_needed(RowFormat(TEXT_MAX, GRID, GRID // 2, "uint16"), MIX)
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=2, hidden_size=32, num_attention_heads=2,
                         max_position_embeddings=positions, hidden_dropout=0.0, attention_dropout=0.0)
    model = CogViewGPT(config).eval()
    metadata = {"tokenizer": tok.describe(),
                "vqvae": {"path": str(folder / "vqvae"), "fingerprint": vqvae_fingerprint(vqvae)},
                "data": {"image_grid": GRID, "text_max_tokens": TEXT_MAX, "lowres_grid": GRID // 2,
                         "tasks": list(MIX)}}
    save_exported(model, folder / "gpt", extra=metadata)
    return folder / "gpt"


def write_instances(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (image, caption) in enumerate(instance_items()):
        image.save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder
