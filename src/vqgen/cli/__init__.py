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
    vqgen import taming CKPT --config MODEL_YAML --out RUN_DIR
    vqgen serve RUN_DIR [--clip CLIP_DIR] [--host 127.0.0.1] [--port 7860]

User errors (bad config, data, paths; missing, damaged or unwritable files) print one line and exit
with status 2. SIGTERM / SIGINT during training finish the step, write a checkpoint and exit with
128 + the signal number, saying how to resume.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings

from ..errors import TrainingInterrupted, VqgenError
from ..train.cards import recording_command
from . import convert, prior, serve, text2img, tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgen", description="Two-stage image generation with discrete codebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    evaluate = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    for stage in (tokenizer, prior, text2img, convert, serve):
        stage.register(sub, train, evaluate)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"vqgen: warning: {message}\n"


def _stop_at_once(signum: int, frame=None) -> None:
    """SIGTERM outside a training loop's steps (loading, a final evaluation, an export): stop now, as
    Ctrl-C does, with the one-line message rather than a silent death (a loop finishes its step first)."""
    raise TrainingInterrupted("SIGTERM received: stopped at once, outside a training step; files are written "
                              "atomically, so nothing half-written is left, and a training run resumes from its "
                              "newest checkpoint when the same command runs again", signum)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # a warning is one line too, without source lines
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_at_once) if in_main_thread else None
    try:
        with recording_command(sys.argv[1:] if argv is None else list(argv)):  # model cards name the command
            args.func(args)
    except TrainingInterrupted as e:  # SIGTERM / SIGINT: a training step finished and its checkpoint was written
        print(f"vqgen: stopped: {e}", file=sys.stderr)
        return 128 + e.signum
    except (VqgenError, OSError) as e:  # bad input, or a file that cannot be read or written
        print("vqgen: error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqgen: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
