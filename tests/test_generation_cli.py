"""generate_samples.py end to end on a tiny checkpoint: files, metadata, manifest, and one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import generate_samples
from generation.outputs import read_manifest, read_png_metadata
from tests.generation_helpers import write_tiny_checkpoint
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def start_cli(*argv) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "generate_samples.py"), *map(str, argv)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_main(*argv):
    generate_samples.main([str(a) for a in argv])


def test_text2image_writes_pngs_with_metadata_grids_and_a_manifest(checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red\ta large red circle at the top left\n\n左上角有一个大的红色圆形\n", encoding="utf-8")
    out = tmp_path / "out"
    run_main("--load", checkpoint, "--input-source", prompts, "--batch-size", 3, "--seed", 10, "--cfg-scale", 2,
             "--negative-prompt", "a small blue square", "--top-p", 0.9, "--output-path", out, "--device", "cpu")
    for prompt_id, text in (("red", "a large red circle at the top left"), ("0001", "左上角有一个大的红色圆形")):
        for j in range(3):
            path = out / f"{prompt_id}_{j:03d}.png"
            with Image.open(path) as image:
                assert image.size == (64, 64)
            meta = read_png_metadata(path)
            assert (meta["prompt"], meta["seed"], meta["cfg_scale"], meta["top_p"]) == (text, 10 + j, 2.0, 0.9)
            assert meta["negative_prompt"] == "a small blue square" and meta["top_k"] == 200
        assert (out / f"{prompt_id}_grid.png").is_file()
    records = read_manifest(out)
    assert len(records) == 6 and {r["prompt"] for r in records} == {"a large red circle at the top left",
                                                                   "左上角有一个大的红色圆形"}
    assert all(json.loads(json.dumps(r)) == r for r in records)


def test_image_tasks_and_the_full_pipeline(checkpoint, tmp_path):
    images = tmp_path / "images"
    run_main("--load", checkpoint, "--prompt", "a small blue square in the center", "--batch-size", 2,
             "--output-path", images, "--device", "cpu")
    inputs = sorted(images.glob("0000_0*.png"))
    assert len(inputs) == 2

    captions = tmp_path / "captions"
    run_main("--load", checkpoint, "--generation-task", "image2text", "--input-images", images,
             "--max-caption-tokens", 5, "--output-path", captions, "--device", "cpu")
    records = read_manifest(captions)
    assert len(records) == 3 and all(isinstance(r["caption"], str) for r in records)  # 2 images + the grid

    reranked = tmp_path / "reranked"
    run_main("--load", checkpoint, "--generation-task", "image2text", "--input-images", *inputs,
             "--max-caption-tokens", 5, "--caption-candidates", 3, "--post-selection-score", "caption",
             "--output-path", reranked, "--device", "cpu")
    assert [r["candidates"] for r in read_manifest(reranked)] == [3, 3]

    ranked = tmp_path / "ranked"
    run_main("--load", checkpoint, "--generation-task", "post-selection", "--prompt", "a small blue square",
             "--input-images", *inputs, "--caption-model", checkpoint, "--output-path", ranked, "--device", "cpu")
    records = read_manifest(ranked)
    assert [r["rank"] for r in records] == [0, 1] and records[0]["score"] >= records[1]["score"]

    upscaled = tmp_path / "sr"
    run_main("--load", checkpoint, "--generation-task", "super-resolution", "--prompt", "a small blue square",
             "--input-images", inputs[0], "--output-path", upscaled, "--device", "cpu")
    with Image.open(upscaled / f"{inputs[0].stem}_sr.png") as image:
        assert image.size == (128, 128)

    texts = tmp_path / "texts.txt"
    texts.write_text("blue\ta small blue square in the center\nred\ta large red circle at the top left\n"
                     "zh\t左上角有一个大的红色圆形\n", encoding="utf-8")
    retrieved = tmp_path / "retrieved"
    run_main("--load", checkpoint, "--generation-task", "retrieval", "--input-source", texts,
             "--input-images", *inputs, "--output-path", retrieved, "--device", "cpu")
    records = read_manifest(retrieved)
    by_text, by_image = records[:3], records[3:]
    assert [r["text_id"] for r in by_text] == ["blue", "red", "zh"] and len(by_image) == 2
    for record in by_text:
        assert set(record["scores"]) == {str(p) for p in inputs}
        assert record["ranked_images"] == sorted(record["scores"], key=lambda p: -record["scores"][p])
    for record in by_image:
        assert record["input"] in {str(p) for p in inputs} and len(record["ranked_texts"]) == 3
        assert record["scores"] == {r["text_id"]: r["scores"][record["input"]] for r in by_text}

    attended = tmp_path / "attended"
    run_main("--load", checkpoint, "--generation-task", "attention-map", "--prompt", "a blue square",
             "--input-images", inputs[0], "--output-path", attended, "--device", "cpu")
    records = read_manifest(attended)
    assert [r["word"] for r in records] == ["a", "blue", "square"]
    for record in records:
        grid = torch.tensor(record["attention"])
        assert grid.shape == (8, 8) and float(grid.sum()) == pytest.approx(1.0, abs=1e-4)
        assert read_png_metadata(attended / record["file"])["word"] == record["word"]
    assert (attended / f"{inputs[0].stem}_words.png").is_file()

    full = tmp_path / "full"
    run_main("--load", checkpoint, "--generation-task", "text2image-full", "--prompt", "a red circle",
             "--batch-size", 2, "--output-path", full, "--device", "cpu")
    records = read_manifest(full)
    best = [r for r in records if r["file"] == "0000_best_sr.png"]
    assert len(best) == 1 and sorted(r["rank"] for r in records if "rank" in r) == [0, 1]
    assert read_png_metadata(full / "0000_best_sr.png")["prompt"] == "a red circle"


def test_flags_that_would_do_nothing_are_refused(checkpoint, tmp_path):
    with pytest.raises(UserError, match="--negative-prompt needs --cfg-scale"):
        run_main("--load", checkpoint, "--prompt", "x", "--negative-prompt", "y")
    with pytest.raises(UserError, match="--input-images is not used"):
        run_main("--load", checkpoint, "--prompt", "x", "--input-images", tmp_path)
    with pytest.raises(UserError, match="exactly one text"):
        run_main("--load", checkpoint, "--generation-task", "post-selection", "--input-images", tmp_path)
    with pytest.raises(UserError, match="--post-selection-score is not used"):
        run_main("--load", checkpoint, "--prompt", "x", "--post-selection-score", "caption")
    with pytest.raises(UserError, match="--caption-model matches caption candidates"):
        run_main("--load", checkpoint, "--generation-task", "image2text", "--input-images", tmp_path,
                 "--caption-model", checkpoint)


BAD_INPUTS = {
    "empty prompt": lambda ckpt, tmp: ["--load", ckpt, "--prompt", "   "],
    "empty prompt in a file": lambda ckpt, tmp: ["--load", ckpt, "--input-source", tmp / "prompts.txt"],
    "missing prompt file": lambda ckpt, tmp: ["--load", ckpt, "--input-source", tmp / "nope.txt"],
    "missing image": lambda ckpt, tmp: ["--load", ckpt, "--generation-task", "image2text", "--input-images",
                                        tmp / "nope.png"],
    "corrupt image": lambda ckpt, tmp: ["--load", ckpt, "--generation-task", "image2text", "--input-images",
                                        tmp / "corrupt.png"],
    "missing checkpoint": lambda ckpt, tmp: ["--load", tmp / "no_such_run", "--prompt", "a red circle"],
    "wrong VQ-VAE for the checkpoint": lambda ckpt, tmp: ["--load", ckpt, "--prompt", "a red circle",
                                                          "--vqvae", tmp / "other_vqvae"],
    "bad top-p": lambda ckpt, tmp: ["--load", ckpt, "--prompt", "a red circle", "--top-p", "1.5"],
}


@pytest.fixture
def bad_files(checkpoint, tmp_path):
    from vqvae.api import load_vqvae, save_vqvae

    (tmp_path / "prompts.txt").write_text("a red circle\nid7\t \n", encoding="utf-8")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    other = load_vqvae(checkpoint.parent / "vqvae")
    with torch.no_grad():
        other.quantize_t.embed.add_(1.0)
    save_vqvae(other, tmp_path / "other_vqvae")
    return tmp_path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_are_one_line_user_errors(checkpoint, bad_files, case):
    with pytest.raises(UserError) as error:
        run_main(*BAD_INPUTS[case](checkpoint, bad_files), "--output-path", bad_files / "out")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("argv", [["--load", "no_such_run", "--prompt", "a red circle"],
                                  ["--load", "no_such_run"]])  # no prompt, and stdin is not a terminal
def test_the_command_line_exits_2_with_one_error_line(tmp_path, argv):
    process = start_cli(*argv, "--output-path", tmp_path / "out")
    _, stderr = process.communicate(timeout=180)
    lines = stderr.strip().splitlines()
    assert process.returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr


def test_bf16_computes_in_bf16_close_to_fp32_and_is_reproducible(checkpoint, tmp_path):
    from generation.pipeline import Pipeline

    outputs = {}
    for precision in ("fp32", "bf16"):
        pipe = Pipeline.from_checkpoint(checkpoint, device="cpu", precision=precision)
        calls = []  # (logits dtype, logits) of every forward; the first is the prompt, the same in both
        pipe.model.register_forward_hook(lambda module, inputs, logits: calls.append(logits.detach().float())
                                         if not calls else None)
        dtypes = []
        first_linear = next(m for m in pipe.model.modules() if isinstance(m, torch.nn.Linear))
        first_linear.register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
        pipe.text2image("a red circle", n=2, seed=3)
        outputs[precision] = (calls[0], set(dtypes))
    (fp32_logits, fp32_dtypes), (bf16_logits, bf16_dtypes) = outputs["fp32"], outputs["bf16"]
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}
    assert not torch.equal(bf16_logits, fp32_logits)  # bf16 really ran
    scale = fp32_logits.abs().max()
    assert (bf16_logits - fp32_logits).abs().max() < 0.05 * scale  # and computed the same function
    assert torch.equal(bf16_logits.argmax(-1), fp32_logits.argmax(-1))

    for out in ("a", "b"):  # the command line: the same seed gives the same bf16 images, and says bf16
        run_main("--load", checkpoint, "--prompt", "a red circle", "--batch-size", 2, "--seed", 3,
                 "--precision", "bf16", "--output-path", tmp_path / out, "--device", "cpu")
    for j in range(2):
        with Image.open(tmp_path / "a" / f"0000_{j:03d}.png") as a, Image.open(tmp_path / "b" / f"0000_{j:03d}.png") as b:
            assert a.size == (64, 64) and a.tobytes() == b.tobytes()
        assert read_png_metadata(tmp_path / "a" / f"0000_{j:03d}.png")["precision"] == "bf16"


def test_a_deepspeed_save_folder_loads_like_an_export(checkpoint, tmp_path):
    from safetensors.torch import load_file

    save = tmp_path / "run"
    (save / "100").mkdir(parents=True)
    (save / "latest_checkpointed_iteration.txt").write_text("100")
    torch.save({"module": load_file(checkpoint / "model.safetensors")}, save / "100" / "mp_rank_00_model_states.pt")
    (save / "100" / "model_config.json").write_text((checkpoint / "model_config.json").read_text())
    for load, out in ((save, "a"), (checkpoint, "b")):
        run_main("--load", load, "--prompt", "a red circle", "--batch-size", 1, "--seed", 4, "--output-path", tmp_path / out)
    with Image.open(tmp_path / "a" / "0000_000.png") as a, Image.open(tmp_path / "b" / "0000_000.png") as b:
        assert a.tobytes() == b.tobytes()


def test_prompt_sources():
    import io

    from generation.prompts import collect_prompts, interactive_prompts

    assert [(p.id, p.text) for p in collect_prompts(["a", " b "], None)] == [("0000", "a"), ("0001", "b")]
    with pytest.raises(UserError, match="not both"):
        collect_prompts(["a"], "file.txt")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    typed = list(interactive_prompts(Terminal("a red circle\n\n左上角有一个大的红色圆形\n"), io.StringIO()))
    assert [(p.id, p.text) for p in typed] == [("0000", "a red circle"), ("0001", "左上角有一个大的红色圆形")]
    with pytest.raises(UserError, match="not a terminal"):
        interactive_prompts(io.StringIO("a\n"), io.StringIO())


def test_prompt_files(tmp_path):
    from generation.prompts import read_prompt_file

    path = tmp_path / "p.txt"
    path.write_text("\ufeffcat/1\ta red circle\n\n  \nsecond prompt\nx y\t中间有一个小的蓝色正方形\n", encoding="utf-8")
    assert [(p.id, p.text) for p in read_prompt_file(path)] == [
        ("cat_1", "a red circle"), ("0001", "second prompt"), ("x_y", "中间有一个小的蓝色正方形")]
    path.write_text("a\tone\na\ttwo\n", encoding="utf-8")
    with pytest.raises(UserError, match="appears twice"):
        read_prompt_file(path)
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(UserError, match="not UTF-8"):
        read_prompt_file(path)


def test_geometry_comes_from_the_metadata_or_from_the_position_table():
    from generation.loading import geometry_from
    from model import ModelConfig

    def config(positions: int, layout: str = "consecutive") -> ModelConfig:
        return ModelConfig(vocab_size=64, num_layers=1, hidden_size=8, num_attention_heads=1,
                           max_position_embeddings=positions, position_layout=layout)

    metadata = {"data": {"image_grid": 8, "text_max_tokens": 32, "lowres_grid": 4}}
    recorded = geometry_from(metadata, config(101))
    assert (recorded.image_grid, recorded.text_max_tokens, recorded.max_positions) == (8, 32, 101)
    assert recorded.text_positions is None
    assert geometry_from(metadata, config(101, "fixed-image")).text_positions == 32
    cogview = geometry_from({}, config(1089))  # CogView's release records nothing: 32x32 codes fit its 1089 positions
    assert (cogview.image_grid, cogview.text_max_tokens) == (32, 1089 - 1024 - 5)
    with pytest.raises(UserError, match="fits no image grid"):
        geometry_from({}, config(40))
    with pytest.raises(UserError, match="must record its text budget"):
        geometry_from({}, config(1089, "fixed-image"))


# ---------------------------------------------------------------- batches of input images

BAD_FILES = {"corrupt.png": "unreadable image", "empty.png": "empty file", "notes.txt": "not an image file",
             "tiny.png": "image too small"}


def write_mixed_folder(folder: Path) -> list[Path]:
    """Three readable images (the low-resolution size of the tiny checkpoint) among the four kinds of bad file."""
    folder.mkdir()
    good = []
    for i, colour in enumerate(((200, 30, 30), (30, 30, 200), (30, 200, 30))):
        good.append(folder / f"good_{i}.png")
        Image.new("RGB", (32, 32), colour).save(good[-1])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("these are my images", encoding="utf-8")
    Image.new("RGB", (4, 4), "red").save(folder / "tiny.png")
    return good


def skipped_listed(out: Path) -> dict[str, str]:
    """{file name: reason} of each input listed in skipped.txt."""
    listed = {}
    for line in (out / "skipped.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("  #"):
            source, _, rest = line.split(" ", 3)[-1].partition(": ")
            listed[Path(source).name] = rest.split(" (")[0]
    return listed


def scalar_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return set(EventAccumulator(str(log_dir)).Reload().Tags()["scalars"])


def test_image2text_skips_bad_files_lists_them_and_captions_the_rest(checkpoint, tmp_path):
    good = write_mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    process = start_cli("--load", checkpoint, "--generation-task", "image2text", "--input-images", tmp_path / "in",
                        "--max-caption-tokens", 4, "--output-path", out, "--device", "cpu",
                        "--tensorboard-dir", tmp_path / "tb")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert [r["input"] for r in read_manifest(out)] == [str(path) for path in good]
    assert len(stdout.strip().splitlines()) == 3  # one caption line per readable image
    assert skipped_listed(out) == BAD_FILES
    assert "4 item(s) skipped" in (out / "skipped.txt").read_text(encoding="utf-8")
    assert f"image2text: 3 input image(s) done, 4 skipped (listed in {out / 'skipped.txt'})" in stderr
    assert "generation/images_per_s" in scalar_tags(tmp_path / "tb")


def test_post_selection_and_super_resolution_skip_bad_files(checkpoint, tmp_path):
    good = write_mixed_folder(tmp_path / "in")
    run_main("--load", checkpoint, "--generation-task", "post-selection", "--prompt", "a red circle",
             "--input-images", tmp_path / "in", "--output-path", tmp_path / "ranked", "--device", "cpu",
             "--tensorboard-dir", tmp_path / "tb_ranked")
    assert sorted(r["input"] for r in read_manifest(tmp_path / "ranked")) == [str(path) for path in good]
    assert skipped_listed(tmp_path / "ranked") == BAD_FILES
    assert "generation/images_per_s" in scalar_tags(tmp_path / "tb_ranked")

    bad = sorted(tmp_path / "in" / name for name in BAD_FILES)
    run_main("--load", checkpoint, "--generation-task", "super-resolution", "--prompt", "a red circle",
             "--input-images", good[0], *bad, "--output-path", tmp_path / "sr", "--device", "cpu",
             "--tensorboard-dir", tmp_path / "tb_sr")
    assert [r["input"] for r in read_manifest(tmp_path / "sr")] == [str(good[0])]
    with Image.open(tmp_path / "sr" / "good_0_sr.png") as image:
        assert image.size == (64, 64)
    assert skipped_listed(tmp_path / "sr") == BAD_FILES
    assert "generation/images_per_s" in scalar_tags(tmp_path / "tb_sr")


def test_a_batch_with_nothing_readable_fails_in_one_line_and_lists_why(tmp_path):
    write_mixed_folder(tmp_path / "in")
    for path in (tmp_path / "in").glob("good_*"):
        path.unlink()
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^none of the 4 input files could be read as an image; .*skipped.txt lists"):
        run_main("--load", tmp_path / "no_such_run", "--generation-task", "image2text", "--input-images",
                 tmp_path / "in", "--output-path", out)
    assert skipped_listed(out) == BAD_FILES
