"""SentencePiece text tokenizer: training from captions and a small wrapper around a `.model` file.

One model covers English and Chinese together (CogView's was Chinese only, its users' first
complaint). Choices, and why:
- `byte_fallback=True`: a character never seen in training (an emoji, a rare Han character) becomes
  its UTF-8 bytes (`<0xF0>` ...), so no prompt ever produces `<unk>` and decoding gives it back.
- `normalization_rule_name="identity"`: SentencePiece's default `nmt_nfkc` folds full-width Chinese
  punctuation (`，` -> `,`) and other compatibility characters, so a Chinese caption would not come back
  as written. Identity keeps every character; the only normalisation left is SentencePiece's
  whitespace handling (leading/trailing spaces dropped, runs of spaces collapsed to one), which
  carries no meaning in a caption.
- Han characters are split apart before training (unless `han_words=True`), so each one is its own
  piece. Chinese has no spaces, so SentencePiece would otherwise learn whole templated phrases as
  single pieces (on the shapes captions BPE learns `右下角有一个大的` as one piece and unigram whole
  captions), and the model could not share "红色" between "红色圆形" and "红色菱形". One piece per
  character keeps Chinese captions compositional, like the English words. CogView's 50k BPE did have
  multi-character pieces; `han_words=True` trains that way (shorter sequences on a large corpus).
- `<unk>`=0, `<s>`=1, `</s>`=2 as in CogView; no padding piece (`[PAD]` is a command token of the
  unified id space, see `data_utils/tokenizer.py`).
- Determinism: the random generator is seeded and training runs on one thread, so the same corpus
  and options give a byte-identical model (and so the same fingerprint).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from utils.errors import UserError
from utils.files import atomic_write_bytes, atomic_write_text

MODEL_TYPES = ("bpe", "unigram")

HAN_CHARACTER = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]")
_BETWEEN_HAN = re.compile(rf"(?<={HAN_CHARACTER.pattern})(?={HAN_CHARACTER.pattern})")
# SentencePiece never lets a piece span this character during training, and drops it from the vocabulary.
_PRETOKENIZATION_DELIMITER = "\x1f"

_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class _CaptionStream:
    """The non-blank captions of a corpus, counted as SentencePiece pulls them.

    SentencePiece wraps an exception raised by the corpus iterator into its own RuntimeError; the
    stream keeps the original (for example a dataset's `UserError`) so it can be re-raised as is.
    """

    def __init__(self, corpus: Iterable[str], split_han: bool):
        self._corpus = corpus
        self._split_han = split_han
        self.count = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for caption in self._corpus:
                if caption and not caption.isspace():
                    self.count += 1
                    yield _BETWEEN_HAN.sub(_PRETOKENIZATION_DELIMITER, caption) if self._split_han else caption
        except BaseException as err:
            self.error = err
            raise


def _explain_training_error(err: RuntimeError, vocab_size: int, num_captions: int) -> UserError:
    """Turn SentencePiece's internal check failures into one line that says which size would work."""
    message = str(err)
    if match := _TOO_LARGE.search(message):
        return UserError(f"--vocab-size {vocab_size} is too large for this corpus of {num_captions} captions; "
                         f"use at most {match.group(2)} or give a larger corpus")
    if match := _TOO_SMALL.search(message):
        return UserError(f"--vocab-size {vocab_size} is too small: this corpus needs at least {match.group(2)} "
                         f"pieces (256 byte pieces, 3 special pieces and every character it covers); "
                         f"use a larger vocabulary or a lower character coverage")
    return UserError(f"SentencePiece training failed: {message.splitlines()[0] if message else err!r}")


def train_sentencepiece(corpus: Iterable[str], output_prefix: str | os.PathLike, vocab_size: int,
                        model_type: str = "bpe", character_coverage: float = 0.9995,
                        byte_fallback: bool = True, han_words: bool = False, seed: int = 0) -> Path:
    """Train a SentencePiece model on `corpus` (one caption per item) and write `{prefix}.model/.vocab`.

    Blank captions are skipped. `han_words` allows pieces spanning several Han characters (the module
    docstring says why the default is one piece per character). A prefix ending in `.model` is taken
    without it. Returns the path of the `.model` file. Both files are written atomically, the model
    last, so an interrupted run never leaves a truncated model behind.
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if vocab_size <= 0:
        raise UserError(f"vocabulary size must be positive, got {vocab_size}")
    prefix = Path(output_prefix)
    if prefix.suffix == ".model":
        prefix = prefix.with_suffix("")
    captions = _CaptionStream(corpus, split_han=not han_words)
    proto = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(captions), model_writer=proto,
            vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
            byte_fallback=byte_fallback, normalization_rule_name="identity",
            pretokenization_delimiter=_PRETOKENIZATION_DELIMITER,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    except RuntimeError as err:
        if captions.error is not None:
            raise captions.error from None
        if captions.count == 0:
            raise UserError("the tokenizer corpus is empty: give at least one non-blank caption") from None
        raise _explain_training_error(err, vocab_size, captions.count) from None
    model_bytes = proto.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab_lines = (f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                   for i in range(processor.get_piece_size()))
    atomic_write_text(prefix.with_name(prefix.name + ".vocab"), "".join(vocab_lines))
    model_path = prefix.with_name(prefix.name + ".model")
    atomic_write_bytes(model_path, model_bytes)
    return model_path


class TextTokenizer:
    """A trained SentencePiece model: text <-> SentencePiece ids (0 … vocab_size-1)."""

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise UserError(f"missing text tokenizer model: {self.model_path} "
                            f"(train one with train_text_tokenizer.py)")
        model_bytes = self.model_path.read_bytes()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except (RuntimeError, TypeError, OSError):
            raise UserError(f"{self.model_path} is not a valid SentencePiece model") from None
        if self._sp.get_piece_size() == 0:
            raise UserError(f"{self.model_path} is not a valid SentencePiece model")
        self.fingerprint = hashlib.sha256(model_bytes).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, sp_id: int) -> str:
        return self._sp.id_to_piece(int(sp_id))

    def __repr__(self) -> str:
        return f"TextTokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size})"
