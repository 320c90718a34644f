"""Captions to token ids: normalisation and a byte-level BPE (Hugging Face ``tokenizers``).

``normalize_caption`` is the one place captions are cleaned: unicode NFKC, lower case, runs of
whitespace collapsed, ends stripped. ``CaptionTokenizer.train`` fits a byte-level BPE (as GPT-2 and
BART use: every byte sequence is encodable, so unseen words never fail) on training captions and
saves it as ``tokenizer.json`` inside a run directory. Encoded batches are ``<s> ids </s>`` padded
with ``<pad>`` to a fixed length; captions longer than that are truncated (the caller counts and
warns).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Iterable

import torch

from ..errors import ConfigError

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
_SPACES = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """NFKC, lower case, single spaces, stripped. Not a string → ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"a caption must be a string, got {type(text).__name__}")
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


class CaptionTokenizer:
    """A byte-level BPE over normalised captions, with ``<pad>``, ``<s>``, ``</s>`` specials."""

    def __init__(self, tokenizer):  # a tokenizers.Tokenizer
        self.tok = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids[:3]):
            raise ConfigError(f"the BPE tokenizer lacks the special tokens {list(SPECIAL_TOKENS[:3])}")
        self.pad_id, self.bos_id, self.eos_id = ids[:3]

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size())

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> "CaptionTokenizer":
        """Fit a byte-level BPE of at most ``vocab_size`` entries on ``captions`` (normalised first)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ConfigError(f"a byte-level BPE needs vocab_size ≥ {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator((normalize_caption(c) for c in captions), trainer=trainer)
        return cls(tok)

    def to_str(self) -> str:
        """The tokenizer as the JSON text of a ``tokenizer.json``."""
        return self.tok.to_str()

    def save(self, directory: str | Path) -> Path:
        from ..hub import atomic_write_bytes
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_bytes(path, lambda p: self.tok.save(p))
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> "CaptionTokenizer":
        from tokenizers import Tokenizer
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise ConfigError(f"no caption tokenizer at {path} (expected a {TOKENIZER_FILE})")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt file is bad input
            raise ConfigError(f"{path} is not a readable tokenizers JSON file: {exc}") from exc
        return cls(tok)

    def ids(self, caption: str) -> list[int]:
        """BPE ids of one normalised caption, without specials."""
        return self.tok.encode(normalize_caption(caption), add_special_tokens=False).ids

    def encode(self, captions: list[str], max_len: int) -> tuple[torch.Tensor, int]:
        """``<s> ids </s>`` per caption, right-padded → (LongTensor (B, max_len), captions truncated).

        A caption whose ids do not fit keeps its first ``max_len - 2`` ids and still ends in ``</s>``.
        """
        if max_len < 3:
            raise ConfigError(f"max_len must be ≥ 3 (<s>, one token, </s>), got {max_len}")
        out = torch.full((len(captions), max_len), self.pad_id, dtype=torch.long)  # (B, L)
        truncated = 0
        for i, c in enumerate(captions):
            ids = self.ids(c)
            if len(ids) > max_len - 2:
                ids = ids[:max_len - 2]
                truncated += 1
            row = [self.bos_id, *ids, self.eos_id]
            out[i, :len(row)] = torch.tensor(row)
        return out, truncated

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return self.tok.decode([i for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id)]).strip()
