"""--precision int8: linear layers quantised once at load, close to fp32, CPU only, reached from every entry point."""
import json
import warnings

import pytest
import torch

import generate_samples
import generation.pipeline
from fp16 import inference_autocast, quantize_linear_layers
from generation.outputs import read_manifest, read_png_metadata
from generation.pipeline import Pipeline
from tests.generation_helpers import tiny_model, tiny_tokenizer, write_tiny_checkpoint
from utils.errors import UserError

QUANTIZED_LINEAR = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_quantised_logits_are_close_to_fp32_and_the_fp32_model_is_left_alone():
    tok = tiny_tokenizer()
    model = tiny_model(tok, layers=2, hidden=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = quantize_linear_layers(model)
        ids = torch.randint(0, tok.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
        positions = torch.arange(40).expand(3, 40)
        with torch.inference_mode():
            fp32, int8 = model(ids, positions), quantized(ids, positions)
    assert not caught, [str(w.message) for w in caught]  # torch's deprecation notices do not reach users

    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 4  # Q|K|V, attention output, two MLP projections per layer
    assert all(isinstance(quantized.get_submodule(name), QUANTIZED_LINEAR) for name in linears)
    assert all(type(model.get_submodule(name)) is torch.nn.Linear for name in linears)  # a copy was quantised
    assert isinstance(quantized.output_head, QUANTIZED_LINEAR) and model.output_head is None  # the tied head too,
    assert torch.equal(quantized.word_embeddings.weight, model.word_embeddings.weight)  # while the lookup stays fp32

    assert not torch.equal(int8, fp32)  # int8 really ran
    assert (int8 - fp32).norm() < 0.1 * fp32.norm()  # and computed the same function (measured: 4% off)
    assert (int8.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.9


def test_int8_is_refused_off_the_cpu_in_one_line():
    model = tiny_model(tiny_tokenizer()).to("meta")
    with pytest.raises(UserError, match="int8 runs on CPU only .*meta"):
        quantize_linear_layers(model)
    with pytest.raises(UserError, match="int8 runs on CPU only .*cuda"):
        with inference_autocast("cuda", "int8"):
            pass


def test_the_pipeline_quantises_once_and_shares_the_quantised_model_with_captioning(checkpoint, monkeypatch):
    calls = []
    original = generation.pipeline.quantize_linear_layers
    monkeypatch.setattr(generation.pipeline, "quantize_linear_layers", lambda m: calls.append(m) or original(m))
    pipe = Pipeline.from_checkpoint(checkpoint, device="cpu", precision="int8")
    assert len(calls) == 1 and pipe.caption_model is pipe.model
    assert isinstance(pipe.model.transformer.layers[0].mlp.dense_h_to_4h, QUANTIZED_LINEAR)
    assert isinstance(Pipeline.from_checkpoint(checkpoint, device="cpu").model.transformer.layers[0].mlp.dense_h_to_4h,
                      torch.nn.Linear)


def test_generate_samples_runs_text2image_and_image2text_in_int8(checkpoint, tmp_path, monkeypatch):
    precisions = []
    original = Pipeline.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        precisions.append(self.precision)

    monkeypatch.setattr(Pipeline, "__init__", spy)
    images = tmp_path / "images"
    generate_samples.main(["--load", str(checkpoint), "--prompt", "a red circle", "--batch-size", "2",
                           "--precision", "int8", "--output-path", str(images), "--device", "cpu"])
    inputs = sorted(images.glob("0000_0*.png"))
    assert len(inputs) == 2 and all(read_png_metadata(p)["precision"] == "int8" for p in inputs)

    captions = tmp_path / "captions"
    generate_samples.main(["--load", str(checkpoint), "--generation-task", "image2text", "--precision", "int8",
                           "--input-images", *map(str, inputs), "--max-caption-tokens", "5",
                           "--output-path", str(captions), "--device", "cpu"])
    records = read_manifest(captions)
    assert len(records) == 2 and all(isinstance(r["caption"], str) for r in records)
    assert precisions == ["int8", "int8"]


def test_a_gpu_pipeline_refuses_int8_before_loading_the_checkpoint(tmp_path, monkeypatch):
    import generation.loading

    monkeypatch.setattr(generation.loading, "resolve_device", lambda device: torch.device("cuda"))
    with pytest.raises(UserError, match="int8 runs on CPU only .*cuda"):
        Pipeline.from_checkpoint(tmp_path / "no checkpoint here", device="cuda", precision="int8")


def test_evaluate_against_fp32_runs_every_section_at_both_precisions(checkpoint, tmp_path):
    import evaluate
    from data_utils.image_sources import open_dataset

    out = tmp_path / "eval.json"
    evaluate.main(["--load", str(checkpoint), "--sections", "caption,caption-loss", "--num-prompts", "4",
                   "--precision", "int8", "--against-fp32", "--device", "cpu", "--output-json", str(out)])
    report = json.loads(out.read_text())
    source = open_dataset("shapes", split="val", num_items=4)
    images = [source.item(i).image for i in range(4)]
    for key, precision in (("sections", "int8"), ("fp32_sections", "fp32")):
        pipe = Pipeline.from_checkpoint(checkpoint, device="cpu", precision=precision)
        greedy = pipe.caption(images, seed=0, max_tokens=pipe.geometry.text_max_tokens, top_k=1)
        assert report[key]["caption"]["examples"] == greedy, precision
    int8_loss = report["sections"]["caption-loss"]["caption_loss"]
    fp32_loss = report["fp32_sections"]["caption-loss"]["caption_loss"]
    assert int8_loss != fp32_loss  # each half ran at its own precision
    row = report["against_fp32"]["numbers"]["caption-loss/caption_loss"]
    assert (row["fp32"], row["int8"]) == (fp32_loss, int8_loss) and row["difference"] == int8_loss - fp32_loss

    with pytest.raises(UserError, match="--against-fp32 compares another --precision"):
        evaluate.main(["--load", str(checkpoint), "--against-fp32", "--output-json", str(out)])


def test_the_comparison_table_reads_differences_in_points_and_leaves_out_agreeing_counts():
    from eval_utils.precision_comparison import precision_comparison

    def results(correct: float, colour: float, one_object: float, bits: float) -> dict:
        return {"caption": {"groups": {"all": {"prompts": 50, "correct": correct, "colour": colour},
                                       "1 object": {"prompts": 20, "correct": one_object}}},
                "bpt": {"bits": bits}}

    section = precision_comparison("int8", results(0.50, 0.91, 0.2, 2.5), results(0.52, 0.90, 0.9, 2.0))
    assert section.results["largest_share_difference"] == {"number": "caption/groups/all/correct",
                                                           "points": pytest.approx(-2.0)}
    assert section.results["numbers"]["bpt/bits"]["difference"] == pytest.approx(0.5)
    assert "caption/groups/all/colour" in section.table and "bpt/bits" in section.table
    assert "prompts" not in section.table and "1 object" not in section.table  # still in the JSON:
    assert section.results["numbers"]["caption/groups/1 object/correct"]["difference"] == pytest.approx(-0.7)


def test_the_web_demo_loads_its_pipeline_in_int8(checkpoint):
    import web_demo

    pipe = web_demo.load_pipeline(str(checkpoint), "cpu", "int8")
    assert pipe.precision == "int8" and isinstance(pipe.model.output_head, QUANTIZED_LINEAR)
