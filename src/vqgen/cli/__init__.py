"""The ``vqgen`` command: thin wrappers over library functions, one module per stage.

    vqgen train tokenizer --config NAME_OR_YAML [--data SPEC] --out RUN_DIR [--max-steps N] [--set k=v ...]
    vqgen eval tokenizer RUN_DIR --data SPEC [--split test] [--json]
    vqgen reconstruct RUN_DIR --data SPEC [--split test] --out grid.png
    vqgen encode (--tokenizer RUN_DIR | --pixels K) --data SPEC --out TOKENS_DIR
    vqgen train prior --config NAME_OR_YAML --tokens TOKENS_DIR --out RUN_DIR [...]
    vqgen sample --prior RUN_DIR [--class K | --complete IMAGE_OR_SPEC] --n N --out grid.png
    vqgen eval prior RUN_DIR --judge JUDGE_DIR [--inception-weights PATH] [--json]
    vqgen train classifier --data SPEC --out JUDGE_DIR [--config fashion-mnist]
    vqgen eval classifier JUDGE_DIR --data SPEC [--split test] [--json]
    vqgen train text2img --config NAME_OR_YAML --tokens TOKENS_DIR --out RUN_DIR [...]
    vqgen train clip --config NAME_OR_YAML [--data SPEC] --out CLIP_DIR [...]
    vqgen train shapes-judge --config NAME_OR_YAML --out JUDGE_DIR [...]
    vqgen generate "CAPTION" --model RUN_DIR [--clip CLIP_DIR] --n 16 --keep 4 --out out.png
    vqgen eval text2img RUN_DIR --clip CLIP_DIR --judge JUDGE_DIR [--captions FILE.jsonl] [--json]

User errors (bad config, data, paths) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import VqgenError
from . import prior, text2img, tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgen", description="Two-stage image generation with discrete codebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    evaluate = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    for stage in (tokenizer, prior, text2img):
        stage.register(sub, train, evaluate)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"vqgen: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # a warning is one line too, without source lines
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
