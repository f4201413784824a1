"""LoRA and adapters without training: a fresh LoRA changes nothing, a saved adapter folds into the base
to exactly what the wrapped model computes, several compose, and a wrong base or a clash is refused."""
import copy
from pathlib import Path

import pytest
import torch

from finetune.adapters import (AdapterConfig, adapter_spec, apply_adapters, base_fingerprint, read_adapter,
                               save_adapter)
from finetune.lora import LORA_TARGETS, add_lora, lora_tensors
from finetune.trainable import freeze_all_but, trainable_prefixes, trained_state
from model import CogViewGPT, ModelConfig
from utils.errors import UserError


def model(seed: int = 0) -> CogViewGPT:
    torch.manual_seed(seed)
    return CogViewGPT(ModelConfig(vocab_size=40, num_layers=2, hidden_size=16, num_attention_heads=2,
                                  max_position_embeddings=12, hidden_dropout=0.0, attention_dropout=0.0)).eval()


def inputs():
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    return ids, torch.arange(10).expand(2, 10)


def lora_adapter(base: CogViewGPT, folder, seed: int, targets=LORA_TARGETS) -> CogViewGPT:
    wrapped = copy.deepcopy(base)
    add_lora(wrapped, targets, rank=4, alpha=8.0)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_b" in name:
                param.normal_(0, 0.1)
    save_adapter(folder, lora_tensors(wrapped), AdapterConfig("lora", base_fingerprint(base), "sks", "square", "lora",
                                                              lora_rank=4, lora_alpha=8.0))
    return wrapped


def test_fresh_lora_is_the_base_model_and_only_lora_trains():
    base = model()
    wrapped = copy.deepcopy(base)
    names = add_lora(wrapped, LORA_TARGETS, rank=4, alpha=8.0)
    assert len(names) == 8  # 4 projections x 2 layers
    assert torch.equal(wrapped(*inputs()), base(*inputs()))
    assert {n.rsplit(".", 1)[-1] for n, p in wrapped.named_parameters() if p.requires_grad} == {"lora_a", "lora_b"}
    with pytest.raises(UserError, match="matches no linear"):
        add_lora(copy.deepcopy(base), ["qkv"], 4, 8.0)


def test_a_saved_lora_adapter_folds_into_the_base_exactly(tmp_path):
    base = model()
    wrapped = lora_adapter(base, tmp_path / "a", seed=0)
    expected = wrapped(*inputs())
    assert not torch.allclose(expected, base(*inputs()), atol=1e-3)
    merged = copy.deepcopy(base)
    apply_adapters(merged, [tmp_path / "a"])
    torch.testing.assert_close(merged(*inputs()), expected, rtol=1e-5, atol=1e-5)
    # the wrapped attention also serves CogView's recompute-the-prefix path, which reads `.weight`
    layer_w, layer_m = wrapped.transformer.layers[0], merged.transformer.layers[0]
    x, memory = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    torch.testing.assert_close(layer_w(x, None, memory=memory), layer_m(x, None, memory=memory), rtol=1e-5, atol=1e-5)


def test_two_lora_adapters_add_up_and_a_wrong_base_is_refused(tmp_path):
    base = model()
    lora_adapter(base, tmp_path / "a", seed=0, targets=["query_key_value"])
    lora_adapter(base, tmp_path / "b", seed=1, targets=["query_key_value", "dense_h_to_4h"])
    both = copy.deepcopy(base)
    apply_adapters(both, [tmp_path / "a", tmp_path / "b"])
    one_by_one = copy.deepcopy(base)
    for name in ("a", "b"):
        config, tensors = read_adapter(tmp_path / name)
        for key in [k for k in tensors if k.endswith("lora_a")]:
            module = key[:-len(".lora_a")]
            delta = tensors[f"{module}.lora_b"] @ tensors[key] * (config.lora_alpha / config.lora_rank)
            one_by_one.get_parameter(f"{module}.weight").data += delta
    torch.testing.assert_close(both(*inputs()), one_by_one(*inputs()))
    with pytest.raises(UserError, match="another base model"):
        apply_adapters(model(seed=5), [tmp_path / "a"])
    with pytest.raises(UserError, match="no adapter"):
        apply_adapters(copy.deepcopy(base), [tmp_path / "missing"])


def test_a_scaled_lora_adapter_adds_that_share_of_its_update(tmp_path):
    base = model()
    lora_adapter(base, tmp_path / "a", seed=0)
    full, half = copy.deepcopy(base), copy.deepcopy(base)
    apply_adapters(full, [tmp_path / "a"])
    apply_adapters(half, [f"{tmp_path / 'a'}:0.5"])
    for (name, p_base), p_full, p_half in zip(base.named_parameters(), full.parameters(), half.parameters()):
        torch.testing.assert_close(p_half, p_base + 0.5 * (p_full - p_base), msg=name)
    assert adapter_spec("runs/a") == (Path("runs/a"), 1.0) and adapter_spec("runs/a:2") == (Path("runs/a"), 2.0)
    with pytest.raises(UserError, match="finite number"):
        adapter_spec("runs/a:nan")


def test_trained_tensor_adapters_replace_and_clashes_are_refused(tmp_path):
    base = model()
    tuned = copy.deepcopy(base)
    trained = freeze_all_but(tuned, trainable_prefixes("embeddings,layers=1", 2))
    assert trained[0] == "word_embeddings.weight" and all(".layers.0." not in n for n in trained)
    with torch.no_grad():
        for param in tuned.parameters():
            if param.requires_grad:
                param.add_(0.05)
    save_adapter(tmp_path / "t", trained_state(tuned), AdapterConfig("tensors", base_fingerprint(base), "sks",
                                                                     "square", "frozen"))
    assert set(read_adapter(tmp_path / "t")[1]) == set(trained)
    merged = copy.deepcopy(base)
    apply_adapters(merged, [tmp_path / "t"])
    torch.testing.assert_close(merged(*inputs()), tuned(*inputs()))
    lora_adapter(base, tmp_path / "l", seed=0)  # changes layer 1's projections, which "t" replaces
    with pytest.raises(UserError, match="both change transformer.layers.1"):
        apply_adapters(copy.deepcopy(base), [tmp_path / "t", tmp_path / "l"])
    with pytest.raises(UserError, match="a scale applies to LoRA adapters only"):
        apply_adapters(copy.deepcopy(base), [f"{tmp_path / 't'}:0.5"])
    with pytest.raises(UserError, match="unknown --trainable part"):
        trainable_prefixes("embedding", 2)
    with pytest.raises(UserError, match="layers 0-1"):
        trainable_prefixes("layers=1-2", 2)
