"""Train the SentencePiece text tokenizer on captions (English and Chinese together).

Example:
    python train_text_tokenizer.py --dataset shapes --language both --output runs/tok/sp --vocab-size 480
    python train_text_tokenizer.py --corpus captions_en.txt captions_zh.txt --output runs/tok/sp --vocab-size 8000

Writes `{output}.model` and `{output}.vocab`; give `{output}.model` to the scripts that need a tokenizer.
The captions come from a dataset (`shapes`, `emoji`, a folder or a .jsonl/.tsv list; its train split) and/or
from text files with one caption per line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from data_utils.text_tokenizer import HAN_CHARACTER, MODEL_TYPES, TextTokenizer, train_sentencepiece
from utils.errors import UserError, run_main
from utils.logging import get_logger

logger = get_logger("train_text_tokenizer")

DEFAULT_EXAMPLES = {"English": "a large red circle at the top left", "Chinese": "左上角有一个大的红色圆形"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("captions (give --dataset, --corpus or both)")
    source.add_argument("--dataset", help="'shapes', 'emoji', a folder of images + .txt, or a .jsonl/.tsv list")
    source.add_argument("--corpus", nargs="+", type=Path, default=[], metavar="FILE",
                        help="UTF-8 text files with one caption per line")
    source.add_argument("--language", choices=("en", "zh", "both"), default="both",
                        help="caption language of the shapes dataset")
    source.add_argument("--num-items", type=int, help="use at most this many dataset items")
    source.add_argument("--seed", type=int, default=0, help="seed of the shapes dataset")
    model = parser.add_argument_group("tokenizer")
    model.add_argument("--output", required=True, type=Path, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    model.add_argument("--vocab-size", type=int, default=480,
                       help="number of pieces, including 256 byte pieces and <unk> <s> </s> (the shapes "
                            "captions allow 309 to 498 BPE pieces; the script says when a size does not fit)")
    model.add_argument("--model-type", choices=MODEL_TYPES, default="bpe")
    model.add_argument("--character-coverage", type=float, default=0.9995,
                       help="fraction of characters that get their own piece; rarer ones fall back to bytes")
    model.add_argument("--han-words", action="store_true",
                       help="allow pieces of several Han characters, like CogView's Chinese BPE (default: one "
                            "piece per Han character, which keeps Chinese captions compositional)")
    return parser.parse_args()


def dataset_captions(args: argparse.Namespace) -> Iterator[str]:
    from data_utils.image_sources import SkipItem, open_dataset

    source = open_dataset(args.dataset, split="train", language=args.language, seed=args.seed,
                          num_items=args.num_items)
    skipped = 0
    for index in tqdm(range(len(source)), desc=f"captions of {args.dataset}", unit="caption"):
        try:
            yield from source.texts(index)  # the caption, and any questions, answers and expressions
        except SkipItem as skip:
            skipped += 1
            logger.warning("skipping item %d: %s", index, skip)
    if skipped:
        logger.warning("skipped %d of %d items of %s (see the warnings above)", skipped, len(source), args.dataset)


def file_captions(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8") as lines:
            for line in tqdm(lines, desc=f"captions of {path.name}", unit="caption"):
                yield line.strip()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read corpus file {path}: {err.strerror}") from None


class ExampleKeeper:
    """Passes captions through, keeping the first English-like and the first Chinese one to show later."""

    def __init__(self):
        self.examples: dict[str, str] = {}

    def watch(self, captions: Iterator[str]) -> Iterator[str]:
        for caption in captions:
            language = "Chinese" if HAN_CHARACTER.search(caption) else "English"
            self.examples.setdefault(language, caption)
            yield caption


def all_captions(args: argparse.Namespace) -> Iterator[str]:
    if args.dataset:
        yield from dataset_captions(args)
    for path in args.corpus:
        yield from file_captions(path)


def main() -> None:
    args = parse_args()
    if not args.dataset and not args.corpus:
        raise UserError("no captions: give --dataset NAME_OR_PATH and/or --corpus FILE ...")
    for path in args.corpus:
        if not path.is_file():
            raise UserError(f"missing corpus file: {path}")
    if args.output.is_dir():
        raise UserError(f"--output is a prefix for PREFIX.model and PREFIX.vocab, not a folder: {args.output}")
    keeper = ExampleKeeper()
    model_path = train_sentencepiece(keeper.watch(all_captions(args)), args.output, args.vocab_size,
                                     model_type=args.model_type, character_coverage=args.character_coverage,
                                     han_words=args.han_words)
    tokenizer = TextTokenizer(model_path)
    print(f"vocabulary: {tokenizer.vocab_size} pieces ({args.model_type}), fingerprint {tokenizer.fingerprint}")
    for language in ("English", "Chinese"):
        text = keeper.examples.get(language, DEFAULT_EXAMPLES[language])
        ids = tokenizer.encode(text)
        pieces = " ".join(tokenizer.id_to_piece(i) for i in ids)
        print(f"{language}: {text!r}\n  {len(ids)} pieces: {pieces}\n  ids: {ids}")
    print(f"wrote {model_path} and {model_path.with_suffix('.vocab')}")


if __name__ == "__main__":
    run_main(main)
