"""VQ prior vs pixel GPT (Image GPT) at equal wall-clock training time on this machine.

The `fashion-mnist-class` prior is trained on 8×8 tokens of the `fashion-mnist` tokenizer; its
training time sets the budget. The same transformer (`fashion-mnist-pixels`: 28×28 pixels of a
16-level k-means palette) is then trained for as many steps as fit in that budget (seconds per step
measured first). Both are judged by the project's classifier: judge accuracy of class-conditional
samples, judge FD against test images (NOT Inception FID), and samples/s.

    python benchmarks/vq_vs_pixels.py --json [--budget-steps N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, ensure_judge, ensure_pixel_tokens, ensure_tokens, machine, write_result  # noqa: E402

from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data.tokens import load_tokens  # noqa: E402
from vqgen.eval.judge import JudgeClassifier  # noqa: E402
from vqgen.eval.prior import evaluate_prior  # noqa: E402
from vqgen.prior.generate import load_prior_run  # noqa: E402
from vqgen.train.common import train_seconds  # noqa: E402
from vqgen.train.prior import PRIOR_PRESETS, train_prior  # noqa: E402


def seconds_per_step(preset: str, tokens_dir: Path, steps: int = 4) -> float:
    """Time a few optimiser steps of ``preset`` (after one warm-up step) in a scratch run."""
    import shutil
    scratch = RUNS / "bench-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    cfg = apply_overrides(PRIOR_PRESETS[preset](), [f"loop.max_steps={steps + 1}", "loop.save_every=1000"])
    data = load_tokens(tokens_dir, "train")
    t0 = time.perf_counter()
    train_prior(apply_overrides(cfg, ["loop.max_steps=1"]), scratch / "w", train_data=data, progress=False)
    t1 = time.perf_counter()
    train_prior(cfg, scratch / "m", train_data=data, progress=False)
    t2 = time.perf_counter()
    shutil.rmtree(scratch, ignore_errors=True)
    return ((t2 - t1) - (t1 - t0)) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--n-test-grids", type=int, help="test NLL on the first N test grids only")
    ap.add_argument("--out")
    args = ap.parse_args()
    judge_dir = ensure_judge()
    vq_tokens, px_tokens = ensure_tokens(), ensure_pixel_tokens()
    judge = JudgeClassifier.from_pretrained(judge_dir)

    vq_dir = RUNS / "bench-prior" / "vq"
    train_prior(PRIOR_PRESETS["fashion-mnist-class"](), vq_dir, tokens=str(vq_tokens), progress=sys.stderr.isatty())
    vq_seconds = train_seconds(vq_dir)

    px_dir = RUNS / "bench-prior" / "pixels"
    if (px_dir / "checkpoints" / "last.pt").exists():  # finished earlier: keep its step count
        px_steps = json.loads((px_dir / "train_config.json").read_text())["loop"]["max_steps"]
    else:
        px_steps = max(1, int(vq_seconds / seconds_per_step("fashion-mnist-pixels", px_tokens)))
    px_cfg = apply_overrides(PRIOR_PRESETS["fashion-mnist-pixels"](),
                             [f"loop.max_steps={px_steps}", f"loop.save_every={px_steps}",
                              f"optim.warmup_steps={max(1, px_steps // 10)}"])
    train_prior(px_cfg, RUNS / "bench-prior" / "pixels", tokens=str(px_tokens), progress=sys.stderr.isatty())
    px_seconds = train_seconds(RUNS / "bench-prior" / "pixels")

    result = {"train_seconds": round(vq_seconds, 1), "machine": machine(),
              "command": " ".join(["python"] + sys.argv),
              "note": "FD is the judge classifier's Fréchet distance, not Inception FID; Fashion-MNIST re-split copy"}
    for name, run_dir, seconds, steps in [("vq", vq_dir, vq_seconds, PRIOR_PRESETS["fashion-mnist-class"]().loop.max_steps),
                                          ("pixel", RUNS / "bench-prior" / "pixels", px_seconds, px_steps)]:
        m = evaluate_prior(load_prior_run(run_dir), judge, n_per_class=args.n_per_class, guidance_scale=1.0,
                           n_test_grids=args.n_test_grids)  # unguided: the comparison its results report
        result[name] = {"fd": m["fd"], "judge_accuracy": m["judge_accuracy"], "samples_per_s": m["samples_per_s"],
                        "test_bits_per_token": m["test_bits_per_token"], "n_test_grids": m["n_test_grids"],
                        "n_samples": m["n_samples"], "fd_reconstructions": m["fd_reconstructions"],
                        "train_seconds": round(seconds, 1), "steps": steps}
    write_result("vq_vs_pixels", result, args.out)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
