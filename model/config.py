"""`ModelConfig`: every number that shapes the transformer, plus its parameter and FLOP counts.

The config is saved as `model_config.json` beside every checkpoint so that loading for inference
never needs the training command line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from data_utils.sequences import POSITION_LAYOUTS, ImageTokens
from data_utils.tokenizer import GRID_TOKENS
from utils.errors import UserError

LAYERNORM_ORDERS = ("pre", "sandwich")
# "1d": one learned position per token (CogView). "2d": image codes also get learned row and column
# embeddings, so a code's place in its grid is the same at every grid shape and text length.
IMAGE_POSITIONS = ("1d", "2d")
MAX_GRID_SIDE = max(GRID_TOKENS)  # rows and columns of the 2-D position tables
# The MLP is 4x as wide as the hidden state, as in GPT-2 and CogView.
FFN_MULTIPLIER = 4


@dataclass
class ModelConfig:
    """Sizes and numerics of a CogView-style GPT (decoder-only transformer over one id space)."""

    vocab_size: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    max_position_embeddings: int
    # "sandwich": CogView's Sandwich-LN (four LayerNorms per layer); "pre": GPT-2's pre-LN (two).
    layernorm_order: str = "sandwich"
    # PB-relax as in the released CogView code, LN(x / (max|x| / 8)) and (Q / sqrt(d)) K^T, except that the
    # maximum is taken per token rather than over the whole tensor (see model/gpt.py's LayerNorm).
    pb_relax: bool = False
    # PB-relax as in the paper: softmax((Q / (alpha sqrt d)) K^T - max) * alpha). None = off.
    pb_relax_alpha: float | None = None
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layernorm_epsilon: float = 1e-5
    # The positions the weights were trained with; CogView's release and older checkpoints are "consecutive".
    position_layout: str = "consecutive"
    # The local image window (0 = off, full causal attention): an image code attends to every text and command
    # token and every code of another image, but to the codes of its own image only within `image_attention_window`
    # rows above it and as many columns either side (docs/architecture.md, "Local image attention").
    image_attention_window: int = 0
    # Rows and columns of image codes: "1d" (positions only) or "2d" (plus row and column embeddings).
    image_positions: str = "1d"
    # How the model finds image codes and their grid places in a sequence; recorded when a feature needs it.
    image_tokens: ImageTokens | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_tokens, Mapping):  # from model_config.json
            self.image_tokens = ImageTokens(**self.image_tokens)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def reads_image_coordinates(self) -> bool:
        """Whether the model finds each image code's row and column (local window or 2-D positions)."""
        return self.image_attention_window > 0 or self.image_positions == "2d"

    @property
    def ffn_size(self) -> int:
        return FFN_MULTIPLIER * self.hidden_size

    def validate(self) -> None:
        """Reject settings that cannot build a model, with a one-line reason."""
        for name in ("vocab_size", "num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"model {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"model hidden_size ({self.hidden_size}) must be divisible by "
                            f"num_attention_heads ({self.num_attention_heads})")
        if self.layernorm_order not in LAYERNORM_ORDERS:
            raise UserError(f"model layernorm_order must be one of {LAYERNORM_ORDERS}, got {self.layernorm_order!r}")
        if self.pb_relax_alpha is not None and not self.pb_relax_alpha > 0:
            raise UserError(f"model pb_relax_alpha must be positive (CogView's paper uses 32), got {self.pb_relax_alpha}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"model {name} must be in [0, 1), got {getattr(self, name)}")
        if self.position_layout not in POSITION_LAYOUTS:
            raise UserError(f"model position_layout must be one of {POSITION_LAYOUTS}, got {self.position_layout!r}")
        if not isinstance(self.image_attention_window, int) or self.image_attention_window < 0:
            raise UserError(f"model image_attention_window must be an integer >= 0, "
                            f"got {self.image_attention_window!r}")
        if self.image_positions not in IMAGE_POSITIONS:
            raise UserError(f"model image_positions must be one of {IMAGE_POSITIONS}, got {self.image_positions!r}")
        if self.reads_image_coordinates and self.image_tokens is None:
            raise UserError("model image_attention_window and 2-D image_positions need image_tokens "
                            "(the codebook size and grid tokens)")
        if not self.layernorm_epsilon > 0:
            raise UserError(f"model layernorm_epsilon must be positive, got {self.layernorm_epsilon}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Build from a dict holding exactly the config's fields (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown model config field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as err:
            raise UserError(f"bad model config: {err}") from None


def count_parameters(config: ModelConfig) -> int:
    """Number of parameters of `CogViewGPT(config)`, computed from the sizes alone (no allocation).

    The output projection is tied to the word embeddings, so it adds nothing.
    """
    h = config.hidden_size
    layernorm = 2 * h
    layernorms_per_layer = 4 if config.layernorm_order == "sandwich" else 2
    per_layer = (
        (3 * h * h + 3 * h)  # query_key_value
        + (h * h + h)  # attention.dense
        + (config.ffn_size * h + config.ffn_size)  # mlp.dense_h_to_4h
        + (h * config.ffn_size + h)  # mlp.dense_4h_to_h
        + layernorms_per_layer * layernorm
    )
    embeddings = (config.vocab_size + config.max_position_embeddings) * h
    if config.image_positions == "2d":
        embeddings += 2 * MAX_GRID_SIDE * h  # row and column embeddings
    return embeddings + config.num_layers * per_layer + layernorm


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, for model-FLOPs utilisation (MFU).

    PaLM's estimate, as nanoGPT uses it: 6 N for the weight matmuls (2 forward, 4 backward per
    weight), where N leaves out the position embeddings (a lookup, not a matmul) but keeps the word
    embeddings (they are also the output projection); plus 12 * layers * hidden * seq_len for the
    attention scores and their product with the values. Like PaLM we do not halve the attention term
    for causality, so numbers compare with published MFUs.
    """
    if seq_len < 1:
        raise UserError(f"seq_len must be positive for the FLOP count, got {seq_len}")
    matmul_params = count_parameters(config) - config.max_position_embeddings * config.hidden_size
    attention = 12 * config.num_layers * config.hidden_size * seq_len
    return float(6 * matmul_params + attention)
