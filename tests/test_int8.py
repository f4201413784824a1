"""--precision int8: linear layers quantised once at load, close to fp32, CPU only, reached from every entry point."""
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
    assert torch.equal(quantized.word_embeddings.weight, model.word_embeddings.weight)  # the tied head stays fp32

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
