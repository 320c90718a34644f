"""``wds:PATTERN``: WebDataset tar shards of image + caption / label (https://github.com/webdataset/webdataset).

PATTERN is what ``webdataset`` expands: brace ranges (``shards/train-{000000..000099}.tar``), several
patterns joined by ``::``. A sample is the tar members sharing a key (the name up to its first dot):
the image (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, ``.bmp``, ``.ppm``, ``.tif``, ``.tiff``, ``.gif``),
an optional UTF-8 caption (``.txt``) and an optional integer class label (``.cls``). Whether the
dataset has captions / labels is decided by the first sample of the first shard; a later sample
without them is skipped and counted (``no_caption`` / ``bad_row``), like a missing image
(``missing_image``). One whole split, like ``folder:``.

Two ways to read it:

- ``vqgen encode`` streams (``stream_shard``): shards are split over ranks (shard i goes to rank
  i mod world) and then over DataLoader workers (``webdataset.split_by_worker``); each is read once,
  front to back, so any URL webdataset can open works (local files, ``pipe:`` commands). Tar shard i
  becomes token shard i, so the token dataset is the same whatever the ranks and workers.
- training (``load_wds``) indexes the shards once (member offsets, captions and labels; no pixel is
  decoded) and reads images by offset: a ``LazyImageDataset`` whose batch of step s is a pure function
  of (seed, s), exactly as for a folder, so exact resume holds unchanged. The cost: shards must be
  seekable files (a local or network file system), not ``pipe:`` streams.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..errors import DataError
from .base import ImageDataset, check_image_args
from .captioned import CAPTION_STAT_KEYS, _has_surrogates, clean_caption
from .lazy import LazyImageDataset, StringArray, TarImages, use_lazy

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff", "gif")


def shard_urls(pattern: str, source: str) -> list[str]:
    """The shard URLs a pattern names (webdataset's brace and ``::`` expansion); local files must exist."""
    import webdataset as wds
    if not pattern:
        raise DataError(f"{source!r}: a wds spec needs shards, e.g. wds:/data/train-{{000000..000099}}.tar")
    urls = wds.shardlists.expand_urls(os.path.expanduser(pattern))
    missing = [u for u in urls if _is_local(u) and not os.path.isfile(u)]
    if missing:
        raise DataError(f"{source}: {len(missing)} of {len(urls)} shard file(s) do not exist; first: {missing[0]}")
    return urls


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


@dataclass
class Sample:
    """One sample's fields as read from a shard (bytes), before decoding."""

    key: str
    image: bytes | None = None
    caption: bytes | None = None
    label: bytes | None = None


def _fields(raw: dict) -> Sample:
    """A webdataset sample dict ({"__key__", ext: bytes}) → ``Sample`` (first image extension wins)."""
    image = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
    return Sample(str(raw.get("__key__")), image, raw.get("txt"), raw.get("cls"))


@dataclass
class Layout:
    """What every sample must carry: decided by the first sample of the first shard."""

    captioned: bool
    labelled: bool


def parse_sample(s: Sample, layout: Layout) -> tuple[str | None, int | None, bool] | str:
    """(caption, label, caption cut?) of a sample, or the reason it is skipped (a ``CAPTION_STAT_KEYS`` key)."""
    if s.image is None:
        return "missing_image"
    caption, cut, label = None, False, None
    if layout.captioned:
        if s.caption is None:
            return "no_caption"
        text = s.caption.decode("utf-8-sig", errors="surrogateescape")
        if _has_surrogates(text):
            return "undecodable"
        caption, cut = clean_caption(text)
        if caption is None:
            return "empty"
    if layout.labelled:
        try:
            label = int((s.label or b"").decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return "bad_row"
        if label < 0:
            return "bad_row"
    return caption, label, cut


def stream_shard(url: str) -> tuple[Iterator[Sample], list[Exception]]:
    """The samples of one shard, streamed front to back by webdataset, and a list that collects the
    errors met on the way (a damaged or truncated shard ends early instead of raising)."""
    import webdataset as wds
    errors: list[Exception] = []

    def handler(exn: Exception) -> bool:
        errors.append(exn)
        return True  # go on with what is left

    pipe = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples(handler=handler))
    return (_fields(raw) for raw in pipe), errors


def read_layout(urls: list[str], source: str) -> Layout:
    """The layout of the first sample of the first shard; DataError when it has no image."""
    samples, errors = stream_shard(urls[0])
    first = next(samples, None)
    if first is None:
        why = f": {errors[0]}" if errors else ""
        raise DataError(f"{source}: the first shard {urls[0]} holds no sample{why}")
    if first.image is None:
        raise DataError(f"{source}: the first sample ({first.key}) of {urls[0]} has no image (expected one of "
                        f"{', '.join('.' + e for e in IMAGE_EXTS)})")
    return Layout(captioned=first.caption is not None, labelled=first.label is not None)


@dataclass
class _Index:
    shard: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=lambda: {k: 0 for k in CAPTION_STAT_KEYS})
    first: str | None = None


def _index_shard(k: int, path: str, layout: Layout, idx: _Index) -> None:
    """Add shard k's samples to ``idx`` by reading member headers (and the small caption / label files)."""
    try:
        tar = tarfile.open(path, "r:")  # uncompressed: members can be read back by offset
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path} is not an uncompressed tar file ({e}); training reads wds images by offset") from e
    from webdataset.tariterators import base_plus_ext

    def flush(key: str | None, members: dict) -> None:
        if key is None:
            return
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        read = lambda m: tar.extractfile(m).read() if m is not None else None  # noqa: E731
        s = Sample(key, b"" if image is not None else None, read(members.get("txt")), read(members.get("cls")))
        parsed = parse_sample(s, layout)
        if isinstance(parsed, str):
            idx.stats[parsed] += 1
            idx.first = idx.first or f"{path}:{key} ({parsed.replace('_', ' ')})"
            return
        caption, label, cut = parsed
        idx.shard.append(k)
        idx.offset.append(image.offset_data)
        idx.size.append(image.size)
        idx.names.append(image.name)
        if caption is not None:
            idx.captions.append(caption)
            idx.stats["truncated"] += int(cut)
        if label is not None:
            idx.labels.append(label)

    key, members = None, {}
    with tar:
        try:
            for m in tar:
                if not m.isreg():
                    continue
                prefix, ext = base_plus_ext(m.name)
                if prefix is None:
                    continue
                if prefix != key:
                    flush(key, members)
                    key, members = prefix, {}
                members[ext.lower()] = m
        except tarfile.TarError as e:  # a truncated shard: keep the samples before the damage
            idx.first = idx.first or f"{path} ({e})"
        flush(key, members)


def load_wds(
    pattern: str,
    resolution: int = 32,
    channels: int = 3,
    progress: bool = True,
    source: str = "",
    lazy: bool | None = False,
) -> ImageDataset | LazyImageDataset:
    """The samples of local uncompressed tar shards, indexed (see module doc); ``lazy`` as for ``load_folder``."""
    import warnings
    check_image_args(resolution, channels)
    source = source or f"wds:{pattern}"
    urls = shard_urls(pattern, source)
    remote = [u for u in urls if not _is_local(u)]
    if remote:
        raise DataError(f"{source}: training reads wds shards by offset and needs files, not streams ({remote[0]}); "
                        "stream them through `vqgen encode`, or copy them to a file system")
    layout = read_layout(urls, source)
    idx = _Index()
    for k, url in enumerate(urls):
        _index_shard(k, url, layout, idx)
    skipped = sum(v for key, v in idx.stats.items() if key != "truncated")
    if not idx.shard:
        raise DataError(f"{source}: no usable samples in {len(urls)} shard(s); first problem: {idx.first}")
    if skipped or idx.first:
        warnings.warn(f"{source}: skipped {skipped} sample(s) while indexing; first: {idx.first}", stacklevel=3)
    reader = TarImages(urls, np.asarray(idx.shard, np.int32), np.asarray(idx.offset, np.int64),
                       np.asarray(idx.size, np.int64), StringArray(idx.names))
    labels = torch.tensor(idx.labels, dtype=torch.int64) if layout.labelled else None  # (N,)
    data = LazyImageDataset(reader, resolution, channels, labels, [], source=source,
                            captions=StringArray(idx.captions) if layout.captioned else None, skipped=skipped,
                            caption_stats=dict(idx.stats))
    return data if use_lazy(lazy, len(data), resolution, channels) else data.to_memory(progress)


__all__ = ["IMAGE_EXTS", "Layout", "Sample", "load_wds", "parse_sample", "read_layout", "shard_urls", "stream_shard"]
