"""Tensor parallelism (mpu/) against the plain model, and merging/splitting its checkpoints.

Two processes on gloo (loopback) form one replica split two ways (TP=2, ZeRO-2 over the one replica),
built by pretrain_gpt2.py's own `build_engine`, and must match a plain single-process model and torch
AdamW: same initial shards as a split of the plain weights, same logits, loss parts and gradient norm
(clipped, so the norm of the split gradients matters), the same weights after the step once merged, a
saved checkpoint that loads at TP=1 through `load_model_for_inference`, and a resume at TP=2 that
restores the engine. The vocabulary (75 ids) does not divide by 2, so the vocabulary split is uneven.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from model.config import ModelConfig
from model.gpt import CogViewGPT
from mpu.tp_checkpoint import merge_tensor_parallel, split_tensor_parallel
from utils.errors import UserError
from loopback import free_port

TP = 2
CONFIG = dict(vocab_size=75, num_layers=2, hidden_size=32, num_attention_heads=4, max_position_embeddings=16,
              hidden_dropout=0.0, attention_dropout=0.0)
PAD_ID, CODEBOOK, TXT_LOSS_SCALE = 74, 40, 0.5


def training_args(**overrides) -> SimpleNamespace:
    """The namespace parse_training_args would give, for build_deepspeed_config and build_engine."""
    return SimpleNamespace(**{
        "seed": 7, "checkpoint_activations": False, "lr": 1e-2, "train_iters": 10, "warmup": 0.0,
        "min_lr_ratio": 0.1, "lr_decay_style": "cosine", "weight_decay": 0.01, "batch_size": 2,
        "gradient_accumulation_steps": 1, "clip_grad": 0.05, "zero_stage": 2, "deepspeed_config": None,
        "fp16": False, "bf16": False, "given_flags": set(), "tensor_parallel_size": TP, **overrides})


# Adam's first step moves every weight by about lr (1e-2) whatever its gradient's size, so where a gradient is
# near 0 the rounding of a split matmul changes the step by up to ~2e-5; a wrong gradient moves weights by ~1e-2.
STEP_ATOL = 1e-4


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol, msg=lambda m: f"{what}: {m}")


def reference_step(args: SimpleNamespace, config: ModelConfig, batch: dict[str, torch.Tensor]):
    """Plain model, loss, clipping and AdamW with the run's lr schedule: the TP=1 result."""
    from training.loss import next_token_loss
    from training.lr_schedule import LRSchedule, WarmupDecayScheduler
    from training.optim import build_optimizer

    torch.manual_seed(args.seed)
    model = CogViewGPT(config)
    initial = {name: t.clone() for name, t in model.state_dict().items()}
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    WarmupDecayScheduler(optimizer, LRSchedule(lr=args.lr, total_steps=args.train_iters, warmup_fraction=args.warmup,
                                               min_lr_ratio=args.min_lr_ratio, decay_style=args.lr_decay_style))
    ids, positions = batch["input_ids"], batch["position_ids"]
    logits = model(ids[:, :-1], positions[:, :-1])
    parts = next_token_loss(logits, ids[:, 1:], PAD_ID, CODEBOOK, TXT_LOSS_SCALE)
    parts.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    optimizer.step()
    return SimpleNamespace(initial=initial, logits=logits.detach(), sums=parts.sums, norm=float(norm),
                           updated=model.state_dict(), model=model)


def _worker(rank: int, port: int, save_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(TP),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import torch.distributed as dist

    import mpu
    from model.checkpoint import load_model_for_inference
    from model.config_file import write_model_config
    from pretrain_gpt2 import build_engine, micro_step
    from training import checkpointing
    from training.ds_config import build_deepspeed_config

    args, config = training_args(), ModelConfig(**CONFIG)
    generator = torch.Generator().manual_seed(3)
    batch = {"input_ids": torch.randint(0, config.vocab_size, (2, 9), generator=generator),
             "position_ids": torch.arange(9).expand(2, 9)}
    reference = reference_step(args, config, batch)  # before the mesh exists: the plain loss

    mpu.init_distributed()
    groups = mpu.init_parallel_groups(TP)
    tp_rank, tp_group = groups.get_model_parallel_rank(), groups.get_model_parallel_group()
    ds_config = build_deepspeed_config(args, mpu.get_data_parallel_world_size()).config
    engine = build_engine(args, config, ds_config)

    local = engine.module.state_dict()
    expected_shards = split_tensor_parallel(reference.initial, config, TP)[tp_rank]
    assert list(local) == list(expected_shards), "the shards hold other parameters than the plain model"
    for name, tensor in local.items():
        assert torch.equal(tensor, expected_shards[name]), f"initial shard of {name} is not the split of the plain one"

    with torch.no_grad():
        ids, positions = batch["input_ids"], batch["position_ids"]
        blocks = [torch.empty(0)] * TP
        dist.all_gather_object(blocks, engine(ids[:, :-1], positions[:, :-1]), group=tp_group)
    assert_close(torch.cat(blocks, dim=-1), reference.logits, "logits")

    sums, norm = micro_step(engine, batch, config, PAD_ID, CODEBOOK, TXT_LOSS_SCALE)
    assert_close(sums[:len(reference.sums)], reference.sums, "loss sums")
    assert norm is not None and abs(norm - reference.norm) <= 1e-5 * reference.norm, (norm, reference.norm)
    assert reference.norm > args.clip_grad, "the step must clip for the norm to matter"

    shards: list[dict[str, torch.Tensor]] = [{}] * TP
    dist.all_gather_object(shards, engine.module.state_dict(), group=tp_group)
    merged = merge_tensor_parallel(shards)
    for name, tensor in reference.updated.items():
        assert_close(merged[name], tensor, f"{name} after the step", atol=STEP_ATOL)

    folder = checkpointing.save_checkpoint(engine, save_dir, 1, {"iteration": 1, "data_position": 2},
                                           lambda path: write_model_config(path, config, {}))
    if rank == 0:  # a TP=2 checkpoint generates at TP=1
        model, _ = load_model_for_inference(folder)
        for name, tensor in reference.updated.items():
            assert_close(model.state_dict()[name], tensor, f"{name} loaded at TP=1", atol=STEP_ATOL)
    resumed = build_engine(args, config, ds_config)
    assert checkpointing.load_checkpoint(resumed, save_dir, 1)["data_position"] == 2
    for name, tensor in engine.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[name], tensor), f"{name} after resuming"
    dist.barrier()
    dist.destroy_process_group()



def test_two_way_tensor_parallel_equals_the_plain_model(tmp_path: Path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path / "run")), nprocs=TP, join=True)


@pytest.mark.parametrize("tp", [2, 4])
def test_split_then_merge_is_exact(tp: int):
    config = ModelConfig(**{**CONFIG, "num_attention_heads": 4})
    torch.manual_seed(0)
    state = CogViewGPT(config).state_dict()
    shards = split_tensor_parallel(state, config, tp)
    assert shards[0]["transformer.layers.0.attention.query_key_value.weight"].shape == (3 * 32 // tp, 32)
    assert shards[0]["transformer.layers.0.attention.dense.weight"].shape == (32, 32 // tp)
    assert sum(shard["word_embeddings.weight"].shape[0] for shard in shards) == config.vocab_size
    merged = merge_tensor_parallel(shards)
    assert list(merged) == list(state)
    for name, tensor in state.items():
        assert torch.equal(merged[name], tensor), name


def test_split_refuses_a_size_that_cuts_heads():
    config = ModelConfig(**{**CONFIG, "num_attention_heads": 4})
    with pytest.raises(UserError, match="must divide the number of attention heads"):
        split_tensor_parallel(CogViewGPT(config).state_dict(), config, 3)


def test_resume_at_another_tensor_parallel_size_is_refused(tmp_path: Path):
    from mpu.tp_checkpoint import check_resume_tensor_parallel_size

    for rank in range(2):
        (tmp_path / f"mp_rank_{rank:02d}_model_states.pt").touch()
    check_resume_tensor_parallel_size(tmp_path, 2)
    with pytest.raises(UserError, match="saved with --tensor-parallel-size 2; resume it with the same size"):
        check_resume_tensor_parallel_size(tmp_path, 1)


def test_the_engine_config_gets_the_plan_and_refuses_what_is_untested(tmp_path: Path):
    from arguments import parse_training_args
    from training.ds_config import build_deepspeed_config
    from utils.files import atomic_write_json

    required = ["--train-data", "data", "--train-iters", "10", "--tensor-parallel-size", "2"]
    config = build_deepspeed_config(parse_training_args(required + ["--batch-size", "3"]), world_size=4).config
    assert config["train_batch_size"] == 12 and config["tensor_parallel"]["autotp_size"] == 2
    for stage in ("0", "3"):
        with pytest.raises(UserError, match=f"needs --zero-stage 1 or 2, not {stage}"):
            build_deepspeed_config(parse_training_args(required + ["--zero-stage", stage]), world_size=1)
    atomic_write_json(tmp_path / "ds.json", {"tensor_parallel": {"autotp_size": 2}})
    with pytest.raises(UserError, match="has a 'tensor_parallel' section"):
        build_deepspeed_config(parse_training_args(required + ["--deepspeed_config", str(tmp_path / "ds.json")]), 1)
    assert "tensor_parallel" not in build_deepspeed_config(parse_training_args(required[:4]), world_size=1).config
