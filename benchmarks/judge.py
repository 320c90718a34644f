"""The judge classifier (`vqgen train classifier`, preset fashion-mnist): test accuracy.

    python benchmarks/judge.py --json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_judge, fmnist_spec, machine, write_result  # noqa: E402

from vqgen.eval.classifier import evaluate_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    judge = ensure_judge(progress=sys.stderr.isatty())
    m = evaluate_classifier(judge, fmnist_spec(), "test")
    write_result("judge", {"accuracy": m["accuracy"], "n_images": m["n_images"], "per_class_accuracy": m["per_class_accuracy"],
                           "machine": machine(), "command": " ".join(["python"] + sys.argv)}, args.out)


if __name__ == "__main__":
    main()
