"""preprocess_data.py end to end: rows decode back to the data, bad items are skipped and counted, a killed
run resumes to exactly the rows of an uninterrupted one, and mismatched folders are refused."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import preprocess_data
from data_utils.image_sources import open_dataset
from data_utils.images import pil_to_tensor
from data_utils.shards import ShardedRows, read_manifest
from data_utils.text_tokenizer import train_sentencepiece
from data_utils.tokenizer import UnifiedTokenizer
from utils.errors import UserError
from vqvae.api import img2code, load_vqvae, save_vqvae, vqvae_fingerprint
from vqvae.config import VQVAEConfig
from vqvae.model import VQVAE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """A small SentencePiece model on shapes captions (both languages) and an untrained tiny VQ-VAE."""
    folder = tmp_path_factory.mktemp("tools")
    captions = open_dataset("shapes", num_items=1000, language="both")
    sp_model = train_sentencepiece((t for i in range(len(captions)) for t in captions.texts(i)), folder / "sp", 400)
    torch.manual_seed(0)
    save_vqvae(VQVAE(VQVAEConfig(codebook_size=64, embed_dim=16, hidden_channels=16, downsample=8)), folder / "vq")
    vqvae = load_vqvae(folder / "vq")
    tokenizer = UnifiedTokenizer.from_files(sp_model, vqvae.config.codebook_size)  # as preprocessed: no location bins
    return SimpleNamespace(sp=str(sp_model), vq=str(folder / "vq"), vqvae=vqvae, tokenizer=tokenizer)


def cli_args(tools, output: Path, *extra: str) -> list[str]:
    return ["--text-tokenizer", tools.sp, "--vqvae", tools.vq, "--output", str(output), *extra]


def test_rows_decode_back_to_captions_and_codes(tools, tmp_path):
    output = tmp_path / "data"
    preprocess_data.main(cli_args(tools, output, "--dataset", "shapes", "--num-items", "40", "--language", "both",
                                  "--chunk-size", "16", "--workers", "2", "--with-lowres", "--text-max-tokens", "64"))
    rows = ShardedRows(output, tools.tokenizer, vqvae_fingerprint(tools.vqvae))  # 64: no caption is truncated
    source = open_dataset("shapes", num_items=40, language="both")
    assert len(rows) == 40
    assert rows.format.image_grid == 8 and rows.format.lowres_grid == 4 and rows.format.dtype == "uint16"
    for i in range(len(rows)):
        row, item = rows[i], source.item(i)
        assert row.source_index == i
        assert tools.tokenizer.decode_text(row.text_ids) == item.caption
        image = pil_to_tensor(item.image)[None]
        assert np.array_equal(row.image, img2code(tools.vqvae, image)[0].numpy())
        half = item.image.resize((32, 32), Image.Resampling.BICUBIC)
        assert np.array_equal(row.lowres, img2code(tools.vqvae, pil_to_tensor(half)[None])[0].numpy())
    manifest = rows.manifest
    assert manifest["complete"] and manifest["num_chunks"] == 3
    assert [shard["rows"] for shard in manifest["shards"]] == [16, 16, 8]
    assert manifest["counts"] == {"items": 40, "rows": 40, "skipped": 0, "truncated": 0, "annotations_dropped": 0,
                                  "skipped_by_reason": {}}
    assert manifest["tokenizer"]["fingerprint"] == tools.tokenizer.fingerprint()
    assert manifest["dataset"]["args"]["language"] == "both"
    assert (output / "skipped.txt").read_text().strip() == "no items skipped"


def test_long_captions_are_truncated_and_counted(tools, tmp_path):
    output = tmp_path / "data"
    preprocess_data.main(cli_args(tools, output, "--dataset", "shapes", "--num-items", "30", "--workers", "0",
                                  "--text-max-tokens", "5"))
    rows = ShardedRows(output)
    source = open_dataset("shapes", num_items=30)
    full = [tools.tokenizer.encode_text(source.caption(i)) for i in range(30)]
    assert rows.manifest["counts"]["truncated"] == sum(len(ids) > 5 for ids in full) > 0
    for i in range(30):
        assert rows[i].text_ids.tolist() == full[i][:5]


def _write_image(path: Path, side: int, colour: tuple[int, int, int]) -> None:
    Image.new("RGB", (side, side), colour).save(path)


def test_bad_items_are_skipped_counted_and_listed(tools, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, colour in (("good_a", (200, 0, 0)), ("good_b", (0, 200, 0)), ("good_c", (0, 0, 200))):
        _write_image(folder / f"{name}.png", 80, colour)
        (folder / f"{name}.txt").write_text(f"a plain {name} square")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    (folder / "corrupt.txt").write_text("a broken file")
    _write_image(folder / "tiny.png", 6, (10, 10, 10))
    (folder / "tiny.txt").write_text("a very small image")
    _write_image(folder / "uncaptioned.png", 64, (50, 50, 50))
    assert len(open_dataset(str(folder))) == 6  # every file is in the train split

    output = tmp_path / "data"
    preprocess_data.main(cli_args(tools, output, "--dataset", str(folder), "--workers", "1", "--chunk-size", "4"))
    rows = ShardedRows(output)
    manifest = rows.manifest
    assert manifest["complete"]
    assert manifest["counts"]["rows"] == len(rows) == 3 and manifest["counts"]["items"] == 6
    assert manifest["counts"]["skipped_by_reason"] == {"unreadable image": 1, "image too small": 1,
                                                       "missing caption": 1}
    assert {(entry["source"], entry["reason"]) for entry in manifest["skipped"]} == {
        ("corrupt.png", "unreadable image"), ("tiny.png", "image too small"), ("uncaptioned.png", "missing caption")}
    assert sorted(tools.tokenizer.decode_text(rows[i].text_ids) for i in range(3)) == [
        "a plain good_a square", "a plain good_b square", "a plain good_c square"]
    report = (output / "skipped.txt").read_text()
    assert "3 item(s) skipped" in report and "tiny.png" in report and "image too small" in report


def _all_rows(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = ShardedRows(data_dir)
    raw = np.concatenate([np.fromfile(data_dir / shard["file"], dtype=rows.format.dtype)
                          for shard in rows.manifest["shards"]])
    return raw.reshape(-1, rows.format.row_length), rows.source_indices()


def _listed_shards(output: Path) -> int:
    try:
        return len(json.loads((output / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):  # not written yet
        return 0


def test_killed_run_resumes_to_the_same_rows(tools, tmp_path):
    num_items, chunk = 480, 16
    args = ["--dataset", "shapes", "--num-items", str(num_items), "--chunk-size", str(chunk), "--with-lowres"]
    output = tmp_path / "killed"
    command = [sys.executable, "preprocess_data.py", *cli_args(tools, output, *args)]
    process = subprocess.Popen([*command, "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _listed_shards(output) < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the script and its workers, mid-run
        process.wait()
    manifest = read_manifest(output)
    assert 1 <= len(manifest["shards"]) < manifest["num_chunks"] and not manifest["complete"]
    with pytest.raises(UserError, match="unfinished"):
        ShardedRows(output)
    # What a kill can leave besides listed shards: a temp file and the shard of an unfinished chunk.
    unfinished = preprocess_data.pending_chunks(manifest)[0]
    (output / f".shard_{unfinished:05d}.bin.x1y2.tmp").write_bytes(b"partial")
    (output / f"shard_{unfinished:05d}.bin").write_bytes(b"stale")

    # The worker count may change between runs (it does not decide the rows); in-process saves a spawn.
    resumed = subprocess.run([*command, "--workers", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    assert not list(output.glob(".*.tmp"))

    reference = tmp_path / "reference"
    preprocess_data.main(cli_args(tools, reference, *args, "--workers", "0"))
    rows, indices = _all_rows(output)
    expected_rows, expected_indices = _all_rows(reference)
    assert sorted(indices.tolist()) == list(range(num_items))
    assert np.array_equal(indices, expected_indices)
    assert np.array_equal(rows, expected_rows)
    assert read_manifest(output)["counts"] == read_manifest(reference)["counts"]


def test_resume_with_other_settings_or_models_is_refused(tools, tmp_path):
    output = tmp_path / "data"
    base = ["--dataset", "shapes", "--num-items", "8", "--workers", "0"]
    preprocess_data.main(cli_args(tools, output, *base))
    with pytest.raises(UserError, match=r"different preprocess text_max_tokens \(32, now 16\).*fresh --output"):
        preprocess_data.main(cli_args(tools, output, *base, "--text-max-tokens", "16"))
    other_vq = tmp_path / "other_vq"
    torch.manual_seed(1)
    save_vqvae(VQVAE(tools.vqvae.config), other_vq)
    with pytest.raises(UserError, match="different VQ-VAE"):
        preprocess_data.main(["--text-tokenizer", tools.sp, "--vqvae", str(other_vq), "--output", str(output), *base])
    preprocess_data.main(cli_args(tools, output, *base))  # same settings: already complete, nothing to do
    assert read_manifest(output)["counts"]["rows"] == 8


def test_two_object_fraction_is_recorded_and_refused_off_shapes(tools, tmp_path):
    output = tmp_path / "data"
    preprocess_data.main(cli_args(tools, output, "--dataset", "shapes", "--num-items", "8", "--workers", "0",
                                  "--two-object-fraction", "1"))
    manifest = read_manifest(output)
    assert manifest["dataset"]["args"]["two_object_fraction"] == 1.0
    assert manifest["preprocess"]["two_object_fraction"] == 1.0
    with pytest.raises(UserError, match="different preprocess two_object_fraction"):
        preprocess_data.main(cli_args(tools, output, "--dataset", "shapes", "--num-items", "8", "--workers", "0"))
    with pytest.raises(SystemExit):
        preprocess_data.parse_args(cli_args(tools, output, "--dataset", "emoji", "--two-object-fraction", "0.8"))
    with pytest.raises(SystemExit):
        preprocess_data.parse_args(cli_args(tools, output, "--dataset", "shapes", "--two-object-fraction", "2"))


def test_reader_refuses_other_tokenizer_or_vqvae(tools, tmp_path):
    output = tmp_path / "data"
    preprocess_data.main(cli_args(tools, output, "--dataset", "shapes", "--num-items", "4", "--workers", "0"))
    other_tokenizer = UnifiedTokenizer(tools.tokenizer.text_tokenizer, codebook_size=128)
    with pytest.raises(UserError) as error:
        ShardedRows(output, tokenizer=other_tokenizer)
    message = str(error.value)
    assert "\n" not in message and "re-run preprocess_data.py" in message
    assert f"tokenizer {tools.tokenizer.fingerprint()} but the current tokenizer is {other_tokenizer.fingerprint()}" \
        in message
    with pytest.raises(UserError, match="encoded with VQ-VAE .* but the current VQ-VAE is 0123456789abcdef"):
        ShardedRows(output, vqvae_fingerprint="0123456789abcdef")


def test_missing_vqvae_is_one_line_error(tools, tmp_path):
    command = [sys.executable, "preprocess_data.py", "--dataset", "shapes", "--num-items", "4", "--text-tokenizer",
               tools.sp, "--vqvae", str(tmp_path / "nowhere"), "--output", str(tmp_path / "data")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: VQ-VAE not found: {tmp_path / 'nowhere'}"]
