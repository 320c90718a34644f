"""Users' captioned images: ``pairs:DIR`` (an image and a same-named ``.txt``) and ``manifest:FILE``.

- ``pairs:DIR``: every image under DIR (found like ``folder:``) whose ``<stem>.txt`` sits beside it;
  the ``.txt`` holds the UTF-8 caption (a BOM is allowed; surrounding whitespace is stripped).
- ``manifest:FILE``: a ``.jsonl`` file of ``{"image": PATH, "caption": TEXT}`` objects, or a ``.csv``
  file whose header has ``image`` and ``caption`` columns. Relative image paths are relative to the
  manifest's folder. The same image may appear in several rows (one sample per row).

Both are one whole split, like ``folder:`` (the split argument is ignored). Images are decoded
exactly as ``folder:`` decodes them. What cannot be used is skipped and counted in
``ImageDataset.caption_stats`` (keys ``CAPTION_STAT_KEYS``), reported in one warning, and never
raises; only when nothing usable remains is a ``DataError`` raised. Captions longer than
``MAX_CAPTION_CHARS`` are cut to that length and counted as ``truncated`` (they are kept).
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

import torch

from ..errors import DataError
from .base import ImageDataset
from .folder import IMAGE_EXTENSIONS, check_folder, decode_images, find_image_names, resolve_source
from .lazy import FileImages, LazyImageDataset, StringArray, use_lazy

MAX_CAPTION_CHARS = 1000
# no_caption: image without a .txt   empty: blank caption   undecodable: caption not UTF-8
# bad_row: manifest row that is not {"image", "caption"}   missing_image: manifest image not found
# unreadable: image that failed to decode   truncated: caption cut to MAX_CAPTION_CHARS (kept)
CAPTION_STAT_KEYS = ("no_caption", "empty", "undecodable", "bad_row", "missing_image", "unreadable", "truncated")
MANIFEST_SUFFIXES = (".jsonl", ".csv")


def _has_surrogates(text: str) -> bool:
    """True when ``text`` came from bytes that were not UTF-8 (decoded with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def clean_caption(text: str) -> tuple[str | None, bool]:
    """(stripped caption cut to ``MAX_CAPTION_CHARS``, or None when blank; whether it was cut)."""
    text = text.strip()
    if not text:
        return None, False
    if len(text) > MAX_CAPTION_CHARS:
        return text[:MAX_CAPTION_CHARS].rstrip(), True
    return text, False


class _Collector:
    """Candidate (image, caption) pairs plus counts of what was skipped and why."""

    def __init__(self, source: str):
        self.source = source
        self.paths: list[str] = []
        self.captions: list[str] = []
        self.cut: list[bool] = []
        self.stats = {k: 0 for k in CAPTION_STAT_KEYS}
        self.first: str | None = None  # the first problem, for the warning
        self.total = 0

    def skip(self, reason: str, what: str) -> None:
        self.stats[reason] += 1
        if self.first is None:
            self.first = f"{what} ({reason.replace('_', ' ')})"

    def add(self, path: str, raw_caption: str, what: str) -> None:
        if _has_surrogates(raw_caption):
            self.skip("undecodable", what)
            return
        caption, cut = clean_caption(raw_caption)
        if caption is None:
            self.skip("empty", what)
            return
        self.paths.append(os.fspath(path))
        self.captions.append(caption)
        self.cut.append(cut)

    def build(self, resolution: int, channels: int, progress: bool, where: str,
              lazy: bool | None = False) -> ImageDataset | LazyImageDataset:
        """Decode the candidates (or, lazily, name them: ``vqgen.data.lazy``); warn once about everything
        skipped; DataError when nothing is left."""
        if use_lazy(lazy, len(self.paths), resolution, channels):
            return self._lazy(resolution, channels, where)
        arr, ok, first_error = decode_images(self.paths, resolution, channels, progress, desc=f"decoding {where}")
        self.stats["unreadable"] = int(len(self.paths) - ok.sum())
        if first_error is not None and self.first is None:
            self.first = f"{first_error[0]} ({type(first_error[1]).__name__}: {first_error[1]})"
        self.stats["truncated"] = int(sum(c for c, good in zip(self.cut, ok) if good))
        skipped = sum(v for k, v in self.stats.items() if k != "truncated")
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.stats.items() if v and k != "truncated")
        if not ok.any():
            raise DataError(f"{self.source}: no usable captioned images in {where} ({counts or 'nothing found'}"
                            f"{'; first: ' + self.first if self.first else ''}); see the format in `vqgen` docs for "
                            "pairs:DIR (image + same-named .txt) and manifest:FILE (.jsonl or .csv with image,caption)")
        if skipped:
            warnings.warn(f"{self.source}: skipped {skipped} of {self.total} item(s): {counts}; first: {self.first}",
                          stacklevel=4)
        if self.stats["truncated"]:
            warnings.warn(f"{self.source}: cut {self.stats['truncated']} caption(s) to {MAX_CAPTION_CHARS} characters",
                          stacklevel=4)
        images = torch.from_numpy(arr[ok]).permute(0, 3, 1, 2).contiguous()  # (N, C, R, R)
        captions = [c for c, good in zip(self.captions, ok) if good]
        return ImageDataset(images, None, [], skipped=skipped, source=self.source, captions=captions,
                            caption_stats=dict(self.stats))

    def _lazy(self, resolution: int, channels: int, where: str) -> LazyImageDataset:
        """The candidates named, not decoded: unreadable images are found (and counted) when read."""
        self.stats["truncated"] = int(sum(self.cut))
        skipped = sum(v for k, v in self.stats.items() if k != "truncated")
        if not self.paths:
            counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.stats.items() if v)
            raise DataError(f"{self.source}: no usable captioned images in {where} ({counts or 'nothing found'})")
        if skipped:
            warnings.warn(f"{self.source}: skipped {skipped} of {self.total} item(s) while listing; first: {self.first}",
                          stacklevel=4)
        return LazyImageDataset(FileImages("", StringArray(self.paths)), resolution, channels, None, source=self.source,
                                captions=StringArray(self.captions), skipped=skipped, caption_stats=dict(self.stats))


def load_pairs(
    root: str | Path,
    resolution: int = 32,
    channels: int = 3,
    progress: bool = True,
    source: str = "",
    lazy: bool | None = False,
) -> ImageDataset | LazyImageDataset:
    """Every image under ``root`` with a same-named UTF-8 ``.txt`` caption beside it (one whole split).
    ``lazy`` as for ``load_folder``."""
    root, source = resolve_source(root, resolution, channels, "pairs", source)
    check_folder(root, source)
    names = find_image_names(root)
    if not names:
        raise DataError(f"{source}: no images in {root} (no files with extension {', '.join(IMAGE_EXTENSIONS)}); "
                        "pairs:DIR expects img.png next to img.txt")
    col = _Collector(source)
    col.total = len(names)
    for name in names:
        path = os.path.join(root, name)
        txt = os.path.splitext(path)[0] + ".txt"
        if not os.path.isfile(txt):
            col.skip("no_caption", path)
            continue
        try:
            with open(txt, "rb") as f:
                raw = f.read().decode("utf-8-sig")
        except (OSError, UnicodeDecodeError):
            col.skip("undecodable", txt)
            continue
        col.add(path, raw, txt)
    return col.build(resolution, channels, progress, str(root), lazy)


def _manifest_rows(path: Path, text: str, col: _Collector) -> list[tuple[int, object, object]]:
    """(line/row number, image, caption) of every row; rows that are not objects with both keys are skipped."""
    rows: list[tuple[int, object, object]] = []
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            col.total += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                col.skip("bad_row", f"{path}:{lineno}")
                continue
            if not isinstance(obj, dict) or "image" not in obj or "caption" not in obj:
                col.skip("bad_row", f"{path}:{lineno}")
                continue
            rows.append((lineno, obj["image"], obj["caption"]))
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    if "image" not in header or "caption" not in header:
        raise DataError(f"{path}: a CSV manifest needs a header with 'image' and 'caption' columns, got {header}")
    reader.fieldnames = header
    for row in reader:
        col.total += 1
        rows.append((reader.line_num, row.get("image"), row.get("caption")))
    return rows


def load_manifest(
    manifest: str | Path,
    resolution: int = 32,
    channels: int = 3,
    progress: bool = True,
    source: str = "",
    lazy: bool | None = False,
) -> ImageDataset | LazyImageDataset:
    """The (image, caption) rows of a ``.jsonl`` or ``.csv`` manifest (one whole split). ``lazy`` as for
    ``load_folder``."""
    path, source = resolve_source(manifest, resolution, channels, "manifest", source)
    if not path.is_file():
        raise DataError(f"{source}: manifest file {path} does not exist")
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise DataError(f"{source}: a manifest must be a .jsonl or .csv file, got {path.name}")
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")  # bad bytes are counted per row
    col = _Collector(source)
    base = path.parent
    for lineno, image, caption in _manifest_rows(path, text, col):
        where = f"{path}:{lineno}"
        if not isinstance(image, str) or not image.strip() or not isinstance(caption, str):
            col.skip("bad_row", where)
            continue
        if _has_surrogates(image):
            col.skip("undecodable", where)
            continue
        img = Path(image.strip()).expanduser()
        img = img if img.is_absolute() else base / img
        if not img.is_file():
            col.skip("missing_image", f"{where}: {img}")
            continue
        col.add(img, caption, where)
    return col.build(resolution, channels, progress, str(path), lazy)


__all__ = ["CAPTION_STAT_KEYS", "MAX_CAPTION_CHARS", "clean_caption", "load_manifest", "load_pairs"]
