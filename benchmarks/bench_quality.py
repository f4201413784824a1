"""Quality benchmark: train on `shapes` for a fixed time budget, then measure prompt following.

Example:
    python benchmarks/bench_quality.py                          # 30 minutes of transformer training
    python benchmarks/bench_quality.py --budget-minutes 5 --run-dir runs/bq5 --num-prompts 100
    python benchmarks/bench_quality.py --emoji-only --run-dir runs/bq_emoji
    python benchmarks/bench_quality.py --joint                  # also the joint model with the understanding tasks

The shapes run trains the recommended configuration (tokenizer, VQ-VAE, 8x8 codes, a 4-layer
transformer with the task mixture) on English and Chinese captions and evaluates held-out prompts of each
language with `evaluate.py` at several classifier-free guidance scales, each with and without post-selection,
plus captions and super-resolution. The budget is the transformer's training time: a short calibration run of the same
recipe logs its own seconds per step, and the run gets as many steps as fit (so the cosine schedule ends
where the budget does). The emoji run trains a VQ-VAE and a transformer on the real emoji images and
reports validation bits per image token and a grid of samples for held-out names. `--joint` also trains the
shapes recipe jointly with the understanding tasks (its own shards and transformer in `{run_dir}/shapes_joint`,
the shapes run's tokenizer and VQ-VAE) and reports them next to the shapes rows (see `run_joint`).

Prints one table; every number is also in `{run_dir}/eval*.json`. Stages are reused when re-run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.errors import UserError, run_main  # noqa: E402
from utils.files import atomic_write_json, read_json  # noqa: E402
from utils.stages import Stage  # noqa: E402

# Pre-LN: at this size it learns faster than CogView's Sandwich-LN (docs/results.md, "Quick start").
MODEL_FLAGS = ["--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "8", "--layernorm-order", "pre"]
BATCH_SIZE = 16
# The calibration run: its training logs seconds per step every CALIBRATION_LOG_INTERVAL steps; the first
# WARMUP_INTERVALS of them (thread pools, allocator, data workers starting) are left out. With one task per
# micro-batch a step's time depends on its task, so 16 intervals of 10 steps, whose mean is the plan.
CALIBRATION_STEPS, CALIBRATION_LOG_INTERVAL, WARMUP_INTERVALS = 180, 10, 2
# A step of this recipe on any CPU or GPU takes longer than the first and less than the second; and the
# intervals after warm-up agree within this ratio unless something else shared the machine.
PLAUSIBLE_SECONDS_PER_STEP, MAX_INTERVAL_SPREAD = (0.005, 60.0), 2.0


@dataclass(frozen=True)
class Recipe:
    """The transformer training of one benchmark dataset."""

    task_mix: str
    dropout: float  # hidden and attention dropout
    understanding_turns: int = 1  # records of one image per vqa, referring or box-to-phrase sample
    two_object_fraction: float | None = None  # shapes: the training split's share of two-object pictures

    def flags(self) -> list[str]:
        # bf16 (AMX on this machine's CPUs) nearly halves a step; lr 2e-3 beat 1e-3 and 4e-3 in 1,500-step pilots;
        # batch 16 beat 32 at equal time in the quick start's pilots. One task per micro-batch: super-resolution's
        # long samples pad only their own batches (docs/results.md).
        return ["--bf16", "--batch-size", str(BATCH_SIZE), "--lr", "2e-3", "--warmup", "0.02",
                "--one-task-per-micro-batch", "--hidden-dropout",
                f"{self.dropout:g}", "--attention-dropout", f"{self.dropout:g}", "--cfg-drop-prob", "0.1",
                "--num-workers", "1", "--task-mix", self.task_mix,
                # Row and column embeddings: super-resolution copies its condition's code at the same place,
                # one attention match with 2-D positions (docs/tasks/super_resolution.md).
                "--image-positions", "2d",
                *(["--understanding-turns", str(self.understanding_turns)] if self.understanding_turns > 1 else [])]


# Super-resolution trains its whole-image step and, with --with-highres data, the 9 magnification windows
# (half of its samples each), so it gets 0.15 where it had 0.1 before the windows. Single objects are learned
# long before pairs, so training draws 80% two-object pictures (held-out prompts keep shapes.md's half): at the
# same 8,151 steps two-object prompts post-selected 9-13% -> 17-22%, single objects 100% -> 98-100% (docs/results.md).
SHAPES = Recipe("text2image=0.65,image2text=0.2,super_resolution=0.15", dropout=0.0, two_object_fraction=0.8)
# 3,615 emoji images: without dropout, validation loss rose over the second half of a 15-minute run.
EMOJI = Recipe("text2image=0.8,image2text=0.2", dropout=0.1)


def component_stages(components: Path, dataset: str, image_size: int, vqvae_minutes: float, language: str,
                     vocab_size: int, vqvae_flags: Sequence[str] = ()) -> list[Stage]:
    """Tokenizer and VQ-VAE of one dataset under `components`; `vqvae_flags` are more `train_vqvae.py` flags
    (bench_subject.py's base: a finer grid and extra objects)."""
    tok, vq = components / "tokenizer", components / "vqvae"
    return [
        Stage("tokenizer", ["train_text_tokenizer.py", "--dataset", dataset, "--language", language,
                            "--vocab-size", str(vocab_size), "--output", str(tok / "sp")], [tok / "sp.model"]),
        Stage("vqvae", ["train_vqvae.py", "--dataset", dataset, "--image-size", str(image_size),
                        "--time-budget-minutes", str(vqvae_minutes), "--threads", "1", "--output", str(vq),
                        "--save-recon-grid", str(vq / "reconstructions.png"),
                        *vqvae_flags],
              [vq / "model.safetensors"]),
    ]


def shard_stages(run: Path, components: Path, dataset: str, image_size: int, train_items: int, val_items: int,
                 language: str, workers: int, with_lowres: bool, location_bins: int = 0,
                 two_object_fraction: float | None = None) -> list[Stage]:
    """Train/val shards under `run`, encoded with the tokenizer and VQ-VAE under `components` (low-res codes
    only for a task mix with super-resolution; location tokens only when `location_bins` is set; the training
    split's share of two-object shapes pictures when `two_object_fraction` is set, the val split's is the spec's)."""
    shards = ["--dataset", dataset, "--language", language, "--image-size", str(image_size),
              "--text-tokenizer", str(components / "tokenizer" / "sp.model"), "--vqvae", str(components / "vqvae"),
              "--text-max-tokens", "32",
              # The upsampled condition: the model sharpens a blurred copy of what it writes (+4.8 dB over `lowres`
              # in the quick start's pilot); its long samples cost little with one task per micro-batch.
              *(["--with-lowres", "--with-highres", "--sr-condition", "upsampled"] if with_lowres else []),
              *(["--location-bins", str(location_bins)] if location_bins else []), "--workers", str(workers)]
    data = run / "data"
    share = [] if two_object_fraction is None else ["--two-object-fraction", f"{two_object_fraction:g}"]
    return [
        Stage("data-train", ["preprocess_data.py", *shards, "--split", "train", "--num-items", str(train_items), *share,
                             "--output", str(data / "train")], [data / "train" / "manifest.json"]),
        Stage("data-val", ["preprocess_data.py", *shards, "--split", "val", "--num-items", str(val_items),
                           "--output", str(data / "val")], [data / "val" / "manifest.json"]),
    ]


def training_argv(run: Path, save: Path, recipe: Recipe, iterations: int, log_interval: int = 50) -> list[str]:
    return ["pretrain_gpt2.py", "--train-data", str(run / "data" / "train"), "--valid-data", str(run / "data" / "val"),
            "--save", str(save), *MODEL_FLAGS, *recipe.flags(), "--log-interval", str(log_interval),
            "--train-iters", str(iterations), "--save-interval", str(max(iterations // 4, 1)),
            "--eval-interval", str(max(iterations // 4, 1)), "--eval-iters", "4"]


def logged_seconds_per_step(tensorboard_dir: Path) -> list[float]:
    """The `train/seconds_per_step` points a training run logged (pretrain_gpt2.py), in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    if "train/seconds_per_step" not in events.Tags()["scalars"]:
        raise UserError(f"the calibration run logged no train/seconds_per_step in {tensorboard_dir}")
    return [point.value for point in sorted(events.Scalars("train/seconds_per_step"), key=lambda p: p.step)]


def plausible_seconds_per_step(intervals: list[float]) -> float:
    """The mean of the intervals after warm-up (what the whole run will average); refused (one line) when it
    cannot be a real step time."""
    timed = sorted(intervals[WARMUP_INTERVALS:])
    if not timed:
        raise UserError(f"the calibration run logged {len(intervals)} intervals, none after the warm-up")
    mean = sum(timed) / len(timed)
    low, high = PLAUSIBLE_SECONDS_PER_STEP
    if not low <= mean <= high:
        raise UserError(f"calibration measured {mean:.4f} s/step, outside the plausible {low}-{high} s; "
                        f"not planning a run on it")
    if timed[-1] > MAX_INTERVAL_SPREAD * timed[0]:
        raise UserError(f"calibration intervals disagree ({timed[0]:.3f} to {timed[-1]:.3f} s/step): something "
                        f"else is using this machine; run again when it is idle")
    return mean


def seconds_per_step(run: Path, recipe: Recipe) -> float:
    """Seconds per optimizer step of `recipe` on this machine, from a short run's own per-step timing.

    The training loop times its steps between log lines, leaving out validation and checkpoint writes;
    start-up (DeepSpeed, data workers) lies outside those intervals, so no difference of whole-process
    times is needed. The result is kept in `calibration.json` with the training flags it was measured for,
    and measured again when the recipe's flags change.
    """
    cache = run / "calibration.json"
    flags = [*MODEL_FLAGS, *recipe.flags()]
    if cache.is_file() and read_json(cache).get("flags") == flags:
        return float(read_json(cache)["seconds_per_step"])
    save = run / "calibration"
    shutil.rmtree(save, ignore_errors=True)  # an earlier recipe's, or an interrupted calibration
    argv = training_argv(run, save, recipe, CALIBRATION_STEPS, log_interval=CALIBRATION_LOG_INTERVAL)
    print(f"calibration: {CALIBRATION_STEPS} steps of the recipe", flush=True)
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if result.returncode != 0:
        raise UserError(f"the calibration run failed; run its command by hand to see why: python {' '.join(argv)}")
    intervals = logged_seconds_per_step(save / "tensorboard")
    per_step = plausible_seconds_per_step(intervals)
    atomic_write_json(cache, {"seconds_per_step": per_step, "intervals": intervals, "flags": flags})
    return per_step


def trained_stage(run: Path, recipe: Recipe, budget_minutes: float) -> tuple[Stage, Path]:
    """The training stage for the budget, saving to `gpt-{steps}`: runs of different budgets share the
    run folder's tokenizer, VQ-VAE, shards and calibration, and never resume each other."""
    per_step = seconds_per_step(run, recipe)
    iterations = max(int(budget_minutes * 60 / per_step), 10)
    print(f"calibration: {per_step:.2f} s/step -> {iterations} steps fit {budget_minutes:g} minutes", flush=True)
    gpt = run / f"gpt-{iterations}"
    stage = Stage(f"transformer-{iterations}", training_argv(run, gpt, recipe, iterations),
                  [gpt / "latest_checkpointed_iteration.txt"],
                  resume_marker=gpt / "latest_checkpointed_iteration.txt", resume_argv=["--load", str(gpt)])
    return stage, gpt


def train_from_scratch(run: Path, dataset: str, recipe: Recipe, budget_minutes: float, train_items: int,
                       val_items: int, vocab_size: int, args: argparse.Namespace, language: str = "en",
                       location_bins: int = 0, components: Path | None = None,
                       vqvae_flags: Sequence[str] = ()) -> Path:
    """Tokenizer, VQ-VAE, shards and a transformer trained for the budget; returns its save folder. The
    tokenizer and VQ-VAE live in `components` (made there if missing; default `run`), so two runs can share
    them; `vqvae_flags` as in `component_stages`."""
    components = components or run
    for stage in component_stages(components, dataset, 64, args.vqvae_minutes, language, vocab_size, vqvae_flags):
        stage.run(components)
    for stage in shard_stages(run, components, dataset, 64, train_items, val_items, language, args.workers,
                              with_lowres="super_resolution" in recipe.task_mix, location_bins=location_bins,
                              two_object_fraction=recipe.two_object_fraction):
        stage.run(run)
    stage, gpt = trained_stage(run, recipe, budget_minutes)
    stage.run(run)
    return gpt


def row(label: str, groups: dict) -> str:
    """One table row: single-object, two-object and overall accuracy."""
    return (f"{label:<32}{groups['1 object']['correct']:>10.3f}{groups['2 objects']['correct']:>11.3f}"
            f"{groups['all']['correct']:>8.3f}")


def shapes_table(report: dict, cfg_scales: list[float], candidates: int) -> str:
    """Text-to-image: one row per (guidance scale, selection)."""
    lines = [f"{'cfg scale':<10}{'selection':<22}{'1 object':>10}{'2 objects':>11}{'all':>8}"]
    for scale in cfg_scales:
        found = report["sections"]["t2i"]["by_cfg_scale"][f"{scale:g}"]
        for label, key in (("first candidate", "first_candidate"), (f"best of {candidates}", "judged")):
            lines.append(row(f"{scale:<10g}{label}", found[key]["groups"]))
    return "\n".join(lines)


# The shapes runs train on captions in both languages and are scored in each.
TRAINING_LANGUAGE, SCORED_LANGUAGES = "both", ("en", "zh")
# Both languages' captions in 480 pieces keep every English word whole but "in"; at 400 "green" and "center"
# split into 3 and 4 pieces (train_text_tokenizer.py prints a sample of each).
SHAPES_VOCAB_SIZE = 480


def shapes_evaluation(run: Path, gpt: Path, args: argparse.Namespace, language: str) -> dict:
    """The shapes evaluation of `gpt` on held-out prompts in `language`, kept in
    `{run}/eval-{gpt.name}-{language}.json`; returns its report. Text-to-image in each language; captions,
    super-resolution and bits per token only with English, as the prompt language does not reach them (a
    caption's language is the model's choice, and both languages' held-out images are the same pictures)."""
    output = run / f"eval-{gpt.name}-{language}.json"
    per_language = ["--sections", "t2i,caption,sr,bpt", "--valid-data", str(run / "data" / "val"),
                    "--caption-candidates", str(args.caption_candidates)] if language == "en" else ["--sections", "t2i"]
    Stage(f"evaluate-{gpt.name}-{language}", [
        "evaluate.py", "--load", str(gpt), "--dataset", "shapes", "--language", language, *per_language,
        "--num-prompts", str(args.num_prompts), "--temperature", f"{args.temperature:g}",
        "--cfg-scale", *(f"{s:g}" for s in args.cfg_scales), "--candidates", str(args.candidates), "--post-select",
        "--output-json", str(output)], [output]).run(run)
    return json.loads(output.read_text(encoding="utf-8"))


def print_shapes_reports(reports: dict[str, dict], args: argparse.Namespace) -> None:
    """The text-to-image table of each language, then captions and super-resolution (measured once)."""
    for language, report in reports.items():
        print(f"\ntext-to-image, {language} prompts")
        print(shapes_table(report, args.cfg_scales, args.candidates))
    caption = reports["en"]["sections"]["caption"]
    print("\ncaptions (in the language the model picks)")
    print(row("greedy", caption["groups"]))
    print(row(f"best of {args.caption_candidates}", caption["reranked"]["groups"]))
    sr = reports["en"]["sections"]["sr"]
    print(f"super-resolution PSNR {sr['psnr']:.2f} dB vs bicubic {sr['bicubic_psnr']:.2f} dB "
          f"({sr['gain_over_bicubic']:+.2f} dB); the checker accepts {sr['checker_output']:.3f} of them, "
          f"{sr['checker_input']:.3f} of their inputs")
    if "copy_psnr" in sr:
        print(f"  its condition copied as it is: {sr['copy_psnr']:.2f} dB, checker {sr['checker_copy']:.3f}")


def run_shapes(args: argparse.Namespace) -> dict[str, dict]:
    run = Path(args.run_dir) / "shapes"
    gpt = train_from_scratch(run, "shapes", SHAPES, args.budget_minutes, args.train_items, 512,
                             vocab_size=SHAPES_VOCAB_SIZE, args=args, language=TRAINING_LANGUAGE)
    reports = {language: shapes_evaluation(run, gpt, args, language) for language in SCORED_LANGUAGES}
    steps = reports["en"]["checkpoint"]["iteration"]
    print(f"\nshapes, {steps} steps of batch {BATCH_SIZE} ({args.budget_minutes:g} min), "
          f"{SHAPES.two_object_fraction:.0%} two-object training pictures, {args.num_prompts} held-out prompts "
          f"per language (half two-object), temperature {args.temperature:g}")
    print_shapes_reports(reports, args)
    return reports


# ---------------------------------------------------------------- --joint: the understanding tasks in the same model
# The shapes recipe with the understanding tasks added: SHAPES's tasks keep their proportions in 0.7 of the
# samples (text-to-image stays the largest share, as its accuracy must stay within 2 points of the shapes run;
# derived, so a change of SHAPES carries over), the understanding tasks get 0.3. vqa gets the largest of it,
# having the most distinct answers to learn (7 question types in 2 languages); grounded captions, referring
# expressions and box to phrase all read and write the same location tokens, so they teach each other and
# share the rest evenly.
UNDERSTANDING_MIX = {"vqa": 0.12, "grounded_caption": 0.06, "referring": 0.06, "box_to_phrase": 0.06}


def joint_task_mix(shapes_mix: str) -> str:
    """`shapes_mix` scaled to leave room for UNDERSTANDING_MIX, with it appended."""
    keep = 1 - sum(UNDERSTANDING_MIX.values())
    weights = {name: keep * float(w) for name, w in (part.split("=") for part in shapes_mix.split(","))}
    return ",".join(f"{name}={w:g}" for name, w in {**weights, **UNDERSTANDING_MIX}.items())


# Up to 4 questions, expressions or boxes of one image per sample: in 1,500-step pilots of this mix (100 held-out
# items per language) VQA rose from 0.49 / 0.37 to 0.56 / 0.49 (en / zh), grounded objects from 0.13 to 0.33, box
# to phrase from 0.19 to 0.30 and referring from 0.63 to 0.65; halving the understanding share with 4 turns lost
# more than the turns gained (VQA 0.42 / 0.35, docs/results.md).
JOINT = Recipe(joint_task_mix(SHAPES.task_mix), dropout=SHAPES.dropout, understanding_turns=4,
               two_object_fraction=SHAPES.two_object_fraction)
JOINT_LOCATION_BINS = 32  # a 32 x 32 grid: 2-pixel cells on the 64 px canvas, finer than any box's jitter
JOINT_SECTIONS = "retrieval,attention,vqa,grounding,referring"  # per language; t2i, caption, sr, bpt in English


def understanding_table(report: dict) -> str:
    """The understanding sections of the joint model, one row per language."""
    sections = report["sections"]
    lines = [f"{'language':<10}{'VQA':>7}" + "".join(f"{f'Q{k}':>7}" for k in range(1, 8)) +
             f"{'grounded':>10}{'box->phr':>10}{'referring':>11}{'R@1 t->i':>10}{'R@1 i->t':>10}{'attn x':>8}"]
    for language, vqa in sections["vqa"].items():
        retrieval = sections["retrieval"][language]
        lines.append(f"{language:<10}{vqa['accuracy']:>7.3f}" + "".join(
            f"{vqa.get(f'type_{k}', float('nan')):>7.3f}" for k in range(1, 8)) +
            f"{sections['grounding'][language]['grounded']:>10.3f}"
            f"{sections['grounding'][language]['box_to_phrase']:>10.3f}"
            f"{sections['referring'][language]['accuracy']:>11.3f}{retrieval['text_to_image_r@1']:>10.3f}"
            f"{retrieval['image_to_text_r@1']:>10.3f}{sections['attention'][language]['ratio']:>8.2f}")
    return "\n".join(lines)


def run_joint(args: argparse.Namespace, shapes_reports: dict[str, dict]) -> None:
    """Train JOINT in `{run_dir}/shapes_joint`, evaluate it as the shapes run is evaluated plus the
    understanding sections (English and Chinese), and print its rows next to the shapes rows."""
    run = Path(args.run_dir) / "shapes_joint"
    # The shapes run's tokenizer and VQ-VAE (the same image codes: the comparison is of the task mix alone),
    # shards with location tokens, then the JOINT transformer.
    gpt = train_from_scratch(run, "shapes", JOINT, args.budget_minutes, args.train_items, 512,
                             vocab_size=SHAPES_VOCAB_SIZE, args=args, language=TRAINING_LANGUAGE,
                             location_bins=JOINT_LOCATION_BINS, components=Path(args.run_dir) / "shapes")
    reports = {language: shapes_evaluation(run, gpt, args, language) for language in SCORED_LANGUAGES}
    both = run / f"eval-understanding-{gpt.name}.json"
    # Retrieval's target is on 100 pairs; --num-prompts below 200 (a dry run) shrinks it with the rest.
    Stage(f"evaluate-understanding-{gpt.name}", [
        "evaluate.py", "--load", str(gpt), "--dataset", "shapes", "--language", TRAINING_LANGUAGE,
        "--sections", JOINT_SECTIONS, "--num-prompts", str(args.num_prompts),
        "--retrieval-pairs", str(max(min(100, args.num_prompts // 2), 2)), "--output-json", str(both)],
        [both]).run(run)
    understanding = json.loads(both.read_text(encoding="utf-8"))
    print(f"\nshapes + understanding tasks ({JOINT.task_mix}; up to {JOINT.understanding_turns} questions, "
          f"expressions or boxes per sample), {reports['en']['checkpoint']['iteration']} steps "
          f"({args.budget_minutes:g} min), {JOINT_LOCATION_BINS}x{JOINT_LOCATION_BINS} location bins")
    print_shapes_reports(reports, args)
    print("\ntext-to-image, all held-out prompts, best candidate: shapes vs shapes + understanding")
    for language in SCORED_LANGUAGES:
        for scale in args.cfg_scales:
            key = f"{scale:g}"
            alone, joint = (r[language]["sections"]["t2i"]["by_cfg_scale"][key]["judged"]["groups"]["all"]["correct"]
                            for r in (shapes_reports, reports))
            print(f"{language}  cfg {key:<6}{alone:>8.3f}{joint:>8.3f}  ({100 * (joint - alone):+.1f} points)")
    print(f"\nunderstanding ({args.num_prompts} held-out items per language; attn x = attention mass in the box "
          f"over the box's area share)")
    print(understanding_table(understanding))


def held_out_names(path: Path, count: int) -> list[str]:
    """The first `count` captions of the emoji validation split (never seen in training), as prompts."""
    from data_utils.image_sources import open_dataset

    source = open_dataset("emoji", split="val", size=64)
    names = [source.caption(index) for index in range(min(count, len(source)))]
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return names


def heldout_overview(samples: Path, output: Path) -> None:
    """One picture of the samples of every held-out name, a row each under its name (from the manifest
    generate_samples.py wrote), drawn by generation.figures like every other grid."""
    from PIL import Image

    from generation.figures import Cell, titled_rows
    from generation.outputs import save_png

    rows: dict[str, list[Cell]] = {}
    for line in (samples / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        with Image.open(samples / record["file"]) as image:
            rows.setdefault(record["prompt"], []).append(Cell(image.convert("RGB"), (f"seed {record['seed']}",)))
    picture = titled_rows(list(rows.items()), columns=max(len(cells) for cells in rows.values()))
    save_png(output, picture, {"samples": str(samples)})
    print(f"held-out samples: {output}")


def run_emoji(args: argparse.Namespace) -> None:
    run = Path(args.run_dir) / "emoji"
    gpt = train_from_scratch(run, "emoji", EMOJI, args.emoji_budget_minutes,
                             10**6, 10**6, vocab_size=2000, args=args)
    output = run / f"eval-{gpt.name}.json"
    Stage(f"evaluate-{gpt.name}", ["evaluate.py", "--load", str(gpt), "--dataset", "emoji", "--sections", "bpt,vqvae",
                                   "--valid-data", str(run / "data" / "val"), "--output-json", str(output)],
          [output]).run(run)
    names = held_out_names(run / "heldout_names.txt", count=8)
    samples = run / f"samples-{gpt.name}"
    Stage(f"samples-{gpt.name}", ["generate_samples.py", "--load", str(gpt), "--input-source",
                                  str(run / "heldout_names.txt"), "--batch-size", "4", "--cfg-scale", "3",
                                  "--output-path", str(samples)], [samples / "manifest.jsonl"]).run(run)
    overview = run / f"heldout_samples-{gpt.name}.png"
    heldout_overview(samples, overview)
    report = json.loads(output.read_text(encoding="utf-8"))
    bpt = report["sections"]["bpt"]
    print(f"\nemoji, {report['checkpoint']['iteration']} steps: validation bits per image token "
          f"{bpt['image_bits']:.3f}, per text token {bpt['text_bits']:.3f}; samples for {len(names)} held-out "
          f"names in {samples}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/bench_quality")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="shapes transformer training time")
    parser.add_argument("--vqvae-minutes", type=float, default=5.0, help="VQ-VAE training budget (CPU minutes)")
    parser.add_argument("--train-items", type=int, default=50000, help="shapes items in the training shards")
    parser.add_argument("--num-prompts", type=int, default=200, help="held-out prompts evaluated")
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--temperature", type=float, default=0.4,
                        help="sampling temperature of the shapes evaluation (docs/results.md has the sweep)")
    parser.add_argument("--candidates", type=int, default=8, help="candidates per prompt for post-selection")
    parser.add_argument("--caption-candidates", type=int, default=16,
                        help="sampled captions per image, of which the one agreeing best with the image is judged")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing worker processes")
    parser.add_argument("--emoji", action="store_true", help="also run the emoji benchmark")
    parser.add_argument("--emoji-only", action="store_true", help="run only the emoji benchmark")
    parser.add_argument("--emoji-budget-minutes", type=float, default=15.0)
    parser.add_argument("--joint", action="store_true",
                        help="also train and evaluate the shapes recipe jointly with the understanding tasks")
    args = parser.parse_args()
    if args.joint and args.emoji_only:
        raise UserError("--joint compares with the shapes run, which --emoji-only leaves out")
    if not args.emoji_only:
        shapes_reports = run_shapes(args)
        if args.joint:
            run_joint(args, shapes_reports)
    if args.emoji or args.emoji_only:
        run_emoji(args)


if __name__ == "__main__":
    run_main(main)
