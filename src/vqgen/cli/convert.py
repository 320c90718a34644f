"""``vqgen import``: published checkpoints of other projects as vqgen runs (see docs/convert.md)."""
from __future__ import annotations

import argparse


def cmd_import_taming(args: argparse.Namespace) -> None:
    from ..convert.taming import import_taming
    model = import_taming(args.checkpoint, args.config, args.out)
    ae, rows = model.cfg.autoencoder, model.cfg.grid[0]
    print(f"imported a taming-transformers VQGAN into {args.out}: {ae.resolution}×{ae.resolution} images "
          f"↔ {rows}×{rows} tokens of {model.codebook_size} codes")


def register(sub, train, evaluate) -> None:
    """``import taming``."""
    imports = sub.add_parser("import", help="turn a published checkpoint into a vqgen run").add_subparsers(
        dest="what", required=True)
    p = imports.add_parser("taming", help="a taming-transformers VQGAN (.ckpt + model.yaml) as a tokenizer run")
    p.add_argument("checkpoint", help="the Lightning .ckpt (read without running any code in it)")
    p.add_argument("--config", required=True, help="its model.yaml")
    p.add_argument("--out", required=True, help="new run directory")
    p.set_defaults(func=cmd_import_taming)
