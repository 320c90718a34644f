"""Helpers every stage's commands share: training flags, config overrides, printing metrics."""
from __future__ import annotations

import argparse
import json


def add_train_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="preset name or YAML file")
    p.add_argument("--out", required=True, help="run directory (an existing one is resumed)")
    p.add_argument("--max-steps", type=int, help="override loop.max_steps")
    p.add_argument("--save-every", type=int, help="override loop.save_every")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def loop_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.max_steps is not None:
        extra.append(f"loop.max_steps={args.max_steps}")
    if args.save_every is not None:
        extra.append(f"loop.save_every={args.save_every}")
    return list(args.overrides) + extra


def print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics))
        return
    for k, v in metrics.items():
        print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")
