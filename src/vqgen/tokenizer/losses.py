"""Loss terms of VQ-GAN tokenizer training (Esser et al. 2020, https://arxiv.org/abs/2012.09841).

Small pure functions; the training loop combines them with LPIPS and the codebook loss.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Lim & Ye 2017, https://arxiv.org/abs/1705.02894), halved as in taming:
    0.5 · (mean relu(1 - real) + mean relu(1 + fake)). Logits of any shape; returns a scalar."""
    loss_real = F.relu(1.0 - logits_real).mean()  # ()
    loss_fake = F.relu(1.0 + logits_fake).mean()  # ()
    return 0.5 * (loss_real + loss_fake)


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial loss: -mean(D(x̂)). Returns a scalar."""
    return -logits_fake.mean()


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer_weight: torch.Tensor,
                    delta: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """VQ-GAN's adaptive GAN weight λ = ‖∇_w L_rec‖ / (‖∇_w L_GAN‖ + δ), clamped to [0, max_weight]
    and detached; w is the decoder's last layer weight (Esser et al. 2020, eq. 7,
    https://arxiv.org/abs/2012.09841). Graphs are retained so the caller can still backward.
    """
    if nll_loss.numel() != 1 or g_loss.numel() != 1:
        raise ValueError(f"adaptive_weight: losses must be scalars, got shapes "
                         f"{tuple(nll_loss.shape)} and {tuple(g_loss.shape)}")
    if delta <= 0 or max_weight <= 0:
        raise ValueError(f"adaptive_weight: delta and max_weight must be > 0, got {delta} and {max_weight}")
    if not last_layer_weight.requires_grad:
        raise ValueError("adaptive_weight: last_layer_weight does not require grad")
    grads = []
    for name, loss in (("nll_loss", nll_loss), ("g_loss", g_loss)):
        if not loss.requires_grad:
            raise ValueError(f"adaptive_weight: {name} has no graph (computed under no_grad or detached)")
        (grad,) = torch.autograd.grad(loss, last_layer_weight, retain_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError(f"adaptive_weight: {name} does not depend on last_layer_weight")
        grads.append(grad)
    nll_grad, g_grad = grads
    weight = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(g_grad) + delta)  # ()
    return weight.clamp(0.0, max_weight).detach()


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: Literal["l1", "l2"]) -> torch.Tensor:
    """Mean absolute ("l1") or squared ("l2") error over all elements. Shapes must match exactly."""
    if x.shape != x_hat.shape:
        raise ValueError(f"reconstruction_loss: shapes differ, {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    if kind == "l1":
        return (x - x_hat).abs().mean()
    if kind == "l2":
        return (x - x_hat).pow(2).mean()
    raise ValueError(f"reconstruction_loss: unknown kind {kind!r}; expected 'l1' or 'l2'")
