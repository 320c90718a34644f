"""Token shards: a dataset encoded once into integer grids, so stage-2 training never runs the image
encoder per step.

A token directory holds one folder per split::

    TOKENS_DIR/meta.json            codec identity (tokenizer run + config hash, or pixel palette),
                                    grid, vocabulary size, class names, source spec
    TOKENS_DIR/<split>/shard-00000.npy   (n, H, W) in the smallest unsigned dtype that holds the vocabulary
    TOKENS_DIR/<split>/labels-00000.npy  (n,) int64, when the source has labels
    TOKENS_DIR/<split>/captions-00000.json  a JSON list of n strings, when the source has captions
    TOKENS_DIR/<split>/done.json    written last: the split is complete

Shards are written atomically and skipped when present, so an interrupted encode resumes; readers
only trust splits with ``done.json`` and memory-map the shards, so any number of training processes
can share one directory. ``done.json`` holds the SHA-256 of every file of its split: a truncated or
bit-flipped shard, label or caption file is refused with its name, never trained on. This module only stores arrays; the encoding itself happens in
``vqgen.prior.tokens`` (data never imports models).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..hub import atomic_write_bytes, file_sha256, first_line, read_json


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds ids in [0, vocab_size)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise DataError(f"vocabulary of {vocab_size} does not fit 32 bits")


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write_bytes(path, write)


@dataclass
class TokenDataset:
    tokens: torch.Tensor          # int64 (N, H, W)
    labels: torch.Tensor | None   # int64 (N,) or None
    meta: dict
    captions: list[str] | None = None  # one per grid, or None when the split has none

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.tokens.shape[1:])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))


class TokenWriter:
    """Writes one split's shards; ``has(i)`` tells which shards an earlier run already finished."""

    def __init__(self, root: str | Path, split: str, meta: dict):
        self.root = Path(root)
        self.dir = self.root / split
        meta_path = self.root / "meta.json"
        if meta_path.exists():
            old = read_meta(self.root)
            if old != meta:
                raise DataError(f"{self.root} holds tokens made differently ({meta_path}); use another --out")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(meta_path, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
        self.dtype = token_dtype(int(meta["vocab_size"]))
        self.dir.mkdir(parents=True, exist_ok=True)

    def has(self, shard: int) -> bool:
        return (self.dir / f"shard-{shard:05d}.npy").exists()

    def write(self, shard: int, tokens: torch.Tensor, labels: torch.Tensor | None,
              captions: list[str] | None = None) -> None:
        """Write one shard; labels and captions go first, so a shard file means they exist too."""
        if labels is not None:
            _save_npy(self.dir / f"labels-{shard:05d}.npy", labels.cpu().numpy().astype(np.int64))
        if captions is not None:
            if len(captions) != len(tokens):
                raise DataError(f"{self.dir}: {len(captions)} captions for {len(tokens)} grids in shard {shard}")
            payload = json.dumps(list(captions), ensure_ascii=False)
            atomic_write_bytes(self.dir / f"captions-{shard:05d}.json",
                               lambda p: Path(p).write_text(payload, encoding="utf-8"))
        _save_npy(self.dir / f"shard-{shard:05d}.npy", tokens.cpu().numpy().astype(self.dtype))

    def finish(self, n: int) -> None:
        """``done.json``: the split holds ``n`` grids, and the checksum of each of its files."""
        files = sorted(p for p in self.dir.iterdir() if p.name.startswith(_DATA_FILES))
        text = json.dumps({"n": n, "sha256": {p.name: file_sha256(p) for p in files}}, indent=1)
        atomic_write_bytes(self.dir / "done.json", lambda p: Path(p).write_text(text))


_DATA_FILES = ("shard-", "labels-", "captions-")


def _redo(root: Path) -> str:
    return f"run the same `vqgen encode` again with a new --out (or delete {root} first)"


def read_meta(root: str | Path) -> dict:
    """A token directory's ``meta.json``; DataError when it is missing or damaged."""
    root = Path(root)
    path = root / "meta.json"
    if not path.is_file():
        raise DataError(f"{root} is not a token directory (no meta.json); make one with `vqgen encode`")
    meta = read_json(path, DataError, _redo(root))
    vocab = meta.get("vocab_size") if isinstance(meta, dict) else None
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1 or not isinstance(meta.get("codec"), dict):
        raise DataError(f"{path} is not a token directory's meta.json (no vocab_size or codec); {_redo(root)}")
    return meta


def load_tokens(root: str | Path, split: str = "train") -> TokenDataset:
    """Load a finished split of a token directory (memory-mapped shards, one int64 tensor). DataError
    naming the file when one is missing, truncated, damaged (checksum) or out of range."""
    root = Path(root)
    meta = read_meta(root)
    d = root / split
    if not (d / "done.json").exists():
        have = sorted(p.name for p in root.iterdir() if (p / "done.json").exists())
        raise DataError(f"{root} has no finished split {split!r} (finished: {have}); run `vqgen encode` again to complete it")
    redo = f"delete {d} and run the same `vqgen encode` again (it rewrites only what is missing)"
    done = read_json(d / "done.json", DataError, redo)
    if not isinstance(done, dict) or isinstance(done.get("n"), bool) or not isinstance(done.get("n"), int):
        raise DataError(f"{d / 'done.json'} does not say how many grids the split holds; {redo}")
    sums = done.get("sha256")
    if sums is not None:  # directories encoded before checksums have none
        if not isinstance(sums, dict):
            raise DataError(f"{d / 'done.json'} is damaged (its sha256 entry is not a mapping); {redo}")
        present = {p.name for p in d.iterdir() if p.name.startswith(_DATA_FILES)}
        for name in sorted(present | set(sums)):
            if name not in sums:
                raise DataError(f"{d / name} is not listed in {d / 'done.json'}; {redo}")
            if name not in present:
                raise DataError(f"{d / name} is missing; {redo}")
            if file_sha256(d / name) != sums[name]:
                raise DataError(f"{d / name} is damaged: it differs from the checksum in done.json; {redo}")
    shards = sorted(d.glob("shard-*.npy"))

    def npy(path: Path, mmap: bool) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - truncated or damaged .npy
            raise DataError(f"{path} cannot be read ({first_line(exc)}); {redo}") from exc

    arrays = [npy(p, True) for p in shards]
    for p, a in zip(shards, arrays):
        if a.ndim != 3 or a.dtype.kind not in "ui" or a.shape[1:] != arrays[0].shape[1:]:
            raise DataError(f"{p} holds a {a.dtype} array {a.shape}, not token grids like the split's first shard; {redo}")
    tokens = np.concatenate(arrays) if arrays else np.zeros((0, 0, 0), np.int64)
    vocab = int(meta["vocab_size"])
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise DataError(f"{d}: token ids span [{int(tokens.min())}, {int(tokens.max())}], outside the vocabulary of "
                        f"{vocab} in meta.json; {redo}")
    label_files = [d / p.name.replace("shard-", "labels-") for p in shards]
    labels = None
    if shards and all(f.exists() for f in label_files):
        parts = [npy(f, False) for f in label_files]
        for f, a, g in zip(label_files, parts, arrays):
            if a.ndim != 1 or a.dtype.kind not in "ui" or len(a) != len(g):
                raise DataError(f"{f} holds a {a.dtype} array {a.shape}, not one label per grid of its shard; {redo}")
        labels = torch.from_numpy(np.concatenate(parts).astype(np.int64))
        n_classes = len(meta.get("class_names") or []) or None
        if len(labels) and (int(labels.min()) < 0 or (n_classes and int(labels.max()) >= n_classes)):
            raise DataError(f"{d}: labels span [{int(labels.min())}, {int(labels.max())}], outside the "
                            f"{n_classes} classes of meta.json; {redo}")
    caption_files = [d / p.name.replace("shard-", "captions-").replace(".npy", ".json") for p in shards]
    captions = None
    if shards and all(f.exists() for f in caption_files):
        captions = []
        for f in caption_files:
            part = read_json(f, DataError, redo)
            if not isinstance(part, list) or not all(isinstance(c, str) for c in part):
                raise DataError(f"{f} is not a JSON list of caption strings; {redo}")
            captions += part
    n = done["n"]
    if len(tokens) != n:
        raise DataError(f"{d}: shards hold {len(tokens)} grids but done.json says {n}; {redo}")
    if captions is not None and len(captions) != n:
        raise DataError(f"{d}: caption files hold {len(captions)} captions for {n} grids; "
                        "encode again into a new --out")
    return TokenDataset(torch.from_numpy(tokens.astype(np.int64)), labels, meta, captions)
