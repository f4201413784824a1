"""Data of the understanding tasks: annotations in rows, a user's JSONL fields (bad rows skipped and counted),
preprocessed shapes rows read back as the spec's questions and boxes, and a training step on the new tasks."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import preprocess_data
from data_utils import annotations, sequences
from data_utils.annotations import TaskAnnotations
from data_utils.dataset import TaskSequenceDataset, collate_sequences, sequence_length
from data_utils.image_sources import BAD_ANNOTATIONS, MALFORMED_LINE, SkippedItem, load_item, open_dataset
from data_utils.locations import box_to_ids, iou
from data_utils.shapes_tasks import shapes_tasks
from data_utils.shards import ShardedRows
from data_utils.tokenizer import UnifiedTokenizer
from tests.test_preprocess import cli_args, tools  # noqa: F401  (the fixture)
from tests.test_tokenizer import FakeTextTokenizer
from training.loss import next_token_loss
from utils.errors import UserError

UNDERSTANDING_MIX = {task: 1.0 for task in sequences.UNDERSTANDING_TASKS}


def test_annotations_round_trip_through_a_row_field():
    tok = UnifiedTokenizer(FakeTextTokenizer(300), 64, location_bins=32)
    source = TaskAnnotations([("what colour is the circle?", "red"), ("how many?", "one")],
                             [("a large red circle", (1, 1, 21, 21))],
                             [("the red circle", (1, 1, 21, 21)), ("x" * 40, (0, 0, 8, 8))])
    ids, dropped = annotations.to_ids(tok, source, "a large red circle at the top left", 64, 64, text_budget=32)
    assert dropped == 1  # the 40-character expression is over the budget
    box = box_to_ids(tok, (1, 1, 21, 21), 64, 64)
    assert ids.questions == [(tok.encode_text("what colour is the circle?"), tok.encode_text("red")),
                             (tok.encode_text("how many?"), tok.encode_text("one"))]
    assert ids.expressions == [(tok.encode_text("the red circle"), box)]
    assert ids.objects == [(tok.encode_text("a large red circle"), box)]
    assert ids.grounded == [tok["[PHR]"], *tok.encode_text("a large red circle"), *box,
                            *tok.encode_text(" at the top left")]
    assert ids.tasks() == sequences.UNDERSTANDING_TASKS
    field, overflow = annotations.pack(ids, 200)
    assert overflow == 0 and annotations.unpack(field) == ids
    # A field too short keeps the records that fit, in order, and counts the rest.
    field, overflow = annotations.pack(ids, 40)
    assert overflow == 4 and annotations.unpack(field) == annotations.RowAnnotations(questions=ids.questions[:1])
    # A caption without the object phrase has no grounded caption, so grounded_caption is not its task.
    ids, _ = annotations.to_ids(tok, source, "a red thing", 64, 64, 32)
    assert ids.grounded is None and "grounded_caption" not in ids.tasks()


def write_list(folder, rows):
    Image.new("RGB", (100, 50), (255, 255, 255)).save(folder / "wide.png")
    path = folder / "list.jsonl"
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


def test_jsonl_fields_give_annotations_and_bad_rows_are_skipped_and_counted(tmp_path):
    good = {"image": "wide.png", "caption": "a dog on a mat",
            "questions": [{"question": "what is it?", "answer": "a dog"}],
            "objects": [{"phrase": "a dog", "box": [30, 10, 50, 30]}, {"phrase": "a mat", "box": [0, 0, 20, 10]}],
            "expressions": [{"expression": "the dog", "box": [30, 10, 50, 30]}]}
    rows = [good,
            {**good, "questions": {"question": "q", "answer": "a"}},                 # not a list
            {**good, "objects": [{"phrase": "a dog", "box": [1, 2, 3]}]},             # three numbers
            {**good, "expressions": [{"expression": "", "box": [0, 0, 5, 5]}]},      # empty text
            {**good, "questions": [{"question": "q"}]},                              # no answer
            {**good, "objects": [{"phrase": "a dog", "box": [30, 10, 120, 30]}]},     # outside the 100 px width
            {"image": "wide.png", "caption": "no fields at all"}]
    path = write_list(tmp_path, rows)
    # A malformed line is keyed by its line number, so the split hash may send it to either split: read both.
    loaded = [load_item(source, i) for split in ("train", "val")
              for source in [open_dataset(str(path), split=split, size=32)] for i in range(len(source))]
    skipped = [item for item in loaded if isinstance(item, SkippedItem)]
    assert sorted(s.reason for s in skipped) == sorted([MALFORMED_LINE] * 4 + [BAD_ANNOTATIONS])
    first, plain = [item for item in loaded if not isinstance(item, SkippedItem)]
    # Tokenizer training reads every text of a row (train_text_tokenizer.py).
    train = open_dataset(str(path), size=32)
    assert train.texts(0) == ["a dog on a mat", "what is it?", "a dog", "a dog", "a mat", "the dog"]
    assert plain.annotations is None
    # The 100x50 image keeps its centred 50x50 square (x from 25), scaled to 32 px (x 0.64).
    assert first.annotations == TaskAnnotations([("what is it?", "a dog")], [("a dog", (3, 6, 16, 20))],
                                                [("the dog", (3, 6, 16, 20))])  # "a mat" lies outside the square


@pytest.fixture(scope="module")
def located(tools):  # noqa: F811
    """`tools` with the tokenizer of data preprocessed with --location-bins 32."""
    tokenizer = UnifiedTokenizer.from_files(tools.sp, tools.vqvae.config.codebook_size, location_bins=32)
    return SimpleNamespace(**{**vars(tools), "tokenizer": tokenizer})


@pytest.fixture(scope="module")
def shapes_rows(located, tmp_path_factory):
    output = tmp_path_factory.mktemp("rows") / "data"
    preprocess_data.main(cli_args(located, output, "--dataset", "shapes", "--num-items", "24", "--language", "both",
                                  "--image-size", "64", "--workers", "0", "--chunk-size", "12",
                                  "--location-bins", "32"))
    return ShardedRows(output, located.tokenizer)


def test_preprocessed_shapes_rows_hold_the_spec_questions_and_boxes(located, shapes_rows):
    tok = located.tokenizer
    assert shapes_rows.manifest["counts"]["annotations_dropped"] == 0
    assert shapes_rows.manifest["tokenizer"]["location_bins"] == 32
    source = open_dataset("shapes", num_items=24, language="both")
    for row_number in range(len(shapes_rows)):
        row = shapes_rows[row_number]
        item = source.item(row.source_index)
        expected = shapes_tasks(source.objects(row.source_index), 64, item.metadata["language"],
                                source.seed, row.source_index)
        stored = annotations.unpack(row.annotations)
        assert [(tok.decode_text(q), tok.decode_text(a)) for q, a in stored.questions] == \
            [(qa.question, qa.answer) for qa in expected.questions]
        assert [(tok.decode_text(p), b) for p, b in stored.objects] == \
            [(obj.phrase, box_to_ids(tok, obj.box, 64, 64)) for obj in expected.objects]
        assert [(tok.decode_text(e), b) for e, b in stored.expressions] == \
            [(r.expression, box_to_ids(tok, r.box, 64, 64)) for r in expected.expressions]
        grounded = sequences.parse_grounded_caption(tok, stored.grounded, 64, 64)
        assert [phrase for phrase, _ in grounded.objects] == [obj.phrase for obj in expected.objects]
        for (_, box), obj in zip(grounded.objects, expected.objects):  # within a 2 px cell of the true box
            assert all(abs(a - b) < 2 for a, b in zip(box, obj.box)) and iou(box, obj.box) > 0.7


def test_dataset_draws_the_understanding_tasks_and_a_training_step_learns(located, shapes_rows):
    from tests.generation_helpers import tiny_model

    tok = located.tokenizer
    mix = {"text2image": 1.0, **UNDERSTANDING_MIX}
    dataset = TaskSequenceDataset(shapes_rows, tok, mix, seed=3)
    samples = [dataset[p] for p in range(200)]
    tasks = [s["task"] for s in samples]
    assert set(tasks) == {"text2image", *sequences.UNDERSTANDING_TASKS}
    assert max(len(s["input_ids"]) for s in samples) <= sequence_length(shapes_rows.format, mix)
    source = open_dataset("shapes", num_items=24, language="both")
    for position, sample in enumerate(samples):  # each question is the row's item's, with its own answer
        if sample["task"] != "vqa":
            continue
        ids = sample["input_ids"].tolist()
        index = shapes_rows[dataset.row_index(position)].source_index
        item = source.item(index)
        asked = tok.decode_text(ids[ids.index(tok["[QUES]"]) + 1:ids.index(tok["[ANS]"])])
        answer = sequences.parse_answer(tok, ids[ids.index(tok["[ANS]"]) + 1:])
        expected = shapes_tasks(source.objects(index), 64, item.metadata["language"], source.seed, index)
        assert (asked, answer) in {(qa.question, qa.answer) for qa in expected.questions}
    # Several turns: distinct questions of the row's item, the first one exactly the one-turn sample's.
    turned = TaskSequenceDataset(shapes_rows, tok, mix, seed=3, understanding_turns=3)
    for position, sample in enumerate(samples):
        if sample["task"] != "vqa":
            continue
        ids = turned[position]["input_ids"].tolist()
        assert ids[:len(sample["input_ids"])] == sample["input_ids"].tolist()
        asked = ids.count(tok["[QUES]"])
        questions = annotations.unpack(shapes_rows[dataset.row_index(position)].annotations).questions
        assert asked == min(3, len(questions)) == ids.count(tok["[SEP]"])
        starts = [k for k, i in enumerate(ids) if i == tok["[QUES]"]]
        assert len({tuple(ids[k:ids.index(tok["[SEP]"], k)]) for k in starts}) == asked
        assert len(ids) <= sequence_length(shapes_rows.format, mix, understanding_turns=3)
    model = tiny_model(tok, max_positions=sequence_length(shapes_rows.format, mix)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = collate_sequences([s for s in samples if s["task"] in sequences.UNDERSTANDING_TASKS][:8], tok.pad_id)
    ids, positions = batch["input_ids"], batch["position_ids"]
    losses = []
    for _ in range(6):
        loss = next_token_loss(model(ids[:, :-1], positions[:, :-1]), ids[:, 1:], tok.pad_id, tok.codebook_size,
                               1.0).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_rows_without_a_tasks_material_never_draw_it(located, tmp_path):
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": "a white square", "questions": [{"question": "what colour?",
                                                                            "answer": "white"}]},
            {"image": "a.png", "caption": "nothing asked"}] * 40
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    output = tmp_path / "data"
    preprocess_data.main(cli_args(located, output, "--dataset", str(tmp_path / "list.jsonl"), "--workers", "0",
                                    "--location-bins", "32"))
    data = ShardedRows(output, located.tokenizer)
    with_questions = {k for k in range(len(data)) if annotations.unpack(data[k].annotations).questions}
    assert 0 < len(with_questions) < len(data)
    mixed = TaskSequenceDataset(data, located.tokenizer, {"image2text": 1.0, "vqa": 1.0, "referring": 1.0})
    for position in range(100):
        task = mixed[position]["task"]
        assert task != "referring"
        if task == "vqa":
            assert mixed.row_index(position) in with_questions
    # A mix of vqa alone hands rows without questions on to the next row that has some.
    only = TaskSequenceDataset(data, located.tokenizer, {"vqa": 1.0})
    assert all(only[p]["task"] == "vqa" for p in range(20))


def test_understanding_tasks_need_rows_with_annotations(tools, tmp_path):  # noqa: F811
    output = tmp_path / "plain"
    preprocess_data.main(cli_args(tools, output, "--dataset", "shapes", "--num-items", "4", "--workers", "0"))
    plain = UnifiedTokenizer.from_files(tools.sp, tools.vqvae.config.codebook_size)
    rows = ShardedRows(output, plain)
    assert rows.format.annotation_tokens == 0 and rows.manifest["tokenizer"]["location_bins"] == 0
    with pytest.raises(UserError, match="need.*annotations"):
        TaskSequenceDataset(rows, plain, {"vqa": 1.0})
