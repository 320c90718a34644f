"""Dataset specs: ``KIND[:PATH]`` strings that name where images come from.

``load_images("fashion-mnist")`` or ``load_images("folder:~/pics", resolution=64, channels=3)`` decode
everything once into an in-memory ``ImageDataset`` of uint8 (N, C, H, W) images; captioned kinds
(``shapes``, ``pairs``, ``manifest``, ``wds``) also fill its ``captions``. With ``lazy=True`` (or
``None``: past ``IN_MEMORY_MAX_BYTES`` decoded) the file-backed kinds return a ``LazyImageDataset``
that decodes batches on demand (``vqgen.data.lazy``). This package never imports model code.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import SPLITS, ImageDataset, cache_dir
from .fashion_mnist import load_fashion_mnist
from .captioned import load_manifest, load_pairs
from .folder import load_folder
from .lazy import IN_MEMORY_MAX_BYTES, LazyImageDataset
from .shapes import load_shapes
from .wds import load_wds

DATASET_KINDS = ("fashion-mnist", "folder", "shapes", "pairs", "manifest", "wds")
CAPTIONED_KINDS = ("shapes", "pairs", "manifest", "wds")

__all__ = ["splits_of", "CAPTIONED_KINDS", "DATASET_KINDS", "IN_MEMORY_MAX_BYTES", "SPLITS", "ImageDataset",
           "LazyImageDataset", "cache_dir", "load_images", "parse_spec"]


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


def splits_of(spec: str) -> list[str]:
    """The splits a spec's kind has: train and test for fashion-mnist and shapes; folder, pairs,
    manifest and wds are one whole split called 'train'."""
    kind, _ = parse_spec(spec)
    return ["train", "test"] if kind in ("fashion-mnist", "shapes") else ["train"]


def shapes_seed(spec: str) -> int:
    """The seed of a ``shapes[:SEED]`` spec (default 0); anything but a non-negative integer raises DataError."""
    _, path = parse_spec(spec)
    if path is None:
        return 0
    if not path.isdigit():
        raise DataError(f"{spec!r}: the shapes seed must be a non-negative integer, e.g. shapes:0 or shapes:7")
    return int(path)


def load_images(
    spec: str,
    split: str = "train",
    resolution: int = 32,
    channels: int = 1,
    progress: bool = True,
    lazy: bool | None = False,
) -> ImageDataset | LazyImageDataset:
    """Decode the images a spec names into memory as uint8 (N, channels, resolution, resolution).

    - ``fashion-mnist[:DIR]``: the four IDX ``.gz`` files in DIR (default ``$VQGEN_CACHE/fashion-mnist``,
      downloaded when missing). ``split`` is "train", "test" or "all". 28×28 images are zero-padded
      to larger resolutions and resized down to smaller ones.
    - ``folder:DIR``: every image under DIR, labelled by first-level subfolder when all images have
      one. ``split`` is ignored: the folder is used whole. Unreadable files are skipped and counted.
    - ``shapes[:SEED]``: procedural captioned RGB scenes (``vqgen.data.shapes``), splits "train" and
      "test"; needs ``channels=3``.
    - ``pairs:DIR`` / ``manifest:FILE``: users' captioned images (``vqgen.data.captioned``); like
      ``folder`` they are one whole split and ``split`` is ignored.
    - ``wds:PATTERN``: WebDataset tar shards of image + ``.txt`` caption / ``.cls`` label
      (``vqgen.data.wds``), one whole split.

    ``lazy`` (file-backed kinds: folder, pairs, manifest, wds): False decodes everything now; True
    returns a ``LazyImageDataset`` that decodes each batch when asked; None picks lazy only when the
    decoded images would exceed ``IN_MEMORY_MAX_BYTES`` (1 GiB). Fashion-MNIST and shapes are always
    in memory. ``channels`` is 1 (grey) or 3 (RGB). User-facing problems raise ``DataError``.
    """
    kind, path = parse_spec(spec)
    if kind == "fashion-mnist":
        return load_fashion_mnist(path, split, resolution, channels, progress, source=spec)
    if kind == "shapes":
        seed = shapes_seed(spec)
        if channels != 3:
            raise DataError(f"{spec!r}: shapes images are RGB; ask for channels=3, got {channels!r}")
        return load_shapes(seed, split, resolution, progress=progress)
    if path is None:
        example = {"folder": "folder:/data/images", "pairs": "pairs:/data/captioned",
                   "manifest": "manifest:/data/captions.jsonl", "wds": "wds:/data/train-{000000..000099}.tar"}[kind]
        raise DataError(f"{spec!r}: a {kind} spec needs a path, e.g. {example}")
    if kind == "pairs":
        return load_pairs(path, resolution, channels, progress, source=spec, lazy=lazy)
    if kind == "manifest":
        return load_manifest(path, resolution, channels, progress, source=spec, lazy=lazy)
    if kind == "wds":
        return load_wds(path, resolution, channels, progress, source=spec, lazy=lazy)
    return load_folder(path, resolution, channels, progress, source=spec, lazy=lazy)
