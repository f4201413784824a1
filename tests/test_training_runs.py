"""`pretrain_gpt2.py` and `export_model.py` end to end, as subprocesses on CPU (gloo, loopback).

- a killed run (SIGKILL from outside, or at either step of a checkpoint write) resumes to weights that are
  bit-identical to an uninterrupted run, and a kill during a write leaves the previous checkpoint loadable;
- 2 processes with ZeRO-2 and ZeRO-3 follow the loss curve of 1 process with the same global batch, and
  the tiny model overfits its data;
- an export of the ZeRO-3 checkpoint reproduces the trained engine's validation loss;
- a contradicting model flag at --load is a one-line error with exit status 2.

DeepSpeed compiles a small CPU communication op on its very first run (about a minute, cached after).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_utils.dataset import TaskSequenceDataset
from data_utils.image_sources import open_dataset
from data_utils.shards import FORMAT_VERSION, RowFormat, ShardedRows, write_manifest, write_shard
from data_utils.text_tokenizer import train_sentencepiece
from data_utils.tokenizer import UnifiedTokenizer
from checkpoints.trackers import DEEPSPEED_LATEST_FILE, read_latest_iteration
from model.checkpoint import load_model_for_inference
from training.checkpointing import TEMP_PREFIX
from training.data import validation_batches
from training.loss import SUM_FIELDS, next_token_loss, summarize

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK, TEXT_MAX, GRID = 64, 8, 4
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4"]
TIMEOUT = 300  # the first DeepSpeed run compiles its CPU communication op


# ---------------------------------------------------------------- data and runs

def write_data(folder: Path, tokenizer: UnifiedTokenizer, num_rows: int, seed: int) -> Path:
    """Shapes captions with random image codes, as preprocess_data.py would lay them out."""
    row_format = RowFormat(TEXT_MAX, GRID, None, RowFormat.dtype_for_vocab(tokenizer.vocab_size))
    source = open_dataset("shapes", num_items=num_rows, seed=seed)
    rng = np.random.default_rng(seed)
    rows = np.stack([row_format.pack(np.array(tokenizer.encode_text(source.caption(i), TEXT_MAX)),
                                     rng.integers(0, CODEBOOK, (GRID, GRID)), None, tokenizer.pad_id)
                     for i in range(num_rows)])
    shard = write_shard(folder, 0, rows, np.arange(num_rows), row_format)
    write_manifest(folder, {"format_version": FORMAT_VERSION, **row_format.to_dict(), "tokenizer": tokenizer.describe(),
                            "vqvae": {"path": "vqvae", "fingerprint": "0123456789abcdef"}, "num_chunks": 1,
                            "complete": True, "shards": [shard]})
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("data")
    source = open_dataset("shapes", num_items=300)
    sp_model = train_sentencepiece((source.caption(i) for i in range(len(source))), root / "sp", 300)
    tokenizer = UnifiedTokenizer.from_files(sp_model, CODEBOOK)
    return SimpleNamespace(tokenizer=tokenizer, train=write_data(root / "train", tokenizer, 32, seed=1),
                           valid=write_data(root / "valid", tokenizer, 8, seed=2),
                           small=write_data(root / "small", tokenizer, 4, seed=3))


def command(data_dir: Path, save: Path, iters: int, *extra: str, processes: int = 1) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*(launcher if processes > 1 else [sys.executable]), "pretrain_gpt2.py", "--train-data", str(data_dir),
            *MODEL, "--train-iters", str(iters), "--save", str(save), "--log-interval", "1", *extra]


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=TIMEOUT)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(save: Path, iteration: int) -> dict[str, torch.Tensor]:
    return torch.load(save / str(iteration) / "mp_rank_00_model_states.pt", map_location="cpu",
                      weights_only=False)["module"]


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max().item()}"


def scalars(log_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


# ---------------------------------------------------------------- kill and resume

RESUME_ITERS = 30
# dropout stays on (the RNG must be restored), a worker process prepares the batches, ZeRO-1 (default)
RESUME_FLAGS = ("--save-interval", "3", "--task-mix", "text2image=0.6,image2text=0.4", "--batch-size", "2",
                "--gradient-accumulation-steps", "2", "--warmup", "0.1", "--num-workers", "1")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict[str, torch.Tensor]:
    save = tmp_path_factory.mktemp("uninterrupted")
    ok(run(command(data.train, save, RESUME_ITERS, *RESUME_FLAGS)))
    return weights(save, RESUME_ITERS)


def resume(data, save: Path) -> None:
    ok(run(command(data.train, save, RESUME_ITERS, *RESUME_FLAGS, "--load", str(save))))
    assert not [p for p in save.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert read_latest_iteration(save) == RESUME_ITERS


def test_sigkill_then_resume_is_bit_identical(data, uninterrupted, tmp_path):
    save = tmp_path / "run"
    process = subprocess.Popen(command(data.train, save, RESUME_ITERS, *RESUME_FLAGS), cwd=ROOT,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in process.stderr:  # the log names each checkpoint once it is complete
            if f"saved checkpoint {save / '3'}" in line:
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=TIMEOUT)
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 3 <= read_latest_iteration(save) < RESUME_ITERS
    resume(data, save)
    assert_bit_identical(weights(save, RESUME_ITERS), uninterrupted)


@pytest.mark.parametrize("step", ["before-rename", "before-tracker"])
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(data, uninterrupted, tmp_path, step):
    save = tmp_path / "run"
    pretrain = command(data.train, save, RESUME_ITERS, *RESUME_FLAGS)
    killed = run([sys.executable, str(ROOT / "tests" / "kill_during_checkpoint_write.py"), step, "6", *pretrain[2:]])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # the write of iteration 6 got as far as `step`; both trackers still name iteration 3
    assert (save / f"{TEMP_PREFIX}6").is_dir() == (step == "before-rename")
    assert (save / "6").is_dir() == (step == "before-tracker")
    assert read_latest_iteration(save) == 3 and (save / DEEPSPEED_LATEST_FILE).read_text() == "3"
    model, metadata = load_model_for_inference(save)  # loadable as it is, no repair step
    assert model.config.num_layers == 2 and metadata["tokenizer"]["fingerprint"] == data.tokenizer.fingerprint()
    assert metadata["data"]["tasks"] == ["text2image", "image2text"]  # RESUME_FLAGS' task mix, for evaluate.py
    resume(data, save)
    assert_bit_identical(weights(save, RESUME_ITERS), uninterrupted)


# ---------------------------------------------------------------- processes and ZeRO stages

CURVE_ITERS = 40
CURVE_FLAGS = ("--task-mix", "text2image=0.5,image2text=0.5", "--cfg-drop-prob", "0", "--hidden-dropout", "0",
               "--attention-dropout", "0", "--lr", "1e-2", "--lr-decay-style", "constant", "--warmup", "0.1",
               "--batch-size", "2", "--num-workers", "0")


@pytest.fixture(scope="module")
def curves(data, tmp_path_factory) -> SimpleNamespace:
    """The same 40 steps (global batch 4 of the 4-row data) as 1 process x 2 accumulation steps at
    ZeRO-0, and as 2 processes at ZeRO-2 and ZeRO-3 (this one also validated and saved). Without
    dropout the runs differ only in the order of floating-point sums."""
    root = tmp_path_factory.mktemp("curves")
    ok(run(command(data.small, root / "single", CURVE_ITERS, *CURVE_FLAGS, "--gradient-accumulation-steps", "2",
                   "--zero-stage", "0")))
    ok(run(command(data.small, root / "zero2", CURVE_ITERS, *CURVE_FLAGS, "--zero-stage", "2", processes=2)))
    ok(run(command(data.small, root / "zero3", CURVE_ITERS, *CURVE_FLAGS, "--zero-stage", "3", "--valid-data",
                   str(data.valid), "--eval-iters", "2", processes=2)))
    return SimpleNamespace(root=root, **{name: scalars(root / name / "tensorboard", "train/loss")
                                         for name in ("single", "zero2", "zero3")})


def test_two_processes_with_zero_2_and_3_follow_the_single_process_curve(curves):
    assert sorted(curves.single) == list(range(1, CURVE_ITERS + 1))
    for stage in ("zero2", "zero3"):
        curve = getattr(curves, stage)
        assert curve.keys() == curves.single.keys()
        for step, loss in curves.single.items():
            assert curve[step] == pytest.approx(loss, rel=1e-4), f"{stage} at step {step}"
    # and the tiny model overfits its 4 rows: far below the 4.16 nats of guessing among 64 codes
    assert curves.single[1] > 5.5 and curves.single[CURVE_ITERS] < 2.5


def test_export_of_a_zero3_checkpoint_reproduces_the_trained_model(curves, data, tmp_path):
    save = curves.root / "zero3"
    assert not (save / str(CURVE_ITERS) / "mp_rank_00_model_states.pt").exists()  # weights only in shards
    ok(run([sys.executable, "export_model.py", "--load", str(save), "--output", str(tmp_path / "export")]))
    exported, metadata = load_model_for_inference(tmp_path / "export")
    assert metadata["tokenizer"]["fingerprint"] == data.tokenizer.fingerprint()
    direct, _ = load_model_for_inference(save)  # generation loads the ZeRO-3 folder itself just the same
    assert_bit_identical(exported.state_dict(), direct.state_dict())
    # The engine's own validation loss at the last step, recomputed from the exported weights on the
    # same fixed positions (both ranks' shares).
    engine_loss = scalars(save / "tensorboard", "valid/loss")[CURVE_ITERS]
    tokenizer = data.tokenizer
    rows = ShardedRows(data.valid, tokenizer=tokenizer)
    sums = torch.zeros(len(SUM_FIELDS), dtype=torch.float64)
    with torch.no_grad():
        for task in ("text2image", "image2text"):
            dataset = TaskSequenceDataset(rows, tokenizer, {task: 1.0}, seed=1234)
            for rank in range(2):
                for batch in validation_batches(dataset, 2, 2, 2, rank, tokenizer.pad_id):
                    ids, positions = batch["input_ids"], batch["position_ids"]
                    logits = exported(ids[:, :-1], positions[:, :-1])
                    sums += next_token_loss(logits, ids[:, 1:], tokenizer.pad_id, CODEBOOK, 1.0).sums
    assert summarize(sums)["loss"] == pytest.approx(engine_loss, rel=1e-5)


def test_model_flag_contradicting_the_checkpoint_is_one_line_exit_2(curves, data):
    save = curves.root / "zero3"
    result = run(command(data.small, save, CURVE_ITERS + 1, "--load", str(save), "--num-layers", "3"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --num-layers 3 contradicts the checkpoint in {save / str(CURVE_ITERS)} (num_layers=2); "
        "drop the flag to resume, or start a new run")
    assert read_latest_iteration(save) == CURVE_ITERS  # untouched


def test_each_log_line_times_its_optimizer_steps(curves):
    """`train/seconds_per_step`, which bench_quality.py plans its budget with, is logged at every log line
    and is what benchmarks/bench_quality.py reads back."""
    from benchmarks.bench_quality import logged_seconds_per_step

    timed = scalars(curves.root / "single" / "tensorboard", "train/seconds_per_step")
    assert sorted(timed) == sorted(curves.single)
    assert all(0 < seconds < 60 for seconds in timed.values())
    assert logged_seconds_per_step(curves.root / "single" / "tensorboard") == [timed[step] for step in sorted(timed)]
