"""Codecs turn images into token grids and back: a frozen VQ tokenizer, or a pixel palette (the
Image GPT baseline). ``vqgen.data.encode.encode_dataset`` writes a dataset's token shards with one
(``vqgen encode``, which also saves a palette as ``PALETTE_FILE`` beside the shards)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import config_hash
from ..data.tokens import read_meta
from ..errors import DataError
from ..hub import read_payload
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
        return {"kind": "tokenizer", "path": str(Path(self.path).resolve()), "config_hash": saved_config_hash(self.path)}


def saved_config_hash(tokenizer_dir: str | Path) -> str:
    """The hash of a tokenizer's config as its config.json holds it. Not of the config rebuilt from it:
    a key added to the dataclass since (with a default that keeps the old behaviour) must not make
    the tokens encoded before look as if another tokenizer had made them."""
    return config_hash(read_payload(tokenizer_dir)["config"])


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
    if saved_config_hash(c["path"]) != c.get("config_hash"):
        raise DataError(f"the tokenizer at {c['path']} is not the one {tokens_dir} was encoded with; put that "
                        "tokenizer back, or encode again with this one into a new --out")
    return TokenizerCodec(model, c["path"])

