"""Dataset specs: ``KIND[:PATH]`` strings that name where images come from.

``load_images("fashion-mnist")`` or ``load_images("folder:~/pics", resolution=64, channels=3)`` decode
everything once into an in-memory ``ImageDataset`` of uint8 (N, C, H, W) images. This package never
imports model code.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import SPLITS, ImageDataset, cache_dir
from .fashion_mnist import load_fashion_mnist
from .folder import load_folder

DATASET_KINDS = ("fashion-mnist", "folder")

__all__ = ["DATASET_KINDS", "SPLITS", "ImageDataset", "cache_dir", "load_images", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"KIND[:PATH]"`` into ``(kind, path or None)``; an unknown kind raises DataError."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty dataset spec {spec!r}; expected KIND[:PATH] with KIND one of {list(DATASET_KINDS)}")
    kind, sep, path = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in DATASET_KINDS:
        hint = ""
        if Path(spec).expanduser().is_dir():
            hint = f" (for a folder of images write folder:{spec})"
        raise DataError(f"unknown dataset kind {kind!r} in {spec!r}; known kinds: {list(DATASET_KINDS)}{hint}")
    return kind, (path.strip() or None) if sep else None


def load_images(
    spec: str,
    split: str = "train",
    resolution: int = 32,
    channels: int = 1,
    progress: bool = True,
) -> ImageDataset:
    """Decode the images a spec names into memory as uint8 (N, channels, resolution, resolution).

    - ``fashion-mnist[:DIR]``: the four IDX ``.gz`` files in DIR (default ``$VQGEN_CACHE/fashion-mnist``,
      downloaded when missing). ``split`` is "train", "test" or "all". 28×28 images are zero-padded
      to larger resolutions and resized down to smaller ones.
    - ``folder:DIR``: every image under DIR, labelled by first-level subfolder when all images have
      one. ``split`` is ignored: the folder is used whole. Unreadable files are skipped and counted.

    ``channels`` is 1 (grey) or 3 (RGB). User-facing problems raise ``DataError``.
    """
    kind, path = parse_spec(spec)
    if kind == "fashion-mnist":
        return load_fashion_mnist(path, split, resolution, channels, progress, source=spec)
    if path is None:
        raise DataError(f"{spec!r}: a folder spec needs a path, e.g. folder:/data/images")
    return load_folder(path, resolution, channels, progress, source=spec)
