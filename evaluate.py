"""Evaluate a trained model on held-out data: one command, a table on stdout, every number in a JSON file.

Examples:
    python evaluate.py --load runs/gpt --dataset shapes --num-prompts 200 --output-json runs/eval.json
    python evaluate.py --load runs/gpt --sections t2i,fid --cfg-scale 1 3 5 --candidates 8 --post-select \\
        --feature-net runs/selffid --output-json runs/eval_cfg.json
    python evaluate.py --load runs/gpt --valid-data runs/data/val --sections bpt,caption-loss \\
        --output-json runs/bpt.json
    python evaluate.py --load runs/gpt --sections fid --train-feature-net runs/selffid --output-json runs/fid.json
    python evaluate.py --load runs/gpt --precision int8 --against-fp32 --output-json runs/eval_int8.json

Sections (--sections, comma-separated; by default every one the dataset and the inputs given allow):
    t2i           shapes: do images generated for held-out captions show what the caption says (per cfg scale)
    caption       shapes: do the model's captions of held-out images name their objects
    sr            PSNR of super-resolved 2x-downscaled held-out images (greedy), and of bicubic upsampling;
                  on shapes also the checker on the low-res inputs and on the outputs
    bpt           bits per image token and per text token on --valid-data shards, per task
    caption-loss  CogView's caption loss of held-out pairs, and its gap to shuffled pairs
    fid           FID and IS (--inception-weights), self-FID (--feature-net / --train-feature-net), per cfg scale
    vqvae         VQ-VAE round-trip PSNR and codebook use on held-out images
    retrieval     recall@1 and @5 of image-caption retrieval both ways, on --retrieval-pairs held-out pairs
    attention     shapes: the share of an object's words' attention inside its box, against the box's area
    vqa           shapes: accuracy of answers to the spec's questions, per question type (1-7)
    grounding     shapes: share of objects a grounded caption names with a right box (IoU >= 0.5), and
                  box-to-phrase accuracy
    referring     shapes: share of referring expressions answered with a right box (IoU >= 0.5)

retrieval, attention, vqa, grounding and referring score each caption language of --language apart (shapes:
"both" gives en and zh). vqa, grounding and referring run only for a checkpoint with location tokens
(--location-bins above 0); for any other they are skipped with one logged line.

Held-out items are the `val` split of --dataset (shapes: pictures of --data-seed's val streams that the
split keeps out of training, `image_sources.held_out_scene`). Every number is defined in docs/evaluation.md; the JSON file also records the
command line, the checkpoint's fingerprints and the seed, and is rewritten after every section.
`--against-fp32` runs every section a second time in fp32 and reports both side by side.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from arguments import (add_component_args, add_load_time_model_args, add_post_selection_score_arg,
                       add_sampling_args, load_time_model_settings, parse_noting_given, positive_int)
from checkpoints.trackers import checkpoint_iteration
from eval_utils.bits_per_token import bits_per_token_section, open_validation_rows, trained_tasks
from eval_utils.caption_loss import caption_loss_section
from eval_utils.attention_in_box import attention_section
from eval_utils.grounding import grounding_section, referring_section
from eval_utils.held_out import CaptionedSet, language_splits, load_split
from eval_utils.image_quality import fid_section, load_fid_networks, self_fid_network
from eval_utils.precision_comparison import precision_comparison
from eval_utils.prompt_following import caption_section, pipeline_images, text_to_image_section
from eval_utils.provenance import provenance
from eval_utils.report import Section, flat_scalars
from eval_utils.retrieval import distinct_pairs, retrieval_section
from eval_utils.super_resolution import super_resolution_section
from eval_utils.vqa import vqa_section
from eval_utils.vqvae_reconstruction import vqvae_section
from generation.loading import load_components, resolve_device
from generation.pipeline import Pipeline
from generation.sampling import SamplingSettings
from generation.tasks import SUPER_RESOLUTION_SAMPLING
from model.kernels import set_attention_backend
from utils.errors import UserError, run_main
from utils.files import atomic_write_json
from utils.logging import TensorBoardLogger, get_logger

logger = get_logger("evaluate")

UNDERSTANDING_SECTIONS = ("vqa", "grounding", "referring")  # need location tokens in the tokenizer
SECTIONS = ("t2i", "caption", "sr", "bpt", "caption-loss", "fid", "vqvae", "retrieval", "attention",
            *UNDERSTANDING_SECTIONS)
SHAPES_SECTIONS = ("t2i", "caption", "attention", *UNDERSTANDING_SECTIONS)  # need each item's objects (shapes only)
# Held-out items loaded per wanted retrieval pair, so that enough of them have captions unlike the others'.
RETRIEVAL_ITEMS_PER_PAIR = 4
# Flags that only some sections read: given without any of them they would do nothing, so they are refused.
FLAG_SECTIONS = {"cfg_scale": ("t2i", "fid"), "candidates": ("t2i", "fid"), "post_select": ("t2i", "fid"),
                 "caption_top_k": ("caption",), "caption_candidates": ("caption",),
                 "caption_temperature": ("caption",), "post_selection_score": ("t2i", "fid", "caption"),
                 "valid_data": ("bpt",), "inception_weights": ("fid",),
                 "feature_net": ("fid",), "train_feature_net": ("fid",), "retrieval_pairs": ("retrieval",)}


# ---------------------------------------------------------------- command line

def section_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(SECTIONS)}")
    return [name for name in SECTIONS if name in names]  # canonical order, duplicates dropped


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--load", required=True, metavar="PATH",
                      help="checkpoint: a training save folder or iteration folder, an exported folder, or "
                           "CogView's layout (tokenizer and VQ-VAE come from its metadata)")
    what.add_argument("--sections", type=section_list, default=None, metavar="NAME,...",
                      help=f"any of {','.join(SECTIONS)} (default: all that apply)")
    what.add_argument("--output-json", required=True, metavar="FILE",
                      help="results, command line, checkpoint fingerprints and seed (written atomically)")
    data = parser.add_argument_group("held-out data")
    data.add_argument("--dataset", default="shapes",
                      help="'shapes', 'emoji', a folder of images + .txt, or a .jsonl/.tsv list; its val split "
                           "is used (default: %(default)s)")
    data.add_argument("--num-prompts", type=positive_int, default=200,
                      help="held-out items for every section (and at most this many --valid-data rows) "
                           "(default: %(default)s)")
    data.add_argument("--language", choices=("en", "zh", "both"), default="en",
                      help="caption language of shapes (default: %(default)s)")
    data.add_argument("--data-seed", type=int, default=0,
                      help="seed the shapes data was made with; the held-out items are its val stream "
                           "(default: %(default)s)")
    data.add_argument("--valid-data", metavar="DIR", help="validation shards (preprocess_data.py) for bpt")
    data.add_argument("--retrieval-pairs", type=positive_int, default=100,
                      help="held-out image-caption pairs (with different captions) of the retrieval section, "
                           "each caption scored against each image (default: %(default)s)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--seed", type=int, default=0,
                          help="candidate j of every prompt (or held-out image j) is sampled with seed SEED+j; "
                               "also seeds self-FID training (default: %(default)s)")
    sampling.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0], metavar="S",
                          help="one or more guidance scales; t2i and fid report one row each (default: 1)")
    sampling.add_argument("--candidates", type=positive_int, default=1,
                          help="images generated per prompt, of which --post-select keeps one (default: 1)")
    sampling.add_argument("--post-select", action="store_true",
                          help="judge the candidate post-selection ranks best (--post-selection-score) instead "
                               "of the first")
    add_post_selection_score_arg(sampling)
    add_sampling_args(sampling)
    sampling.add_argument("--caption-top-k", type=int, default=1,
                          help="top-k of the caption section's decoding, with the temperature and top-p above; "
                               "the default 1 judges each image's most likely caption, as a captioner is used "
                               "(default: %(default)s)")
    sampling.add_argument("--caption-candidates", type=positive_int, default=1, metavar="N",
                          help="also judge reranked captions: N sampled per image (no top-k, "
                               "--caption-temperature), keeping the one that agrees best with the image "
                               "(--post-selection-score) (default: 1, off)")
    sampling.add_argument("--caption-temperature", type=float, default=1.0,
                          help="temperature of the --caption-candidates samples (default: %(default)s)")
    fid = parser.add_argument_group("FID")
    fid.add_argument("--inception-weights", metavar="FILE",
                     help="pt_inception-2015-12-05-6726825d.pth, for FID and IS (docs/evaluation.md)")
    fid.add_argument("--feature-net", metavar="DIR", help="self-FID feature network saved by --train-feature-net")
    fid.add_argument("--train-feature-net", metavar="DIR",
                     help="train a self-FID network on the training split, save it to DIR (which must not "
                          "hold one yet) and use it; pass DIR as --feature-net to compare later runs")
    fid.add_argument("--feature-net-steps", type=positive_int, default=1000,
                     help="training steps of --train-feature-net (default: %(default)s)")
    fid.add_argument("--feature-net-items", type=positive_int, default=2000,
                     help="training-split items --train-feature-net learns from (default: %(default)s)")
    models = add_component_args(parser)
    add_load_time_model_args(parser)
    models.add_argument("--against-fp32", action="store_true",
                        help="run every section in fp32 too, with the same items and seeds, and print both side "
                             "by side with the difference (for --precision int8, bf16 or fp16)")
    models.add_argument("--tensorboard-dir", metavar="DIR",
                        help="log every number as a scalar at the checkpoint's iteration")
    return parse_noting_given(parser, argv)


def choose_sections(args: argparse.Namespace) -> list[str]:
    """The sections to run, from --sections or the inputs given; refuses given flags (`args.given_flags`,
    even at their default value) that no chosen section reads."""
    given = args.given_flags
    wants_fid = bool(args.inception_weights or args.feature_net or args.train_feature_net)
    if args.sections is None:
        sections = [s for s in SECTIONS if (s != "bpt" or args.valid_data) and (s != "fid" or wants_fid)]
    else:
        sections = args.sections
        if "bpt" in sections and not args.valid_data:
            raise UserError("the bpt section needs --valid-data (a folder written by preprocess_data.py)")
        if "fid" in sections and not wants_fid:
            raise UserError("the fid section needs --inception-weights, --feature-net or --train-feature-net")
    for dest, readers in FLAG_SECTIONS.items():
        if dest in given and not set(readers) & set(sections):
            raise UserError(f"--{dest.replace('_', '-')} is read only by the {' and '.join(readers)} section(s), "
                            f"which are not run")
    if args.candidates > 1 and not args.post_select:
        raise UserError("--candidates above 1 needs --post-select: without it the first candidate is judged, "
                        "which is the image --candidates 1 makes")
    if args.post_select and args.candidates < 2:
        raise UserError("--post-select chooses among candidates: give --candidates 2 or more")
    if "post_selection_score" in given and not args.post_select and args.caption_candidates < 2:
        raise UserError("--post-selection-score needs --post-select or --caption-candidates 2 or more")
    if args.against_fp32 and args.precision == "fp32":
        raise UserError("--against-fp32 compares another --precision with fp32; give --precision int8, bf16 or fp16")
    if args.feature_net and args.train_feature_net:
        raise UserError("give either --feature-net (use a saved network) or --train-feature-net (make one)")
    for flag in ("feature_net_steps", "feature_net_items"):
        if flag in given and not args.train_feature_net:
            raise UserError(f"--{flag.replace('_', '-')} is read only with --train-feature-net")
    for scale in args.cfg_scale:
        SamplingSettings(args.temperature, args.top_k, args.top_p, scale)  # one-line errors for bad values
    if args.caption_top_k < 0:
        raise UserError(f"--caption-top-k must be >= 0 (0 = off, 1 = greedy), got {args.caption_top_k}")
    if "caption_temperature" in given and args.caption_candidates < 2:
        raise UserError("--caption-temperature samples the --caption-candidates: give --caption-candidates 2 or more")
    SamplingSettings(args.caption_temperature, 0, 1.0)  # a one-line error for a bad temperature
    return sections


# ---------------------------------------------------------------- main

def section_runners(pipe: Pipeline, args: argparse.Namespace, held_out: CaptionedSet, rows: Any,
                    metadata: dict[str, Any], inception: Any, feature_net: Any) -> dict[str, Callable[[], Section]]:
    """Each section as a call over `pipe`, at `pipe.precision` (`--against-fp32` builds a second set in fp32;
    each set generates its own images, once per guidance scale, shared by t2i and fid)."""
    sampling = {"top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature}
    images_at = pipeline_images(pipe, held_out.captions, args.candidates, args.post_select, args.seed, sampling)
    batch, precision = args.max_inference_batch_size, pipe.precision
    size = pipe.image_size(pipe.geometry.image_grid)

    @functools.cache
    def held_out_splits(count: int) -> dict[str, CaptionedSet]:
        """Per caption language, `count` held-out items, rendered once for every section that reads them."""
        return language_splits(args.dataset, "val", size, args.language, args.data_seed, count)

    def shapes_items() -> dict[str, tuple[list, list]]:
        """Per caption language, --num-prompts held-out images and their objects."""
        return {name: (split.images, split.objects) for name, split in held_out_splits(args.num_prompts).items()}

    return {
        "t2i": lambda: text_to_image_section(held_out.objects, args.cfg_scale, images_at, args.candidates),
        "caption": lambda: caption_section(held_out.images, held_out.objects, lambda images: pipe.caption(
            images, seed=args.seed, max_tokens=pipe.geometry.text_max_tokens,
            **{**sampling, "top_k": args.caption_top_k}), (lambda images: pipe.caption(
                images, seed=args.seed, max_tokens=pipe.geometry.text_max_tokens, top_k=0,
                temperature=args.caption_temperature, candidates=args.caption_candidates))
            if args.caption_candidates > 1 else None),
        "sr": lambda: super_resolution_section(held_out.images, held_out.captions, lambda images, texts: (
            pipe.super_resolve(images, texts, seed=args.seed)), held_out.objects,  # greedy, SR's own default
            SUPER_RESOLUTION_SAMPLING.to_dict(), pipe.super_resolution_copy),
        "bpt": lambda: bits_per_token_section(pipe.model, pipe.tokenizer, rows, args.num_prompts, batch,
                                              args.data_seed, precision, trained_tasks(metadata)),
        "caption-loss": lambda: caption_loss_section(pipe.model, pipe.tokenizer, pipe.geometry,
                                                     pipe.encode_images(held_out.tensor()), held_out.captions,
                                                     batch, precision),
        "fid": lambda: fid_section(held_out.tensor(), args.cfg_scale, images_at, inception, feature_net),
        "vqvae": lambda: vqvae_section(pipe.vqvae, held_out.images),
        "retrieval": lambda: retrieval_section(pipe.retrieval_scores, {
            name: distinct_pairs(split.images, split.captions, args.retrieval_pairs)
            for name, split in held_out_splits(RETRIEVAL_ITEMS_PER_PAIR * args.retrieval_pairs).items()}),
        "attention": lambda: attention_section(pipe.attention_maps, lambda text: pipe.tokenizer.decode_text(
            pipe.tokenizer.encode_text(text, pipe.geometry.text_max_tokens)), {
            name: (split.images, split.captions, split.objects)
            for name, split in held_out_splits(args.num_prompts).items()}, size, pipe.geometry.image_grid),
        "vqa": lambda: vqa_section(pipe.answer, shapes_items(), args.data_seed),
        "grounding": lambda: grounding_section(pipe.grounded_caption, pipe.phrase_for_box, shapes_items()),
        "referring": lambda: referring_section(pipe.ground, shapes_items()),
    }


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sections = choose_sections(args)
    set_attention_backend(args.attention_backend)
    if Path(args.output_json).is_dir():
        raise UserError(f"--output-json {args.output_json} is a folder; give a file name")
    device = resolve_device(args.device)
    inception, feature_net = (load_fid_networks(args.inception_weights, args.feature_net, args.train_feature_net,
                                                device) if "fid" in sections else (None, None))
    parts = load_components(args.load, vqvae=args.vqvae, text_tokenizer=args.text_tokenizer, device=device,
                            model_settings=load_time_model_settings(args))
    pipe = Pipeline(parts.model, parts.tokenizer, parts.vqvae, parts.geometry,
                    max_batch_rows=args.max_inference_batch_size, precision=args.precision,
                    post_selection=args.post_selection_score)
    size = pipe.image_size(pipe.geometry.image_grid)
    held_out = load_split(args.dataset, "val", size, args.language, args.data_seed, args.num_prompts)
    if held_out.objects is None:
        asked = [s for s in SHAPES_SECTIONS if s in sections and args.sections is not None]
        if asked:
            raise UserError(f"the {' and '.join(asked)} section(s) need shapes metadata, which --dataset "
                            f"{args.dataset} does not have; use --dataset shapes or other sections")
        sections = [s for s in sections if s not in SHAPES_SECTIONS]
    skipped = [s for s in sections if s in UNDERSTANDING_SECTIONS and not pipe.tokenizer.location_bins]
    if skipped:
        logger.info("skipping the %s section(s): this checkpoint has no location tokens (trained on data made "
                    "with --location-bins 0)", ",".join(skipped))
        sections = [s for s in sections if s not in skipped]
    rows = (open_validation_rows(args.valid_data, pipe.tokenizer, pipe.vqvae, pipe.geometry)
            if "bpt" in sections else None)
    if "fid" in sections and args.train_feature_net:
        train = load_split(args.dataset, "train", size, args.language, args.data_seed, args.feature_net_items)
        feature_net = self_fid_network(train, pipe.tokenizer, args.train_feature_net, args.feature_net_steps,
                                       args.seed, device, Path(args.tensorboard_dir, "feature_net")
                                       if args.tensorboard_dir else None)

    runners = section_runners(pipe, args, held_out, rows, parts.metadata, inception, feature_net)
    fp32_runners = None
    if args.against_fp32:
        fp32_pipe = Pipeline(parts.model, parts.tokenizer, parts.vqvae, parts.geometry,
                             max_batch_rows=args.max_inference_batch_size, precision="fp32",
                             post_selection=args.post_selection_score)
        fp32_runners = section_runners(fp32_pipe, args, held_out, rows, parts.metadata, inception, feature_net)
    report = {**provenance(args, argv, parts, checkpoint_iteration(Path(args.load))), "dataset": held_out.description, "sections": {}, "seconds": {},
              "complete": False}
    if fp32_runners is not None:
        report["fp32_sections"] = {}
    done: list[Section] = []
    for name in sections:
        logger.info("section %s", name)
        start = time.time()
        done.append(runners[name]())
        report["sections"][name] = done[-1].results
        report["seconds"][name] = round(time.time() - start, 3)
        if fp32_runners is not None:
            logger.info("section %s in fp32", name)
            report["fp32_sections"][name] = fp32_runners[name]().results
        atomic_write_json(args.output_json, report)  # a later failure keeps the sections already done
    if fp32_runners is not None:
        done.append(precision_comparison(args.precision, report["sections"], report["fp32_sections"]))
        report["against_fp32"] = done[-1].results
    report["complete"] = True
    atomic_write_json(args.output_json, report)

    board = TensorBoardLogger(args.tensorboard_dir)
    board.scalars(flat_scalars(report["sections"], "eval"), report["checkpoint"]["iteration"] or 0)
    board.close()
    print(f"evaluation of {args.load} on {len(held_out.captions)} held-out {args.dataset} items, seed {args.seed}")
    for section in done:
        print(f"\n== {section.name} ==\n{section.table}")
    print(f"\nwrote {args.output_json}")


if __name__ == "__main__":
    run_main(main)
