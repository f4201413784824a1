"""Super-resolution's magnification: training and generation cut the same window crops, highres codes are
stored and recorded by preprocessing, a model that never trained the windows refuses to magnify in one line,
and super-resolution's greedy default reaches every entry point."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import preprocess_data
from data_utils.dataset import TaskSequenceDataset
from data_utils.image_sources import open_dataset
from data_utils.images import pil_to_tensor
from data_utils.shapes_checker import check_image
from data_utils.shards import FORMAT_VERSION, RowFormat, ShardedRows, write_manifest, write_shard
from data_utils import sequences
from data_utils.sr_windows import SR_CONDITIONS, condition_grid, magnify_windows
from data_utils.text_tokenizer import train_sentencepiece
from data_utils.tokenizer import UnifiedTokenizer
from generation import tasks
from generation.decoding import SAMPLE
from generation.loading import geometry_from
from generation.pipeline import Pipeline
from model.config import ModelConfig
from tests.generation_helpers import tiny_geometry, tiny_model, tiny_tokenizer, write_tiny_checkpoint
from utils.errors import UserError
from vqvae.api import img2code, load_vqvae, save_vqvae, vqvae_fingerprint
from vqvae.config import VQVAEConfig
from vqvae.model import VQVAE

GRID, TEXT_MAX = 8, 16


def write_rows(folder: Path, tok: UnifiedTokenizer, num_rows: int, highres: bool, without_highres: set[int] = (),
               condition: str = "lowres") -> list:
    """Rows of random codes (highres codes too, except for the rows in `without_highres`), with the
    super-resolution `condition`'s fields."""
    codebook = tok.codebook_size
    lo = condition_grid(condition, GRID // 2)
    row_format = RowFormat(TEXT_MAX, GRID, lo, RowFormat.dtype_for_vocab(tok.vocab_size),
                           2 * GRID if highres else None, sr_condition=condition)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(num_rows):
        text = np.array(tok.encode_text(["a red circle", "square"][i % 2], TEXT_MAX))
        big = rng.integers(0, codebook, (2 * GRID, 2 * GRID)) if highres and i not in without_highres else None
        upsampled = rng.integers(0, codebook, (2 * GRID, 2 * GRID)) if row_format.upsampled_grid else None
        rows.append(row_format.pack(text, rng.integers(0, codebook, (GRID, GRID)), rng.integers(0, codebook, (lo, lo)),
                                    tok.pad_id, big, upsampled=upsampled))
    shard = write_shard(folder, 0, np.stack(rows), np.arange(num_rows), row_format)
    write_manifest(folder, {"format_version": FORMAT_VERSION, **row_format.to_dict(), "tokenizer": tok.describe(),
                            "vqvae": {"path": "vq", "fingerprint": "f"}, "num_chunks": 1, "complete": True,
                            "shards": [shard]})
    return rows


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("condition", SR_CONDITIONS)
def test_training_windows_and_inference_windows_cut_the_same_crops(tok, tmp_path, monkeypatch, condition):
    """A 'model' that has memorised the training samples of one row (every window and the whole image)
    magnifies that row's image to exactly its highres codes: generation asks each window with the very
    prompt training built for it (same crop, same [POS k]) and writes the answer where training took it from,
    and the codes it feeds as fixed are the ones training showed there. With the "upsampled" condition
    generation reads the codes of the image upsampled (the row's upsampled field) and of the low-resolution
    input upsampled (its lowres field, at the image grid)."""
    write_rows(tmp_path, tok, 2, highres=True, condition=condition)
    data = TaskSequenceDataset(ShardedRows(tmp_path), tok, {"super_resolution": 1.0})
    row = data.rows[1]
    answers = {}
    for window in [None, *magnify_windows(GRID)]:
        ids = data.super_resolution_sequence(row, window).ids
        boi2 = ids.index(tok["[BOI2]"])
        answers[tuple(ids[:boi2 + 1])] = torch.tensor(ids[boi2 + 1:-1])

    def memorised(model, requests, spec, max_batch_rows, description=""):
        outputs = []
        for request in requests:
            answer = answers[tuple(request.prompt.ids)]  # KeyError: a prompt training never built
            fixed = request.forced != SAMPLE
            assert torch.equal(request.forced[fixed], answer[fixed])
            outputs.append(answer)
        return outputs

    monkeypatch.setattr(tasks, "decode", memorised)
    geometry = replace(tiny_geometry(magnifies=True), sr_condition=condition)
    text = [row.text_ids.tolist()]
    source = row.image if condition == "lowres" else row.upsampled
    magnified = tasks.super_resolve_codes(None, tok, geometry, torch.from_numpy(source)[None], text, 0,
                                          tasks.SUPER_RESOLUTION_SAMPLING, 8)
    assert torch.equal(magnified[0], torch.from_numpy(row.highres))
    whole = tasks.super_resolve_codes(None, tok, geometry, torch.from_numpy(row.lowres)[None], text, 0,
                                      tasks.SUPER_RESOLUTION_SAMPLING, 8)
    assert torch.equal(whole[0], torch.from_numpy(row.image))
    assert len(answers) == 10 and (condition == "lowres") == (row.lowres.shape == (GRID // 2, GRID // 2))


def test_the_default_condition_keeps_old_rows_and_checkpoints_as_they_were(tok, tmp_path):
    """Rows and checkpoints that record no condition read as "lowres": the same field table (no condition
    key, no upsampled field), CogView's sequence (the half-size codes under their own grid token, window
    conditions cropped from the image codes), and a geometry with the "lowres" condition."""
    rows = write_rows(tmp_path, tok, 1, highres=True)
    data = TaskSequenceDataset(ShardedRows(tmp_path), tok, {"super_resolution": 1.0})
    assert data.rows.format.sr_condition == "lowres" and rows[0].shape == (data.rows.format.annotations_offset,)
    assert [field["name"] for field in data.rows.manifest["fields"]] == ["text_len", "text", "image", "lowres",
                                                                           "highres"]
    assert "condition" not in data.rows.manifest["fields"][3]
    row, window = data.rows[0], magnify_windows(GRID)[4]
    ids = data.super_resolution_sequence(row, window).ids
    lo = torch.from_numpy(row.image[2:6, 2:6].copy())
    expected = sequences.super_resolution(tok, row.text_ids, lo, GRID // 2, GRID,
                                          torch.from_numpy(row.highres[4:12, 4:12].copy()), window=4)
    assert ids == expected.ids and tok.grid_token(GRID // 2) in ids
    config = ModelConfig(vocab_size=64, num_layers=1, hidden_size=8, num_attention_heads=1, max_position_embeddings=112)
    old = {"image_grid": 8, "text_max_tokens": 16, "lowres_grid": 4, "sr_windows": True}
    assert geometry_from({"data": old}, config).sr_condition == "lowres"
    assert geometry_from({"data": {**old, "sr_condition": "upsampled"}}, config).sr_condition == "upsampled"
    with pytest.raises(UserError) as refused:
        geometry_from({"data": {**old, "sr_condition": "sharpened"}}, config)
    assert "\n" not in str(refused.value) and "upsampled" in str(refused.value)


def test_training_records_the_condition_in_the_checkpoint_metadata():
    from pretrain_gpt2 import data_geometry

    assert data_geometry(RowFormat(16, 8, 8, "uint16", 16, sr_condition="upsampled"))["sr_condition"] == "upsampled"
    assert data_geometry(RowFormat(16, 8, 4, "uint16"))["sr_condition"] == "lowres"
    with pytest.raises(ValueError, match="condition"):
        RowFormat(16, 8, 4, "uint16", sr_condition="upsampled")  # a half-size field under the upsampled name


def test_windows_train_only_from_rows_with_highres_codes(tok, tmp_path):
    with_highres, without = tmp_path / "with", tmp_path / "without"
    with_highres.mkdir(), without.mkdir()
    write_rows(with_highres, tok, 4, highres=True, without_highres={3})
    write_rows(without, tok, 4, highres=False)
    rows = ShardedRows(with_highres)
    assert rows[3].highres is None and rows[2].highres is not None
    pos = {tok.position_token(k): k for k in range(9)}

    def windows_drawn(data: TaskSequenceDataset, row: int) -> set[int]:
        seen = set()
        for position in range(400):
            if data.row_index(position) == row:
                ids = data[position]["input_ids"].tolist()
                seen.add(pos[ids[ids.index(tok["[ROI2]"]) + 1]])
        return seen

    data = TaskSequenceDataset(rows, tok, {"super_resolution": 1.0})
    assert data.trains_windows and windows_drawn(data, 2) == set(range(9)) and windows_drawn(data, 3) == {0}
    plain = TaskSequenceDataset(ShardedRows(without), tok, {"super_resolution": 1.0})
    assert not plain.trains_windows and windows_drawn(plain, 2) == {0}
    assert not TaskSequenceDataset(rows, tok, {"text2image": 1.0}).trains_windows


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tools")
    captions = open_dataset("shapes", num_items=500)
    sp_model = train_sentencepiece((captions.caption(i) for i in range(len(captions))), folder / "sp", 300)
    torch.manual_seed(0)
    save_vqvae(VQVAE(VQVAEConfig(codebook_size=64, embed_dim=16, hidden_channels=16, downsample=8)), folder / "vq")
    return SimpleNamespace(sp=str(sp_model), vq=str(folder / "vq"), vqvae=load_vqvae(folder / "vq"))


def test_preprocessing_stores_highres_codes_of_the_scene_at_twice_the_size(tools, tmp_path):
    output = tmp_path / "data"
    args = ["--text-tokenizer", tools.sp, "--vqvae", tools.vq, "--dataset", "shapes", "--num-items", "6",
            "--workers", "0", "--with-lowres"]
    preprocess_data.main([*args, "--with-highres", "--output", str(output)])
    rows = ShardedRows(output)
    manifest = rows.manifest
    assert rows.format.highres_grid == 16 and manifest["preprocess"]["with_highres"] is True
    assert {"name": "highres", "offset": rows.format.highres_offset, "length": 256, "grid": 16,
            "missing_code": 65535} in manifest["fields"]
    assert manifest["counts"]["highres_missing"] == 0
    assert manifest["vqvae"]["fingerprint"] == vqvae_fingerprint(tools.vqvae)
    source = open_dataset("shapes", num_items=6)
    for i in range(6):
        item = source.item(i)
        big = source.double_size(item)
        assert big.size == (128, 128) and check_image(big, [o for o in source.objects(i)]).correct
        assert np.array_equal(rows[i].highres, img2code(tools.vqvae, pil_to_tensor(big)[None])[0].numpy())
    with pytest.raises(UserError, match="with_highres"):  # resuming it without the flag is another job
        preprocess_data.main([*args, "--output", str(output)])
    with pytest.raises(SystemExit):
        preprocess_data.main([*args[:-1], "--with-highres", "--output", str(tmp_path / "x")])


def test_preprocessing_stores_the_upsampled_condition_and_refuses_to_resume_with_another(tools, tmp_path):
    """With --sr-condition upsampled the lowres field holds the codes of the half-size image bicubic-upsampled
    back (at the image grid) and the upsampled field those of the image upsampled to twice its side; the
    manifest records the condition, and a resume with the default condition is refused in one line."""
    from PIL import Image

    output = tmp_path / "data"
    args = ["--text-tokenizer", tools.sp, "--vqvae", tools.vq, "--dataset", "shapes", "--num-items", "4",
            "--workers", "0", "--with-lowres", "--with-highres", "--output", str(output)]
    preprocess_data.main([*args, "--sr-condition", "upsampled"])
    rows = ShardedRows(output)
    fields = {field["name"]: field for field in rows.manifest["fields"]}
    assert rows.format.sr_condition == "upsampled" and rows.manifest["preprocess"]["sr_condition"] == "upsampled"
    assert fields["lowres"]["grid"] == 8 and fields["lowres"]["condition"] == "upsampled"
    assert fields["upsampled"]["grid"] == 16
    source = open_dataset("shapes", num_items=4)

    def codes(image: Image.Image) -> np.ndarray:
        return img2code(tools.vqvae, pil_to_tensor(image)[None])[0].numpy()

    for i in range(4):
        image = source.item(i).image
        small = image.resize((32, 32), Image.Resampling.BICUBIC)
        assert np.array_equal(rows[i].lowres, codes(small.resize((64, 64), Image.Resampling.BICUBIC)))
        assert np.array_equal(rows[i].upsampled, codes(image.resize((128, 128), Image.Resampling.BICUBIC)))
        assert np.array_equal(rows[i].highres, codes(source.double_size(source.item(i))))
    data = TaskSequenceDataset(rows, UnifiedTokenizer.from_files(tools.sp, 64), {"super_resolution": 1.0})
    ids = data.super_resolution_sequence(rows[0], None).ids
    assert ids[ids.index(data.tokenizer["[BOI1]"]) - 1] == data.tokenizer.grid_token(8)  # the condition's own grid
    with pytest.raises(UserError, match="sr_condition") as refused:
        preprocess_data.main(args)
    assert "\n" not in str(refused.value)
    with pytest.raises(SystemExit):
        preprocess_data.main([*args[:-4], "--output", str(tmp_path / "x"), "--sr-condition", "upsampled"])


def test_files_too_small_for_twice_the_size_keep_their_row_without_highres(tools, tmp_path):
    from PIL import Image

    folder = tmp_path / "files"
    folder.mkdir()
    for index, side in enumerate((160, 64, 128, 100, 256, 90, 130, 200, 64, 140, 150, 70)):
        Image.new("RGB", (side, side), (200, 30, 30)).save(folder / f"{index:02d}.png")
        (folder / f"{index:02d}.txt").write_text("a red square")
    output = tmp_path / "data"
    preprocess_data.main(["--text-tokenizer", tools.sp, "--vqvae", tools.vq, "--dataset", str(folder),
                          "--workers", "0", "--with-lowres", "--with-highres", "--output", str(output)])
    rows, source = ShardedRows(output), open_dataset(str(folder))
    have = [rows[i].highres is not None for i in range(len(rows))]
    expected = [min(Image.open(source.item(int(index)).source).size) >= 128 for index in rows.source_indices()]
    assert have == expected and rows.manifest["counts"]["highres_missing"] == expected.count(False) > 0


# ---------------------------------------------------------------- refusal

def test_a_model_without_windows_refuses_to_magnify_in_one_line(tok):
    geometry = tiny_geometry(magnifies=False)
    codes = torch.zeros((1, GRID, GRID), dtype=torch.long)
    with pytest.raises(UserError) as refused:
        tasks.super_resolve_codes(None, tok, geometry, codes, [[]], 0, tasks.SUPER_RESOLUTION_SAMPLING, 8)
    assert "\n" not in str(refused.value) and "--with-highres" in str(refused.value)

    class Untouchable(torch.nn.Module):  # refused before anything is sampled
        def forward(self, *args, **kwargs):
            raise AssertionError("the model ran")

    pipe = Pipeline(Untouchable(), tok, vqvae=None, geometry=geometry)
    with pytest.raises(UserError, match="cannot magnify"):
        pipe.text2image_select_upscale("a red circle", n=2)


def test_old_checkpoints_do_not_magnify_and_windowed_ones_do():
    config = ModelConfig(vocab_size=64, num_layers=1, hidden_size=8, num_attention_heads=1, max_position_embeddings=112)
    data = {"image_grid": 8, "text_max_tokens": 16, "lowres_grid": 4}
    assert not geometry_from({"data": data}, config).magnifies
    assert geometry_from({"data": {**data, "sr_windows": True}}, config).magnifies
    assert not geometry_from({"data": {**data, "sr_windows": False}}, config).magnifies


def test_text2image_full_of_a_model_without_windows_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", sr_windows=False)
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "generate_samples.py", "--load", str(checkpoint), "--generation-task",
                             "text2image-full", "--prompt", "a red circle", "--batch-size", "2", "--output-path",
                             str(tmp_path / "out"), "--device", "cpu"], cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot magnify" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr


# ---------------------------------------------------------------- default settings

@pytest.fixture
def recorded_settings(monkeypatch):
    """Every `tasks.super_resolve_codes` call's settings, the call itself going through."""
    seen = []
    real = tasks.super_resolve_codes

    def spy(model, tok, geometry, codes, text_ids, seed, settings, max_batch_rows):
        seen.append(settings)
        return real(model, tok, geometry, codes, text_ids, seed, settings, max_batch_rows)

    monkeypatch.setattr(tasks, "super_resolve_codes", spy)
    return seen


def test_greedy_is_the_default_of_every_super_resolution_entry_point(tok, recorded_settings, tmp_path):
    from generation import pipeline as pipeline_module
    from vqvae.model import VQVAE as Model

    torch.manual_seed(0)
    vqvae = Model(VQVAEConfig(codebook_size=tok.codebook_size, embed_dim=8, hidden_channels=16,
                              num_res_blocks=0)).eval()
    pipe = Pipeline(tiny_model(tok), tok, vqvae, tiny_geometry())
    assert pipeline_module.tasks is tasks
    small = [pil_to_tensor(open_dataset("shapes", size=32, num_items=1).item(0).image)]
    pipe.super_resolve(torch.stack(small), "a red circle")
    pipe.super_resolve(torch.stack(small), "a red circle", top_k=5, temperature=0.7)
    pipe.text2image_select_upscale("a red circle", n=2, top_k=200, temperature=1.0)
    assert recorded_settings == [tasks.SUPER_RESOLUTION_SAMPLING,
                                 tasks.SamplingSettings(temperature=0.7, top_k=5), tasks.SUPER_RESOLUTION_SAMPLING]
    assert tasks.SUPER_RESOLUTION_SAMPLING.top_k == 1  # greedy


def test_every_entry_point_follows_the_upsampled_condition(tok, monkeypatch):
    """A model trained on the "upsampled" condition reads, at every entry point, the codes of its input
    bicubic-upsampled to the target's size: a 32 px input at the 8x8 grid, a 64 px image to magnify at 16x16,
    and text2image_select_upscale's pick decoded and upsampled, as training's rows were made."""
    from PIL import Image

    from vqvae.model import VQVAE as Model

    torch.manual_seed(0)
    vqvae = Model(VQVAEConfig(codebook_size=tok.codebook_size, embed_dim=8, hidden_channels=16,
                              num_res_blocks=0)).eval()
    pipe = Pipeline(tiny_model(tok), tok, vqvae, replace(tiny_geometry(), sr_condition="upsampled"))
    seen = []
    real = tasks.super_resolve_codes
    monkeypatch.setattr(tasks, "super_resolve_codes",
                        lambda model, t, geometry, codes, *rest: seen.append(codes) or real(model, t, geometry, codes,
                                                                                             *rest))

    def codes(image: Image.Image, side: int) -> torch.Tensor:
        return img2code(vqvae, pil_to_tensor(image.resize((side, side), Image.Resampling.BICUBIC))[None])[0]

    small, image = (open_dataset("shapes", size=size, num_items=1).item(0).image for size in (32, 64))
    assert pipe.super_resolve([small], "a red circle")[0].size == (64, 64)
    assert pipe.super_resolve([image], "a red circle")[0].size == (128, 128)
    selected = pipe.text2image_select_upscale("a red circle", n=2)[0]
    pick = pipe.decode_codes(selected.candidates.codes[selected.best:selected.best + 1])[0]
    assert [tuple(c.shape) for c in seen] == [(1, 8, 8), (1, 16, 16), (1, 16, 16)]
    assert torch.equal(seen[0][0], codes(small, 64)) and torch.equal(seen[1][0], codes(image, 128))
    assert torch.equal(seen[2][0], codes(pick, 128)) and selected.upscaled.size == (128, 128)
    # The copy baseline decodes exactly the condition the 32 px input gave; "lowres" has none.
    copied = pipe.super_resolution_copy([small])
    assert np.array_equal(np.asarray(copied[0]), np.asarray(pipe.decode_codes(seen[0])[0]))
    assert Pipeline(tiny_model(tok), tok, vqvae, tiny_geometry()).super_resolution_copy([small]) is None


def test_generate_samples_and_evaluate_use_the_default(tmp_path, monkeypatch):
    import evaluate
    import generate_samples

    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt")
    image = tmp_path / "small.png"
    open_dataset("shapes", size=32, num_items=1).item(0).image.save(image)
    common = ["--load", str(checkpoint), "--generation-task", "super-resolution", "--prompt", "a red circle",
              "--input-images", str(image), "--device", "cpu"]
    generate_samples.main([*common, "--output-path", str(tmp_path / "a")])
    generate_samples.main([*common, "--top-k", "7", "--output-path", str(tmp_path / "b")])
    records = [json.loads((tmp_path / out / "manifest.jsonl").read_text().splitlines()[0]) for out in "ab"]
    assert (records[0]["top_k"], records[0]["temperature"]) == (1, 1.0) and records[1]["top_k"] == 7

    seen = []
    real = Pipeline.super_resolve
    monkeypatch.setattr(Pipeline, "super_resolve", lambda self, *a, **k: seen.append(k) or real(self, *a, **k))
    evaluate.main(["--load", str(checkpoint), "--sections", "sr", "--num-prompts", "2", "--device", "cpu",
                   "--output-json", str(tmp_path / "eval.json"), "--top-k", "200"])
    report = json.loads((tmp_path / "eval.json").read_text())["sections"]["sr"]
    assert seen and all(set(k) == {"seed"} for k in seen)  # no sampling flags: super-resolution's default
    assert report["sampling"] == tasks.SUPER_RESOLUTION_SAMPLING.to_dict()
    assert {"checker_input", "checker_output", "checker_bicubic"} <= set(report)


def test_finetuning_rows_follow_the_base_models_condition(tok):
    """Fine-tuning's rows (finetune.data.tokenise) condition super-resolution as the base model did."""
    from PIL import Image

    from finetune.data import tokenise
    from vqvae.model import VQVAE as Model

    torch.manual_seed(0)
    vqvae = Model(VQVAEConfig(codebook_size=tok.codebook_size, embed_dim=8, hidden_channels=16,
                              num_res_blocks=0)).eval()
    image = open_dataset("shapes", size=64, num_items=1).item(0).image
    for condition, grid in (("lowres", 4), ("upsampled", 8)):
        geometry = replace(tiny_geometry(), sr_condition=condition)
        rows = tokenise([image], ["a red circle"], tok, vqvae, geometry, with_lowres=True, name="x")
        assert rows.format.sr_condition == condition and rows[0].lowres.shape == (grid, grid)
    upsampled = image.resize((32, 32), Image.Resampling.BICUBIC).resize((64, 64), Image.Resampling.BICUBIC)
    assert np.array_equal(rows[0].lowres, img2code(vqvae, pil_to_tensor(upsampled)[None])[0].numpy())
    plain = tokenise([image], ["a red circle"], tok, vqvae, geometry, with_lowres=False, name="x")
    assert plain.format.lowres_grid is None
