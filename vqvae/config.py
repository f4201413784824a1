"""`VQVAEConfig`: every number that shapes a VQ-VAE, saved as `config.json` beside its weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from utils.errors import UserError

LAYOUTS = ("ours", "cogview")
RECON_LOSSES = ("l1", "l2")
DOWNSAMPLE_FACTORS = (4, 8)

# CogView's released VQ-VAE normalises inputs with the statistics of its training set.
COGVIEW_MEAN = (0.79093, 0.76271, 0.75340)
COGVIEW_STD = (0.30379, 0.32279, 0.32800)


@dataclass
class VQVAEConfig:
    """Architecture, quantiser and loss settings of one VQ-VAE.

    The defaults are the configuration that met our quality targets on `shapes` at 64 px within
    10 CPU-minutes (see docs/vqvae.md); `cogview_config()` gives the released CogView model.
    """

    codebook_size: int = 1024
    embed_dim: int = 64
    # Width of the network at the code grid; the "ours" layout halves it at each finer resolution.
    hidden_channels: int = 64
    num_res_blocks: int = 1
    downsample: int = 8
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    commitment_cost: float = 0.25
    recon_loss: str = "l2"
    # A code whose EMA usage (assignments per training batch) falls below this is restarted.
    dead_code_threshold: float = 0.1
    # Inputs in [0, 1] are normalised as (x - mean) / std; 0.5 / 0.5 maps them onto [-1, 1].
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    layout: str = "ours"

    def __post_init__(self) -> None:
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        self.validate()

    def validate(self) -> None:
        """Reject settings that cannot build a model, with a one-line reason."""
        if self.layout not in LAYOUTS:
            raise UserError(f"VQ-VAE layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.recon_loss not in RECON_LOSSES:
            raise UserError(f"VQ-VAE recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")
        if self.downsample not in DOWNSAMPLE_FACTORS:
            raise UserError(f"VQ-VAE downsample must be one of {DOWNSAMPLE_FACTORS}, got {self.downsample}")
        for name in ("codebook_size", "embed_dim", "hidden_channels"):
            if getattr(self, name) < 1:
                raise UserError(f"VQ-VAE {name} must be positive, got {getattr(self, name)}")
        if self.num_res_blocks < 0:
            raise UserError(f"VQ-VAE num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if self.layout == "cogview" and self.num_res_blocks:
            raise UserError("the cogview VQ-VAE layout has no residual blocks; set num_res_blocks to 0")
        if self.layout == "ours" and self.hidden_channels % (self.downsample // 2):
            raise UserError(f"VQ-VAE hidden_channels ({self.hidden_channels}) must be divisible by "
                            f"{self.downsample // 2}: the ours layout halves it at each finer resolution")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"VQ-VAE ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_eps <= 0:
            raise UserError(f"VQ-VAE ema_eps must be positive, got {self.ema_eps}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise UserError("VQ-VAE image_mean and image_std need 3 values each, std positive")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VQVAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown VQ-VAE config field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as err:
            raise UserError(f"bad VQ-VAE config: {err}") from None


def cogview_config() -> VQVAEConfig:
    """The configuration of CogView's released `vqvae_hard_biggerset_011.pt`."""
    return VQVAEConfig(codebook_size=8192, embed_dim=256, hidden_channels=512, num_res_blocks=0,
                       downsample=8, image_mean=COGVIEW_MEAN, image_std=COGVIEW_STD, layout="cogview")
