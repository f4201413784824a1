"""Next-token cross-entropy over the unified sequence, with text targets weighted by `--txt-loss-scale`.

The model reads `ids[:, :-1]` and predicts `ids[:, 1:]`. `[PAD]` targets carry no loss. Image-code
targets have weight 1 and every other target (text pieces and command tokens) `txt_loss_scale`; the
loss is the weighted mean, as in CogView. Image and text losses are also reported separately
(unweighted means), as sums that can be added over micro-batches and ranks before dividing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import mpu

# Order of the entries of `LossParts.sums`.
SUM_FIELDS = ("weighted_loss", "weight", "image_loss", "image_targets", "text_loss", "text_targets")


@dataclass
class LossParts:
    loss: torch.Tensor  # the scalar that is optimised: weighted mean over this micro-batch
    sums: torch.Tensor  # float64 [len(SUM_FIELDS)], detached


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int, codebook_size: int,
                    txt_loss_scale: float) -> LossParts:
    """`logits [B, T, V]` predicting `targets [B, T]` (the inputs shifted by one); under tensor
    parallelism `V` is this rank's block of the vocabulary (`mpu.cross_entropy`)."""
    losses = mpu.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).view_as(targets)
    real = targets != pad_id
    image = real & (targets >= 0) & (targets < codebook_size)
    text = real & ~image
    weights = image.float() + text.float() * txt_loss_scale
    weight = weights.sum()
    loss = (losses * weights).sum() / weight.clamp_min(torch.finfo(weight.dtype).tiny)
    detached = losses.detach()
    sums = torch.stack([(detached * weights).sum(), weight.detach(), detached[image].sum(), image.sum(),
                        detached[text].sum(), text.sum()]).double()
    return LossParts(loss=loss, sums=sums)


def summarize(sums: torch.Tensor) -> dict[str, float]:
    """Means from (possibly accumulated and all-reduced) `sums`."""
    values = dict(zip(SUM_FIELDS, sums.tolist()))

    def mean(total: str, count: str) -> float:
        return values[total] / values[count] if values[count] else float("nan")

    return {"loss": mean("weighted_loss", "weight"), "image_loss": mean("image_loss", "image_targets"),
            "text_loss": mean("text_loss", "text_targets")}
