"""Codecs turn images into token grids and back: a frozen VQ tokenizer, or a pixel palette (the
Image GPT baseline). ``encode_dataset`` writes a dataset's token shards once (``vqgen encode``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import config_hash
from ..data import load_images, splits_of
from ..data.tokens import TokenWriter, read_meta
from ..errors import DataError
from ..images import to_uint8
from ..tokenizer.vqgan import VQTokenizer
from . import pixels

PALETTE_FILE = "palette.safetensors"


@dataclass
class TokenizerCodec:
    model: VQTokenizer
    path: str

    @property
    def vocab_size(self) -> int:
        return self.model.codebook_size

    @property
    def resolution(self) -> int:
        return self.model.cfg.autoencoder.resolution

    @property
    def channels(self) -> int:
        return self.model.cfg.autoencoder.in_channels

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # uint8 (B, C, H, W) -> (B, h, w)
        return self.model.encode(images)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> uint8 (B, C, H, W)
        return to_uint8(self.model.decode(tokens))

    def meta(self) -> dict:
        return {"kind": "tokenizer", "path": str(Path(self.path).resolve()), "config_hash": config_hash(self.model.cfg)}


@dataclass
class PaletteCodec:
    palette: torch.Tensor  # (k, C) float in [0, 255]
    resolution: int

    @property
    def vocab_size(self) -> int:
        return int(self.palette.shape[0])

    @property
    def channels(self) -> int:
        return int(self.palette.shape[1])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return pixels.to_indices(images, self.palette)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return pixels.from_indices(tokens, self.palette)

    def meta(self) -> dict:
        return {"kind": "palette", "path": PALETTE_FILE, "resolution": self.resolution}


Codec = TokenizerCodec | PaletteCodec


def load_codec(tokens_dir: str | Path) -> Codec:
    """The codec a token directory was made with (its tokenizer must still be where it was)."""
    meta = read_meta(tokens_dir)
    c = meta["codec"]
    if c.get("kind") == "palette" and isinstance(c.get("path"), str) and isinstance(c.get("resolution"), int):
        return PaletteCodec(pixels.load_palette(Path(tokens_dir) / c["path"]), c["resolution"])
    if c.get("kind") != "tokenizer" or not isinstance(c.get("path"), str):
        raise DataError(f"{Path(tokens_dir) / 'meta.json'} names no codec (a tokenizer run or a palette) that its "
                        "tokens were made with; encode again into a new --out")
    model = VQTokenizer.from_pretrained(c["path"])
    if config_hash(model.cfg) != c.get("config_hash"):
        raise DataError(f"the tokenizer at {c['path']} is not the one {tokens_dir} was encoded with; put that "
                        "tokenizer back, or encode again with this one into a new --out")
    return TokenizerCodec(model, c["path"])


def encode_dataset(codec: Codec, spec: str, out: str | Path, splits: list[str] | None = None,
                   batch_size: int = 256, shard_size: int = 10_000, progress: bool = True) -> dict:
    """Encode every split of ``spec`` into token shards under ``out``; finished shards are skipped."""
    from tqdm.auto import tqdm
    out = Path(out)
    splits = splits or splits_of(spec)
    counts = {}
    for split in splits:
        data = load_images(spec, split, codec.resolution, codec.channels, progress=progress)
        meta = {"codec": codec.meta(), "vocab_size": codec.vocab_size, "source": spec,
                "class_names": data.class_names, "resolution": codec.resolution, "channels": codec.channels,
                "captioned": data.captions is not None}
        if isinstance(codec, PaletteCodec) and not (out / PALETTE_FILE).exists():
            out.mkdir(parents=True, exist_ok=True)
            pixels.save_palette(codec.palette, out / PALETTE_FILE)
        writer = TokenWriter(out, split, meta)
        n_shards = (len(data) + shard_size - 1) // shard_size
        bar = tqdm(total=len(data), disable=not progress, desc=f"encode {split}")
        for s in range(n_shards):
            lo, hi = s * shard_size, min(len(data), (s + 1) * shard_size)
            if not writer.has(s):
                with torch.inference_mode():
                    tokens = torch.cat([codec.encode(data.images[i:min(hi, i + batch_size)])
                                        for i in range(lo, hi, batch_size)])  # (n, h, w)
                writer.write(s, tokens, data.labels[lo:hi] if data.labels is not None else None,
                             data.captions[lo:hi] if data.captions is not None else None)
            bar.update(hi - lo)
        bar.close()
        writer.finish(len(data))
        counts[split] = len(data)
    return counts
