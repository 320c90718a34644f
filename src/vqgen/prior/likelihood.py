"""Held-out likelihood of a prior: the test NLL in bits per image token.

Used by training (the end-of-run and periodic test figure) and by evaluation (``vqgen eval prior``);
it lives beside the model so that neither has to import the other.
"""
from __future__ import annotations

import math

import torch

from .gpt import GPTPrior


@torch.inference_mode()
def bits_per_token(model: GPTPrior, tokens: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> float:
    """Mean NLL in bits per image token of token grids ``tokens`` (N, H, W); ``labels`` (N,) are the
    conditions of a class-conditional model (given, never dropped), ignored by an unconditional one."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    conditional = labels is not None and model.config.num_classes > 0
    for i in range(0, len(tokens), batch_size):
        toks = tokens[i:i + batch_size].flatten(1).to(device)  # (b, HW)
        cond = labels[i:i + batch_size].to(device) if conditional else None  # (b,)
        total += float(model.loss(toks, cond)) * toks.shape[0]
        n += toks.shape[0]
    model.train(was)
    return total / n / math.log(2)
