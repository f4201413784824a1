"""The one command line: argument groups for the model, the data, training, DeepSpeed and generation.

Flag names follow CogView's where they mean the same thing. Each group is added by its own function so
that scripts compose the groups they need (`pretrain_gpt2.py` takes the first four; `generate_samples.py`
takes `add_generation_args`). Every entry script parses with `parse_noting_given`, the one way to tell
which flags were given explicitly (`args.given_flags`), even at their default value: a flag that would do
nothing in the chosen task or setting is refused, a resumed run refuses a given model flag that
contradicts its checkpoint, and a `--deepspeed_config` file is only filled in, never silently
overridden, by given flags.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

from data_utils.sequences import POSITION_LAYOUTS, TASKS, ImageTokens, grid_with_tokens
from fp16.precision import PRECISIONS
from generation.decoding import DEFAULT_MAX_BATCH_ROWS
from generation.scoring import POST_SELECTION_SCORES
from model.config import IMAGE_POSITIONS, LAYERNORM_ORDERS, ModelConfig
from model.kernels import ATTENTION_BACKENDS
from utils.errors import UserError
from utils.lr_decay import DECAY_STYLES

# Model flags and the `ModelConfig` fields they set (same names); a checkpoint's config wins over them.
MODEL_FLAGS = ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings", "layernorm_order",
               "pb_relax", "pb_relax_alpha", "hidden_dropout", "attention_dropout", "position_layout",
               "image_attention_window", "image_positions")


# ---------------------------------------------------------------- value types (argparse reports the errors)

def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1)
non_negative_int = _number(int, 0)
positive_float = _number(float, 0.0, low_open=True)
non_negative_float = _number(float, 0.0)
fraction = _number(float, 0.0, 1.0)


def dropout_probability(text: str) -> float:
    value = fraction(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be < 1, got {value}")
    return value


def task_mix(text: str) -> dict[str, float]:
    """`text2image=0.7,image2text=0.2,super_resolution=0.1` -> weights (normalised by the dataset)."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in TASKS:
            raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT with TASK in {', '.join(TASKS)}, "
                                             f"got {item!r}")
        if name in weights:
            raise argparse.ArgumentTypeError(f"task {name} is given twice")
        weights[name] = non_negative_float(value)
    if not any(weight > 0 for weight in weights.values()):
        raise argparse.ArgumentTypeError("at least one task needs a positive weight")
    return weights


def grid_mix(text: str) -> list[tuple[int, int]]:
    """`16x32,32x16,32x32` -> [(16, 32), (32, 16), (32, 32)] (rows x columns of code grids)."""
    try:
        shapes = [grid_with_tokens(item.strip()) for item in text.split(",")]
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if len(set(shapes)) != len(shapes):
        raise argparse.ArgumentTypeError(f"a grid is given twice in {text!r}")
    return shapes


# ---------------------------------------------------------------- groups

def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("model", "transformer sizes; when resuming (--load) they come from the "
                                      "checkpoint's model_config.json and a flag that contradicts it is an error")
    group.add_argument("--num-layers", metavar="N", type=positive_int, default=12,
                       help="transformer layers (default: %(default)s)")
    group.add_argument("--hidden-size", metavar="N", type=positive_int, default=768,
                       help="hidden width (default: %(default)s)")
    group.add_argument("--num-attention-heads", metavar="N", type=positive_int, default=12,
                       help="attention heads; must divide --hidden-size (default: %(default)s)")
    group.add_argument("--max-position-embeddings", metavar="N", type=positive_int, default=None,
                       help="learned positions (default: the most the training data's tasks need)")
    group.add_argument("--position-layout", choices=POSITION_LAYOUTS, default="fixed-image",
                       help="'fixed-image': the text owns a fixed block of positions, so each image code has one "
                            "position whatever the text's length; 'consecutive': CogView's numbering "
                            "(default: %(default)s)")
    group.add_argument("--layernorm-order", choices=LAYERNORM_ORDERS, default="sandwich",
                       help="'sandwich': CogView's Sandwich-LN; 'pre': GPT-2's pre-LN (default: %(default)s)")
    group.add_argument("--pb-relax", action="store_true",
                       help="PB-relax as in CogView's released code (LayerNorm inputs scaled by each token's max|x|/8)")
    group.add_argument("--pb-relax-alpha", metavar="ALPHA", type=positive_float, default=None,
                       help="PB-relax attention as in CogView's paper with this alpha (the paper: 32)")
    group.add_argument("--hidden-dropout", metavar="P", type=dropout_probability, default=0.1,
                       help="dropout on embeddings and residual branches (default: %(default)s)")
    group.add_argument("--attention-dropout", metavar="P", type=dropout_probability, default=0.1,
                       help="dropout on attention probabilities (default: %(default)s)")
    group.add_argument("--image-attention-window", metavar="W", type=non_negative_int, default=0,
                       help="local image attention for long image sequences: a code sees the text and the codes of "
                            "its image within W rows above and W columns either side (0: full attention; "
                            "docs/architecture.md; default: %(default)s)")
    group.add_argument("--image-positions", choices=IMAGE_POSITIONS, default="1d",
                       help="'2d': image codes also get learned row and column embeddings (for several grid "
                            "shapes, --grid-mix); '1d': positions only, as CogView (default: %(default)s)")
    group.add_argument("--checkpoint-activations", action="store_true",
                       help="recompute each layer's activations in the backward pass (less memory, ~30%% slower)")
    add_attention_backend_flag(group)
    return parser


def add_attention_backend_flag(group: argparse._ArgumentGroup) -> None:
    """`--attention-backend`, shared by training and generation (docs/kernels.md)."""
    group.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="auto",
                       help="auto: on CUDA the fused Triton kernels for PB-relax's alpha form and the image "
                            "window once they pass a check on the device, else SDPA (docs/kernels.md); or "
                            "force triton, sdpa or torch (default: %(default)s)")


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("data", "folders written by preprocess_data.py")
    group.add_argument("--train-data", required=True, metavar="DIR", help="training data folder")
    group.add_argument("--valid-data", metavar="DIR",
                       help="validation data folder; its loss is measured every --eval-interval steps")
    group.add_argument("--task-mix", type=task_mix, default={"text2image": 1.0}, metavar="TASK=W,...",
                       help="sampling weights of the tasks, e.g. text2image=0.7,image2text=0.2,"
                            "super_resolution=0.1; the understanding tasks vqa, grounded_caption, referring and "
                            "box_to_phrase need data made with location bins (default: text2image=1)")
    group.add_argument("--txt-loss-scale", metavar="S", type=non_negative_float, default=1.0,
                       help="loss weight of targets that are not image codes (text and command tokens) "
                            "relative to image codes (default: %(default)s)")
    group.add_argument("--cfg-drop-prob", metavar="P", type=fraction, default=0.1,
                       help="probability that a text-to-image sample drops its text, which trains the "
                            "unconditional model classifier-free guidance needs (default: %(default)s)")
    group.add_argument("--one-task-per-micro-batch", action="store_true",
                       help="draw the task once per micro-batch instead of once per sample, so a batch is not padded "
                            "to super-resolution's length for one sample of it (more steps per minute, "
                            "docs/results.md); the mix is the same in expectation")
    group.add_argument("--understanding-turns", metavar="K", type=positive_int, default=1,
                       help="train up to K of an image's questions (vqa), expressions (referring) or boxes "
                            "(box_to_phrase) in one sample, one turn each after the image's codes, instead of one "
                            "per sample: K times the answers for little more than one image's tokens "
                            "(docs/tasks/vqa.md; default: %(default)s)")
    group.add_argument("--grid-mix", type=grid_mix, default=None, metavar="HxW,...",
                       help="train text-to-image and captioning on crops of the code grids with these shapes, e.g. "
                            "16x32,32x16,32x32 (each side 4, 8, 16, 32 or 64, at most the data's grid); best with "
                            "--image-positions 2d (default: the data's grid only)")
    group.add_argument("--num-workers", metavar="N", type=non_negative_int, default=2,
                       help="DataLoader worker processes per rank; 0 loads in the training process "
                            "(default: %(default)s)")
    return parser


def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("training")
    group.add_argument("--train-iters", metavar="N", type=positive_int, required=True,
                       help="optimizer steps of the whole run (a resumed run continues up to this number)")
    group.add_argument("--batch-size", metavar="N", type=positive_int, default=4,
                       help="micro-batch per GPU (or per process on CPU) (default: %(default)s); the global "
                            "batch is batch-size x gradient-accumulation-steps x processes")
    group.add_argument("--gradient-accumulation-steps", metavar="N", type=positive_int, default=1,
                       help="micro-batches summed before each optimizer step (default: %(default)s)")
    group.add_argument("--lr", metavar="LR", type=positive_float, default=3e-4,
                       help="peak learning rate (default: %(default)s)")
    group.add_argument("--min-lr-ratio", metavar="R", type=fraction, default=0.1,
                       help="the decay ends at this fraction of --lr (default: %(default)s)")
    group.add_argument("--warmup", metavar="FRACTION", type=fraction, default=0.01,
                       help="fraction of --train-iters with a linear warm-up from 0, as in CogView "
                            "(default: %(default)s)")
    group.add_argument("--lr-decay-style", choices=DECAY_STYLES, default="cosine",
                       help="decay after the warm-up (default: %(default)s)")
    group.add_argument("--weight-decay", metavar="WD", type=non_negative_float, default=0.01,
                       help="AdamW weight decay, not applied to LayerNorm parameters and biases "
                            "(default: %(default)s)")
    group.add_argument("--clip-grad", metavar="NORM", type=non_negative_float, default=1.0,
                       help="clip the global gradient norm to this; 0 turns clipping off (default: %(default)s)")
    group.add_argument("--seed", metavar="N", type=int, default=1234,
                       help="seed of the initial weights, dropout and data order (default: %(default)s)")
    group.add_argument("--save", metavar="DIR", help="checkpoint folder (CogView's layout)")
    group.add_argument("--load", metavar="DIR",
                       help="resume from the newest checkpoint in this folder (usually the same as --save)")
    group.add_argument("--save-interval", metavar="N", type=positive_int, default=1000,
                       help="steps between checkpoints; one is also written at the end (default: %(default)s)")
    group.add_argument("--eval-interval", metavar="N", type=positive_int, default=1000,
                       help="steps between validation runs (default: %(default)s)")
    group.add_argument("--eval-iters", metavar="N", type=positive_int, default=10,
                       help="micro-batches per task and process in each validation run (default: %(default)s)")
    group.add_argument("--log-interval", metavar="N", type=positive_int, default=10,
                       help="steps between log lines and TensorBoard points (default: %(default)s)")
    group.add_argument("--tensorboard-dir", metavar="DIR",
                       help="TensorBoard folder (default: SAVE/tensorboard when --save is given)")
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="fp16 with DeepSpeed's dynamic loss scaling and fp32 master weights")
    precision.add_argument("--bf16", action="store_true", help="bf16 with fp32 master weights")
    group.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=1,
                       help="DeepSpeed ZeRO stage: 1 partitions optimizer states, 2 also gradients, 3 also "
                            "weights (default: %(default)s, CogView's)")
    group.add_argument("--tensor-parallel-size", metavar="N", type=positive_int, default=1,
                       help="split every layer across N consecutive processes (Megatron-style tensor parallelism "
                            "on DeepSpeed AutoTP, with ZeRO 0-2 across the processes / N replicas); N must divide "
                            "the attention heads and the processes (default: %(default)s)")
    return parser


def add_deepspeed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """DeepSpeed's own flag names; training always runs on DeepSpeed, so there is no `--deepspeed` switch."""
    group = parser.add_argument_group("DeepSpeed")
    group.add_argument("--deepspeed_config", metavar="FILE",
                       help="DeepSpeed JSON config; training flags fill in what it leaves out and may not "
                            "contradict it (examples: scripts/ds_config_zero*.json)")
    group.add_argument("--local_rank", metavar="N", type=int, default=None,
                       help="set by the deepspeed launcher; not for manual use")
    return parser


def add_sampling_args(group: argparse._ActionsContainer) -> None:
    """How each token is drawn (`generation.sampling.SamplingSettings`); generate_samples.py and evaluate.py."""
    group.add_argument("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    group.add_argument("--top-k", type=int, default=200,
                       help="0 turns it off (default: %(default)s; super-resolution: 1, greedy, unless given)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus mass; 1 turns it off (default: %(default)s)")


def add_post_selection_score_arg(group: argparse._ActionsContainer) -> None:
    """How a text and an image are matched (`generation.scoring.match_scores`); both inference scripts."""
    group.add_argument("--post-selection-score", choices=POST_SELECTION_SCORES, default="agreement",
                       help="how post-selection and --caption-candidates match a text and an image: agreement "
                            "(mean log-probability per token of the text given the image plus that of the "
                            "image given the text) or caption (CogView's: the text given the image) "
                            "(default: %(default)s)")


def add_component_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """What a loaded checkpoint runs with: tokenizer, VQ-VAE, device, precision, batch rows and attention
    backend (both inference scripts); returns the group, for a script's own additions."""
    models = parser.add_argument_group("models and devices")
    models.add_argument("--text-tokenizer", metavar="FILE",
                        help="SentencePiece .model file (default: the one recorded in the checkpoint)")
    models.add_argument("--vqvae", metavar="PATH", help="VQ-VAE folder or CogView .pt (default: the recorded one)")
    models.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    models.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="transformer compute precision: fp32 weights under autocast; CPUs do fp32 or bf16, "
                             "and int8 (linear layers quantised at load; CPU only) (default: %(default)s)")
    models.add_argument("--max-inference-batch-size", type=positive_int, default=DEFAULT_MAX_BATCH_ROWS,
                        help="most sequences in one forward, for sampling and scoring, guided images counting "
                             "twice; it is halved on out-of-memory (default: %(default)s)")
    add_attention_backend_flag(models)
    return models


GENERATION_TASKS = ("text2image", "image2text", "post-selection", "super-resolution", "text2image-full", "vqa",
                    "grounded-caption", "grounding", "retrieval", "attention-map")


def add_load_time_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags for the model settings that a checkpoint's tensors do not show, for scripts that load one.

    Each defaults to None ("take the checkpoint's"): `model_config.json` records them, CogView's release
    implies them (Sandwich-LN when its tensors are there, PB-relax on); a given value that contradicts
    `model_config.json` is refused when the model loads. Pass `load_time_model_settings(args)` on to
    `load_model_for_inference` / `Pipeline.from_checkpoint` / `load_components`.
    """
    group = parser.add_argument_group("model settings at load time",
                                      "default: what model_config.json records (CogView's release: what its code did)")
    group.add_argument("--layernorm-order", choices=LAYERNORM_ORDERS, default=None,
                       help="'sandwich': CogView's Sandwich-LN; 'pre': GPT-2's pre-LN")
    group.add_argument("--pb-relax", action=argparse.BooleanOptionalAction, default=None,
                       help="PB-relax LayerNorm (inputs scaled by each token's max|x|/8), as CogView's released "
                            "code always did; --no-pb-relax turns it off")
    group.add_argument("--pb-relax-alpha", metavar="ALPHA", type=positive_float, default=None,
                       help="PB-relax attention as in CogView's paper with this alpha (the paper: 32)")
    return parser


def load_time_model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The load-time model settings given on the command line (`args.given_flags`, see
    `add_load_time_model_args`)."""
    return {name: getattr(args, name) for name in ("layernorm_order", "pb_relax", "pb_relax_alpha")
            if name in args.given_flags}


def add_generation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every flag of generate_samples.py (docs/generation.md)."""
    group = parser.add_argument_group("generation")
    group.add_argument("--load", required=True, metavar="PATH",
                       help="checkpoint: a DeepSpeed save folder (any ZeRO stage) or one of its iteration folders, "
                            "an exported model.safetensors folder, or CogView's released layout")
    group.add_argument("--generation-task", choices=GENERATION_TASKS, default="text2image",
                       help="text2image: images for each prompt; image2text: a caption per input image; "
                            "post-selection: rank --input-images by how well they explain --prompt; "
                            "super-resolution: each input image at twice its side, conditioned on --prompt; "
                            "text2image-full: --batch-size candidates per prompt, post-selection, then "
                            "super-resolution of the best; vqa: answer --question about each input image (or the "
                            "IMAGE<TAB>QUESTION lines of --input-source); grounded-caption: a caption with a box "
                            "per object phrase, for each input image; grounding: the box --prompt names in each "
                            "input image; retrieval: score every --input-source text against every input image "
                            "and rank both ways; attention-map: which part of each input image each word of "
                            "--prompt attends to (default: %(default)s)")
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
                        help="image files or folders, for image2text, post-selection, super-resolution, vqa, "
                             "grounded-caption, grounding, retrieval and attention-map")
    inputs.add_argument("--question", metavar="TEXT",
                        help="vqa: the question asked about every --input-images image")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--batch-size", type=positive_int, default=4,
                          help="images per prompt (default: %(default)s)")
    sampling.add_argument("--seed", type=int, default=0,
                          help="image j of every prompt (or input image j) is sampled with seed SEED+j "
                               "(default: %(default)s)")
    add_sampling_args(sampling)
    sampling.add_argument("--cfg-scale", type=float, default=1.0,
                          help="classifier-free guidance for text2image: uncond + s * (cond - uncond) on "
                               "log-probabilities; 1 is no guidance (default: %(default)s)")
    sampling.add_argument("--image-grid", metavar="HxW", default=None,
                          help="text2image: make grids of H rows and W columns of codes (each side 4, 8, 16, 32 or "
                               "64; an image of H*f x W*f pixels for a VQ-VAE downsampling f), e.g. 16x32 "
                               "(default: the trained grid)")
    sampling.add_argument("--max-caption-tokens", type=positive_int, default=None,
                          help="longest caption in text tokens (default: the model's text budget)")
    sampling.add_argument("--caption-candidates", type=positive_int, default=1,
                          help="image2text: sample N captions per image and keep the one that agrees best with "
                               "the image (--post-selection-score; needs --top-k other than 1) "
                               "(default: %(default)s)")
    add_post_selection_score_arg(sampling)
    models = add_component_args(parser)
    models.add_argument("--caption-model", metavar="PATH",
                        help="a separate checkpoint for the image-to-text direction of post-selection scores "
                             "(default: --load itself)")
    models.add_argument("--adapter", action="append", metavar="DIR[:SCALE]",
                        help="a fine-tuning adapter (finetune_subject.py) folded into --load; repeat to load several "
                             "subjects at once; DIR:0.5 adds a LoRA adapter at half strength")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output-path", default="samples", metavar="DIR",
                         help="PNGs (settings in their metadata), a grid per prompt and manifest.jsonl "
                              "(default: %(default)s)")
    outputs.add_argument("--tensorboard-dir", metavar="DIR",
                         help="log throughput and each prompt's grid to TensorBoard here")
    add_load_time_model_args(parser)
    return parser


# ---------------------------------------------------------------- parsing

def build_training_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_group in (add_model_args, add_data_args, add_training_args, add_deepspeed_args):
        add_group(parser)
    return parser


class _NotGiven(list):
    """The marker of `given_flags`."""


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> frozenset[str]:
    """Destinations of the flags that `argv` sets explicitly, even to their default value.

    Parses again with every default replaced by a marker object: whatever still holds the marker
    was not on the command line. (The marker is not a string, so argparse never converts it; it is an
    empty list, so an `append` action copies it and appends to the copy.)
    """
    not_given = _NotGiven()
    dests = list(vars(parser.parse_args(argv)))
    saved = {dest: parser.get_default(dest) for dest in dests}
    parser.set_defaults(**dict.fromkeys(dests, not_given))
    try:
        probe = vars(parser.parse_args(argv))
    finally:
        parser.set_defaults(**saved)
    return frozenset(dest for dest, value in probe.items() if value is not not_given)


def parse_noting_given(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)` with `args.given_flags` (`given_flags`): what every entry script calls,
    so "was this flag given" is answered one way everywhere, never by comparing a value with its default."""
    args = parser.parse_args(argv)
    args.given_flags = given_flags(parser, argv)
    return args


def check_training_args(args: argparse.Namespace) -> None:
    """Combinations argparse cannot see: flags that would do nothing are refused, not ignored."""
    given = args.given_flags
    if args.save is None and "save_interval" in given:
        raise UserError("--save-interval needs --save")
    if args.valid_data is None:
        for dest in ("eval_interval", "eval_iters"):
            if dest in given:
                raise UserError(f"--{dest.replace('_', '-')} needs --valid-data")
    if args.lr_decay_style == "constant" and "min_lr_ratio" in given:
        raise UserError("--min-lr-ratio sets where the decay ends, but --lr-decay-style constant does not decay")
    if args.grid_mix and not (args.task_mix.get("text2image") or args.task_mix.get("image2text")):
        raise UserError("--grid-mix crops the images of text2image and image2text samples, but --task-mix gives "
                        "neither a weight")
    if not args.task_mix.get("text2image") and "cfg_drop_prob" in given:
        raise UserError("--cfg-drop-prob drops the text of text-to-image samples, but --task-mix gives text2image "
                        "no weight")
    if args.one_task_per_micro_batch and sum(weight > 0 for weight in args.task_mix.values()) < 2:
        raise UserError("--one-task-per-micro-batch groups the tasks of --task-mix, but it gives only one a weight")


def parse_training_args(argv: Sequence[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Parse, note the explicitly given flags, fill derived defaults and refuse flags that would do nothing."""
    args = parse_noting_given(build_training_parser(description), argv)
    if args.tensorboard_dir is None and args.save is not None:
        args.tensorboard_dir = f"{args.save}/tensorboard"
    check_training_args(args)
    return args


# ---------------------------------------------------------------- model config <-> flags

def model_config_from_args(args: argparse.Namespace, vocab_size: int, max_positions: int,
                           image_tokens: ImageTokens | None = None) -> ModelConfig:
    """A new model's config; `max_positions` fills --max-position-embeddings when it is not given, and
    `image_tokens` (the data's) is recorded when a flag needs it (--image-attention-window, --image-positions 2d)."""
    values: dict[str, Any] = {flag: getattr(args, flag) for flag in MODEL_FLAGS}
    if values["max_position_embeddings"] is None:
        values["max_position_embeddings"] = max_positions
    if values["image_attention_window"] or values["image_positions"] != "1d":
        values["image_tokens"] = image_tokens
    return ModelConfig(vocab_size=vocab_size, **values)


def check_flags_match_config(args: argparse.Namespace, config: Mapping[str, Any], source: str) -> None:
    """Refuse a given model flag that contradicts the config of the checkpoint being resumed."""
    for flag in MODEL_FLAGS:
        if flag in args.given_flags and getattr(args, flag) != config.get(flag):
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)} contradicts the checkpoint in "
                            f"{source} ({flag}={config.get(flag)}); drop the flag to resume, or start a new run")
