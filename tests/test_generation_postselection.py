"""Post-selection with a model that has actually learned captions: the true image must rank first."""
import numpy as np
import torch

from data_utils.sequences import image2text
from data_utils.shapes import COLOURS, ShapesDataset
from generation.pipeline import Pipeline
from tests.generation_helpers import tiny_geometry, tiny_model, tiny_tokenizer

ITEMS = 8
GRID = 4  # 32 px canvas, one code per 8x8 block


def block_codes(image) -> torch.Tensor:
    """A stand-in image tokenizer that needs no training: each 8x8 block becomes the index (0-5) of
    the shapes colour most of its coloured pixels are nearest to, or 6 when it is all white. Enough
    for colour and position, and roughly size, to be visible in the codes."""
    pixels = np.asarray(image, dtype=np.int64)
    palette = np.array([*COLOURS.values(), (255, 255, 255)], dtype=np.int64)
    nearest = ((pixels[:, :, None, :] - palette) ** 2).sum(-1).argmin(-1)       # [32, 32] in 0..6
    codes = torch.full((GRID, GRID), 6)
    for row in range(GRID):
        for col in range(GRID):
            counts = np.bincount(nearest[8 * row:8 * row + 8, 8 * col:8 * col + 8].ravel(), minlength=7)[:6]
            if counts.any():
                codes[row, col] = int(counts.argmax())
    return codes


def test_post_selection_ranks_the_true_image_first_after_training():
    data = ShapesDataset(seed=3, size=32, two_object_fraction=0.0)
    items = [data.item(i) for i in range(ITEMS)]
    codes = torch.stack([block_codes(item.image) for item in items])
    tok = tiny_tokenizer(codebook_size=7)
    geometry = tiny_geometry(grid=GRID, max_positions=64)
    model = tiny_model(tok, max_positions=64, layers=2, hidden=64)
    with torch.no_grad():
        model.word_embeddings.weight.div_(40.0)  # undo the helper's sharpening: train from a normal init
    texts = [tok.encode_text(item.caption) for item in items]
    sequences = [image2text(tok, c, GRID, t) for c, t in zip(codes, texts)]
    length = max(len(s) for s in sequences)
    ids = torch.full((ITEMS, length), tok.pad_id)
    positions = torch.zeros((ITEMS, length), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(s.ids)
        positions[row, :len(s)] = torch.tensor(s.position_ids)
    targets = ids[:, 1:].clone()
    targets[:, :GRID * GRID + 3] = -100  # learn the captions only: the image is the condition
    targets[targets == tok.pad_id] = -100

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        logits = model(ids[:, :-1], positions[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    pipe = Pipeline(model, tok, vqvae=None, geometry=geometry, max_batch_rows=3)
    for i, item in enumerate(items):
        ranking = pipe.rerank_codes(item.caption, codes)
        assert ranking.order[0] == i, f"{item.caption!r}: scores {ranking.scores.tolist()}"
