"""What every dataset spec returns: an in-memory ``ImageDataset`` of uint8 images, plus shared checks.

Images are decoded once and kept as one uint8 tensor (N, C, H, W); training code turns batches into
floats itself. Nothing here imports model code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError

SPLITS = ("train", "test", "all")


@dataclass(repr=False)
class ImageDataset:
    """Decoded images kept in memory, with optional integer class labels."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,), or None when the source has no labels
    class_names: list[str] = field(default_factory=list)  # [] when there are no labels
    skipped: int = 0  # files that could not be read and were skipped
    source: str = ""  # the spec it came from, for messages and metadata

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4 or self.images.dtype != torch.uint8:
            got = tuple(self.images.shape) if isinstance(self.images, torch.Tensor) else type(self.images).__name__
            dtype = getattr(self.images, "dtype", None)
            raise DataError(f"{self.source or 'dataset'}: images must be a uint8 (N, C, H, W) tensor, got {got} {dtype}")
        if self.labels is not None:
            if self.labels.shape != (self.images.shape[0],):
                raise DataError(
                    f"{self.source or 'dataset'}: {tuple(self.labels.shape)} labels for {self.images.shape[0]} images"
                )
            self.labels = self.labels.long()  # int64 (N,)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        extra = f", classes={self.num_classes}" if self.labels is not None else ", unlabelled"
        skipped = f", skipped={self.skipped}" if self.skipped else ""
        return f"ImageDataset({self.source!r}, n={n}, shape=({c}, {h}, {w}){extra}{skipped})"


def cache_dir() -> Path:
    """Where downloads go: ``$VQGEN_CACHE`` or ``~/.cache/vqgen``."""
    return Path(os.environ.get("VQGEN_CACHE") or Path.home() / ".cache" / "vqgen").expanduser()


def check_image_args(resolution: int, channels: int) -> None:
    """Reject a resolution or channel count no loader can produce."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DataError(f"resolution must be a positive integer, got {resolution!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
