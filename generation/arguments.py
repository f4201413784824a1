"""The generation argument group of `generate_samples.py` (flag names follow CogView's where they exist)."""
from __future__ import annotations

import argparse

from generation.loading import DTYPES
from generation.pipeline import DEFAULT_MAX_BATCH_ROWS

GENERATION_TASKS = ("text2image", "image2text", "post-selection", "super-resolution", "text2image-full")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_generation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("generation")
    group.add_argument("--load", required=True, metavar="PATH",
                       help="checkpoint: a DeepSpeed save folder (any ZeRO stage), an iteration folder, an exported "
                            "model.safetensors folder, or CogView's released layout")
    group.add_argument("--generation-task", choices=GENERATION_TASKS, default="text2image",
                       help="text2image: images for each prompt; image2text: a caption per input image; "
                            "post-selection: rank --input-images by how well they explain --prompt; "
                            "super-resolution: each input image at twice its side, conditioned on --prompt; "
                            "text2image-full: --batch-size candidates per prompt, post-selection, then "
                            "super-resolution of the best (default: %(default)s)")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--prompt", action="append", metavar="TEXT",
                        help="a prompt (repeat for several); English or Chinese")
    inputs.add_argument("--input-source", metavar="FILE",
                        help="prompts, one per line: TEXT or ID<TAB>TEXT (ID names the output files). Without "
                             "--prompt or --input-source, prompts are read interactively from the terminal")
    inputs.add_argument("--negative-prompt", metavar="TEXT",
                        help="the unconditional branch of guidance uses this text instead of no text "
                             "(needs --cfg-scale other than 1)")
    inputs.add_argument("--input-images", nargs="+", metavar="PATH",
                        help="image files or folders, for image2text, post-selection and super-resolution")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--batch-size", type=_positive_int, default=4,
                          help="images per prompt (default: %(default)s)")
    sampling.add_argument("--max-inference-batch-size", type=_positive_int, default=DEFAULT_MAX_BATCH_ROWS,
                          help="most sequences in one forward, guided images counting twice; prompts are packed "
                               "together up to it, and it is halved on out-of-memory (default: %(default)s)")
    sampling.add_argument("--seed", type=int, default=0,
                          help="image j of every prompt (or input image j) is sampled with seed SEED+j "
                               "(default: %(default)s)")
    sampling.add_argument("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    sampling.add_argument("--top-k", type=int, default=200, help="0 turns it off (default: %(default)s)")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus mass; 1 turns it off (default: %(default)s)")
    sampling.add_argument("--cfg-scale", type=float, default=1.0,
                          help="classifier-free guidance for text2image: uncond + s * (cond - uncond) on "
                               "log-probabilities; 1 is no guidance (default: %(default)s)")
    sampling.add_argument("--max-caption-tokens", type=_positive_int, default=None,
                          help="longest caption in text tokens (default: the model's text budget)")
    models = parser.add_argument_group("models and devices")
    models.add_argument("--caption-model", metavar="PATH",
                        help="a separate checkpoint for post-selection scores (default: --load itself)")
    models.add_argument("--text-tokenizer", metavar="FILE",
                        help="SentencePiece .model file (default: the one recorded in the checkpoint)")
    models.add_argument("--vqvae", metavar="PATH", help="VQ-VAE folder or CogView .pt (default: the recorded one)")
    models.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    models.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="transformer weights and compute (default: %(default)s)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output-path", default="samples", metavar="DIR",
                         help="PNGs (settings in their metadata), a grid per prompt and manifest.jsonl "
                              "(default: %(default)s)")
    outputs.add_argument("--tensorboard-dir", metavar="DIR",
                         help="log throughput and each prompt's grid to TensorBoard here")
    return parser
