"""Fréchet distance between feature sets, and "judge FD" on images.

The Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017,
https://arxiv.org/abs/1706.08500):

    d² = ||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

With Inception-v3 pool features this is FID. Here the features come from the project's own judge
classifier (``vqgen.eval.judge``), so the number is a **judge FD**: it ranks models evaluated with
the same judge directory and is not comparable with published FID values.

Means and (N-1)-normalised covariances are computed here in float64; the distance itself is
torchmetrics' ``_compute_fid`` (trace of the matrix square root via the eigenvalues of S_a S_b).
``torchmetrics.image.fid.FrechetInceptionDistance(feature=<module>)`` is not used as a wrapper: with
a custom module it runs the module as-is (no eval mode, no uint8 -> float conversion: its
``normalize`` flag only applies to its own Inception), probes a (3, 299, 299) dummy image unless the
module has ``num_features`` or ``input_img_size`` is given, accumulates covariances as
sum(x xᵀ) - N mu muᵀ, and casts the result back to the features' float32.

Standard Inception FID uses the same distance on the features of ``vqgen.eval.inception`` (the FID
Inception-v3 defined in this project, weights supplied by path); torchmetrics' own Inception
extractor would need torch-fidelity and torchvision, which this project does not depend on.
"""
from __future__ import annotations

import torch

from .classifier import judge_predictions
from .judge import JudgeClassifier


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> float64 mean (D,) and unbiased covariance (D, D); N >= 2."""
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 feature vectors per set, got {features.shape[0]}")
    x = features.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    mu = x.mean(dim=0)  # (D,)
    centered = x - mu  # (N, D)
    sigma = centered.T @ centered / (x.shape[0] - 1)  # (D, D)
    return mu, sigma


def frechet_distance_from_stats(mu_a: torch.Tensor, sigma_a: torch.Tensor,
                                mu_b: torch.Tensor, sigma_b: torch.Tensor) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b), computed in float64."""
    # Imported here: importing torchmetrics loads all its metric modules (about a second, more with
    # transformers installed), which commands that never compute an FD should not pay for.
    from torchmetrics.image.fid import _compute_fid

    mu_a, sigma_a, mu_b, sigma_b = (t.to(device="cpu", dtype=torch.float64) for t in (mu_a, sigma_a, mu_b, sigma_b))
    d = mu_a.shape[-1]
    if mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise ValueError(f"mismatched statistics: mu {tuple(mu_a.shape)} / {tuple(mu_b.shape)}, "
                         f"sigma {tuple(sigma_a.shape)} / {tuple(sigma_b.shape)}")
    fd = float(_compute_fid(mu_a, sigma_a, mu_b, sigma_b))
    # Rounding can leave a tiny negative value for (near-)identical sets; the distance itself is >= 0.
    return max(fd, 0.0)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N_a, D) and (N_b, D) feature sets."""
    if feats_a.dim() != 2 or feats_b.dim() != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {tuple(feats_a.shape)} "
                         f"and {tuple(feats_b.shape)}")
    return frechet_distance_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


def judge_feature_stats(judge: JudgeClassifier, images: torch.Tensor,
                        batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the judge's features on uint8 (N, C, H, W) images (cache them for a test set)."""
    _, feats = judge_predictions(judge, images, batch_size)
    return feature_stats(feats)


def judge_fd(judge: JudgeClassifier, images_a: torch.Tensor, images_b: torch.Tensor,
             batch_size: int = 512) -> float:
    """Judge FD between two uint8 (N, C, H, W) image sets (e.g. samples vs test images)."""
    return frechet_distance_from_stats(*judge_feature_stats(judge, images_a, batch_size),
                                       *judge_feature_stats(judge, images_b, batch_size))
