"""The ``vqgen`` command: thin wrappers over library functions.

    vqgen train tokenizer --config NAME_OR_YAML [--data SPEC] --out RUN_DIR [--max-steps N] [--save-every N] [--set k=v ...]
    vqgen eval tokenizer RUN_DIR --data SPEC [--split test] [--json]
    vqgen reconstruct RUN_DIR --data SPEC [--split test] --out grid.png

User errors (bad config, data, paths) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import VqgenError


def _add_train_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="preset name or YAML file")
    p.add_argument("--out", required=True, help="run directory (an existing one is resumed)")
    p.add_argument("--max-steps", type=int, help="override loop.max_steps")
    p.add_argument("--save-every", type=int, help="override loop.save_every")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _loop_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.max_steps is not None:
        extra.append(f"loop.max_steps={args.max_steps}")
    if args.save_every is not None:
        extra.append(f"loop.save_every={args.save_every}")
    return list(args.overrides) + extra


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from .config import resolve_config
    from .train.tokenizer import TOKENIZER_PRESETS, TokenizerTrainConfig, train_tokenizer
    cfg = resolve_config(TokenizerTrainConfig, args.config, TOKENIZER_PRESETS, _loop_overrides(args))
    train_tokenizer(cfg, args.out, data=args.data, progress=not args.no_progress)
    print(f"tokenizer saved to {args.out}")


def _load_tokenizer_and_data(run_dir: str, spec: str, split: str):
    from .data import load_images
    from .tokenizer.vqgan import VQTokenizer
    model = VQTokenizer.from_pretrained(run_dir)
    ae = model.cfg.autoencoder
    return model, load_images(spec, split, ae.resolution, ae.in_channels, progress=False)


def cmd_eval_tokenizer(args: argparse.Namespace) -> None:
    from .eval.tokenizer import evaluate_tokenizer
    model, data = _load_tokenizer_and_data(args.run_dir, args.data, args.split)
    metrics = evaluate_tokenizer(model, data, progress=not args.json)
    metrics.update(split=args.split, data=args.data, skipped=data.skipped)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    import torch

    from .images import save_grid, to_uint8
    model, data = _load_tokenizer_and_data(args.run_dir, args.data, args.split)
    x = data.images[: args.n]
    rec = to_uint8(model.reconstruct(x))
    # Rows alternate: originals, then their reconstructions.
    nrow = min(args.n, 8)
    rows = [torch.cat([x[i:i + nrow], rec[i:i + nrow]]) for i in range(0, len(x), nrow)]
    path = save_grid(torch.cat(rows), args.out, nrow=nrow, scale=args.scale)
    print(f"wrote {path} (odd rows: originals, even rows: reconstructions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgen", description="Two-stage image generation with discrete codebooks.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    p = train.add_parser("tokenizer", help="train a VQ-GAN tokenizer")
    _add_train_common(p)
    p.add_argument("--data", help="dataset spec KIND[:PATH] (default: the config's)")
    p.set_defaults(func=cmd_train_tokenizer)

    evaluate = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    p = evaluate.add_parser("tokenizer", help="PSNR / SSIM / codebook usage on a dataset split")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval_tokenizer)

    p = sub.add_parser("reconstruct", help="grid of originals and reconstructions")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--scale", type=int, default=3, help="enlarge the PNG this many times")
    p.set_defaults(func=cmd_reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (VqgenError, FileNotFoundError) as e:
        print(f"vqgen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqgen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
