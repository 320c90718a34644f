"""Datasets read lazily: an image is opened, decoded and resized only when a batch asks for it, so
training or encoding a folder of a million images holds (batch size × DataLoader workers × prefetch)
decoded images, not N. The in-memory ``ImageDataset`` stays the fast path for small sets.

Where the switch is: ``load_images(..., lazy=None)`` keeps a dataset in memory while its decoded pixels
(N × C × R × R bytes) fit in ``IN_MEMORY_MAX_BYTES`` (1 GiB: Fashion-MNIST at 32 px is 61 MB, 10 000
RGB images at 64 px 123 MB) and reads it lazily above. Why: in memory, a batch is one tensor gather
(microseconds) and every file is decoded once for the whole run; lazily, every step decodes its batch
again (``benchmarks/data.py`` measures the cost), which DataLoader workers hide only when there are
enough cores.
Past 1 GiB the memory (ImageNet at 256 px: ~250 GB) matters more than the decoding.

What stays O(N) in a lazy dataset is metadata only: the file names and captions as two numpy arrays
each (``StringArray``, a few tens of bytes per image) and the labels (8 bytes per image).

Bad files found lazily (a file that fails to open or decode) never stop an epoch. Two rules, one per use:

- training (``batch`` / ``step_batches``) substitutes: a bad index i is replaced by the first of
  i+1, i+2, ... (mod N) that decodes. The batch keeps its size and stays a pure function of
  (seed, step) and the files on disk, so DDP ranks stay in step and exact resume still holds.
- encoding (``fetch(..., substitute=False)``) drops: a token dataset holds each readable image once and
  nothing twice, the same grids the in-memory path (which drops bad files when loading) makes.

Both count each bad file once in ``skipped`` (and in ``bad``, index → reason) and warn at the first.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import DataError

if TYPE_CHECKING:
    from .base import ImageDataset

IN_MEMORY_MAX_BYTES = 1 << 30  # decoded size up to which lazy=None keeps a dataset in memory
PREFETCH_BATCHES = 2  # batches each DataLoader worker decodes ahead (torch's default prefetch_factor)


def fix_mmap_threshold() -> bool:
    """Keep batch-sized buffers out of the C heap for the rest of the process; True where it applies (glibc).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB); from then on
    batch-sized buffers come from the heap, and small long-lived blocks allocated between them (token
    grids, labels) keep the heap from shrinking, so peak RSS grows with the number of batches (it did
    while benchmarks/data.py was written; with the threshold fixed, it measures RSS flat). Setting it (at
    glibc's default, 128 KiB) turns the adjustment off: M_MMAP_THRESHOLD in
    https://man7.org/linux/man-pages/man3/mallopt.3.html. Forked DataLoader workers inherit it.
    """
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024))  # -3 = M_MMAP_THRESHOLD in <malloc.h>
    except (OSError, AttributeError):  # not glibc
        return False


def use_lazy(lazy: bool | None, n: int, resolution: int, channels: int) -> bool:
    """``lazy`` as asked, or for ``None``: whether n decoded images exceed ``IN_MEMORY_MAX_BYTES``."""
    if lazy is None:
        return n * channels * resolution * resolution > IN_MEMORY_MAX_BYTES
    return bool(lazy)


class StringArray:
    """Many strings kept as one UTF-8 buffer plus offsets: two numpy arrays instead of N Python objects.

    Forked DataLoader workers that read Python lists touch every object's reference count and so copy
    the pages holding them, one copy per worker ("copy-on-read",
    https://github.com/pytorch/pytorch/issues/13246); numpy buffers are read without being written.
    """

    def __init__(self, strings: Iterable[str]):
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)  # (N + 1,)
        np.cumsum(np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded)), out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)  # (total bytes,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} strings")
        i %= len(self)
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def take(self, indices: Iterable[int]) -> list[str]:
        return [self[i] for i in indices]


@dataclass
class FileImages:
    """Images stored as files: ``root`` joined with each of ``names`` (relative or absolute)."""

    root: str
    names: StringArray

    def __len__(self) -> int:
        return len(self.names)

    def open(self, i: int) -> str:
        return os.path.join(self.root, self.names[i])

    def where(self, i: int) -> str:
        return self.open(i)


@dataclass
class TarImages:
    """Images stored as members of uncompressed tar files: shard number, byte offset and size of each."""

    shards: list[str]
    shard: np.ndarray   # int32 (N,)
    offset: np.ndarray  # int64 (N,) where the member's data starts
    size: np.ndarray    # int64 (N,)
    names: StringArray  # the member names, for messages

    def __len__(self) -> int:
        return len(self.shard)

    def open(self, i: int) -> io.BytesIO:
        with open(self.shards[int(self.shard[i])], "rb") as f:
            f.seek(int(self.offset[i]))
            return io.BytesIO(f.read(int(self.size[i])))

    def where(self, i: int) -> str:
        return f"{self.shards[int(self.shard[i])]}:{self.names[i]}"


@dataclass(repr=False)
class LazyImageDataset:
    """Images named, not held: ``batch(idx)`` decodes uint8 (b, C, R, R) on demand (see module doc).

    Same attributes as ``ImageDataset`` except ``images``: ``labels`` (int64 (N,) or None),
    ``class_names``, ``captions`` (a ``StringArray`` or None), ``source``, ``caption_stats`` (counted
    while listing) and ``skipped``: items dropped while listing plus bad image files found so far.
    """

    reader: FileImages | TarImages
    resolution: int
    channels: int
    labels: torch.Tensor | None
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    captions: StringArray | None = None
    skipped: int = 0
    caption_stats: dict = field(default_factory=dict)
    bad: dict = field(default_factory=dict)  # index -> reason, for bad image files found so far

    def __post_init__(self) -> None:
        n = len(self.reader)
        if n == 0:
            raise DataError(f"{self.source}: no images")
        if self.labels is not None and self.labels.shape != (n,):
            raise DataError(f"{self.source}: {tuple(self.labels.shape)} labels for {n} images")
        if self.captions is not None and len(self.captions) != n:
            raise DataError(f"{self.source}: {len(self.captions)} captions for {n} images")

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def images(self) -> torch.Tensor:
        raise DataError(f"{self.source} is read lazily ({len(self)} images, more than "
                        f"{IN_MEMORY_MAX_BYTES >> 20} MiB decoded); this command needs it in memory: use a smaller set")

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return f"LazyImageDataset({self.source!r}, n={len(self)}, shape=({c}, {h}, {w}), skipped={self.skipped})"

    def load(self, i: int) -> np.ndarray | Exception:
        """uint8 (R, R, C) pixels of item i (as ``decode_images`` rows), or the exception decoding it raised."""
        from .folder import load_image
        try:
            arr = load_image(self.reader.open(i), self.resolution, "L" if self.channels == 1 else "RGB")
        except Exception as e:  # noqa: BLE001 - any failure to open or decode means "a bad file"
            return e
        return arr.reshape(self.resolution, self.resolution, self.channels)

    def note_bad(self, bad: dict) -> None:
        """Count newly found bad files (index -> reason) once each; warn at the first of the dataset."""
        new = {i: why for i, why in bad.items() if i not in self.bad}
        if not new:
            return
        if not self.bad:
            i, why = next(iter(new.items()))
            warnings.warn(f"{self.source}: skipping unreadable image {self.reader.where(i)} ({why}); later ones are "
                          "counted, not reported (a training batch takes the next readable image in its place)",
                          stacklevel=3)
        self.bad.update(new)
        self.skipped += len(new)

    def batch(self, idx: torch.Tensor | Iterable[int]) -> torch.Tensor:
        """uint8 (b, C, R, R) images of ``idx``, bad files substituted (module doc), decoded here."""
        images, _, bad = fetch(self, idx, substitute=True)
        self.note_bad(bad)
        return images

    def step_batches(self, index_of_step: Callable[[int], torch.Tensor], start: int, stop: int,
                     workers: int = 0) -> Iterator[torch.Tensor]:
        """The batches of steps ``start`` .. ``stop - 1``: ``batch(index_of_step(s))``, decoded ahead by
        ``workers`` DataLoader processes (0: here, when asked). The order is the sampler's, so the
        batch of step s does not depend on the number of workers."""
        fix_mmap_threshold()
        if workers == 0:
            for s in range(start, stop):
                yield self.batch(index_of_step(s))
            return
        loader = torch.utils.data.DataLoader(
            _Fetcher(self, substitute=True), sampler=_StepSampler(index_of_step, start, stop), batch_size=None,
            num_workers=workers, collate_fn=_as_is, prefetch_factor=PREFETCH_BATCHES,
            generator=torch.Generator())  # workers' seeds from their own generator: the global RNG is not touched
        for got in loader:
            if isinstance(got, DataError):
                raise got
            images, _, bad = got
            self.note_bad(bad)
            yield images

    def to_memory(self, progress: bool = True) -> "ImageDataset":
        """Decode everything into an in-memory ``ImageDataset``; bad files are dropped and counted."""
        from tqdm.auto import tqdm

        from .base import ImageDataset
        parts, kept = [], []
        for lo in tqdm(range(0, len(self), 256), disable=not progress, desc=f"decoding {self.source}"):
            images, k, bad = fetch(self, range(lo, min(len(self), lo + 256)), substitute=False)
            self.note_bad(bad)
            parts.append(images)
            kept.append(k)
        keep = torch.cat(kept)  # (N_ok,)
        if len(keep) == 0:
            raise DataError(f"{self.source}: none of its {len(self)} images could be decoded")
        labels = self.labels[keep] if self.labels is not None else None
        captions = self.captions.take(keep.tolist()) if self.captions is not None else None
        return ImageDataset(torch.cat(parts), labels, list(self.class_names), skipped=self.skipped,
                            source=self.source, captions=captions, caption_stats=dict(self.caption_stats))


def fetch(data: LazyImageDataset, idx: torch.Tensor | Iterable[int],
          substitute: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Decode the items ``idx`` of ``data``: (uint8 (b, C, R, R) images, int64 (b,) the item each row
    holds, {bad index: reason}). ``substitute``: a bad item's row holds the next readable item (b =
    len(idx)); else bad items are left out. DataError only when no item of the dataset decodes."""
    idx = torch.as_tensor(list(idx) if not isinstance(idx, torch.Tensor) else idx, dtype=torch.int64)  # (b,)
    n = len(data)
    out = np.empty((len(idx), data.resolution, data.resolution, data.channels), dtype=np.uint8)  # (b, R, R, C)
    rows, bad = [], {}
    for i in idx.tolist():
        j, arr = i, data.load(i)
        while isinstance(arr, Exception):
            bad[j] = f"{type(arr).__name__}: {arr}"
            if not substitute:
                break
            j = (j + 1) % n
            if j == i:
                raise DataError(f"{data.source}: none of its {n} images could be decoded; first: "
                                f"{data.reader.where(i)} ({bad[i]})")
            arr = data.load(j)
        if isinstance(arr, np.ndarray):
            out[len(rows)] = arr
            rows.append(j)
    # The same permute as the in-memory loaders, so that a batch has the same strides either way (with one
    # channel they differ in the channel stride alone, which is enough to change conv kernels' rounding).
    images = torch.from_numpy(out[:len(rows)]).permute(0, 3, 1, 2).contiguous()  # (b, C, R, R)
    return images, torch.tensor(rows, dtype=torch.int64), bad


class _StepSampler(torch.utils.data.Sampler):
    """Yields the index tensor of each step ``start`` .. ``stop - 1``: the trainer's own batch plan."""

    def __init__(self, index_of_step: Callable[[int], torch.Tensor], start: int, stop: int):
        self.index_of_step, self.start, self.stop = index_of_step, start, stop

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.index_of_step(s) for s in range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class _Fetcher(torch.utils.data.Dataset):
    """A whole batch per item, so one DataLoader worker decodes one batch: ``fetch(data, idx)``."""

    def __init__(self, data: LazyImageDataset, substitute: bool):
        self.data, self.substitute = data, substitute

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict] | DataError:
        try:
            return fetch(self.data, idx, self.substitute)
        except DataError as e:  # handed back whole: a worker's raise would arrive wrapped in its traceback
            return e


def _as_is(x):
    return x


__all__ = ["IN_MEMORY_MAX_BYTES", "FileImages", "fix_mmap_threshold", "LazyImageDataset", "StringArray", "TarImages", "fetch", "use_lazy"]
