"""What every dataset spec returns: an in-memory ``ImageDataset`` of uint8 images, plus shared checks.

Images are decoded once and kept as one uint8 tensor (N, C, H, W); training code turns batches into
floats itself. Nothing here imports model code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ..errors import DataError

SPLITS = ("train", "test", "all")


@dataclass(repr=False)
class ImageDataset:
    """Decoded images kept in memory, with optional integer class labels and optional captions.

    Captioned sources (``shapes``, ``pairs``, ``manifest``) fill ``captions``; ``shapes`` also gives
    each image its ground-truth ``records`` (see ``vqgen.data.records``) and structured ``targets``.
    ``caption_stats`` counts what happened to captions while loading (e.g. ``{"empty": 2,
    "undecodable": 1, "truncated": 0}``): skipped items are also included in ``skipped``.
    """

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,), or None when the source has no labels
    class_names: list[str] = field(default_factory=list)  # [] when there are no labels
    skipped: int = 0  # files that could not be read and were skipped
    source: str = ""  # the spec it came from, for messages and metadata
    captions: list[str] | None = None  # one caption per image, or None when the source has none
    records: list[dict] | None = None  # ground-truth attribute record per image (shapes), or None
    targets: torch.Tensor | None = None  # int64 (N, ...) structured per-image labels, or None
    caption_stats: dict = field(default_factory=dict)  # counts: skipped/truncated captions by reason

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
        n, where = self.images.shape[0], self.source or "dataset"
        if self.captions is not None:
            if len(self.captions) != n or not all(isinstance(c, str) for c in self.captions):
                raise DataError(f"{where}: captions must be {n} strings (one per image), got {len(self.captions)}")
            self.captions = list(self.captions)
        if self.records is not None and len(self.records) != n:
            raise DataError(f"{where}: {len(self.records)} records for {n} images")
        if self.targets is not None:
            if not isinstance(self.targets, torch.Tensor) or self.targets.dim() < 1 or self.targets.shape[0] != n:
                t = self.targets
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise DataError(f"{where}: targets must be a tensor with {n} rows, got {got}")
            self.targets = self.targets.long()  # int64 (N, ...)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def batch(self, idx: torch.Tensor | Iterable[int]) -> torch.Tensor:
        """uint8 (b, C, H, W) images of ``idx`` (the same call reads a ``LazyImageDataset``)."""
        return self.images[torch.as_tensor(idx if isinstance(idx, torch.Tensor) else list(idx), dtype=torch.int64)]

    def step_batches(self, index_of_step: Callable[[int], torch.Tensor], start: int, stop: int,
                     workers: int = 0) -> Iterator[torch.Tensor]:
        """The batches of steps ``start`` .. ``stop - 1``: ``batch(index_of_step(s))``. In memory a
        batch is one gather, so ``workers`` (used by ``LazyImageDataset``) starts no process here."""
        return (self.batch(index_of_step(s)) for s in range(start, stop))

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        extra = f", classes={self.num_classes}" if self.labels is not None else ", unlabelled"
        skipped = f", skipped={self.skipped}" if self.skipped else ""
        captioned = ", captioned" if self.captions is not None else ""
        return f"ImageDataset({self.source!r}, n={n}, shape=({c}, {h}, {w}){extra}{captioned}{skipped})"


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
