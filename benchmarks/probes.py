"""Probes of what a text-to-image model (and a CLIP) read from a ``shapes`` caption, without sampling.

Each probe edits true test captions into false ones and asks a model to choose: the text-to-image model
by its likelihood of the true image tokens under each caption, CLIP by its score of the true render.

* ``position_probe``: one-object captions that state a position; the position phrase swapped for each
  of the 9. Shares where the true cell, its row, its column win (chance 1/9, 1/3, 1/3).
* ``binding_probe`` / ``clip_binding_probe``: two-object captions against the same caption with the
  objects' colours swapped, their shapes swapped, or the relation reversed ("above" ↔ "below", "left of"
  ↔ "right of"). The false caption holds the same words as the true one, so a model that reads a caption
  as a bag of words cannot tell them apart: chance is 50 %.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqgen.data.shapes import POSITIONS, generate_scenes
from vqgen.data.tokens import load_tokens
from vqgen.text.bpe import CaptionTokenizer
from vqgen.text.dalle import TextToImage

REVERSED = {"above": "below", "below": "above", "left": "right", "right": "left"}  # relation key words


def _swap(caption: str, a: str, b: str) -> str:
    return caption.replace(a, "\0").replace(b, a).replace("\0", b)


def binding_variants(record: dict) -> dict[str, str]:
    """False captions of a two-object record, by kind (``color``, ``shape``, ``relation``); a kind is left
    out where the edit is not clean (equal attributes, a word that occurs twice)."""
    caption, (a, b) = record["caption"], record["objects"]
    out = {}
    for kind in ("color", "shape"):
        if a[kind] != b[kind] and caption.count(a[kind]) == 1 and caption.count(b[kind]) == 1:
            out[kind] = _swap(caption, a[kind], b[kind])
    key = record["relation"].split()[0]  # "above", "below", "left", "right"
    phrase = f" {key} of " if key in ("left", "right") else f" {key} "
    if caption.count(phrase) == 1:
        out["relation"] = caption.replace(phrase, phrase.replace(key, REVERSED[key]))
    return out


@torch.inference_mode()
def _nll(model: TextToImage, tokenizer: CaptionTokenizer, captions: list[str], grid) -> torch.Tensor:
    """Negative log-likelihood (n,) of one image's tokens under each caption."""
    ids, _ = tokenizer.encode(captions, model.config.max_text_len)  # (n, L)
    tokens = torch.as_tensor(np.asarray(grid)).long().reshape(1, -1).expand(len(captions), -1)  # (n, HW)
    return F.cross_entropy(model(ids, tokens).transpose(1, 2), tokens, reduction="none").sum(1)  # (n,)


def _test_tokens(tokens_dir: Path):
    test = load_tokens(tokens_dir, "test")
    _, _, _, records = generate_scenes(0, "test", len(test))
    return zip(records, test.tokens)


def position_probe(model: TextToImage, tokenizer: CaptionTokenizer, tokens_dir: Path) -> dict:
    """The model's likelihood as a position classifier on the test split's one-object captions."""
    rows, cols = np.divmod(np.arange(len(POSITIONS)), 3)
    hits = {"accuracy": 0, "row": 0, "col": 0}
    n = 0
    for record, grid in _test_tokens(tokens_dir):
        if len(record["objects"]) != 1 or "position" not in record["objects"][0]:
            continue
        true = POSITIONS.index(record["objects"][0]["position"])
        swapped = [record["caption"].replace(POSITIONS[true], p, 1) for p in POSITIONS]  # the phrase holds it verbatim
        best = int(_nll(model, tokenizer, swapped, grid).argmin())
        hits["accuracy"] += best == true
        hits["row"] += int(rows[best] == rows[true])
        hits["col"] += int(cols[best] == cols[true])
        n += 1
    return {**{k: round(v / n, 3) for k, v in hits.items()}, "n_captions": n}


def _binding_wins(pairs, score) -> dict:
    """``pairs`` of (two-object record, what ``score(captions, x)`` reads: image tokens or a render) → per
    kind of ``binding_variants``, the share of pairs where the true caption scores higher than the false one."""
    wins: dict[str, list[bool]] = {"color": [], "shape": [], "relation": []}
    for record, x in pairs:
        if len(record["objects"]) != 2:
            continue
        variants = binding_variants(record)
        scores = score([record["caption"], *variants.values()], x)  # (1 + v,)
        for kind, v in zip(variants, scores[1:].tolist()):
            wins[kind].append(float(scores[0]) > v)
    return {**{k: round(sum(v) / len(v), 3) for k, v in wins.items()}, "n_pairs": {k: len(v) for k, v in wins.items()}}


def binding_probe(model: TextToImage, tokenizer: CaptionTokenizer, tokens_dir: Path) -> dict:
    """Share of two-object test captions whose true image tokens are likelier under the true caption than
    under each kind of false one (``binding_variants``)."""
    return _binding_wins(_test_tokens(tokens_dir), lambda captions, grid: -_nll(model, tokenizer, captions, grid))


@torch.inference_mode()
def clip_binding_probe(scorer, images: torch.Tensor, records: list[dict]) -> dict:
    """The same choice for CLIP: share of two-object test renders (uint8 (N, C, H, W)) that score higher
    with the true caption than with each kind of false one."""
    return _binding_wins(zip(records, images), lambda captions, image: scorer.score(
        image[None].expand(len(captions), -1, -1, -1), captions))  # (1 + v,)
