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


PRESETS: dict[str, Callable[[], PriorConfig]] = {
    "tiny": tiny,
    "fashion-mnist-class": fashion_mnist_class,
    "fashion-mnist-pixels": fashion_mnist_pixels,
}
