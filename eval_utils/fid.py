"""Frechet distance between feature sets (FID) and Inception Score (IS), computed in float64.

Frechet distance of two Gaussians N(mu1, S1), N(mu2, S2) fitted to two feature sets:

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

with the unbiased sample covariance (divisor N - 1), as pytorch-fid and the TF reference use. With
Inception pool features it is FID; with our own feature network it is "self-FID" (eval_utils.feature_net).

The trace term is computed without a general matrix square root (scipy's `sqrtm`, which is not
available here and is unstable for the singular covariances of small sample sets): with
A = S1^(1/2) S2^(1/2), S1 S2 is similar to A A^T, so tr((S1 S2)^(1/2)) is the sum of the singular
values of A (its nuclear norm). S^(1/2) of a symmetric PSD matrix comes from `eigh` with negative
round-off eigenvalues clipped to 0. Singular values carry absolute error ~eps * |A|, so a set
compared with itself gives FD ~1e-12 relative, where square roots of near-zero eigenvalues of
S1 S2 would give ~1e-8 per dimension.

Inception Score of class probabilities p(y|x) over N images:

    IS = exp( mean_x KL(p(y|x) || p(y)) ),  p(y) = mean_x p(y|x)

computed on each of `splits` consecutive equal parts and reported as mean and standard deviation
over the parts (the reference uses 10 splits of 50,000 images). 1 <= IS <= number of classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.errors import UserError


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean [D] and covariance [D, D] of a feature set, float64, and how many samples made them."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int


def _as_float64(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    return np.asarray(features, dtype=np.float64)


def feature_statistics(features: torch.Tensor | np.ndarray) -> FeatureStatistics:
    """Mean and unbiased covariance of features [N, D]; needs N >= 2."""
    array = _as_float64(features)
    if array.ndim != 2:
        raise UserError(f"features must be a matrix [N, D], got shape {array.shape}")
    if array.shape[0] < 2:
        raise UserError(f"a Frechet distance needs at least 2 samples per set, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise UserError("features contain NaN or inf; check the images and the feature network")
    return FeatureStatistics(array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], -1),
                             array.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (round-off negatives clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """The Frechet distance between the Gaussians of two feature statistics (see module docstring)."""
    if first.mean.shape != second.mean.shape:
        raise UserError(f"cannot compare features of dimension {first.mean.shape[0]} with "
                        f"{second.mean.shape[0]}: use the same feature network for both sets")
    mean_term = float(np.sum((first.mean - second.mean) ** 2))
    cross = _psd_sqrt(first.covariance) @ _psd_sqrt(second.covariance)
    trace_sqrt = float(np.linalg.svd(cross, compute_uv=False).sum())
    distance = mean_term + float(np.trace(first.covariance) + np.trace(second.covariance)) - 2.0 * trace_sqrt
    return max(distance, 0.0)  # exact arithmetic never goes below 0; round-off may, by ~1e-12


def fid_from_features(first: torch.Tensor | np.ndarray, second: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between two feature sets [N1, D] and [N2, D]."""
    return frechet_distance(feature_statistics(first), feature_statistics(second))


def inception_score(probabilities: torch.Tensor | np.ndarray, splits: int = 1) -> tuple[float, float]:
    """(mean, std) over `splits` parts of exp(mean KL(p(y|x) || p(y))) for probabilities [N, C].

    Rows must be probability vectors (non-negative, summing to 1 within 1e-4): pass a softmax, not
    logits. Zero probabilities contribute 0 (the limit of p log p). N must be at least `splits`;
    a remainder of N % splits rows is left out, as in the reference implementation.
    """
    probs = _as_float64(probabilities)
    if probs.ndim != 2:
        raise UserError(f"class probabilities must be a matrix [N, C], got shape {probs.shape}")
    if splits < 1 or probs.shape[0] < splits:
        raise UserError(f"Inception Score needs at least as many images as splits ({splits}), "
                        f"got {probs.shape[0]}")
    if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise UserError("Inception Score expects rows of class probabilities (a softmax of the logits)")
    part = probs.shape[0] // splits
    scores = []
    for index in range(splits):
        chunk = probs[index * part:(index + 1) * part]
        marginal = chunk.mean(axis=0, keepdims=True)
        ratio = np.divide(chunk, marginal, out=np.ones_like(chunk), where=chunk > 0)
        kl = np.sum(chunk * np.log(ratio), axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
