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
can share one directory. This module only stores arrays; the encoding itself happens in
``vqgen.prior.tokens`` (data never imports models).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..hub import atomic_write_bytes


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
            old = json.loads(meta_path.read_text())
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
        atomic_write_bytes(self.dir / "done.json", lambda p: Path(p).write_text(json.dumps({"n": n})))


def read_meta(root: str | Path) -> dict:
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise DataError(f"{root} is not a token directory (no meta.json); make one with `vqgen encode`")
    return json.loads(path.read_text())


def load_tokens(root: str | Path, split: str = "train") -> TokenDataset:
    """Load a finished split of a token directory (memory-mapped shards, one int64 tensor)."""
    root = Path(root)
    meta = read_meta(root)
    d = root / split
    if not (d / "done.json").exists():
        have = sorted(p.name for p in root.iterdir() if (p / "done.json").exists())
        raise DataError(f"{root} has no finished split {split!r} (finished: {have}); run `vqgen encode` again to complete it")
    shards = sorted(d.glob("shard-*.npy"))
    tokens = np.concatenate([np.load(p, mmap_mode="r") for p in shards])
    label_files = [d / p.name.replace("shard-", "labels-") for p in shards]
    labels = None
    if all(f.exists() for f in label_files):
        labels = torch.from_numpy(np.concatenate([np.load(f) for f in label_files]))
    caption_files = [d / p.name.replace("shard-", "captions-").replace(".npy", ".json") for p in shards]
    captions = None
    if shards and all(f.exists() for f in caption_files):
        captions = [c for f in caption_files for c in json.loads(f.read_text(encoding="utf-8"))]
    n = json.loads((d / "done.json").read_text())["n"]
    if len(tokens) != n:
        raise DataError(f"{d}: shards hold {len(tokens)} grids but done.json says {n}")
    if captions is not None and len(captions) != n:
        raise DataError(f"{d}: caption files hold {len(captions)} captions for {n} grids; "
                        "encode again into a new --out")
    return TokenDataset(torch.from_numpy(tokens.astype(np.int64)), labels, meta, captions)
