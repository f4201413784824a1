"""Which image codes each word of a text attends to: attention averaged over heads and layers.

The sequence is the image-to-text one, `G [BOI1] codes [EOI1] [ROI1] text [SEP]`: each text token comes
after the whole image, so its attention row covers every code (in the text-to-image order the text
comes first and sees no image). For each text piece we take the attention row of the query that
generates it, the position just before it (in a causal model the row at position t decides token t + 1;
Show, Attend and Tell's convention: a word's attention is the one that wrote it), from the attention
probabilities (`CogViewGPT.recording_attention`), average it over heads and layers, keep the image codes'
columns and renormalise them to sum to 1 (`PieceAttention.image_share` keeps how much of the row went to the
image at all). A word's map is the mean of its pieces' maps.

Words are SentencePiece pieces grouped as the text reads: a piece whose text starts with a space
starts a word; Chinese has no spaces, so every piece holding a Han character is a word of its own
(a character or a few, as the tokenizer cut them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from data_utils.padding import pad_sequences
from data_utils.tokenizer import UnifiedTokenizer
from generation.decoding import map_in_batches, model_device
from generation.scoring import image_then_text
from generation.tasks import Geometry

# Han characters, and the CJK and full-width punctuation written between them (a Chinese comma is a word too).
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


@dataclass(frozen=True)
class Word:
    """A word of a text: its text, its character span in the decoded text, and its pieces' indices."""

    text: str
    start: int
    end: int
    pieces: tuple[int, ...]


@dataclass
class WordAttention:
    """One word's attention over the image: `grid [g, g]` sums to 1; `image_share` is the share of its
    pieces' attention (mean over heads and layers) that went to image codes rather than other tokens."""

    word: Word
    grid: torch.Tensor
    image_share: float

    def to_dict(self) -> dict:
        return {"word": self.word.text, "span": [self.word.start, self.word.end], "pieces": list(self.word.pieces),
                "image_share": self.image_share, "attention": [[round(float(v), 6) for v in row] for row in self.grid]}


def piece_texts(tok: UnifiedTokenizer, text_ids: Sequence[int]) -> list[str]:
    """Each piece's share of the decoded text (decoding the pieces one prefix at a time), so that they
    concatenate to `tok.decode_text(text_ids)` exactly, spaces included, wherever decoding a longer prefix
    only appends (SentencePiece's does); a piece that rewrites the text before it gets the whole prefix."""
    texts, done = [], ""
    for end in range(1, len(text_ids) + 1):
        prefix = tok.decode_text(text_ids[:end])
        texts.append(prefix[len(done):] if prefix.startswith(done) else prefix)
        done = prefix
    return texts


def group_words(tok: UnifiedTokenizer, text_ids: Sequence[int]) -> list[Word]:
    """The words of a text's pieces (module docstring); whitespace-only pieces join the next word."""
    words: list[Word] = []
    current: list[int] = []
    start = position = 0
    previous_cjk = False

    def close() -> None:
        text = "".join(pieces[i] for i in current)
        if text.strip():
            lead = len(text) - len(text.lstrip())
            words.append(Word(text.strip(), start + lead, start + lead + len(text.strip()), tuple(current)))

    pieces = piece_texts(tok, text_ids)
    for index, piece in enumerate(pieces):
        cjk = bool(_CJK.search(piece))
        after_space = bool(current) and not "".join(pieces[i] for i in current).strip()
        if current and not after_space and (piece[:1].isspace() or cjk or previous_cjk):
            close()
            current, start = [], position
        current.append(index)
        position += len(piece)
        previous_cjk = cjk
    if current:
        close()
    return words


@torch.inference_mode()
def piece_attention(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                    text_ids: Sequence[Sequence[int]], max_batch_rows: int) -> list[torch.Tensor]:
    """For each code grid `[N, grid, grid]` with its own text: `[pieces, 1 + grid * grid]` float32, per
    text piece the attention (mean over heads and layers) of the query that generates it on each image code,
    and in column 0 the share of that attention on the image as a whole (before the code columns are
    renormalised)."""
    sequences, text_start = image_then_text(tok, geometry, codes, text_ids, "an attention map")
    device = model_device(model)
    code_columns = torch.tensor([i for i, t in enumerate(sequences[0].ids) if tok.is_image_id(t)], device=device)

    def run(chunk: list[int]) -> list[torch.Tensor]:
        batch = pad_sequences([sequences[i].ids for i in chunk], [sequences[i].position_ids for i in chunk],
                              tok.pad_id).to(device)
        with model.recording_attention() as recorded:
            model(batch.ids, batch.positions)
        mean = torch.stack(recorded).mean(dim=(0, 2))                        # layers, heads -> [B, T, S]
        maps = []
        for row, i in enumerate(chunk):
            # Piece k sits at text_start + k and is generated by the query one position before it.
            on_codes = mean[row, text_start - 1:text_start - 1 + len(text_ids[i])].index_select(-1, code_columns)
            share = on_codes.sum(dim=-1, keepdim=True)
            maps.append(torch.cat([share, on_codes / share], dim=-1).cpu())
        return maps

    return map_in_batches(len(sequences), max_batch_rows, run, sorted(range(len(sequences)),
                                                                       key=lambda i: len(sequences[i])))


def word_attention(tok: UnifiedTokenizer, text_ids: Sequence[int], pieces: torch.Tensor, grid: int
                   ) -> list[WordAttention]:
    """Per word of the text, its map: the mean of its pieces' rows of `piece_attention`."""
    return [WordAttention(word, pieces[list(word.pieces), 1:].mean(dim=0).view(grid, grid),
                          float(pieces[list(word.pieces), 0].mean()))
            for word in group_words(tok, text_ids)]
