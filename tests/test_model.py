"""CogViewGPT: sizes, CogView's structure, PB-relax, the KV cache, and that it learns."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import model.gpt as gpt
from model import CogViewGPT, ModelConfig, count_parameters, flops_per_token
from model.gpt import LayerNorm, build_attention_mask
from utils.errors import UserError

VOCAB = 64



def tiny_config(**overrides) -> ModelConfig:
    settings = dict(vocab_size=VOCAB, num_layers=2, hidden_size=32, num_attention_heads=4,
                    max_position_embeddings=24, hidden_dropout=0.0, attention_dropout=0.0)
    settings.update(overrides)
    return ModelConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> CogViewGPT:
    torch.manual_seed(seed)
    return CogViewGPT(tiny_config(**overrides)).eval()


def cogview_config() -> ModelConfig:
    """The sizes of CogView's released 4B-parameter model."""
    return ModelConfig(vocab_size=58240, num_layers=48, hidden_size=2560, num_attention_heads=40,
                       max_position_embeddings=1089, layernorm_order="sandwich")


def random_batch(batch: int, length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    return ids, torch.arange(length).expand(batch, length)


# ---------------------------------------------------------------- config and sizes

def test_cogview_parameter_count_is_exact_without_allocating():
    assert count_parameters(cogview_config()) == 3_928_849_920


@pytest.mark.parametrize("order", ["sandwich", "pre"])
def test_count_parameters_matches_a_real_model(order):
    config = tiny_config(layernorm_order=order, num_layers=3, hidden_size=48, num_attention_heads=3)
    model = CogViewGPT(config)
    assert count_parameters(config) == model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_flops_per_token_counts_every_matmul_of_a_training_step():
    """Forward matmul FLOPs measured by PyTorch (attention done with explicit matmuls, so they are
    counted) times 3 for forward + backward, plus the 6 N share of the vector parameters (biases and
    LayerNorm gains, which 6 N includes by convention), equals flops_per_token * T."""
    config = tiny_config(pb_relax_alpha=4.0, layernorm_order="pre")
    model = CogViewGPT(config).eval()
    length = 16
    ids, positions = random_batch(1, length)
    with FlopCounterMode(display=False) as counter:
        model(ids, positions)
    vector_params = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    training_flops = 3 * counter.get_total_flops() + 6 * vector_params * length
    assert flops_per_token(config, length) * length == training_flops


def test_config_json_round_trip_and_validation(tmp_path):
    config = tiny_config(layernorm_order="pre", pb_relax=True, pb_relax_alpha=32.0)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UserError, match="divisible by num_attention_heads"):
        tiny_config(hidden_size=30)
    with pytest.raises(UserError, match="layernorm_order must be one of"):
        tiny_config(layernorm_order="post")
    with pytest.raises(UserError, match="unknown model config field"):
        ModelConfig.from_dict({**config.to_dict(), "hidden": 3})
    with pytest.raises(UserError, match="pb_relax_alpha must be positive"):
        tiny_config(pb_relax_alpha=0.0)


# ---------------------------------------------------------------- structure

def layer_keys(order: str) -> list[str]:
    layernorms = ["input_layernorm", "post_attention_layernorm"]
    if order == "sandwich":
        layernorms += ["third_layernorm", "fourth_layernorm"]
    modules = layernorms + ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]
    return [f"transformer.layers.0.{m}.{p}" for m in modules for p in ("weight", "bias")]


@pytest.mark.parametrize("order,layernorms", [("sandwich", 4), ("pre", 2)])
def test_state_dict_keys_are_cogviews(order, layernorms):
    model = tiny_model(num_layers=1, layernorm_order=order)
    keys = set(model.state_dict())
    expected = {"word_embeddings.weight", "transformer.position_embeddings.weight",
                "transformer.final_layernorm.weight", "transformer.final_layernorm.bias", *layer_keys(order)}
    assert keys == expected
    assert sum(isinstance(m, LayerNorm) for m in model.modules()) == layernorms + 1
    assert model.state_dict()["transformer.layers.0.attention.query_key_value.weight"].shape == (96, 32)
    assert model.state_dict()["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape == (128, 32)


def test_output_is_tied_to_the_word_embeddings():
    model = tiny_model()
    ids, positions = random_batch(2, 5)
    hidden = model.embed(ids, positions)
    for layer in model.transformer.layers:
        hidden = layer(hidden, None)
    normed = model.transformer.final_layernorm(hidden)
    torch.testing.assert_close(model(ids, positions), normed @ model.word_embeddings.weight.T)


def test_initialisation_follows_cogview():
    torch.manual_seed(0)
    model = CogViewGPT(tiny_config(hidden_size=128, num_layers=8, num_attention_heads=2))
    layer = model.transformer.layers[3]
    assert layer.attention.dense.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert layer.mlp.dense_4h_to_h.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert layer.attention.query_key_value.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.word_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(layer.attention.query_key_value.bias == 0)
    assert torch.all(layer.third_layernorm.weight == 1) and torch.all(layer.third_layernorm.bias == 0)


@pytest.mark.parametrize("order", ["sandwich", "pre"])
def test_layer_computes_the_documented_formula(order):
    """Reference computation from the layer's own parts, written from CogView's description."""
    model = tiny_model(layernorm_order=order)
    for p in model.parameters():  # non-trivial LayerNorm gains and biases
        torch.nn.init.normal_(p, std=0.3)
    layer = model.transformer.layers[0]
    x = torch.randn(2, 6, 32)

    def attention(h):
        q, k, v = (t.view(2, 6, 4, 8).transpose(1, 2) for t in layer.attention.query_key_value(h).split(32, -1))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
        return layer.attention.dense((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 32))

    def mlp(h):
        return layer.mlp.dense_4h_to_h(F.gelu(layer.mlp.dense_h_to_4h(h), approximate="tanh"))

    a = attention(layer.input_layernorm(x))
    if order == "sandwich":
        h = x + layer.third_layernorm(a)
        expected = h + layer.fourth_layernorm(mlp(layer.post_attention_layernorm(h)))
    else:
        h = x + a
        expected = h + mlp(layer.post_attention_layernorm(h))
    torch.testing.assert_close(layer(x, None), expected)


# ---------------------------------------------------------------- PB-relax

@pytest.mark.parametrize("relax", [dict(pb_relax=True), dict(pb_relax_alpha=32.0), dict(pb_relax=True, pb_relax_alpha=32.0)])
def test_pb_relax_equals_plain_in_fp32(relax):
    # LN(x / s) is LN(x) with eps / s^2 (next test); a negligible eps isolates the rest of the math.
    plain = tiny_model(layernorm_epsilon=1e-12)
    relaxed = CogViewGPT(tiny_config(layernorm_epsilon=1e-12, **relax)).eval()
    relaxed.load_state_dict(plain.state_dict())
    ids, positions = random_batch(3, 12)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, :4] = False
    torch.testing.assert_close(relaxed(ids, positions), plain(ids, positions), atol=1e-5, rtol=0)
    torch.testing.assert_close(relaxed(ids, positions, mask), plain(ids, positions, mask), atol=1e-5, rtol=0)


def test_cpu_bf16_attention_runs_in_fp32(monkeypatch):
    """bf16 weights (DeepSpeed's bf16) and fp32 weights under bf16 autocast both reach SDPA in fp32 on a CPU
    (its bf16 kernel is the slow one), and give fp32's output to bf16 accuracy."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(gpt.F, "scaled_dot_product_attention", recording_sdpa)
    model = tiny_model()
    ids, positions = random_batch(2, 16)
    with torch.no_grad():
        reference = model(ids, positions)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(ids, positions)
        weights_bf16 = model.to(torch.bfloat16)(ids, positions)
    assert seen == [torch.float32] * (3 * model.config.num_layers)
    for logits in (autocast, weights_bf16):
        assert logits.dtype == torch.bfloat16
        torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0.05)


def test_pb_relax_layernorm_is_layernorm_with_a_rescaled_epsilon_per_token():
    """Dividing token t by s_t = max_h |x_t| / 8 changes only eps's weight: LN(x_t / s_t; eps) = LN(x_t; eps s_t^2)."""
    torch.manual_seed(0)
    x = 0.05 * torch.randn(3, 5, 32) * torch.logspace(-2, 2, 5)[:, None]  # tokens of very different sizes
    relaxed = LayerNorm(32, 1e-5, pb_relax=True)
    torch.nn.init.normal_(relaxed.weight)
    out = relaxed(x)
    for b in range(3):
        for t in range(5):
            scale = x[b, t].abs().max().item() / 8
            expected = F.layer_norm(x[b, t], (32,), relaxed.weight, relaxed.bias, eps=1e-5 * scale ** 2)
            torch.testing.assert_close(out[b, t], expected)


def layer_norm_in_fp16_arithmetic(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """A LayerNorm kernel that keeps its statistics in fp16, as CogView's era kernels did. PyTorch's
    own kernels accumulate in fp32 and so never show the overflow PB-relax was made for."""
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) * (x - mean)).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def attention_in_fp16_arithmetic(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """An attention kernel that materialises Q K^T in the input dtype and scales afterwards (as
    CogView's matmul-then-divide did); PyTorch's fused kernels would hide the overflow."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if is_causal:
        attn_mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf)
    return torch.matmul(scores.softmax(-1), v)


def test_pb_relax_layernorm_stays_finite_where_fp16_statistics_overflow(monkeypatch):
    monkeypatch.setattr(F, "layer_norm", layer_norm_in_fp16_arithmetic)
    torch.manual_seed(0)
    x = torch.empty(4, 64).uniform_(-6e4, 6e4)
    truth = (x - x.mean(-1, keepdim=True)) / x.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
    plain = LayerNorm(64, 1e-5, pb_relax=False).half()
    relaxed = LayerNorm(64, 1e-5, pb_relax=True).half()
    # The squared deviations overflow to inf, so the plain output collapses (here to all zeros).
    assert (plain(x.half()).float() - truth).abs().max() > 1
    out = relaxed(x.half())
    assert out.isfinite().all()
    torch.testing.assert_close(out.float(), truth, atol=2e-2, rtol=0)


def attention_inputs(dtype):
    """Q and keys along one direction with dot products 2560 c_j, c_j = 30, 32, ..., 40: the raw
    products (>= 76800) overflow fp16's 65504, Q K^T / sqrt(d) (<= 12800) does not, and neighbouring
    scores differ by 320, far more than fp16's rounding, so the true result is well defined."""
    torch.manual_seed(0)
    direction = torch.randn(64).sign()
    q = (40.0 * direction).expand(1, 4, 6, 64)
    k = (torch.arange(30.0, 42.0, 2.0)[:, None] * direction).expand(1, 4, 6, 64)
    return q.to(dtype), k.to(dtype), torch.randn(1, 4, 6, 64).to(dtype)


def attention_module(**relax):
    return gpt.SelfAttention(tiny_config(hidden_size=256, **relax)).eval()


@pytest.mark.parametrize("relax", [dict(pb_relax=True), dict(pb_relax_alpha=32.0)])
def test_pb_relax_attention_stays_finite_where_fp16_scores_overflow(monkeypatch, relax):
    monkeypatch.setattr(gpt.F, "scaled_dot_product_attention", attention_in_fp16_arithmetic)
    q, k, v = attention_inputs(torch.float16)
    truth = attention_module().attend(*(t.double() for t in (q, k, v)), None)
    assert not attention_module().attend(q, k, v, None).isfinite().all()
    out = attention_module(**relax).attend(q, k, v, None)
    assert out.isfinite().all()
    torch.testing.assert_close(out.double(), truth, atol=1e-2, rtol=0)


# ---------------------------------------------------------------- KV cache

@pytest.mark.parametrize("relax", [dict(), dict(pb_relax_alpha=8.0), dict(pb_relax=True)])
def test_incremental_decoding_matches_the_full_forward(relax):
    model = tiny_model(**relax)
    ids, positions = random_batch(2, 12)
    full = model(ids, positions)
    cache = model.new_kv_cache(2, 16)
    steps = [model(ids[:, :5], positions[:, :5], kv_cache=cache)]
    steps += [model(ids[:, t:t + 1], positions[:, t:t + 1], kv_cache=cache) for t in range(5, 9)]
    steps.append(model(ids[:, 9:], positions[:, 9:], kv_cache=cache))  # a multi-token chunk after a prefix
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("relax", [dict(), dict(pb_relax=True)])
def test_left_padded_batch_matches_each_row_alone(relax):
    model = tiny_model(**relax)
    lengths, total, new_tokens = [7, 3, 5], 7, 4
    rows = [random_batch(1, n + new_tokens, seed=10 + i)[0][0] for i, n in enumerate(lengths)]
    pad = VOCAB - 1
    ids = torch.full((3, total), pad)
    positions = torch.zeros(3, total, dtype=torch.long)
    mask = torch.zeros(3, total, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, total - n:] = rows[i][:n]
        positions[i, total - n:] = torch.arange(n)
        mask[i, total - n:] = True
    cache = model.new_kv_cache(3, total + new_tokens)
    logits = [model(ids, positions, mask, cache)[:, -1:]]
    assert logits[0].isfinite().all()
    for step in range(new_tokens - 1):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], 1)
        token = torch.stack([rows[i][n + step] for i, n in enumerate(lengths)])[:, None]
        position = torch.tensor(lengths)[:, None] + step
        logits.append(model(token, position, mask, cache))
    batched = torch.cat(logits, 1)
    for i, n in enumerate(lengths):
        alone = model(rows[i][None, :n + new_tokens - 1], torch.arange(n + new_tokens - 1)[None])
        torch.testing.assert_close(batched[i], alone[0, n - 1:], atol=1e-5, rtol=0)


def test_fully_masked_padding_positions_give_no_nan():
    model = tiny_model()
    ids, positions = random_batch(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, :3] = False  # padding rows attend to no real key
    assert model(ids, positions, mask).isfinite().all()


def test_cache_select_keeps_rows():
    model = tiny_model()
    ids, positions = random_batch(3, 8)
    full = model(ids, positions)
    cache = model.new_kv_cache(3, 8)
    model(ids[:, :6], positions[:, :6], kv_cache=cache)
    kept = cache.select([2, 0])
    assert kept.batch_size == 2 and kept.length == 6 and cache.batch_size == 3
    out = model(ids[[2, 0], 6:], positions[[2, 0], 6:], kv_cache=kept)
    torch.testing.assert_close(out, full[[2, 0], 6:], atol=1e-5, rtol=0)


def test_cache_and_mask_errors_are_one_line():
    model = tiny_model()
    ids, positions = random_batch(2, 6)
    cache = model.new_kv_cache(2, 8)
    model(ids, positions, kv_cache=cache)
    with pytest.raises(UserError, match=r"KV cache is full: 6 positions filled \+ 3 new > max_length 8"):
        model(ids[:, :3], positions[:, :3], kv_cache=cache)
    assert cache.length == 6
    with pytest.raises(UserError, match="KV cache holds 2 rows but the batch has 1"):
        model(ids[:1, :1], positions[:1, :1], kv_cache=cache)
    with pytest.raises(UserError, match=r"key_padding_mask must be \[batch, cached \+ new positions\] = \[2, 7\]"):
        model(ids[:, :1], positions[:, :1], torch.ones(2, 1, dtype=torch.bool), cache)
    with pytest.raises(UserError, match="row indices must lie in"):
        cache.select([2])


def test_attention_mask_combines_causality_padding_and_self():
    mask = build_attention_mask(2, 2, torch.tensor([[False, True, True, True]]))
    assert mask.tolist() == [[[[False, True, True, False], [False, True, True, True]]]]
    assert build_attention_mask(4, 0, None) is None and build_attention_mask(1, 9, None) is None
    # One decoding query (the last position): the padding mask, with the query's own key always visible.
    assert build_attention_mask(1, 3, torch.tensor([[False, True, True, False]])).tolist() == [[[[False, True, True, True]]]]
    assert build_attention_mask(2, 1, None).tolist() == [[[[True, True, False], [True, True, True]]]]


@pytest.mark.parametrize("new_tokens", [1, 3])
def test_memory_helper_reproduces_cogviews_recompute_the_prefix_decoding(new_tokens):
    """CogView cached each layer's input hidden states and recomputed keys/values from them; several new
    tokens at once must see the memory and, causally, each other."""
    model = tiny_model()
    ids, positions = random_batch(2, 11)
    full = model(ids, positions)
    hidden = model.embed(ids[:, :8], positions[:, :8])
    memories = []
    for layer in model.transformer.layers:
        memories.append(hidden)
        hidden = layer(hidden, None)
    end = 8 + new_tokens
    x = model.embed(ids[:, 8:end], positions[:, 8:end])
    for layer, memory in zip(model.transformer.layers, memories):
        x = layer(x, None, memory=memory)
    torch.testing.assert_close(model.logits(x), full[:, 8:end], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- training

def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        model.checkpoint_activations = checkpointing
        ids, positions = random_batch(2, 10)
        model(ids, positions).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = CogViewGPT(tiny_config(layernorm_order="sandwich", pb_relax=True)).train()
    ids, positions = random_batch(4, 16, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(150):
        logits = model(ids[:, :-1], positions[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, loss.item()
