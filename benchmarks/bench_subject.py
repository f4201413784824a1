"""Subject benchmark (../shared/datasets/subject.md): teach a shapes model the `sks square` from its four
instance images, by full fine-tuning, frozen parts and LoRA, each with and without prior preservation.

Example:
    python benchmarks/bench_subject.py                    # base of bench_quality.py's recipe (60 min), 3 seeds
    python benchmarks/bench_subject.py --base runs/small_shapes_model --seeds 1 --train-iters 20 \\
        --num-class-images 16 --num-prompts 6 --images-per-prompt 1 --run-dir runs/bs_smoke

1. The base model: `bench_quality.py`'s shapes stages and recipe (reused from `--base-run-dir` when that
   run exists), with two changes (`BASE_VQVAE_FLAGS`, `BASE_RECIPE`): its VQ-VAE codes 4 x 4 pixels (a
   16 x 16 grid) and sees extra objects of any colour, filled and hollow, and the transformer learns
   text-to-image and captions without super-resolution. The 8 x 8-pixel codes of bench_quality.py cannot
   encode the teal frame, so no fine-tuning on top of them could draw the subject
   (docs/tasks/subject_finetuning.md; step 2 says whether this base can). `--base` takes a model at hand.
2. Teal through the base VQ-VAE: the four instance images, all 18 (size, position) renders and the frames in
   the six shapes colours reconstructed from their codes, checked.
3. Six fine-tuning runs per seed (`finetune_subject.py`, resumable stages), sharing one cache of class images.
4. Every run and the base model measured on the same prompts and seeds (eval_utils/subject_accuracy.py):
   recontextualisation (18 prompts; the 14 unseen pairs apart), composition, property change, class
   preservation and ordinary shapes accuracy; plus fine-tuning seconds (training steps only, the class
   images exist) and the size of the saved adapter against the model's fp32 size.

Prints one table (mean over seeds, with the spread when there are several); every number is also in
`{run_dir}/results.json`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arguments import non_negative_int  # noqa: E402
from benchmarks.bench_quality import SHAPES_VOCAB_SIZE, TRAINING_LANGUAGE, Recipe, train_from_scratch  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.files import atomic_write_json, read_json  # noqa: E402
from utils.stages import Stage  # noqa: E402

if TYPE_CHECKING:
    from vqvae.model import VQVAE

# The base VQ-VAE (docs/tasks/subject_finetuning.md, "The base VQ-VAE"): 8 x 8-pixel codes split the frame's
# rim and hole between code cells and came back as blobs of blue and green (0 of 4 instance images pass the
# checker, at every variety setting tried); 4 x 4-pixel codes pass 3 of 4, 14 of 18 renders, in 3 minutes.
# Extra objects in any colour but teal, filled or hollow, teach colours and outlines shapes lacks.
BASE_VQVAE_FLAGS = ["--variety-objects", "0.5", "--downsample", "4"]
# A 16 x 16 grid makes an image 256 tokens: super-resolution's samples (two images) would cost twice that,
# and no subject measurement uses it, so the base learns text-to-image and captions only.
BASE_RECIPE = Recipe("text2image=0.8,image2text=0.2", dropout=0.0)

# What trains, and at which learning rate, in each mode (the base model has 4 layers).
MODES = {
    "full": ["--mode", "full", "--lr", "3e-4"],
    "frozen": ["--mode", "frozen", "--trainable", "embeddings,layers=2-3", "--lr", "1e-3"],
    "lora": ["--mode", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-2"],
}
COLUMNS = (("recontext", "recontext"), ("recontext_unseen", "unseen 14"), ("composition", "composition"),
           ("property", "property"), ("class", "class pres."), ("shapes", "shapes acc."))


def teal_through_vqvae(vqvae: VQVAE) -> dict:
    """Can a VQ-VAE represent the subject at all? Checker verdicts on its reconstructions of the four instance
    images and of all 18 (size, position) renders, how far the frame pixels' colour moves (RGB levels, on the
    instance images), and, to tell colour from shape, verdicts on the 18 frames drawn in each of the six
    shapes colours (the property-change prompts' pictures)."""
    import numpy as np

    from data_utils.shapes import COLOURS
    from data_utils.subject import INSTANCES, TEAL, SubjectObject, placed, recontext_prompts, render_scene
    from data_utils.subject_checker import check_subject_image
    from eval_utils.vqvae_reconstruction import reconstruct

    def passed(subjects: list[SubjectObject]) -> tuple[int, np.ndarray, np.ndarray]:
        images = np.stack([np.asarray(render_scene([placed(subject)])) for subject in subjects])
        recon, _ = reconstruct(vqvae, images)
        return sum(check_subject_image(r, [s]).correct for s, r in zip(subjects, recon)), images, recon

    instances = [SubjectObject(size, position) for size, position in INSTANCES]
    instances_passed, images, recon = passed(instances)
    errors = [np.abs(rebuilt.astype(np.int32) - np.array(TEAL))[(image == TEAL).all(axis=2)].mean()
              for image, rebuilt in zip(images, recon)]
    renders = [prompt.objects[0] for prompt in recontext_prompts()]
    coloured = [SubjectObject(s.size, s.position, colour) for colour in COLOURS for s in renders]
    return {"passed": instances_passed, "of": len(instances), "frame_error_mean": float(np.mean(errors)),
            "frame_error_max": float(np.max(errors)), "renders_passed": passed(renders)[0],
            "renders_of": len(renders), "coloured_passed": passed(coloured)[0], "coloured_of": len(coloured)}


def evaluate(pipe_loader, path: Path, settings: dict, subject_prompts: bool = True) -> dict:
    """Scores of one model, cached in `path` with the settings they were measured with."""
    from eval_utils.subject_accuracy import subject_scores

    if path.is_file() and read_json(path).get("settings") == settings:
        return read_json(path)["scores"]
    sampling = {"cfg_scale": settings["cfg_scale"], "temperature": settings["temperature"]}
    scores = subject_scores(pipe_loader(), settings["num_prompts"], settings["images_per_prompt"], settings["seed"],
                            sampling, subject_prompts)
    atomic_write_json(path, {"settings": settings, "scores": scores})
    return scores


def finetune_stage(run: Path, base: Path, instances: Path, prompts: Path, mode: str, prior: bool, seed: int,
                   args: argparse.Namespace) -> tuple[Stage, Path]:
    placed = f"-placed{args.placement_images}" if args.placement_images else ""
    save = run / f"{mode}-{'prior' if prior else 'noprior'}{placed}-s{seed}"
    prior_flags = (["--class-prompts", str(prompts), "--num-class-images", str(args.num_class_images),
                    "--class-data", str(run / "class_images")] if prior else ["--prior-loss-weight", "0"])
    argv = ["finetune_subject.py", "--base", str(base), "--instance-data", str(instances), *MODES[mode], *prior_flags,
            "--train-iters", str(args.train_iters), "--batch-size", "4", "--warmup", "0.05", "--bf16",
            "--seed", str(seed), "--save", str(save), "--save-interval", str(max(args.train_iters // 2, 1)),
            "--log-interval", "10", *(["--placement-images", str(args.placement_images)] if placed else [])]
    marker = save / "latest_checkpointed_iteration.txt"
    return Stage(save.name, argv, [save / "adapter" / "adapter_config.json"], resume_marker=marker,
                 resume_argv=["--load", str(save)]), save


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{100 * mean:5.1f}" + (f"±{100 * statistics.stdev(values):3.1f}" if len(values) > 1 else "")


def table(results: dict) -> str:
    header = (f"{'run':<16}" + "".join(f"{title:>14}" for _, title in COLUMNS)
              + f"{'train s':>9}{'saved MB':>10}{'% model':>9}")
    lines = [header]
    base = results["base"]
    lines.append(f"{'base':<16}" + "".join(f"{summary([base[key]]) if key in base else '-':>14}" for key, _ in COLUMNS))
    for name, runs in results["runs"].items():
        row = f"{name:<16}" + "".join(f"{summary([r['scores'][key] for r in runs]):>14}" for key, _ in COLUMNS)
        seconds = statistics.fmean(r["training_seconds"] for r in runs)
        megabytes = runs[0]["adapter_bytes"] / 2**20
        lines.append(row + f"{seconds:>9.1f}{megabytes:>10.2f}{100 * runs[0]['adapter_fraction']:>9.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/bench_subject")
    base_choice = parser.add_mutually_exclusive_group()
    base_choice.add_argument("--base-run-dir", default="runs/bench_subject_base",
                             help="where the base model is kept (made there when missing, reused after)")
    base_choice.add_argument("--base", metavar="PATH",
                             help="fine-tune this checkpoint instead (a shapes model, e.g. the base recipe trained for "
                                  "fewer steps, for a quick run)")
    # 60 minutes, not bench_quality.py's 30: 256-token images make a step 2.6 times as long, and the 30-minute
    # base got 37.5% of ordinary prompts right against 52.1% (docs/tasks/subject_finetuning.md, "Status").
    parser.add_argument("--budget-minutes", type=float, default=60.0,
                        help="base transformer training time (default: %(default)s)")
    parser.add_argument("--vqvae-minutes", type=float, default=5.0, help="base VQ-VAE training budget")
    parser.add_argument("--train-items", type=int, default=50000, help="shapes items of the base model's shards")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing worker processes")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning and sampling seeds 1..N")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--train-iters", type=int, default=400, help="fine-tuning steps of every run")
    parser.add_argument("--num-class-images", type=int, default=200)
    parser.add_argument("--placement-images", type=non_negative_int, default=400,
                        help="pictures of the subject moved to drawn sizes and cells (finetune_subject.py "
                             "--placement-images); 0: the four instance images alone")
    parser.add_argument("--num-prompts", type=int, default=48,
                        help="prompts of composition, property change, class preservation and shapes each")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--temperature", type=float, default=0.4)
    args = parser.parse_args()
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)

    if args.base is not None:
        base = Path(args.base)
    else:
        base = train_from_scratch(Path(args.base_run_dir) / "shapes", "shapes", BASE_RECIPE, args.budget_minutes,
                                  args.train_items, 512, vocab_size=SHAPES_VOCAB_SIZE, args=args,
                                  language=TRAINING_LANGUAGE, vqvae_flags=BASE_VQVAE_FLAGS)
    from data_utils.subject import write_subject_data

    instances, prompts = write_subject_data(run, args.num_class_images)
    from generation.pipeline import Pipeline

    def loader(*adapters: Path):
        return lambda: Pipeline.from_checkpoint(base, adapters=list(adapters))

    teal = teal_through_vqvae(loader()().vqvae)
    print(f"teal through the base VQ-VAE: {teal['passed']}/{teal['of']} reconstructed instance images pass the "
          f"checker, {teal['renders_passed']}/{teal['renders_of']} of all (size, position) renders; frame pixels "
          f"off by {teal['frame_error_mean']:.1f} RGB levels on average (worst image {teal['frame_error_max']:.1f}); "
          f"the frames in the six shapes colours: {teal['coloured_passed']}/{teal['coloured_of']} pass", flush=True)
    model_bytes = 4 * sum(p.numel() for p in loader()().model.parameters())
    results: dict = {"base_checkpoint": str(base), "teal": teal, "runs": {}}
    for seed in range(1, args.seeds + 1):
        settings = {"num_prompts": args.num_prompts, "images_per_prompt": args.images_per_prompt, "seed": seed,
                    "cfg_scale": args.cfg_scale, "temperature": args.temperature}
        base_scores = evaluate(loader(), run / f"eval-base-s{seed}.json", settings, subject_prompts=False)
        for key, value in base_scores.items():
            results.setdefault("base_by_seed", {}).setdefault(key, []).append(value)
        for mode in args.modes:
            for prior in (True, False):
                stage, save = finetune_stage(run, base, instances, prompts, mode, prior, seed, args)
                stage.run(run)
                adapter = save / "adapter"
                scores = evaluate(loader(adapter), save / "eval.json", settings)
                config = read_json(adapter / "adapter_config.json")
                size = (adapter / "adapter.safetensors").stat().st_size
                results["runs"].setdefault(f"{mode} {'+prior' if prior else 'no prior'}", []).append(
                    {"seed": seed, "scores": scores, "training_seconds": config["extra"]["training_seconds"],
                     "adapter_bytes": size, "adapter_fraction": size / model_bytes})
    results["base"] = {key: statistics.fmean(values) for key, values in results["base_by_seed"].items()}
    atomic_write_json(run / "results.json", results)
    print(f"\nsubject benchmark: base {base}, {args.seeds} seed(s), {args.train_iters} steps per run, "
          f"{args.placement_images} placement pictures, "
          f"{args.num_prompts} prompts x {args.images_per_prompt} images (recontext: 18 prompts), "
          f"cfg {args.cfg_scale:g}, temperature {args.temperature:g}; percent fully correct")
    print(table(results))


if __name__ == "__main__":
    run_main(main)
