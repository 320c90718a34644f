"""Named prior configs (``resolve_config(PriorConfig, name, PRESETS)``)."""
from __future__ import annotations

from typing import Callable

from .gpt import PriorConfig


def tiny() -> PriorConfig:
    """Builds and samples in milliseconds: for tests and smoke runs."""
    return PriorConfig(vocab_size=16, grid=(4, 4), n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                       num_classes=4, cond_drop_prob=0.1)


def fashion_mnist_class() -> PriorConfig:
    """Class-conditional prior over an 8×8 grid of a 512-entry codebook (Fashion-MNIST tokenizer).

    Sized to train within ~15 minutes on a 2-core CPU; cond_drop_prob enables classifier-free guidance.
    """
    return PriorConfig(vocab_size=512, grid=(8, 8), n_layer=6, n_head=8, n_embd=256, dropout=0.0,
                       num_classes=10, cond_drop_prob=0.1)


def fashion_mnist_pixels() -> PriorConfig:
    """Image GPT baseline: 28×28 pixels quantised to a 16-colour palette, same depth/width as above."""
    return PriorConfig(vocab_size=16, grid=(28, 28), n_layer=6, n_head=8, n_embd=256, dropout=0.0,
                       num_classes=10, cond_drop_prob=0.1)


def imagenet_cin_300m() -> PriorConfig:
    """A class-conditional ImageNet prior at taming's "cIN" scale, sized for one GPU: GPT 24 layers ×
    1024 wide (16 heads) over the 16×16 tokens of the ``imagenet-f16-16384`` tokenizer, 1000 classes,
    condition dropout 0.1 for guidance. About 0.34 B parameters (docs/gpu.md; taming's released cIN
    transformer, Esser et al. 2020 https://arxiv.org/abs/2012.09841, is the same recipe at 1.4 B)."""
    return PriorConfig(vocab_size=16384, grid=(16, 16), n_layer=24, n_head=16, n_embd=1024, dropout=0.0,
                       num_classes=1000, cond_drop_prob=0.1)


PRESETS: dict[str, Callable[[], PriorConfig]] = {
    "tiny": tiny,
    "fashion-mnist-class": fashion_mnist_class,
    "fashion-mnist-pixels": fashion_mnist_pixels,
    "imagenet-cin-300m": imagenet_cin_300m,
}
