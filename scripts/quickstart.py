"""The whole pipeline on the built-in `shapes` data, end to end, in one run folder.

Example:
    python scripts/quickstart.py                      # everything under runs/quickstart
    python scripts/quickstart.py --run-dir runs/qs2 --train-iters 100

Stages: SentencePiece tokenizer -> VQ-VAE -> token shards (train / val) -> transformer with the task
mixture -> text-to-image for English and Chinese prompts with post-selection, captions of held-out
images, one super-resolution. Each stage is one of the repository's own command lines, run as a
subprocess with its own progress bar. A stage whose outputs exist and whose command line is unchanged
is reused, so re-running after an interruption (or after changing only a later stage) redoes only what
is missing. At the end the paths of everything written are printed.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.errors import UserError, run_main  # noqa: E402
from utils.stages import Stage  # noqa: E402

PROMPTS_EN = [
    "a large red circle at the top left",
    "a small blue square in the center",
    "a large green triangle at the bottom right",
    "a large yellow diamond at the top and a small purple circle at the bottom",
]
PROMPTS_ZH = [
    "左上角有一个大的红色圆形",
    "中间有一个小的蓝色正方形",
    "右下角有一个大的绿色三角形",
]


# Sampling and post-selection of the samples and of the evaluation (docs/results.md, "Quick start").
SAMPLING = ["--cfg-scale", "1.5", "--temperature", "0.4", "--post-selection-score", "caption"]


def build_stages(args: argparse.Namespace) -> list[Stage]:
    run = Path(args.run_dir)
    tok, vq, data, gpt, out = run / "tokenizer", run / "vqvae", run / "data", run / "gpt", run / "samples"
    sp_model = tok / "sp.model"
    common_data = ["--dataset", "shapes", "--language", "both", "--image-size", str(args.image_size),
                   "--text-tokenizer", str(sp_model), "--vqvae", str(vq), "--text-max-tokens", "32",
                   "--with-lowres", "--with-highres", "--sr-condition", "upsampled", "--workers", str(args.workers)]
    return [
        Stage("tokenizer", ["train_text_tokenizer.py", "--dataset", "shapes", "--language", "both",
                            "--num-items", "10000", "--output", str(tok / "sp")], [sp_model]),
        Stage("vqvae", ["train_vqvae.py", "--dataset", "shapes", "--image-size", str(args.image_size),
                        "--time-budget-minutes", str(args.vqvae_minutes), "--threads", "2", "--batch-size", "8",
                        "--codebook-size", "128", "--output", str(vq),
                        "--save-recon-grid", str(vq / "reconstructions.png")],
              [vq / "model.safetensors", vq / "config.json"]),
        Stage("data-train", ["preprocess_data.py", *common_data, "--split", "train",
                             "--num-items", str(args.train_items), "--output", str(data / "train")],
              [data / "train" / "manifest.json"]),
        Stage("data-val", ["preprocess_data.py", *common_data, "--split", "val",
                           "--num-items", "512", "--output", str(data / "val")],
              [data / "val" / "manifest.json"]),
        Stage("transformer", ["pretrain_gpt2.py", "--train-data", str(data / "train"),
                              "--valid-data", str(data / "val"), "--save", str(gpt),
                              "--tensorboard-dir", str(run / "tb" / "gpt"), *args.model_flags.split(),
                              "--task-mix", "text2image=0.65,image2text=0.2,super_resolution=0.15", "--image-positions", "2d",
                              "--train-iters", str(args.train_iters), "--bf16", "--batch-size", "16", "--lr", "2e-3",
                              "--layernorm-order", "pre", "--one-task-per-micro-batch",
                              "--warmup", "0.05", "--hidden-dropout", "0", "--attention-dropout", "0",
                              "--save-interval", "200", "--eval-interval", "200", "--eval-iters", "2",
                              "--log-interval", "20", "--num-workers", "1"],
              [gpt / "latest_checkpointed_iteration.txt"],
              resume_marker=gpt / "latest_checkpointed_iteration.txt", resume_argv=["--load", str(gpt)]),
        # CogView's caption score: at 1,500 steps the text-to-image direction of the agreement score still
        # favours typical images over faithful ones (docs/tasks/post_selection.md, "Which score").
        Stage("text2image", ["generate_samples.py", "--load", str(gpt), "--generation-task", "text2image-full",
                             "--input-source", str(run / "prompts.txt"), "--batch-size", "8", *SAMPLING,
                             "--output-path", str(out / "text2image")],
              [out / "text2image" / "manifest.jsonl"]),
        Stage("captions", ["generate_samples.py", "--load", str(gpt), "--generation-task", "image2text",
                           "--input-images", *(str(p) for p in held_out_images(run)), "--caption-candidates", "16",
                           "--output-path", str(out / "captions")],
              [out / "captions" / "manifest.jsonl"]),
        Stage("super-resolution", ["generate_samples.py", "--load", str(gpt), "--generation-task",
                                   "super-resolution", "--prompt", held_out_captions(run)[0],
                                   "--input-images", str(held_out_images(run)[0]),
                                   "--output-path", str(out / "super_resolution")],
              [out / "super_resolution" / "manifest.jsonl"]),
        *(Stage(f"evaluate-{language}", ["evaluate.py", "--load", str(gpt), "--sections", "t2i", "--dataset", "shapes",
                                         "--language", language, "--num-prompts", str(args.eval_prompts),
                                         *SAMPLING, "--candidates", "8", "--post-select",
                                         "--output-json", str(run / f"eval_{language}.json")],
                [run / f"eval_{language}.json"]) for language in ("en", "zh")),
        Stage("loss-plot", ["scripts/plot_training.py", str(run / "tb" / "gpt"), "--tags", "train/loss",
                            "train/image_loss", "train/text_loss", "valid/loss", "--title",
                            "quick start: transformer loss (nats per token)", "--output",
                            str(run / "training_loss.png")], [run / "training_loss.png"]),
    ]


def write_held_out_inputs(run_dir: Path, count: int, size: int) -> None:
    """Held-out shapes images (and their true captions) for the captioning and super-resolution stages."""
    from data_utils.image_sources import open_dataset

    folder = run_dir / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    source = open_dataset("shapes", split="val", size=size, language="en", num_items=count)
    captions = []
    for index in range(count):
        item = source.item(index)
        item.image.save(folder / f"heldout_{index}.png")
        captions.append(item.caption)
    (folder / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")


def accuracy_summary(run_dir: Path) -> str:
    """The evaluation stages' share of held-out prompts whose image is fully correct, per language."""
    from utils.files import read_json

    lines = []
    for language, name in (("en", "English"), ("zh", "Chinese")):
        report = read_json(run_dir / f"eval_{language}.json")["sections"]["t2i"]
        row = next(iter(report["by_cfg_scale"].values()))
        first, picked = (row[key]["groups"]["all"]["correct"] for key in ("first_candidate", "judged"))
        lines.append(f"  {name:<8} {report['prompts']} held-out prompts: first candidate {100 * first:.1f}%, "
                     f"post-selected of {report['candidates']} {100 * picked:.1f}%")
    return "\n".join(lines)


def held_out_images(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "inputs").glob("heldout_*.png"))


def held_out_captions(run_dir: Path) -> list[str]:
    return (run_dir / "inputs" / "captions.txt").read_text(encoding="utf-8").splitlines()


def overview_grid(run_dir: Path) -> Path:
    """One picture of the run (`generation.figures`): a row per prompt under the prompt, post-selection's
    pick (marked) with its super-resolved image beside it, then the other candidates, best first."""
    from PIL import Image

    from generation.figures import selection_cells, titled_rows
    from generation.outputs import read_manifest, save_png

    folder = run_dir / "samples" / "text2image"
    rows: dict[str, dict] = {}
    for record in read_manifest(folder):
        row = rows.setdefault(record["prompt_id"], {"prompt": record["prompt"], "candidates": {}, "best": None})
        if "source" in record:
            row["best"] = record
        else:
            row["candidates"][record["file"]] = record
    if not rows or any(row["best"] is None for row in rows.values()):
        raise UserError(f"{folder / 'manifest.jsonl'} lists no super-resolved pick for some prompt")

    def image(name: str) -> Image.Image:
        with Image.open(folder / name) as opened:
            return opened.convert("RGB")

    figure_rows = []
    for row in (rows[key] for key in sorted(rows)):
        candidates = sorted(row["candidates"].values(), key=lambda record: record["index"])
        files = [record["file"] for record in candidates]
        cells = selection_cells([image(name) for name in files], [record["seed"] for record in candidates],
                                [record["score"] for record in candidates], files.index(row["best"]["source"]),
                                image(row["best"]["file"]))
        figure_rows.append((row["prompt"], cells))
    path = run_dir / "overview.png"
    save_png(path, titled_rows(figure_rows, columns=max(len(cells) for _, cells in figure_rows)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/quickstart", help="folder for every output of the run")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="preprocessing worker processes")
    parser.add_argument("--train-items", type=int, default=12000, help="shapes items in the training shards")
    parser.add_argument("--vqvae-minutes", type=float, default=4.0,
                        help="VQ-VAE training budget in CPU-minutes (two threads: about 2 minutes of wall time)")
    parser.add_argument("--train-iters", type=int, default=800, help="transformer optimizer steps (batch 16)")
    parser.add_argument("--eval-prompts", type=int, default=100, help="held-out prompts evaluated per language")
    parser.add_argument("--docs-images", type=Path, default=None,
                        help="also copy the overview grid and the loss plot here (how docs/images is made)")
    parser.add_argument("--model-flags", default="--num-layers 4 --hidden-size 256 --num-attention-heads 8",
                        help="transformer size flags passed to pretrain_gpt2.py")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "prompts.txt").write_text("\n".join(PROMPTS_EN + PROMPTS_ZH) + "\n", encoding="utf-8")
    write_held_out_inputs(run_dir, count=4, size=args.image_size)
    start = time.time()
    for stage in build_stages(args):
        stage.run(run_dir)
    overview = overview_grid(run_dir)
    if args.docs_images is not None:
        args.docs_images.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(overview, args.docs_images / "quickstart_grid.png")
        shutil.copyfile(run_dir / "training_loss.png", args.docs_images / "quickstart_loss.png")
    print(f"\nquick start finished in {time.time() - start:.0f} s; everything is under {run_dir}/")
    print("images fully correct by the shapes checker (../shared/datasets/shapes.md), cfg 1.5:")
    print(accuracy_summary(run_dir))
    for label, path in [("text tokenizer", run_dir / "tokenizer" / "sp.model"), ("VQ-VAE", run_dir / "vqvae"),
                        ("token shards", run_dir / "data"), ("transformer checkpoints", run_dir / "gpt"),
                        ("text-to-image + post-selection + SR", run_dir / "samples" / "text2image"),
                        ("captions of held-out images", run_dir / "samples" / "captions"),
                        ("super-resolution", run_dir / "samples" / "super_resolution"),
                        ("overview grid", overview), ("loss plot", run_dir / "training_loss.png"),
                        ("TensorBoard logs", f"{run_dir / 'tb'} and {run_dir / 'vqvae' / 'tb'}")]:
        print(f"  {label:<38}{path}")


if __name__ == "__main__":
    run_main(main)
