"""Encode a dataset into token shards across ranks and DataLoader workers, merged into one token
directory (``vqgen.data.tokens``). Models are not imported here: the caller passes a codec, anything
with ``encode(uint8 (B, C, H, W)) -> int (B, h, w)``, ``meta()``, ``vocab_size``, ``resolution`` and
``channels`` (``vqgen.prior.codec``).

How the work is split, and why the result does not depend on it:

- a map-style dataset (``folder``, ``pairs``, ``manifest``, ``fashion-mnist``, ``shapes``, in memory
  or lazy) is cut into token shards of ``shard_size`` consecutive items; shard s is encoded by rank
  s mod world; within a rank, DataLoader workers decode its batches (a lazy dataset; an in-memory one
  is sliced directly). Unreadable files found lazily are dropped and counted (``vqgen.data.lazy``).
- a ``wds:`` stream: tar shard i becomes token shard i, encoded by rank i mod world and within a rank
  by one of its workers (``webdataset.split_by_worker``).

Each rank writes only its own shards; when all are written (a barrier under torch.distributed) rank
0 counts the grids and writes ``done.json``. Token shard i holds the same grids, labels and captions
whatever the ranks and workers, so the merged dataset is the one a single process writes. Shards
already written are skipped, so an interrupted encode resumes.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist

from .lazy import LazyImageDataset, _as_is, fetch, fix_mmap_threshold
from .tokens import TokenWriter


class Codec(Protocol):
    vocab_size: int
    resolution: int
    channels: int

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def meta(self) -> dict: ...


@dataclass
class Part:
    """A piece of one token shard, as a worker hands it over: decoded images and what travels with them."""

    shard: int
    images: torch.Tensor                 # uint8 (b, C, R, R)
    labels: torch.Tensor | None          # int64 (b,) or None
    captions: list[str] | None           # b strings or None
    last: bool                           # the shard is complete after this part
    skipped: dict = field(default_factory=dict)  # reason -> count, for this part
    first: str | None = None             # the first problem met, for the warning


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _all_sum(counts: dict, world: int) -> dict:
    """Sum a {reason: count} mapping over ranks (rank 0 reports for everyone). Each rank meets its own
    reasons (a bad file in one rank's shards only), so the mappings are gathered whole, not all-reduced
    as tensors whose length and order would differ from rank to rank."""
    if world == 1:
        return counts
    every: list[dict | None] = [None] * world
    dist.all_gather_object(every, counts)
    total: dict[str, int] = {}
    for got in every:
        for k, v in (got or {}).items():
            total[k] = total.get(k, 0) + v
    return total


def encode_split(codec: Codec, data, out: str | Path, split: str, meta: dict, batch_size: int = 256,
                 shard_size: int = 10_000, workers: int = 0, rank: int = 0, world: int = 1,
                 progress: bool = True) -> tuple[int, dict]:
    """Encode one split (an ``ImageDataset``, a ``LazyImageDataset`` or a wds URL list) into
    ``out/split``; returns (grids in the finished split, {reason: items skipped while encoding})."""
    fix_mmap_threshold()  # peak memory flat in the number of batches (see there)
    writer = _writer(out, split, meta, rank, world)
    if isinstance(data, WdsShards):
        parts = data.parts(writer, batch_size, workers, rank, world)
        total = None
    else:
        n_shards = (len(data) + shard_size - 1) // shard_size
        mine = [s for s in range(rank, n_shards, world) if not writer.has(s)]
        parts = _map_parts(data, mine, shard_size, batch_size, workers)
        total = sum(min(len(data), (s + 1) * shard_size) - s * shard_size for s in mine)
    skipped = _encode_parts(codec, parts, writer, total, progress and rank == 0, f"encode {split}")
    _barrier(world)
    skipped = _all_sum(skipped, world)
    n = 0
    if rank == 0:
        n = sum(np.load(p, mmap_mode="r").shape[0] for p in sorted(writer.dir.glob("shard-*.npy")))
        writer.finish(n)
    n = _all_sum({"n": n}, world)["n"]  # every rank learns the count once done.json is written
    return n, {k: v for k, v in skipped.items() if v}


def _writer(out: str | Path, split: str, meta: dict, rank: int, world: int) -> TokenWriter:
    """Rank 0 writes meta.json first; the others then check theirs against it."""
    if rank == 0:
        writer = TokenWriter(out, split, meta)
    _barrier(world)
    return writer if rank == 0 else TokenWriter(out, split, meta)


def _encode_parts(codec: Codec, parts: Iterator[Part], writer: TokenWriter, total: int | None, progress: bool,
                  desc: str) -> dict:
    """Encode parts as they come and write each token shard when its last part has arrived."""
    from tqdm.auto import tqdm
    # Per unfinished token shard: (tokens, labels, captions) of its parts so far; images are not kept.
    pending: dict[int, list[tuple[torch.Tensor | None, torch.Tensor | None, list[str] | None]]] = {}
    skipped: dict[str, int] = {}
    first: str | None = None
    grid: tuple[int, int] | None = None
    bar = tqdm(total=total, disable=not progress, desc=desc, unit="img")
    for part in parts:
        for k, v in part.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        if part.first and first is None:
            first = part.first
            warnings.warn(f"{writer.root}: skipping {first}; later problems are counted", stacklevel=2)
        with torch.inference_mode():
            tokens = codec.encode(part.images) if len(part.images) else None  # (b, h, w)
        if tokens is not None:
            grid = tuple(tokens.shape[1:])
        pending.setdefault(part.shard, []).append((tokens, part.labels, part.captions))
        bar.update(len(part.images) + sum(part.skipped.values()))
        if part.last:
            got = pending.pop(part.shard)
            if grid is None:  # nothing decoded yet: learn the grid from one blank image
                with torch.inference_mode():
                    grid = tuple(codec.encode(torch.zeros(1, codec.channels, codec.resolution, codec.resolution,
                                                          dtype=torch.uint8)).shape[1:])
            toks = [t for t, _, _ in got if t is not None]
            tokens = torch.cat(toks) if toks else torch.zeros((0, *grid), dtype=torch.int64)  # (n, h, w)
            labels = torch.cat([lab for _, lab, _ in got]) if part.labels is not None else None  # (n,)
            captions = [c for _, _, caps in got for c in caps] if part.captions is not None else None
            writer.write(part.shard, tokens, labels, captions)
    bar.close()
    return skipped


# --- map-style datasets ---------------------------------------------------------------------------

def _map_parts(data, shards: list[int], shard_size: int, batch_size: int, workers: int) -> Iterator[Part]:
    """The parts of ``shards`` in order: (shard, lo, hi) ranges decoded here or by DataLoader workers."""
    tasks = [(s, lo, min(len(data), (s + 1) * shard_size, lo + batch_size))
             for s in shards for lo in range(s * shard_size, min(len(data), (s + 1) * shard_size), batch_size)]
    tasks = [(s, lo, hi, hi == min(len(data), (s + 1) * shard_size)) for s, lo, hi in tasks]
    source = _Ranges(data)
    if workers == 0 or not isinstance(data, LazyImageDataset):  # in memory: slicing is all there is to do
        return (source[t] for t in tasks)
    return iter(torch.utils.data.DataLoader(source, sampler=tasks, batch_size=None, num_workers=workers,
                                            collate_fn=_as_is, generator=torch.Generator()))


class _Ranges(torch.utils.data.Dataset):
    """Items lo .. hi - 1 of a dataset as one ``Part`` (bad files of a lazy dataset left out)."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, task: tuple[int, int, int, bool]) -> Part:
        s, lo, hi, last = task
        d = self.data
        if isinstance(d, LazyImageDataset):
            images, keep, bad = fetch(d, range(lo, hi), substitute=False)  # drops, so it never raises
            first = f"unreadable image {d.reader.where(next(iter(bad)))} ({next(iter(bad.values()))})" if bad else None
            skipped = {"unreadable": len(bad)} if bad else {}
        else:
            images, keep, first, skipped = d.images[lo:hi], torch.arange(lo, hi), None, {}
        labels = d.labels[keep] if d.labels is not None else None
        captions = [d.captions[i] for i in keep.tolist()] if d.captions is not None else None
        return Part(s, images, labels, captions, last, skipped, first)


# --- wds streams ----------------------------------------------------------------------------------

@dataclass
class WdsShards:
    """A ``wds:`` source to stream: its shard URLs and the layout every sample must follow."""

    urls: list[str]
    layout: "Layout"
    resolution: int
    channels: int
    source: str

    def parts(self, writer: TokenWriter, batch_size: int, workers: int, rank: int, world: int) -> Iterator[Part]:
        """This rank's shards (i mod world == rank) not yet written, split over workers."""
        mine = [(i, u) for i, u in enumerate(self.urls) if i % world == rank]
        todo = {i for i, _ in mine if not writer.has(i)}
        stream = _WdsStream(self, mine, todo, batch_size)
        if workers == 0:
            return iter(stream)
        return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_as_is,
                                                generator=torch.Generator()))


class _WdsStream(torch.utils.data.IterableDataset):
    """Parts of this rank's shards; in a DataLoader, each worker takes every k-th of them."""

    def __init__(self, src: WdsShards, shards: list[tuple[int, str]], todo: set[int], batch_size: int):
        self.src, self.shards, self.todo, self.batch_size = src, shards, todo, batch_size

    def __iter__(self) -> Iterator[Part]:
        import webdataset as wds
        for i, url in wds.split_by_worker(self.shards):
            if i in self.todo:
                yield from self._shard(i, url)

    def _shard(self, i: int, url: str) -> Iterator[Part]:
        from .folder import load_image
        from .wds import parse_sample, stream_shard
        src = self.src
        mode = "L" if src.channels == 1 else "RGB"
        samples, errors = stream_shard(url)
        images, labels, captions, skipped, first = [], [], [], {}, None

        def part(last: bool) -> Part:
            nonlocal images, labels, captions, skipped, first
            r = src.resolution
            arr = np.stack(images).reshape(-1, r, r, src.channels) if images else np.zeros((0, r, r, src.channels),
                                                                                           np.uint8)
            p = Part(i, torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(),  # (b, C, R, R)
                     torch.tensor(labels, dtype=torch.int64) if src.layout.labelled else None,
                     list(captions) if src.layout.captioned else None, last, skipped, first)
            images, labels, captions, skipped, first = [], [], [], {}, None
            return p

        for s in samples:
            parsed = parse_sample(s, src.layout)
            why = None
            if not isinstance(parsed, str):
                try:
                    pixels = load_image(io.BytesIO(s.image), src.resolution, mode)
                except Exception as e:  # noqa: BLE001 - an image that does not decode is skipped
                    parsed, why = "unreadable", f"{type(e).__name__}: {e}"
                else:
                    caption, label, _ = parsed
                    images.append(pixels)
                    labels.append(label)
                    captions.append(caption)
            if isinstance(parsed, str):
                skipped[parsed] = skipped.get(parsed, 0) + 1
                first = first or f"{url}:{s.key} ({why or parsed.replace('_', ' ')})"
            if len(images) == self.batch_size:
                yield part(False)
        if errors:
            skipped["damaged_shard"] = skipped.get("damaged_shard", 0) + 1
            first = first or f"{url} ({errors[0]})"
        yield part(True)


def encode_dataset(codec: Codec, spec: str, out: str | Path, splits: list[str] | None = None, batch_size: int = 256,
                   shard_size: int = 10_000, progress: bool = True, workers: int = 0, rank: int = 0,
                   world: int = 1) -> dict:
    """Encode every split of ``spec`` into token shards under ``out`` (finished shards are skipped);
    returns {split: grids}. Under torch.distributed every rank calls it with its ``rank`` / ``world``.
    ``workers``: DataLoader processes per rank decoding a lazy dataset or streaming wds shards. What the
    codec's ``meta()`` names beside the shards (a palette file) is the caller's to write (``vqgen encode``)."""
    from . import load_images, parse_spec, splits_of
    kind, path = parse_spec(spec)
    counts = {}
    for split in splits or splits_of(spec):
        if kind == "wds":
            data = wds_source(path or "", codec.resolution, codec.channels, spec)
            class_names, captioned = [], data.layout.captioned
        else:
            data = load_images(spec, split, codec.resolution, codec.channels, progress=progress and rank == 0,
                               lazy=None)
            class_names, captioned = data.class_names, data.captions is not None
        meta = {"codec": codec.meta(), "vocab_size": codec.vocab_size, "source": spec, "class_names": class_names,
                "resolution": codec.resolution, "channels": codec.channels, "captioned": captioned}
        n, skipped = encode_split(codec, data, out, split, meta, batch_size, shard_size, workers, rank, world, progress)
        if skipped and rank == 0:
            warnings.warn(f"{spec} {split}: skipped while encoding: "
                          + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()), stacklevel=2)
        counts[split] = n
    return counts


def wds_source(pattern: str, resolution: int, channels: int, source: str) -> WdsShards:
    from .wds import read_layout, shard_urls
    urls = shard_urls(pattern, source)
    return WdsShards(urls, read_layout(urls, source), resolution, channels, source)


from .wds import Layout  # noqa: E402  (for the annotation above; wds imports nothing from here)

__all__ = ["Codec", "Part", "WdsShards", "encode_dataset", "encode_split", "wds_source"]
