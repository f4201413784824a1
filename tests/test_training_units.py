"""Training pieces without a DeepSpeed run: lr schedule, parameter groups, loss, data positions, flags,
DeepSpeed config merging and checkpoint folder bookkeeping."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from arguments import check_flags_match_config, model_config_from_args, parse_training_args
from model.config import ModelConfig
from model.gpt import CogViewGPT
from checkpoints.trackers import DEEPSPEED_LATEST_FILE, TRACKER_FILE, read_latest_iteration, write_latest_iteration
from training.checkpointing import TEMP_PREFIX, remove_stale_temporaries
from training.data import MicroBatchPositions
from training.ds_config import build_deepspeed_config
from training.loss import next_token_loss, summarize
from training.lr_schedule import LRSchedule, WarmupDecayScheduler
from training.optim import ADAM_BETAS, build_optimizer, param_groups
from utils.errors import UserError

REQUIRED = ["--train-data", "data", "--train-iters", "100"]


def tiny_model(layernorm_order: str = "sandwich") -> CogViewGPT:
    return CogViewGPT(ModelConfig(vocab_size=96, num_layers=2, hidden_size=16, num_attention_heads=2,
                                  max_position_embeddings=12, layernorm_order=layernorm_order))


# ---------------------------------------------------------------- lr schedule

def test_cosine_schedule_warms_up_linearly_then_decays_to_the_floor():
    schedule = LRSchedule(lr=1.0, total_steps=1000, warmup_fraction=0.1, min_lr_ratio=0.1)
    assert schedule.warmup_steps == 100
    assert schedule.lr_at(0) == pytest.approx(0.01) and schedule.lr_at(49) == pytest.approx(0.5)
    assert schedule.lr_at(99) == pytest.approx(1.0) and schedule.lr_at(100) == pytest.approx(1.0)
    assert schedule.lr_at(550) == pytest.approx(0.55)  # half-way through the decay: the mean of 1 and 0.1
    assert schedule.lr_at(1000) == pytest.approx(0.1) and schedule.lr_at(5000) == pytest.approx(0.1)
    decay = [schedule.lr_at(step) for step in range(100, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    # cosine: slow at both ends, fastest in the middle
    assert decay[0] - decay[45] < decay[428] - decay[473]


def test_linear_and_constant_styles():
    linear = LRSchedule(lr=2.0, total_steps=10, warmup_fraction=0.0, min_lr_ratio=0.5, decay_style="linear")
    assert [linear.lr_at(s) for s in (0, 5, 10)] == pytest.approx([2.0, 1.5, 1.0])
    constant = LRSchedule(lr=2.0, total_steps=10, warmup_fraction=0.2, decay_style="constant")
    assert [constant.lr_at(s) for s in (0, 1, 2, 9)] == pytest.approx([1.0, 2.0, 2.0, 2.0])


def test_scheduler_sets_every_group_and_restores_from_its_state():
    schedule = LRSchedule(lr=1.0, total_steps=20, warmup_fraction=0.5)
    model = tiny_model()
    optimizer = build_optimizer(model, lr=1.0, weight_decay=0.1)
    scheduler = WarmupDecayScheduler(optimizer, schedule)
    for _ in range(7):
        scheduler.step()
    assert {group["lr"] for group in optimizer.param_groups} == {schedule.lr_at(7)}
    fresh = WarmupDecayScheduler(build_optimizer(model, lr=1.0, weight_decay=0.1), schedule)
    fresh.load_state_dict(json.loads(json.dumps(scheduler.state_dict())))
    assert fresh.get_last_lr() == scheduler.get_last_lr() and fresh.steps_taken == 7


# ---------------------------------------------------------------- parameter groups

@pytest.mark.parametrize("layernorm_order", ["sandwich", "pre"])
def test_no_weight_decay_on_layernorms_and_biases(layernorm_order):
    model = tiny_model(layernorm_order)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert all("layernorm" in name or name.endswith(".bias") for name in kept)
    assert decayed == {name for name in names.values() if "layernorm" not in name and not name.endswith(".bias")}
    assert "word_embeddings.weight" in decayed and "transformer.final_layernorm.weight" in kept
    assert build_optimizer(model, 1e-3, 0.1).defaults["betas"] == ADAM_BETAS == (0.9, 0.95)


# ---------------------------------------------------------------- loss

def test_loss_ignores_pad_and_scales_text_targets():
    pad, codebook = 9, 4  # ids 0-3 are image codes, 4-8 text/commands, 9 is [PAD]
    targets = torch.tensor([[0, 5, 2, pad], [6, 1, pad, pad]])
    logits = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(0))
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(2, 4)
    image = [(0, 0), (0, 2), (1, 1)]
    text = [(0, 1), (1, 0)]
    for scale in (1.0, 0.25, 0.0):
        parts = next_token_loss(logits, targets, pad, codebook, scale)
        expected = (sum(ce[i] for i in image) + scale * sum(ce[i] for i in text)) / (3 + 2 * scale)
        assert parts.loss.item() == pytest.approx(expected.item(), rel=1e-6)
        means = summarize(parts.sums)
        assert means["loss"] == pytest.approx(expected.item(), rel=1e-6)
        assert means["image_loss"] == pytest.approx(sum(ce[i] for i in image).item() / 3, rel=1e-6)
        assert means["text_loss"] == pytest.approx(sum(ce[i] for i in text).item() / 2, rel=1e-6)
    logits.requires_grad_(True)
    next_token_loss(logits, targets, pad, codebook, 1.0).loss.backward()
    assert torch.all(logits.grad[0, 3] == 0) and torch.all(logits.grad[1, 2:] == 0)  # no gradient from [PAD]


# ---------------------------------------------------------------- data positions

def micro_batches(start, micro, accumulation, world, rank, steps):
    iterator = iter(MicroBatchPositions(start, micro, accumulation, world, rank))
    return [next(iterator) for _ in range(steps * accumulation)]


def test_every_split_of_a_global_batch_reads_the_same_micro_batches():
    one_process = micro_batches(0, 2, 4, 1, 0, steps=3)
    two_processes = [micro_batches(0, 2, 2, 2, rank, steps=3) for rank in range(2)]
    # iteration by iteration the same micro-batches, only distributed differently
    for step in range(3):
        single = one_process[4 * step:4 * step + 4]
        split = [two_processes[r][2 * step + m] for m in range(2) for r in range(2)]
        assert split == single
    assert sorted(p for batch in one_process for p in batch) == list(range(24))
    # a resumed stream continues where the position says
    assert micro_batches(16, 2, 4, 1, 0, steps=1) == one_process[8:]


# ---------------------------------------------------------------- flags

def test_given_flags_are_told_apart_from_defaults():
    args = parse_training_args(REQUIRED + ["--num-layers", "12", "--bf16"])
    assert {"num_layers", "bf16", "train_data", "train_iters"} <= args.given_flags
    assert "hidden_size" not in args.given_flags and args.hidden_size == 768
    assert args.tensorboard_dir is None
    assert parse_training_args(REQUIRED + ["--save", "out"]).tensorboard_dir == "out/tensorboard"


def test_task_mix_and_flags_that_would_do_nothing():
    args = parse_training_args(REQUIRED + ["--task-mix", "text2image=0.7,image2text=0.2,super_resolution=0.1"])
    assert args.task_mix == {"text2image": 0.7, "image2text": 0.2, "super_resolution": 0.1}
    with pytest.raises(SystemExit):
        parse_training_args(REQUIRED + ["--task-mix", "captions=1"])
    with pytest.raises(SystemExit):
        parse_training_args(REQUIRED + ["--warmup", "1.5"])
    with pytest.raises(UserError, match="--save-interval needs --save"):
        parse_training_args(REQUIRED + ["--save-interval", "10"])
    with pytest.raises(UserError, match="--eval-iters needs --valid-data"):
        parse_training_args(REQUIRED + ["--eval-iters", "3"])


@pytest.mark.parametrize("flags, message", [
    (["--lr-decay-style", "constant", "--min-lr-ratio", "0.1"], "--min-lr-ratio sets where the decay ends"),
    (["--task-mix", "image2text=1", "--cfg-drop-prob", "0.1"], "--cfg-drop-prob drops the text"),
    (["--task-mix", "text2image=0,super_resolution=1", "--cfg-drop-prob", "0.2"], "--cfg-drop-prob drops the text"),
    (["--one-task-per-micro-batch"], "gives only one a weight"),
])
def test_training_flags_that_would_do_nothing_are_refused_even_at_their_default(flags, message):
    with pytest.raises(UserError, match=message):
        parse_training_args(REQUIRED + flags)


def test_training_flags_that_do_something_are_accepted():
    parse_training_args(REQUIRED + ["--lr-decay-style", "linear", "--min-lr-ratio", "0"])
    parse_training_args(REQUIRED + ["--lr-decay-style", "constant"])
    parse_training_args(REQUIRED + ["--task-mix", "text2image=1,image2text=1", "--cfg-drop-prob", "0.3"])
    parse_training_args(REQUIRED + ["--task-mix", "image2text=1"])
    parse_training_args(REQUIRED + ["--task-mix", "text2image=1,image2text=1", "--one-task-per-micro-batch"])


def test_model_flags_must_agree_with_a_resumed_checkpoint():
    args = parse_training_args(REQUIRED + ["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"])
    config = model_config_from_args(args, vocab_size=96, max_positions=12).to_dict()
    assert config["max_position_embeddings"] == 12 and config["layernorm_order"] == "sandwich"
    check_flags_match_config(args, config, "ckpt/5")
    check_flags_match_config(parse_training_args(REQUIRED), config, "ckpt/5")  # nothing given: nothing to contradict
    with pytest.raises(UserError, match=r"^--num-layers 3 contradicts the checkpoint in ckpt/5 \(num_layers=2\)"):
        check_flags_match_config(parse_training_args(REQUIRED + ["--num-layers", "3"]), config, "ckpt/5")
    with pytest.raises(UserError, match="--pb-relax True contradicts"):
        check_flags_match_config(parse_training_args(REQUIRED + ["--pb-relax"]), config, "ckpt/5")


# ---------------------------------------------------------------- DeepSpeed config

def test_deepspeed_config_from_flags():
    args = parse_training_args(REQUIRED + ["--batch-size", "3", "--gradient-accumulation-steps", "2", "--bf16",
                                           "--zero-stage", "2", "--clip-grad", "0.5"])
    setup = build_deepspeed_config(args, world_size=4)
    config = setup.config
    assert (setup.micro_batch_size, setup.gradient_accumulation_steps, setup.precision) == (3, 2, "bf16")
    assert config["train_batch_size"] == 24 and config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 2 and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 2} and config["bf16"] == {"enabled": True}
    assert "fp16" not in config and "optimizer" not in config and "scheduler" not in config
    fp16 = build_deepspeed_config(parse_training_args(REQUIRED + ["--fp16"]), world_size=1).config["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0  # 0 = DeepSpeed's dynamic loss scaling


def test_deepspeed_config_file_is_filled_in_and_never_overridden(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3,
                                "overlap_comm": True}, "fp16": {"enabled": True, "initial_scale_power": 12}}))
    args = parse_training_args(REQUIRED + ["--deepspeed_config", str(path), "--clip-grad", "2"])
    setup = build_deepspeed_config(args, world_size=2)
    config = setup.config
    assert config["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert config["fp16"] == {"enabled": True, "initial_scale_power": 12} and "bf16" not in config
    assert config["gradient_clipping"] == 2 and config["train_batch_size"] == 16
    assert (setup.micro_batch_size, setup.gradient_accumulation_steps, setup.precision) == (8, 1, "fp16")
    assert (args.batch_size, args.zero_stage, args.fp16) == (4, 1, False)  # the flags are not rewritten
    for flags, message in ((["--zero-stage", "1"], r"--zero-stage 1 contradicts zero_optimization.stage=3 in"),
                           (["--batch-size", "4"], r"--batch-size 4 contradicts train_micro_batch_size_per_gpu=8"),
                           (["--bf16"], r"--bf16 contradicts the fp16 section")):
        with pytest.raises(UserError, match=message):
            build_deepspeed_config(parse_training_args(REQUIRED + ["--deepspeed_config", str(path)] + flags), 2)
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(UserError, match="has a 'optimizer' section; remove it"):
        build_deepspeed_config(parse_training_args(REQUIRED + ["--deepspeed_config", str(path)]), 1)
    path.write_text(json.dumps({"train_batch_size": 5}))
    with pytest.raises(UserError, match="train_batch_size=5 .* is not micro-batch 4"):
        build_deepspeed_config(parse_training_args(REQUIRED + ["--deepspeed_config", str(path)]), 1)


# ---------------------------------------------------------------- checkpoint folders

def test_tracker_and_stale_temporary_folders(tmp_path):
    assert read_latest_iteration(tmp_path) is None
    (tmp_path / "3").mkdir()
    (tmp_path / f"{TEMP_PREFIX}6").mkdir()
    (tmp_path / f"{TEMP_PREFIX}6" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"partial")
    write_latest_iteration(tmp_path, 3)
    assert read_latest_iteration(tmp_path) == 3
    assert (tmp_path / TRACKER_FILE).read_text() == "3\n" and (tmp_path / DEEPSPEED_LATEST_FILE).read_text() == "3"
    assert remove_stale_temporaries(tmp_path) == [f"{TEMP_PREFIX}6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", DEEPSPEED_LATEST_FILE, TRACKER_FILE]
    (tmp_path / TRACKER_FILE).write_text("9\n")
    with pytest.raises(UserError, match="names iteration '9', but .* is not a folder"):
        read_latest_iteration(tmp_path)
    (tmp_path / "garbage").mkdir()
    (tmp_path / TRACKER_FILE).write_text("garbage")
    with pytest.raises(UserError, match="should hold an iteration number"):
        read_latest_iteration(tmp_path)
    (tmp_path / TRACKER_FILE).unlink()  # DeepSpeed's own tracker alone counts too
    assert read_latest_iteration(tmp_path) == 3


def test_matmul_probe_counts_flops(monkeypatch):
    from training import metrics
    from training.metrics import measure_matmul_flops, throughput

    # A scripted clock: the untimed warm-up, then timed matmuls of 0.5, 0.25 and 0.4 s.
    ticks = iter([0.0, 1.0, 1.5, 2.0, 2.25, 3.0, 3.4])
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    shapes = []
    real_mm = torch.mm
    monkeypatch.setattr(metrics.torch, "mm",
                        lambda a, b: shapes.append((a.shape, a.dtype, b.shape)) or real_mm(a, b))
    rate = measure_matmul_flops("cpu", torch.float64, size=128, repeats=3)
    assert rate == 2 * 128**3 / 0.25  # a multiply and an add per term of each of the 128 x 128 outputs, best run
    assert shapes == [((128, 128), torch.float64, (128, 128))] * 4
    values = throughput(tokens=1000, flops=4e9, seconds=2.0, peak_flops=1e9, devices=2)
    assert values == {"tokens_per_second": 500.0, "mfu": 1.0}


def test_runs_never_overwrite_or_invent_checkpoints(tmp_path):
    from pretrain_gpt2 import checked_resume_iteration

    save = tmp_path / "save"
    assert checked_resume_iteration(parse_training_args(REQUIRED + ["--save", str(save)])) is None
    with pytest.raises(UserError, match=f"no checkpoint to resume in {save}"):
        checked_resume_iteration(parse_training_args(REQUIRED + ["--load", str(save)]))
    (save / "4").mkdir(parents=True)
    (save / TRACKER_FILE).write_text("4\n")
    assert checked_resume_iteration(parse_training_args(REQUIRED + ["--save", str(save), "--load", str(save)])) == 4
    with pytest.raises(UserError, match=f"--save {save} already holds checkpoints \\(newest: iteration 4\\)"):
        checked_resume_iteration(parse_training_args(REQUIRED + ["--save", str(save)]))
    other = tmp_path / "other"
    (other / "2").mkdir(parents=True)
    (other / TRACKER_FILE).write_text("2\n")
    with pytest.raises(UserError, match="already holds checkpoints"):  # resuming another run into this folder
        checked_resume_iteration(parse_training_args(REQUIRED + ["--save", str(save), "--load", str(other)]))
    assert checked_resume_iteration(parse_training_args(REQUIRED + ["--save", str(tmp_path / "new"),
                                                                    "--load", str(other)])) == 2


def test_a_resumed_run_keeps_its_checkpoints_position_layout(tmp_path):
    """New runs take --position-layout; a resumed run reads its checkpoint's, and a config written before
    the field existed is CogView's "consecutive"."""
    from pretrain_gpt2 import position_layout_to_train

    old = tiny_model().config.to_dict()
    del old["position_layout"]
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "model_config.json").write_text(json.dumps(old))
    resume = parse_training_args(REQUIRED + ["--load", str(tmp_path)])
    assert position_layout_to_train(parse_training_args(REQUIRED), None) == "fixed-image"
    assert position_layout_to_train(resume, 3) == "consecutive"
    config = ModelConfig.from_dict(old).to_dict()
    check_flags_match_config(parse_training_args(REQUIRED + ["--position-layout", "consecutive"]), config, "ckpt/3")
    with pytest.raises(UserError, match="--position-layout fixed-image contradicts"):
        check_flags_match_config(parse_training_args(REQUIRED + ["--position-layout", "fixed-image"]), config, "ckpt/3")
