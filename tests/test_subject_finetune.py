"""finetune_subject.py end to end on a tiny base: class images cached and resumed, a killed run resumes to
the same adapter, each mode saves only what it trained, and the adapter loads in generation and export."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from checkpoints.trackers import write_latest_iteration
from data_utils.subject import class_prompts
from finetune.adapters import apply_adapters, read_adapter
from finetune.class_images import ensure_class_images, image_path
from finetune.data import identifier_pieces, read_instance_folder
from generation.pipeline import Pipeline
from generation.sampling import SamplingSettings
from model.config_file import CONFIG_FILE
from tests.subject_helpers import write_base, write_instances
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("subject")
    exported = write_base(root / "base")
    # a DeepSpeed-layout copy of the base, which export_model.py reads
    from checkpoints.readers import read_safetensors

    ds = root / "base_ds"
    (ds / "1").mkdir(parents=True)
    torch.save({"module": read_safetensors(exported / "model.safetensors")}, ds / "1" / "mp_rank_00_model_states.pt")
    shutil.copy(exported / CONFIG_FILE, ds / "1" / CONFIG_FILE)
    write_latest_iteration(ds, 1)
    prompts = root / "class.txt"
    prompts.write_text("\n".join(p.text for p in class_prompts(4)) + "\n", encoding="utf-8")
    return SimpleNamespace(root=root, base=ds, instances=write_instances(root / "instances"), prompts=prompts)


def finetune(setup, save: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "finetune_subject.py"), "--base", str(setup.base), "--instance-data",
           str(setup.instances), "--train-iters", "4", "--batch-size", "2", "--lr", "1e-2", "--save", str(save),
           "--save-interval", "2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_lora_run_resumes_to_the_same_adapter_and_loads_everywhere(setup, tmp_path):
    prior = ["--class-prompts", str(setup.prompts), "--num-class-images", "4", "--class-data", str(tmp_path / "cls")]
    finetune(setup, tmp_path / "full_run", *prior, "--mode", "lora", "--lora-rank", "2")
    config, tensors = read_adapter(tmp_path / "full_run" / "adapter")
    assert config.kind == "lora" and config.identifier == "sks" and config.class_noun == "square"
    assert {name.rsplit(".", 1)[-1] for name in tensors} == {"lora_a", "lora_b"} and len(tensors) == 16
    assert any(t.abs().sum() > 0 for n, t in tensors.items() if n.endswith("lora_b"))  # it trained

    # a kill after the checkpoint of step 2: the trackers name 2, step 4 and the adapter were never written
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "full_run", killed)
    shutil.rmtree(killed / "4")
    shutil.rmtree(killed / "adapter")
    write_latest_iteration(killed, 2)
    finetune(setup, killed, *prior, "--mode", "lora", "--lora-rank", "2", "--load", str(killed))
    resumed = read_adapter(killed / "adapter")[1]
    for name, tensor in tensors.items():
        assert torch.equal(resumed[name], tensor), name

    # generation with the adapter == generation from the merged export
    export = tmp_path / "merged"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "export_model.py"), "--load", str(setup.base), "--output", str(export),
                    "--merge-adapter", str(tmp_path / "full_run" / "adapter")], cwd=ROOT, env=env, check=True,
                   timeout=TIMEOUT)
    prompt = "a large sks square at the top"
    with_adapter = Pipeline.from_checkpoint(setup.base, adapters=[tmp_path / "full_run" / "adapter"])
    merged = Pipeline.from_checkpoint(export)
    plain = Pipeline.from_checkpoint(setup.base)
    codes = [p.text2image(prompt, n=2, seed=3)[0].codes for p in (with_adapter, merged, plain)]
    assert torch.equal(codes[0], codes[1]) and not torch.equal(codes[0], codes[2])

    import generate_samples
    out = tmp_path / "samples"
    generate_samples.main(["--load", str(setup.base), "--adapter", str(tmp_path / "full_run" / "adapter"), "--prompt",
                           prompt, "--batch-size", "2", "--seed", "3", "--output-path", str(out), "--device", "cpu"])
    assert len(list(out.glob("*.png"))) >= 2
    # the docs picture draws from the adapter: instance row, then three generated rows, each tile labelled
    from PIL import Image

    from scripts import subject_figure
    figure = tmp_path / "figure.png"
    subject_figure.main(["--base", str(setup.base), "--adapter", str(tmp_path / "full_run" / "adapter"),
                         "--output", str(figure)])
    with Image.open(figure) as picture:
        assert picture.width > 6 * 128 and picture.height > 4 * 128
    other = tmp_path / "other_base"
    shutil.copytree(export, other)
    with pytest.raises(UserError, match="another base model"):
        Pipeline.from_checkpoint(other, adapters=[tmp_path / "full_run" / "adapter"])


def test_frozen_parts_with_placements_save_only_what_trained_and_no_prior_needs_no_class_images(setup, tmp_path):
    result = finetune(setup, tmp_path / "frozen", "--mode", "frozen", "--trainable", "embeddings,layers=1",
                      "--prior-loss-weight", "0", "--placement-images", "6")
    assert "placement augmentation: 6 pictures" in result.stderr + result.stdout
    config, tensors = read_adapter(tmp_path / "frozen" / "adapter")
    base = Pipeline.from_checkpoint(setup.base).model
    trained = ("word_embeddings.", "transformer.position_embeddings.", "transformer.layers.1.")
    assert config.kind == "tensors" and config.mode == "frozen"
    assert sorted(tensors) == sorted(n for n, _ in base.named_parameters() if n.startswith(trained))
    assert not torch.equal(tensors["word_embeddings.weight"], base.word_embeddings.weight)
    assert not (tmp_path / "frozen" / "class_images").exists()
    # the run's own save folder is a complete model: the base with the adapter folded in
    apply_adapters(base, [tmp_path / "frozen" / "adapter"])
    saved = Pipeline.from_checkpoint(tmp_path / "frozen").model.state_dict()
    assert all(torch.equal(saved[name], tensor) for name, tensor in base.state_dict().items())


def test_bad_flags_and_captions_are_one_line_errors(setup, tmp_path):
    import finetune_subject

    common = ["--base", str(setup.base), "--instance-data", str(setup.instances), "--train-iters", "2",
              "--save", str(tmp_path / "bad")]
    for extra, message in ((["--prior-loss-weight", "0", "--num-class-images", "3"], "needs prior preservation"),
                           (["--prior-loss-weight", "0", "--mode", "lora", "--trainable", "embeddings"],
                            "--trainable goes with --mode frozen"),
                           (["--prior-loss-weight", "0", "--mode", "full", "--lora-rank", "4"], "needs --mode lora"),
                           (["--prior-loss-weight", "0", "--zero-stage", "3"], "stage 0-2"),
                           ([], "needs --class-prompts")):
        with pytest.raises(UserError, match=message):
            finetune_subject.parse_args(common + extra)
    tokenizer = Pipeline.from_checkpoint(setup.base).tokenizer
    assert identifier_pieces(tokenizer, "sks") == ["▁s", "<0x6B>", "s"]  # no caption has a k: a byte piece
    with pytest.raises(UserError, match="does not name the identifier"):
        read_instance_folder(setup.instances, "zzz", "square", None)
    with pytest.raises(UserError, match="has caption files"):
        read_instance_folder(setup.instances, "sks", "square", "a {identifier} {class_noun}")


def test_class_images_resume_where_they_stopped_and_refuse_another_setting(setup, tmp_path):
    pipe = Pipeline.from_checkpoint(setup.base)
    settings = SamplingSettings(temperature=0.4, cfg_scale=1.5)
    prompts = [p.text for p in class_prompts(3)]
    images, captions = ensure_class_images(pipe, tmp_path, prompts, 5, 0, settings, "f" * 16, batch_size=2)
    assert captions == [prompts[i % 3] for i in range(5)]
    first = image_path(tmp_path, 3).read_bytes()
    image_path(tmp_path, 3).unlink()
    again, _ = ensure_class_images(pipe, tmp_path, prompts, 5, 0, settings, "f" * 16, batch_size=2)
    assert image_path(tmp_path, 3).read_bytes() == first  # regenerated alone, identical
    with pytest.raises(UserError, match="another base_fingerprint"):
        ensure_class_images(pipe, tmp_path, prompts, 5, 0, settings, "0" * 16)
