"""Export a training checkpoint as one `model.safetensors` + `model_config.json`.

Example:
    python export_model.py --load runs/gpt --output runs/gpt-export
    python export_model.py --load runs/gpt --iteration 20000 --output runs/gpt-20k

Works for every checkpoint `pretrain_gpt2.py` writes, whatever its ZeRO stage: stage 3 weights are
gathered from all ranks' shards with DeepSpeed's own `zero_to_fp32`. The weights are written in fp32
and `model_config.json` keeps the tokenizer and VQ-VAE that the training data recorded, so
`generate_samples.py --load runs/gpt-export` needs nothing else. (Generation also loads the training
folder directly; exporting gives one self-contained, pickle-free file to share.) The load-time model
flags (--pb-relax ...) are for a checkpoint without model_config.json; the export records them.
`--merge-adapter DIR` (repeatable) folds fine-tuning adapters into the exported weights: a standalone
checkpoint of the fine-tuned model.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from arguments import add_load_time_model_args, load_time_model_settings, parse_noting_given
from checkpoints.trackers import TRACKER_FILE, read_latest_iteration
from model.checkpoint import load_model_for_inference
from model.export import save_exported
from utils.errors import UserError, run_main
from utils.logging import get_logger

logger = get_logger("export_model")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, metavar="DIR", help="checkpoint folder of pretrain_gpt2.py (--save)")
    parser.add_argument("--iteration", type=int, default=None,
                        help="iteration to export (default: the newest, from latest_checkpointed_iteration.txt)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for model.safetensors + model_config.json")
    parser.add_argument("--merge-adapter", action="append", metavar="DIR[:SCALE]",
                        help="fold this fine-tuning adapter (finetune_subject.py) into the export; repeatable; "
                             "DIR:0.5 adds a LoRA adapter at half strength")
    add_load_time_model_args(parser)
    return parse_noting_given(parser, argv)


def checkpoint_folder(load: Path, iteration: int | None) -> Path:
    if iteration is None:
        iteration = read_latest_iteration(load)
        if iteration is None:
            raise UserError(f"no checkpoint in {load} (no {TRACKER_FILE}); give --iteration "
                            f"or the folder of a training run")
    folder = load / str(iteration)
    if not folder.is_dir():
        found = sorted((p.name for p in load.iterdir() if p.name.isdigit()), key=int) if load.is_dir() else []
        raise UserError(f"no iteration {iteration} in {load}; it holds {', '.join(found) or 'none'}")
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    folder = checkpoint_folder(Path(args.load), args.iteration)
    model, metadata = load_model_for_inference(folder, **load_time_model_settings(args))
    if args.merge_adapter:
        from finetune.adapters import apply_adapters

        configs = apply_adapters(model, args.merge_adapter)
        metadata = {**metadata, "merged_adapters": [{"path": str(path), "identifier": config.identifier,
                                                     "class_noun": config.class_noun, "mode": config.mode}
                                                    for path, config in zip(args.merge_adapter, configs)]}
    save_exported(model, args.output, metadata)
    logger.info("exported %s (%s parameters) to %s", folder, f"{model.num_parameters():,}", args.output)


if __name__ == "__main__":
    run_main(main)
