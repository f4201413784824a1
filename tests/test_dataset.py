"""Shard reader refusals and TaskSequenceDataset: a pure function of (seed, position), task mixture, CFG drop,
epoch permutations and super-resolution positions. Rows are written directly with the shard writer."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_utils import sequences, shards
from data_utils.dataset import TaskSequenceDataset, collate_sequences, positions_needed, sequence_length
from data_utils.image_sources import open_dataset
from data_utils.shards import FORMAT_VERSION, RowFormat, ShardedRows, read_manifest, write_manifest, write_shard
from data_utils.text_tokenizer import train_sentencepiece
from data_utils.tokenizer import UnifiedTokenizer
from utils.errors import UserError

CODEBOOK = 64
TEXT_MAX = 12
GRID = 8
VQ_FINGERPRINT = "00000000feedbeef"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    source = open_dataset("shapes", num_items=500)
    model = train_sentencepiece((source.caption(i) for i in range(len(source))),
                                tmp_path_factory.mktemp("sp") / "sp", 300)
    return UnifiedTokenizer.from_files(model, CODEBOOK)


def make_data(folder: Path, tokenizer: UnifiedTokenizer, lowres: bool, num_rows: int = 30,
              shard_rows: tuple[int, ...] = (12, 0, 18)) -> SimpleNamespace:
    """Rows of shapes captions (the last one filling the text budget) with random codes, in uneven shards."""
    row_format = RowFormat(TEXT_MAX, GRID, GRID // 2 if lowres else None,
                           RowFormat.dtype_for_vocab(tokenizer.vocab_size))
    source = open_dataset("shapes", num_items=num_rows)
    rng = np.random.default_rng(0)
    texts = [tokenizer.encode_text(source.caption(i), TEXT_MAX) for i in range(num_rows)]
    texts[-1] = (texts[-1] * TEXT_MAX)[:TEXT_MAX]
    images = rng.integers(0, CODEBOOK, (num_rows, GRID, GRID))
    lows = rng.integers(0, CODEBOOK, (num_rows, GRID // 2, GRID // 2))
    rows = np.stack([row_format.pack(np.array(texts[i]), images[i], lows[i] if lowres else None, tokenizer.pad_id)
                     for i in range(num_rows)])
    source_indices = np.arange(num_rows) * 10  # distinct from the row numbers
    shards, start = [], 0
    for chunk, count in enumerate(shard_rows):
        shards.append(write_shard(folder, chunk, rows[start:start + count], source_indices[start:start + count],
                                  row_format))
        start += count
    write_manifest(folder, {"format_version": FORMAT_VERSION, **row_format.to_dict(),
                            "tokenizer": tokenizer.describe(), "vqvae": {"path": "vq", "fingerprint": VQ_FINGERPRINT},
                            "num_chunks": len(shard_rows), "complete": True, "shards": shards})
    return SimpleNamespace(folder=folder, texts=texts, images=images, lows=lows, source_indices=source_indices)


@pytest.fixture
def data(tmp_path, tokenizer):
    return make_data(tmp_path / "data", tokenizer, lowres=True)


def test_row_format_round_trips_through_its_dict():
    row_format = RowFormat(32, 8, 4, "uint16")
    assert row_format.row_length == 1 + 32 + 64 + 16
    assert RowFormat.from_dict(row_format.to_dict()) == row_format
    assert [field["offset"] for field in row_format.to_dict()["fields"]] == [0, 1, 33, 97]
    assert RowFormat.dtype_for_vocab(58_240) == "uint16" and RowFormat.dtype_for_vocab(70_000) == "int32"


@pytest.mark.parametrize("max_open_shards", [1, 1024])
def test_rows_read_back_across_shards(data, tokenizer, monkeypatch, max_open_shards):
    monkeypatch.setattr(shards, "MAX_OPEN_SHARDS", max_open_shards)
    rows = ShardedRows(data.folder, tokenizer, VQ_FINGERPRINT)
    assert len(rows) == 30
    for i in [*range(30), 0, 29, 5]:  # back and forth over the shards
        assert len(rows._maps) <= max_open_shards
        row = rows[i]
        assert row.text_ids.tolist() == data.texts[i]
        assert np.array_equal(row.image, data.images[i]) and np.array_equal(row.lowres, data.lows[i])
        assert row.source_index == data.source_indices[i]
    assert np.array_equal(rows.source_indices(), data.source_indices)
    with pytest.raises(IndexError):
        rows[30]


def test_rows_work_in_dataloader_workers(data, tokenizer):
    rows = ShardedRows(data.folder)
    rows[0]  # open a memmap here: the copies sent to workers must map their own
    assert pickle.loads(pickle.dumps(rows))[29].source_index == data.source_indices[29]
    dataset = TaskSequenceDataset(rows, tokenizer, seed=3)
    loader = DataLoader(range(40), batch_size=8, num_workers=2,
                        collate_fn=lambda positions: collate_sequences([dataset[p] for p in positions],
                                                                       tokenizer.pad_id))
    batches = list(loader)
    direct = collate_sequences([dataset[p] for p in range(8)], tokenizer.pad_id)
    assert torch.equal(batches[0]["input_ids"], direct["input_ids"])


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "manifest.json").unlink(), "holds no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "shard_00002.bin").unlink(), "shard_00002.bin listed in the manifest is missing"),
    (lambda d: (d / "shard_00000.bin").write_bytes(b"\0" * 100), "has 100 bytes but the manifest says 12 rows"),
    (lambda d: write_manifest(d, {**read_manifest(d), "complete": False}), "unfinished"),
    (lambda d: write_manifest(d, {**read_manifest(d), "row_length": 7}), "is corrupt"),
    (lambda d: write_manifest(d, {k: v for k, v in read_manifest(d).items() if k != "vqvae"}), "is corrupt"),
    (lambda d: write_manifest(d, {**read_manifest(d), "format_version": 99}), "format version 99"),
])
def test_reader_refuses_damaged_folders(data, damage, message):
    damage(data.folder)
    with pytest.raises(UserError, match=message) as error:
        ShardedRows(data.folder)
    assert "\n" not in str(error.value)


def test_reader_refuses_a_damaged_index_file(data):
    np.save(data.folder / "shard_00002.idx.npy", np.arange(5))
    rows = ShardedRows(data.folder)
    with pytest.raises(UserError, match="index file of shard_00002.bin holds"):
        rows[20]


def test_reader_refuses_other_tokenizer_and_vqvae(data, tokenizer):
    other = UnifiedTokenizer(tokenizer.text_tokenizer, CODEBOOK * 2)
    with pytest.raises(UserError, match=f"tokenized with tokenizer {tokenizer.fingerprint()} but the current "
                                        f"tokenizer is {other.fingerprint()}; re-run preprocess_data.py"):
        ShardedRows(data.folder, tokenizer=other)
    with pytest.raises(UserError, match=f"encoded with VQ-VAE {VQ_FINGERPRINT} but the current VQ-VAE is abc"):
        ShardedRows(data.folder, vqvae_fingerprint="abc")


def test_same_position_gives_the_same_sample(data, tokenizer):
    weights = {"text2image": 1, "image2text": 1, "super_resolution": 1}
    first = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, seed=5, cfg_drop_prob=0.3)
    second = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, seed=5, cfg_drop_prob=0.3)
    other_seed = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, seed=6, cfg_drop_prob=0.3)
    positions = [0, 7, 29, 30, 95, 1000]
    for position in positions:
        a, b = first[position], second[position]
        assert a["task"] == b["task"]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["position_ids"], b["position_ids"])
    reversed_order = [second[p]["input_ids"] for p in reversed(positions)][::-1]  # access order must not matter
    assert all(torch.equal(first[p]["input_ids"], ids) for p, ids in zip(positions, reversed_order))
    assert any(not torch.equal(first[p]["input_ids"], other_seed[p]["input_ids"]) for p in positions)


def test_task_mixture_follows_the_weights(data, tokenizer):
    weights = {"text2image": 0.5, "image2text": 0.3, "super_resolution": 0.2}
    dataset = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, seed=1)
    draws = [dataset.draw(p)[0] for p in range(4000)]
    for task, weight in weights.items():
        assert abs(draws.count(task) / len(draws) - weight) < 0.03
    for position in range(60):
        sample = dataset[position]
        row = dataset.rows[dataset.row_index(position)]
        expected = {"text2image": lambda: sequences.text2image(tokenizer, row.text_ids, GRID, row.image),
                    "image2text": lambda: sequences.image2text(tokenizer, row.image, GRID, row.text_ids),
                    "super_resolution": lambda: sequences.super_resolution(tokenizer, row.text_ids, row.lowres,
                                                                           GRID // 2, GRID, row.image)}
        sequence = expected[sample["task"]]()
        assert sample["input_ids"].tolist() == sequence.ids and sample["position_ids"].tolist() == sequence.position_ids


def test_a_task_block_shares_one_task_draw_and_keeps_the_mix(data, tokenizer):
    weights = {"text2image": 0.5, "image2text": 0.3, "super_resolution": 0.2}
    per_sample = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, seed=1, cfg_drop_prob=0.3)
    blocked = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, seed=1, cfg_drop_prob=0.3,
                                  task_block=8)
    tasks = [blocked.draw(p)[0] for p in range(8000)]
    blocks = [set(tasks[start:start + 8]) for start in range(0, len(tasks), 8)]
    assert all(len(block) == 1 for block in blocks)
    assert len({tasks[start] for start in range(0, 64, 8)}) > 1  # blocks still differ
    for task, weight in weights.items():
        assert abs(sum(block == {task} for block in blocks) / len(blocks) - weight) < 0.04
    # A block takes its first position's task; the text drop of text-to-image stays a draw per position.
    assert all(blocked.draw(p)[0] == per_sample.draw(p - p % 8)[0] for p in range(200))
    drops = [blocked.draw(p)[1] for p in range(8000) if tasks[p] == "text2image"]
    assert abs(np.mean(drops) - 0.3) < 0.03 and 0 < sum(drops[:64]) < 64
    assert [blocked[p]["task"] for p in range(16, 24)] == [tasks[16]] * 8
    with pytest.raises(UserError, match="at least one sample"):
        TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, task_block=0)


def test_the_training_loader_makes_each_micro_batch_one_task_when_asked(data, tokenizer):
    from training.data import MicroBatchPositions, train_loader

    weights = {"text2image": 1, "image2text": 1, "super_resolution": 1}
    for grouped in (False, True):
        dataset = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, weights, seed=3)
        loader = iter(train_loader(dataset, MicroBatchPositions(0, 6, 2, 1, 0), tokenizer.pad_id, 0, grouped))
        batches = [next(loader)["tasks"] for _ in range(12)]
        assert all(len(set(tasks)) == 1 for tasks in batches) == grouped


def test_cfg_drop_gives_the_unconditional_form(data, tokenizer):
    always = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, seed=2, cfg_drop_prob=1.0)
    for position in range(10):
        row = always.rows[always.row_index(position)]
        ids = always[position]["input_ids"].tolist()
        assert ids == [tokenizer["[ROI1]"], tokenizer.grid_token(GRID), tokenizer["[BOI1]"], *row.image.reshape(-1),
                       tokenizer["[EOI1]"]]
    mixed = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, {"text2image": 1, "image2text": 1}, seed=2,
                                cfg_drop_prob=0.4)
    draws = [mixed.draw(p) for p in range(4000)]
    text2image_drops = [drop for task, drop in draws if task == "text2image"]
    assert abs(np.mean(text2image_drops) - 0.4) < 0.04
    assert not any(drop for task, drop in draws if task != "text2image")


def test_each_epoch_visits_every_row_in_a_new_order(data, tokenizer):
    dataset = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, seed=4)
    epochs = [[dataset.row_index(e * 30 + i) for i in range(30)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(30))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]


def test_super_resolution_positions_restart_at_roi2(data, tokenizer):
    dataset = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, {"super_resolution": 1.0})
    sample = dataset[3]
    ids, positions = sample["input_ids"].tolist(), sample["position_ids"].tolist()
    split = ids.index(tokenizer["[ROI2]"])
    assert positions[:split] == list(range(split)) and positions[split:] == list(range(len(ids) - split))
    assert ids[split + 1] == tokenizer["[POS0]"] and ids[-1] == tokenizer["[EOI2]"]


def test_super_resolution_needs_lowres_rows(tmp_path, tokenizer):
    data = make_data(tmp_path / "no_lowres", tokenizer, lowres=False)
    with pytest.raises(UserError, match="--with-lowres"):
        TaskSequenceDataset(ShardedRows(data.folder), tokenizer, {"text2image": 1, "super_resolution": 0.1})
    with pytest.raises(UserError, match="unknown task"):
        TaskSequenceDataset(ShardedRows(data.folder), tokenizer, {"inpainting": 1})


def test_collate_right_pads(data, tokenizer):
    dataset = TaskSequenceDataset(ShardedRows(data.folder), tokenizer, {"text2image": 1, "super_resolution": 1})
    samples = [dataset[p] for p in range(6)]
    batch = collate_sequences(samples, tokenizer.pad_id)
    longest = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape == batch["position_ids"].shape == (6, longest)
    assert batch["tasks"] == [s["task"] for s in samples]
    for i, sample in enumerate(samples):
        n = len(sample["input_ids"])
        assert torch.equal(batch["input_ids"][i, :n], sample["input_ids"])
        assert (batch["input_ids"][i, n:] == tokenizer.pad_id).all() and (batch["position_ids"][i, n:] == 0).all()


@pytest.mark.parametrize("task", [t for t in sequences.TASKS if t not in sequences.UNDERSTANDING_TASKS])
def test_sequence_length_is_the_longest_sample(data, tokenizer, task):
    rows = ShardedRows(data.folder)
    dataset = TaskSequenceDataset(rows, tokenizer, {task: 1.0})
    full_row = next(p for p in range(len(rows)) if dataset.row_index(p) == len(rows) - 1)  # the full-budget text
    samples = [dataset[p] for p in range(len(rows))]
    assert max(len(s["input_ids"]) for s in samples) == len(dataset[full_row]["input_ids"]) \
        == sequence_length(rows.format, {task: 1.0})
    assert max(int(s["position_ids"].max()) for s in samples) + 1 == positions_needed(rows.format, {task: 1.0})


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_sequences_places_rows_on_their_side_with_pads_at_position_zero(side):
    from data_utils.padding import pad_sequences

    ids = [[5, 6, 7], [8], torch.tensor([9, 10])]
    positions = [[0, 1, 2], [4], torch.tensor([3, 4])]
    batch = pad_sequences(ids, positions, pad_id=-1, side=side)
    if side == "right":
        assert batch.ids.tolist() == [[5, 6, 7], [8, -1, -1], [9, 10, -1]]
        assert batch.positions.tolist() == [[0, 1, 2], [4, 0, 0], [3, 4, 0]]
    else:
        assert batch.ids.tolist() == [[5, 6, 7], [-1, -1, 8], [-1, 9, 10]]
        assert batch.positions.tolist() == [[0, 1, 2], [0, 0, 4], [0, 3, 4]]
    assert torch.equal(batch.real, batch.ids != -1)
    assert batch.ids.dtype == batch.positions.dtype == torch.long
    with pytest.raises(ValueError, match="row 1 has 1 ids but 2 positions"):
        pad_sequences([[1], [2]], [[0], [0, 1]], pad_id=0)
