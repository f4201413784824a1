"""CogViewGPT: the GPT-style transformer over text and image tokens, with CogView's exact weight names.

One sequence, one id space (image codes, text pieces, command tokens), learned absolute positions,
tied input/output embeddings, GELU (tanh), and CogView's two stabilisers for fp16 training:
Sandwich-LN (a LayerNorm after each residual branch as well as before it) and PB-relax (see
`LayerNorm` and `SelfAttention`). Parameter names match CogView's released checkpoints, so its
state dicts load with `load_state_dict(strict=True)`:

    word_embeddings.weight
    transformer.position_embeddings.weight
    transformer.layers.{i}.{input_layernorm, attention.query_key_value, attention.dense,
                            post_attention_layernorm, [third_layernorm, fourth_layernorm],
                            mlp.dense_h_to_4h, mlp.dense_4h_to_h}.{weight, bias}
    transformer.final_layernorm.{weight, bias}
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from data_utils.sequences import ImageCoordinates, image_coordinates
from model.config import MAX_GRID_SIDE, ModelConfig
from model.kernels.backend import resolve_attention_backend, triton_attend
from model.kv_cache import KVCache
from utils.errors import UserError

# Queries per block when attention skips the keys a sparse mask hides (`SelfAttention.attend`).
QUERY_BLOCK = 128
# The released code divides LayerNorm inputs by max|x| / 8 (not max|x| as the paper writes): the
# scaled input then lies in [-8, 8], whose squares still sum without overflow in fp16.
PB_RELAX_LAYERNORM_RANGE = 8.0


class LayerNorm(nn.LayerNorm):
    """LayerNorm; with PB-relax each token is first scaled into [-8, 8] by its own detached maximum.

    LayerNorm is invariant to scaling its input (up to `eps`: LN(x / s; eps) = LN(x; eps * s^2)), so
    the result is the same in exact arithmetic, while fp16 kernels that compute the statistics in
    fp16 no longer overflow on huge activations. CogView's code took one maximum over the whole
    tensor, which made a token's output depend on the other rows of the batch, on padding and on
    prefill versus one-token decoding (each changes s, and so eps's weight); one maximum per token
    (over the hidden dimension) keeps every token's output its own.
    """

    def __init__(self, hidden_size: int, eps: float, pb_relax: bool):
        super().__init__(hidden_size, eps=eps)
        self.pb_relax = pb_relax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pb_relax:
            scale = x.detach().abs().amax(dim=-1, keepdim=True) / PB_RELAX_LAYERNORM_RANGE
            # An all-zero token has nothing to relax; the floor keeps 0 / 0 from making NaN.
            x = x / scale.clamp_min(torch.finfo(x.dtype).tiny)
        return super().forward(x)


def image_window_mask(keys: ImageCoordinates, query_len: int, window: int) -> torch.Tensor:
    """`[B, query_len, S]`, True where the local image window lets the last `query_len` of the tokens
    (whose coordinates are `keys`, `[B, S]` each) see a key: always, unless both are codes of the same
    image, which must then lie within `window` rows (above, by causality) and `window` columns either
    side of each other.

    The pattern of CogView2's local attention, made causal, with the text kept global: a code's
    neighbourhood is where most of what predicts it lies, the text says what the image shows."""
    # int16 (grids are at most 64 x 64 codes, sequences far shorter than 32k): the [B, T, S] differences
    # below are the mask's main cost, a quarter of it in int64.
    keys = ImageCoordinates(keys.is_code, *(t.to(torch.int16) for t in (keys.image, keys.row, keys.col)))
    queries = keys.last(query_len)
    same_image = (queries.is_code[:, :, None] & keys.is_code[:, None, :]
                  & (queries.image[:, :, None] == keys.image[:, None, :]))
    near = ((queries.row[:, :, None] - keys.row[:, None, :]).abs() <= window) & (
        (queries.col[:, :, None] - keys.col[:, None, :]).abs() <= window)
    return ~same_image | near


def build_attention_mask(query_len: int, past_len: int, key_padding_mask: torch.Tensor | None,
                         device: torch.device | str | None = None,
                         allowed: torch.Tensor | None = None) -> torch.Tensor | None:
    """The boolean attention mask (True = attend) for `query_len` new positions after `past_len`
    cached ones, combining causality with `key_padding_mask [B, past_len + query_len]`.

    Returns `[B or 1, 1, query_len, past_len + query_len]`, or None when no tensor is needed: a
    square causal attention (`past_len == 0`, SDPA's `is_causal`) or one query that may see every key.
    With a padding mask every position may always attend to itself, so a left-padding position,
    which sees no real key, gets a finite (ignored) output instead of NaN from an all-masked row.
    `allowed [B, query_len, past_len + query_len]` narrows it further (`image_window_mask`).
    """
    if key_padding_mask is None and allowed is None and (past_len == 0 or query_len == 1):
        return None
    if query_len == 1 and allowed is None:
        # One query, the last position (a decoding step): causality hides nothing and the padding mask, with
        # the query's own key visible, is the whole mask. Two operations per step instead of ten.
        mask = key_padding_mask.to(torch.bool, copy=True)
        mask[:, -1] = True
        return mask[:, None, None, :]
    if key_padding_mask is not None:
        device = key_padding_mask.device
    total = past_len + query_len
    query_pos = torch.arange(past_len, total, device=device)[:, None]
    key_pos = torch.arange(total, device=device)[None, :]
    mask = key_pos <= query_pos
    if allowed is not None:
        mask = mask & allowed  # a token always sees itself, so no row is left empty
    if key_padding_mask is not None:
        mask = (mask & key_padding_mask.to(torch.bool)[:, None, :]) | (key_pos == query_pos)
    elif mask.dim() == 2:
        mask = mask[None]
    return mask[:, None]


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused Q | K | V projection (CogView's row order)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.pb_relax = config.pb_relax
        self.pb_relax_alpha = config.pb_relax_alpha
        self.attention_dropout = config.attention_dropout
        # A sparse mask (the local image window) leaves most keys of a block of queries unseen: skip them.
        self.skip_unseen_keys = config.image_attention_window > 0
        self.query_key_value = nn.Linear(h, 3 * h)
        self.dense = nn.Linear(h, h)
        self.output_dropout = nn.Dropout(config.hidden_dropout)
        # While `CogViewGPT.recording_attention` holds it, every call's probabilities are appended here.
        self.recorded: list[torch.Tensor] | None = None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor, memory: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries of `x`, keys and values of `memory` followed by `x` (of `x` alone when `memory`
        is None); each `[B, heads, length, head_dim]`.

        `memory` (already normalised) reproduces CogView's decoding, which cached hidden states and
        recomputed the prefix's keys and values at every step.
        """
        if memory is None:
            q, k, v = self.query_key_value(x).chunk(3, dim=-1)
        else:
            h = x.shape[-1]
            weight_q, weight_kv = self.query_key_value.weight.split([h, 2 * h])
            bias_q, bias_kv = self.query_key_value.bias.split([h, 2 * h])
            q = F.linear(x, weight_q, bias_q)
            k, v = F.linear(torch.cat([memory, x], dim=1), weight_kv, bias_kv).chunk(2, dim=-1)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
               ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v for heads `[B, heads, T, d]` and `[B, heads, S, d]`; the mask is
        as `build_attention_mask` returns it. Returns `[B, T, hidden]` (heads merged). Which backend runs
        (Triton kernels, SDPA or plain torch) is `model.kernels.set_attention_backend`'s choice.

        With a sparse mask (`skip_unseen_keys`, the local image window) the queries go in blocks of
        `QUERY_BLOCK`, each against only the keys one of its queries may see: the others would get zero
        weight anyway, so the result is the same, while the scores held at once shrink from T x S to
        about QUERY_BLOCK x (text + window band + QUERY_BLOCK).

        While recording (`self.recorded` is a list) the plain torch path runs instead, whole, and its
        probabilities `[B, heads, T, S]` are appended to the list."""
        # The Triton kernel skips the empty tiles of a sparse mask itself.
        blocks = self.skip_unseen_keys and attn_mask is not None and q.shape[2] > QUERY_BLOCK
        if self.recorded is not None:
            probs = self.attention_probs(q, k, attn_mask)
            self.recorded.append(probs)
            context = torch.matmul(probs.to(v.dtype), v)
        elif blocks and self._backend(q) != "triton":
            context = torch.cat([self._attend_seen_keys(q[:, :, start:start + QUERY_BLOCK], k, v,
                                                        attn_mask[:, :, start:start + QUERY_BLOCK])
                                 for start in range(0, q.shape[2], QUERY_BLOCK)], dim=2)
        else:
            context = self._attend_heads(q, k, v, attn_mask)
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)

    def _attend_seen_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor
                          ) -> torch.Tensor:
        """Attention of a block of queries over the keys that at least one of them, in any row, may see."""
        seen = attn_mask.any(dim=(0, 1, 2))
        if bool(seen.all()):
            return self._attend_heads(q, k, v, attn_mask)
        keys = seen.nonzero().flatten()
        return self._attend_heads(q, k.index_select(2, keys), v.index_select(2, keys), attn_mask.index_select(3, keys))

    def _attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
                      ) -> torch.Tensor:
        """`attend` before the heads are merged: `[B, heads, T, d]`."""
        dropout_p = self.attention_dropout if self.training else 0.0
        backend = self._backend(q)
        if backend == "triton":
            context = triton_attend(q, k, v, attn_mask, self.pb_relax_alpha or 1.0, dropout_p, self.skip_unseen_keys)
        elif backend == "torch" or self.pb_relax_alpha is not None:
            context = self._attend_math(q, k, v, attn_mask, dropout_p)
        else:
            scale = None
            if self.pb_relax:
                # Released PB-relax: divide Q before the product so Q K^T is formed from small values.
                q = q / math.sqrt(self.head_dim)
                scale = 1.0
            is_causal = attn_mask is None and q.shape[2] > 1
            dtype = q.dtype
            precision = contextlib.nullcontext()
            if q.device.type == "cpu" and dtype == torch.bfloat16:
                # CPU flash attention's bf16 kernel is ~4x slower than its fp32 one (forward plus backward at
                # batch 32, 8 heads, 100 positions: 46 ms against 11 ms), so CPUs attend in fp32, with
                # autocast (which would cast back to bf16) paused.
                q, k, v = q.float(), k.float(), v.float()
                precision = torch.autocast("cpu", enabled=False)
            with precision:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                         is_causal=is_causal, scale=scale).to(dtype)
        return context

    def _backend(self, q: torch.Tensor) -> str:
        return resolve_attention_backend(q, alpha_form=self.pb_relax_alpha is not None,
                                         sparse=self.skip_unseen_keys)

    def _attend_math(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attn_mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
        """Plain torch attention: `attention_probs` (with dropout when training) times the values."""
        probs = F.dropout(self.attention_probs(q, k, attn_mask), p=dropout_p, training=dropout_p > 0)
        return torch.matmul(probs.to(v.dtype), v)

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention probabilities `[B, heads, T, S]` in float32, in the paper's PB-relax form,
        softmax(((Q / (alpha sqrt d)) K^T - max) * alpha), with alpha = `pb_relax_alpha`, or 1 when it is
        off (then it is the released form); the mask as `build_attention_mask` returns it, None = causal.

        Equal to plain attention in exact arithmetic. The product is taken in the input dtype from
        queries shrunk by alpha * sqrt(d), so it stays far from fp16's limit; the shifted scores are
        then multiplied back by alpha and normalised in fp32: after the shift they are <= 0, so the
        exponentials cannot overflow, and fp32 keeps the small probabilities that fp16 would flush.
        """
        alpha = self.pb_relax_alpha or 1.0
        scores = torch.matmul(q / (alpha * math.sqrt(self.head_dim)), k.transpose(-2, -1)).float()
        if attn_mask is None and q.shape[2] > 1:
            attn_mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        scores = (scores - scores.amax(dim=-1, keepdim=True).detach()) * alpha
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, kv_cache: KVCache | None = None,
                layer_index: int = 0, memory: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.project(x, memory)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_index, k, v)
        return self.output_dropout(self.dense(self.attend(q, k, v, attn_mask)))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.ffn_size)
        self.dense_4h_to_h = nn.Linear(config.ffn_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh")))


class TransformerLayer(nn.Module):
    """Pre-LN:   x = x + attn(LN_in(x));        x = x + mlp(LN_post(x))
    Sandwich: x = x + LN_3(attn(LN_in(x)));  x = x + LN_4(mlp(LN_post(x)))
    The extra LayerNorms bound what each branch adds to the residual stream, which is what kept
    CogView's 4B model from diverging in fp16."""

    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.index = index
        self.sandwich = config.layernorm_order == "sandwich"

        def layernorm() -> LayerNorm:
            return LayerNorm(config.hidden_size, config.layernorm_epsilon, config.pb_relax)

        self.input_layernorm = layernorm()
        self.attention = SelfAttention(config)
        self.post_attention_layernorm = layernorm()
        if self.sandwich:
            self.third_layernorm = layernorm()
            self.fourth_layernorm = layernorm()
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, kv_cache: KVCache | None = None,
                memory: torch.Tensor | None = None) -> torch.Tensor:
        """`memory`: this layer's input hidden states at the P positions before `x`, for CogView's
        recompute-the-prefix decoding (see `SelfAttention.project`); normally None. Without a mask, new
        query i then sees keys 0..P+i: the causal triangle is aligned to the end of the keys (SDPA's
        `is_causal` would align it to their start)."""
        normed_memory = None
        if memory is not None:
            normed_memory = self.input_layernorm(memory)
            if attn_mask is None:
                attn_mask = build_attention_mask(x.shape[1], memory.shape[1], None, x.device)
        a = self.attention(self.input_layernorm(x), attn_mask, kv_cache, self.index, normed_memory)
        x = x + (self.third_layernorm(a) if self.sandwich else a)
        m = self.mlp(self.post_attention_layernorm(x))
        return x + (self.fourth_layernorm(m) if self.sandwich else m)


class CogViewGPT(nn.Module):
    """Decoder-only transformer. `forward` returns logits in the compute dtype (the model's dtype, or
    the autocast dtype); cast them to float32 before a loss or sampling."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        # When True (and training), each layer's activations are recomputed in the backward pass.
        self.checkpoint_activations = False
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        # None: the output projection is the word embedding itself (tied). int8 inference puts a quantised
        # copy of it here (`fp16.int8`), so the projection runs in int8 while the embedding lookup stays fp32.
        self.output_head: nn.Module | None = None
        self.transformer = nn.ModuleDict(dict(
            position_embeddings=nn.Embedding(config.max_position_embeddings, config.hidden_size),
            layers=nn.ModuleList(TransformerLayer(config, i) for i in range(config.num_layers)),
            final_layernorm=LayerNorm(config.hidden_size, config.layernorm_epsilon, config.pb_relax),
        ))
        if config.image_positions == "2d":
            self.transformer["row_embeddings"] = nn.Embedding(MAX_GRID_SIDE, config.hidden_size)
            self.transformer["col_embeddings"] = nn.Embedding(MAX_GRID_SIDE, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CogView's init: N(0, 0.02); the projections that write into the residual stream
        N(0, 0.02 / sqrt(2 * layers)) so its variance does not grow with depth; biases 0, LN gains 1."""
        for name, param in self.named_parameters():
            self.init_parameter(name, param)

    @torch.no_grad()
    def init_parameter(self, name: str, param: torch.Tensor) -> None:
        """CogView's init of the parameter `name` (see `reset_parameters`); one at a time, so a model
        partitioned across ranks (ZeRO-3) can be initialised one gathered module after another."""
        if "layernorm" in name:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.endswith("bias"):
            param.zero_()
        elif name.endswith(("attention.dense.weight", "mlp.dense_4h_to_h.weight")):
            param.normal_(0.0, 0.02 / math.sqrt(2 * self.config.num_layers))
        else:
            param.normal_(0.0, 0.02)

    def num_parameters(self) -> int:
        """Parameters counted once each (the tied output projection is the word embedding)."""
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> KVCache:
        """An empty cache for `max_length` positions; dtype/device default to the model's (pass the
        autocast dtype when running an fp32 model under autocast, to halve the cache)."""
        weight = self.word_embeddings.weight
        c = self.config
        return KVCache.allocate(c.num_layers, batch_size, c.num_attention_heads, max_length, c.head_dim,
                                dtype=dtype or weight.dtype, device=device or weight.device,
                                track_tokens=c.reads_image_coordinates)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
              coordinates: ImageCoordinates | None = None) -> torch.Tensor:
        """Word plus position embeddings `[B, T, hidden]` (the input of layer 0); with 2-D image positions,
        plus the row and column embeddings of each image code (`coordinates` of these T tokens)."""
        x = self.word_embeddings(input_ids) + self.transformer.position_embeddings(position_ids)
        if self.config.image_positions == "2d":
            if coordinates is None:
                coordinates = image_coordinates(input_ids, self.config.image_tokens)
            place = (self.transformer.row_embeddings(coordinates.row.clamp(0, MAX_GRID_SIDE - 1))
                     + self.transformer.col_embeddings(coordinates.col.clamp(0, MAX_GRID_SIDE - 1)))
            x = x + place * coordinates.is_code.unsqueeze(-1).to(place.dtype)
        return self.embedding_dropout(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and the tied output projection: `[B, T, hidden]` -> `[B, T, vocab]`."""
        normed = self.transformer.final_layernorm(hidden)
        if self.output_head is not None:
            return self.output_head(normed)
        return F.linear(normed, self.word_embeddings.weight)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits `[B, T, vocab]` for `input_ids [B, T]` at `position_ids [B, T]`.

        With `kv_cache`, the T positions are appended after the `kv_cache.length` already there and
        attend causally to all of them. `key_padding_mask [B, S]` (True = attend) covers every key
        position: S = T, or `kv_cache.length + T` with a cache.
        """
        past_len = 0 if kv_cache is None else kv_cache.length
        self._check_inputs(input_ids, position_ids, key_padding_mask, kv_cache, past_len)
        length = input_ids.shape[1]
        keys = self._key_coordinates(input_ids, kv_cache)
        window = self.config.image_attention_window
        attn_mask = build_attention_mask(length, past_len, key_padding_mask, input_ids.device,
                                         image_window_mask(keys, length, window) if window else None)
        x = self.embed(input_ids, position_ids, None if keys is None else keys.last(length))
        for layer in self.transformer.layers:
            if self.checkpoint_activations and self.training:
                x = checkpoint(layer, x, attn_mask, kv_cache, use_reentrant=False)
            else:
                x = layer(x, attn_mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(input_ids.shape[1])
        return self.logits(x)

    @contextlib.contextmanager
    def recording_attention(self) -> Iterator[list[torch.Tensor]]:
        """Within this block every forward also records its attention probabilities: the yielded list
        gets, per forward, one `[B, heads, T, S]` float32 tensor per layer, in layer order (query t's row
        over the keys it may see sums to 1). The plain torch path runs meanwhile (the fused backends never
        form the probabilities); outside the block nothing is recorded and the fast path is untouched.

        Why opt in: attention maps need the probabilities, which cost T x S memory per head and layer."""
        recorded: list[torch.Tensor] = []
        layers = [layer.attention for layer in self.transformer.layers]
        for attention in layers:
            attention.recorded = recorded
        try:
            yield recorded
        finally:
            for attention in layers:
                attention.recorded = None

    def _key_coordinates(self, input_ids: torch.Tensor, kv_cache: KVCache | None) -> ImageCoordinates | None:
        """Image coordinates of every key position (the cached ones and these), or None when the model
        needs none (no local window, 1-D positions)."""
        if not self.config.reads_image_coordinates:
            return None
        key_ids = input_ids if kv_cache is None else kv_cache.add_tokens(input_ids)
        return image_coordinates(key_ids, self.config.image_tokens)

    def _check_inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                      key_padding_mask: torch.Tensor | None, kv_cache: KVCache | None, past_len: int) -> None:
        """Shape checks only: value checks would force a device sync at every decoding step."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise UserError(f"input_ids must be [batch, length] with length >= 1, got {list(input_ids.shape)}")
        if position_ids.shape != input_ids.shape:
            raise UserError(f"position_ids {list(position_ids.shape)} must have the shape of input_ids "
                            f"{list(input_ids.shape)}")
        batch, length = input_ids.shape
        if kv_cache is not None:
            if kv_cache.batch_size != batch:
                raise UserError(f"KV cache holds {kv_cache.batch_size} rows but the batch has {batch}")
            kv_cache.check_room(length)
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, past_len + length):
            raise UserError(f"key_padding_mask must be [batch, cached + new positions] = "
                            f"{[batch, past_len + length]}, got {list(key_padding_mask.shape)}")
