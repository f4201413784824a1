"""Checkpoint loading: CogView's release layout, DeepSpeed folders, exports, and one-line errors."""
import json
import random
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import CogViewGPT, ModelConfig
from model.checkpoint import LOAD_TIME_SETTINGS, load_model_for_inference
from model.export import save_exported
from model.strict_load import load_state_dict_strict
from utils.errors import UserError

VOCAB, HIDDEN, LAYERS, POSITIONS = 96, 128, 2, 20


def cogview_release_state_dict(hidden: int = HIDDEN, sandwich: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of CogView's released checkpoints (written
    from its documented layout, not from our model), in fp16 as released."""
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return (0.02 * torch.randn(*shape, generator=generator)).half()

    state = {"word_embeddings.weight": tensor(VOCAB, hidden),
             "transformer.position_embeddings.weight": tensor(POSITIONS, hidden),
             "transformer.final_layernorm.weight": tensor(hidden), "transformer.final_layernorm.bias": tensor(hidden)}
    shapes = {"attention.query_key_value": (3 * hidden, hidden), "attention.dense": (hidden, hidden),
              "mlp.dense_h_to_4h": (4 * hidden, hidden), "mlp.dense_4h_to_h": (hidden, 4 * hidden)}
    layernorms = ["input_layernorm", "post_attention_layernorm"]
    if sandwich:
        layernorms += ["third_layernorm", "fourth_layernorm"]
    for i in range(LAYERS):
        for name, (rows, cols) in shapes.items():
            state[f"transformer.layers.{i}.{name}.weight"] = tensor(rows, cols)
            state[f"transformer.layers.{i}.{name}.bias"] = tensor(rows)
        for name in layernorms:
            state[f"transformer.layers.{i}.{name}.weight"] = tensor(hidden)
            state[f"transformer.layers.{i}.{name}.bias"] = tensor(hidden)
    return state


def write_deepspeed_folder(folder, state_dict, iteration="1000", latest_file="latest_checkpointed_iteration.txt"):
    """CogView's layout: the iteration named in a text file, weights under `module` together with
    the training state DeepSpeed and CogView store beside them (plain types and numpy RNG state)."""
    (folder / iteration).mkdir(parents=True)
    torch.save({"module": state_dict, "iteration": int(iteration) if iteration.isdigit() else 0,
                "random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                "torch_rng_state": torch.get_rng_state(), "param_shapes": [{"w": torch.Size([2, 3])}],
                "ds_version": "0.3.16"}, folder / iteration / "mp_rank_00_model_states.pt")
    (folder / latest_file).write_text(iteration)
    return folder


def sample_logits(model):
    ids = torch.arange(12).reshape(2, 6) % VOCAB
    return model(ids, torch.arange(6).expand(2, 6))


def test_cogview_release_loads_with_inferred_sizes_and_pb_relax_on(tmp_path):
    """CogView's released code always applies the relaxed LayerNorm, so its checkpoints load with it."""
    state = cogview_release_state_dict()
    write_deepspeed_folder(tmp_path, state)
    model, metadata = load_model_for_inference(tmp_path)
    assert metadata == {}
    assert model.config == ModelConfig(vocab_size=VOCAB, num_layers=LAYERS, hidden_size=HIDDEN,
                                       num_attention_heads=HIDDEN // 64, max_position_embeddings=POSITIONS,
                                       layernorm_order="sandwich", pb_relax=True)
    assert not model.training
    for key, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, state[key].float(), rtol=0, atol=0)
    assert sample_logits(model).isfinite().all()


def test_pre_layernorm_and_head_override_are_inferred(tmp_path):
    write_deepspeed_folder(tmp_path, cogview_release_state_dict(sandwich=False))
    model, _ = load_model_for_inference(tmp_path / "1000", num_attention_heads=8, dtype=torch.bfloat16)
    assert model.config.layernorm_order == "pre" and model.config.num_attention_heads == 8
    assert model.word_embeddings.weight.dtype == torch.bfloat16


def test_settings_given_at_load_time_fill_what_the_release_lacks(tmp_path):
    write_deepspeed_folder(tmp_path, cogview_release_state_dict())
    model, _ = load_model_for_inference(tmp_path, pb_relax=False, pb_relax_alpha=32.0)
    assert not model.config.pb_relax and model.config.pb_relax_alpha == 32.0
    assert one_line_error(tmp_path, layernorm_order="pre").endswith(
        "unexpected tensor transformer.layers.0.third_layernorm.weight (check --layernorm-order)")


@pytest.mark.parametrize("setting", [dict(pb_relax=False), dict(layernorm_order="sandwich"),
                                     dict(pb_relax_alpha=32.0), dict(num_attention_heads=4)])
def test_a_setting_contradicting_model_config_json_is_one_line(tmp_path, setting):
    config = ModelConfig(vocab_size=VOCAB, num_layers=LAYERS, hidden_size=64, num_attention_heads=2,
                         max_position_embeddings=POSITIONS, layernorm_order="pre", pb_relax=True)
    save_exported(CogViewGPT(config), tmp_path)
    (name, value), = setting.items()
    assert one_line_error(tmp_path, **setting) == (
        f"{name}={value!r} ({LOAD_TIME_SETTINGS[name]}) contradicts {tmp_path / 'model_config.json'}, which records "
        f"{name}={config.to_dict()[name]!r}; leave the setting out to use the checkpoint's")
    agreeing = {name: config.to_dict()[name]}
    assert load_model_for_inference(tmp_path, **agreeing)[0].config == config


def test_swissarmytransformer_layout_loads(tmp_path):
    """A `latest` file as DeepSpeed writes, `transformer.word_embeddings`, and SAT's own
    model_config.json (some fields ours, some not)."""
    state = cogview_release_state_dict()
    state["transformer.word_embeddings.weight"] = state.pop("word_embeddings.weight")
    write_deepspeed_folder(tmp_path, state, iteration="global_step5", latest_file="latest")
    sat_config = {"model_class": "CachedAutoregressiveModel", "num_layers": LAYERS, "hidden_size": HIDDEN,
                  "num_attention_heads": 4, "max_sequence_length": POSITIONS, "layernorm_order": "sandwich"}
    (tmp_path / "model_config.json").write_text(json.dumps(sat_config))
    model, metadata = load_model_for_inference(tmp_path)
    assert model.config.num_attention_heads == 4 and model.config.vocab_size == VOCAB
    assert model.config.layernorm_order == "sandwich" and not model.config.pb_relax
    assert metadata == {"model_class": "CachedAutoregressiveModel", "max_sequence_length": POSITIONS}


def test_our_training_folder_uses_its_model_config(tmp_path):
    config = ModelConfig(vocab_size=VOCAB, num_layers=LAYERS, hidden_size=64, num_attention_heads=2,
                         max_position_embeddings=POSITIONS, layernorm_order="pre", pb_relax=True)
    trained = CogViewGPT(config).eval()
    write_deepspeed_folder(tmp_path, trained.state_dict(), iteration="7")
    (tmp_path / "7" / "model_config.json").write_text(json.dumps({**config.to_dict(), "tokenizer": {"path": "t"}}))
    model, metadata = load_model_for_inference(tmp_path / "7" / "mp_rank_00_model_states.pt")
    assert model.config == config and metadata == {"tokenizer": {"path": "t"}}
    torch.testing.assert_close(sample_logits(model), sample_logits(trained), rtol=0, atol=0)


def test_exported_safetensors_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, num_layers=LAYERS, hidden_size=64, num_attention_heads=4,
                         max_position_embeddings=POSITIONS, pb_relax_alpha=32.0)
    trained = CogViewGPT(config).eval()
    extra = {"tokenizer": {"path": "tok.model", "fingerprint": "abc"}, "vqvae": {"path": "vq", "fingerprint": "def"}}
    save_exported(trained, tmp_path / "export", extra)
    assert sorted(load_file(tmp_path / "export" / "model.safetensors")) == sorted(trained.state_dict())
    assert not list((tmp_path / "export").glob("*.tmp"))
    for path in (tmp_path / "export", tmp_path / "export" / "model.safetensors"):
        model, metadata = load_model_for_inference(path)
        assert model.config == config and metadata == extra
        assert torch.equal(sample_logits(model), sample_logits(trained))


def one_line_error(path, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        load_model_for_inference(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_mismatched_tensor_names_both_shapes(tmp_path):
    state = cogview_release_state_dict()
    state["transformer.layers.0.attention.query_key_value.weight"] = torch.zeros(3 * HIDDEN, HIDDEN // 2)
    write_deepspeed_folder(tmp_path, state)
    message = one_line_error(tmp_path)
    assert message == (f"checkpoint {tmp_path / '1000'} does not match the model: "
                       f"transformer.layers.0.attention.query_key_value.weight is [384, 64] in the checkpoint, "
                       f"[384, 128] in the model (check --hidden-size / --num-layers)")


def test_checkpoint_disagreeing_with_its_config_names_the_first_key(tmp_path):
    write_deepspeed_folder(tmp_path, cogview_release_state_dict())
    config = ModelConfig(vocab_size=VOCAB, num_layers=3, hidden_size=HIDDEN, num_attention_heads=2,
                         max_position_embeddings=POSITIONS)
    (tmp_path / "model_config.json").write_text(json.dumps(config.to_dict()))
    assert re.fullmatch(r"checkpoint \S+ does not match the model: transformer\.layers\.2\.input_layernorm\.weight "
                        r"is missing from the checkpoint \(check --hidden-size / --num-layers\)", one_line_error(tmp_path))


def test_strict_load_reports_unexpected_and_missing_sandwich_keys():
    config = ModelConfig(vocab_size=VOCAB, num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=2,
                         max_position_embeddings=POSITIONS, layernorm_order="pre")
    model = CogViewGPT(config)
    with pytest.raises(UserError, match=r"^checkpoint x does not match the model: the checkpoint has an unexpected "
                                        r"tensor transformer\.layers\.0\.third_layernorm\.weight \(check --layernorm-order\)$"):
        load_state_dict_strict(model, cogview_release_state_dict(), "x")
    sandwich = CogViewGPT(ModelConfig(**{**config.to_dict(), "layernorm_order": "sandwich"}))
    with pytest.raises(UserError, match=r"third_layernorm\.weight is missing from the checkpoint \(check --layernorm-order\)$"):
        load_state_dict_strict(sandwich, cogview_release_state_dict(sandwich=False), "x")


def test_unreadable_or_missing_checkpoints_fail_in_one_line(tmp_path):
    assert one_line_error(tmp_path / "nowhere") == f"model checkpoint not found: {tmp_path / 'nowhere'}"
    assert one_line_error(tmp_path).startswith(f"no model checkpoint in {tmp_path}: expected model.safetensors")
    (tmp_path / "latest").write_text("42")
    assert one_line_error(tmp_path) == f"{tmp_path / 'latest'} names iteration '42', but {tmp_path / '42'} is not a folder"
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    assert one_line_error(tmp_path).startswith(f"cannot read {tmp_path / '42' / 'mp_rank_00_model_states.pt'} as a PyTorch checkpoint")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    assert one_line_error(tmp_path / "bad.safetensors").startswith("cannot read")


def test_unsafe_objects_and_zero3_placeholders_are_refused(tmp_path):
    path = tmp_path / "1" / "mp_rank_00_model_states.pt"
    path.parent.mkdir()
    torch.save({"module": cogview_release_state_dict(), "args": ModelConfig(1, 1, 1, 1, 1)}, path)
    assert "weights-only loading refuses" in one_line_error(path)
    torch.save({"module": {"word_embeddings.weight": torch.empty(0)}}, path)
    assert "ZeRO stage 3" in one_line_error(path)


def test_numpy_arrays_in_a_checkpoint_read_under_numpy_1_too(tmp_path, monkeypatch):
    """numpy 1.x has no `numpy._core` (its arrays rebuild through `numpy.core`); the reader must not need it."""
    write_deepspeed_folder(tmp_path, cogview_release_state_dict())
    monkeypatch.delattr(np, "_core")
    with pytest.warns(DeprecationWarning, match="numpy.core"):  # numpy 2's shim of the numpy 1 name
        model, _ = load_model_for_inference(tmp_path)
    assert model.config.num_layers == LAYERS
