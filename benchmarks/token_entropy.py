"""How much of a token grid is about the picture, and how much is the tokenizer's own noise.

    python benchmarks/token_entropy.py --json [--run runs/bench-text2img] [--n 20000] [--out FILE]

Reads the ``shapes`` token directory of a benchmark run (``RUN/tokens``, made by ``RUN/tokenizer``) and
reports, over the first ``--n`` training grids: the codes in use, the entropy of the code histogram
(bits), and for a few background-heavy cells (corners, top middle) how many distinct codes appear
there and their entropy. In ``shapes`` most of those cells show the plain background, so every bit
above ~0 is spent by the prior on codes that all decode to the same flat colour.

It then encodes scenes that differ only far away (an empty picture and one circle of each colour and
size in the bottom-right cell) and counts how many of the top-left 3×3 token cells change: a tokenizer
whose codes are local would change none. GroupNorm computes its statistics over the whole picture, so
in a GroupNorm encoder every code can depend on every object.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, machine, write_result  # noqa: E402

from vqgen.data.shapes import COLORS, SIZES, ShapeObject, render  # noqa: E402
from vqgen.data.tokens import load_tokens  # noqa: E402
from vqgen.images import to_model_range  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402

CELLS = {"top left": (0, 0), "top middle": (0, 4), "bottom right": (-1, -1)}


def entropy_bits(codes: torch.Tensor, vocab: int) -> float:
    p = torch.bincount(codes.flatten(), minlength=vocab).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def far_object_changes(tok: VQTokenizer, resolution: int) -> float:
    """Mean number of the top-left 3×3 token cells that change when one circle (each colour and size) is
    drawn in the bottom-right cell of an empty picture: 0 when a code depends only on what is near it."""
    scenes = [[]] + [[ShapeObject("circle", color, size, "bottom right")] for color in COLORS for size in SIZES]
    images = torch.as_tensor(np.stack([render(s, resolution) for s in scenes])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        codes = tok.encode(to_model_range(images))  # (S, h, w)
    corner = codes[:, :3, :3].flatten(1)  # (S, 9): the top-left 3×3 token cells, far from the object
    return float((corner[1:] != corner[:1]).sum(dim=1).float().mean())  # over the S-1 scenes with a circle


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--run", default=str(RUNS / "bench-text2img"), help="a directory with tokenizer/ and tokens/")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--out")
    args = ap.parse_args()
    run = Path(args.run)
    data = load_tokens(run / "tokens", "train")
    grids = torch.as_tensor(np.asarray(data.tokens[: args.n])).long()  # (N, h, w)
    vocab = data.vocab_size
    cells = {}
    for name, (r, c) in CELLS.items():
        at = grids[:, r, c]  # (N,)
        cells[name] = {"distinct_codes": int(at.unique().numel()), "entropy_bits": round(entropy_bits(at, vocab), 3)}

    tok = VQTokenizer.from_pretrained(run / "tokenizer").eval()
    changed = far_object_changes(tok, data.meta["resolution"])

    result = {"codes_used": int(grids.unique().numel()), "vocab_size": vocab,
              "entropy_bits": round(entropy_bits(grids, vocab), 3), "max_entropy_bits": round(math.log2(vocab), 3),
              "cells": cells, "far_object_changes_top_left_cells": round(changed, 2),
              "far_object_scenes": len(COLORS) * len(SIZES),
              "encoder_norm": tok.cfg.autoencoder.encoder_norm, "n_grids": len(grids), "grid": list(grids.shape[1:]),
              "run": str(run), "machine": machine(), "command": " ".join(["python"] + sys.argv)}
    write_result("token_entropy", result, args.out)


if __name__ == "__main__":
    main()
