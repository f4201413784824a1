"""generate_samples.py refuses every flag the chosen task would not read, even given at its default value,
before it loads a model (the checkpoint in these tests does not exist: a refusal must come first)."""
import argparse

import pytest

import generate_samples
from arguments import add_generation_args, given_flags, parse_noting_given
from tests.test_generation_cli import start_cli
from utils.errors import UserError

# A value for each flag; where the flag has a default, its default (the old "differs from the default"
# test missed exactly these).
VALUES = {"prompt": "a red circle", "input-source": "prompts.txt", "negative-prompt": "blue",
          "input-images": "images", "batch-size": "4", "seed": "0", "temperature": "1.0", "top-k": "200",
          "top-p": "1.0", "cfg-scale": "1.0", "max-caption-tokens": "5", "caption-candidates": "1",
          "caption-model": "other_run", "post-selection-score": "agreement", "image-grid": "16x32",
          "question": "what colour is the circle?"}

# The audit of every task-specific flag against every task (docs/generation.md): what each task ignores.
REFUSED = {
    "text2image": ["input-images", "max-caption-tokens", "caption-candidates", "caption-model",
                   "post-selection-score", "question"],
    "text2image-full": ["input-images", "max-caption-tokens", "caption-candidates", "image-grid", "question"],
    "image2text": ["prompt", "input-source", "negative-prompt", "cfg-scale", "batch-size", "image-grid", "question"],
    "post-selection": ["negative-prompt", "cfg-scale", "batch-size", "seed", "temperature", "top-k", "top-p",
                       "max-caption-tokens", "caption-candidates", "image-grid", "question"],
    "super-resolution": ["negative-prompt", "cfg-scale", "batch-size", "max-caption-tokens", "caption-candidates",
                         "caption-model", "post-selection-score", "image-grid", "question"],
    # Greedy decoding: no sampling flag is read.
    **{task: ["negative-prompt", "cfg-scale", "batch-size", "seed", "temperature", "top-k", "top-p",
              "max-caption-tokens", "caption-candidates", "caption-model", "post-selection-score", "image-grid",
              *extra] for task, extra in (("vqa", ["prompt"]), ("grounded-caption", ["prompt", "input-source",
                                                                                      "question"]),
                                          ("grounding", ["input-source", "question"]))},
    "retrieval": ["negative-prompt", "cfg-scale", "batch-size", "seed", "temperature", "top-k", "top-p",
                  "max-caption-tokens", "caption-candidates", "post-selection-score", "image-grid", "question"],
    "attention-map": ["negative-prompt", "cfg-scale", "batch-size", "seed", "temperature", "top-k", "top-p",
                      "max-caption-tokens", "caption-candidates", "post-selection-score", "image-grid", "question"],
}
# Flags every task reads: the checkpoint, its adapters and its parts, devices, batching and where outputs go.
READ_BY_EVERY_TASK = {"load", "adapter", "generation_task", "max_inference_batch_size", "text_tokenizer", "vqvae",
                      "device", "precision", "attention_backend", "layernorm_order", "pb_relax", "pb_relax_alpha",
                      "output_path", "tensorboard_dir"}


def parse(*argv: str) -> argparse.Namespace:
    return parse_noting_given(add_generation_args(argparse.ArgumentParser()), ["--load", "no_such_run", *argv])


@pytest.mark.parametrize("task, flag", [(task, flag) for task, flags in REFUSED.items() for flag in flags])
def test_a_flag_the_task_does_not_read_is_refused(task, flag, tmp_path):
    with pytest.raises(UserError, match=f"^--{flag} is not used by --generation-task {task} "):
        generate_samples.main(["--load", str(tmp_path / "no_such_run"), "--generation-task", task,
                               f"--{flag}", VALUES[flag]])


@pytest.mark.parametrize("task", sorted(REFUSED))
def test_the_flags_a_task_reads_are_accepted(task):
    readable = [flag for flag in VALUES if flag not in REFUSED[task]]
    argv = [part for flag in readable for part in (f"--{flag}", VALUES[flag])]
    if task == "image2text":
        argv[argv.index("--caption-candidates") + 1] = "2"  # --caption-model and the score match candidates
    if task in ("text2image", "text2image-full"):
        argv[argv.index("--cfg-scale") + 1] = "2"  # --negative-prompt is the unconditional branch of guidance
    if task == "vqa":  # --question about --input-images, or the questions of --input-source: one of the two
        del argv[argv.index("--input-source"):argv.index("--input-source") + 2]
    generate_samples.check_flags(parse("--generation-task", task, *argv))


def test_every_flag_is_audited():
    dests = set(vars(parse("--prompt", "x")))
    assert dests - {"given_flags"} == set(generate_samples.FLAG_READERS) | READ_BY_EVERY_TASK
    assert {flag.replace("-", "_") for flag in VALUES} == set(generate_samples.FLAG_READERS)


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "x", "--negative-prompt", "y"], "--negative-prompt needs --cfg-scale other than 1"),
    (["--prompt", "x", "--negative-prompt", "y", "--cfg-scale", "1"], "--negative-prompt needs --cfg-scale"),
    (["--generation-task", "image2text", "--input-images", "d", "--caption-model", "m"],
     "--caption-model matches caption candidates"),
    (["--generation-task", "image2text", "--input-images", "d", "--post-selection-score", "agreement"],
     "--post-selection-score matches caption candidates"),
])
def test_flags_other_flags_leave_unread_are_refused(argv, message):
    with pytest.raises(UserError, match=message):
        generate_samples.check_flags(parse(*argv))


def test_given_flags_sees_repeated_and_default_valued_flags():
    parser = add_generation_args(argparse.ArgumentParser())
    argv = ["--load", "run", "--prompt", "a", "--prompt", "b", "--seed", "0"]
    assert given_flags(parser, argv) == {"load", "prompt", "seed"}
    args = parser.parse_args(argv)  # and the parser's own defaults are left as they were
    assert args.prompt == ["a", "b"] and args.top_k == 200 and args.input_images is None


def test_a_refusal_exits_2_with_one_line(tmp_path):
    process = start_cli("--load", tmp_path / "no_such_run", "--generation-task", "post-selection", "--seed", "0",
                        "--prompt", "x", "--input-images", tmp_path)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 2, stderr
    assert stderr.strip().splitlines() == ["error: --seed is not used by --generation-task post-selection "
                                           "(only by text2image, text2image-full, image2text, super-resolution)"]
