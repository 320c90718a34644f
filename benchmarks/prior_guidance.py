"""Class-conditional Fashion-MNIST prior: judge accuracy and judge FD at guidance scales 1, 2, 4, and
the README's sample grid (one row per class). Reuses (or makes) the runs of vq_vs_pixels.py.

    python benchmarks/prior_guidance.py --json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RUNS, ensure_judge, ensure_tokens, machine, write_result  # noqa: E402

from vqgen.eval.judge import JudgeClassifier  # noqa: E402
from vqgen.eval.prior import evaluate_prior  # noqa: E402
from vqgen.images import save_grid  # noqa: E402
from vqgen.prior.generate import generate, load_prior_run  # noqa: E402
from vqgen.train.prior import PRIOR_PRESETS, train_prior  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--out")
    args = ap.parse_args()
    judge = JudgeClassifier.from_pretrained(ensure_judge())
    vq_dir = RUNS / "bench-prior" / "vq"
    train_prior(PRIOR_PRESETS["fashion-mnist-class"](), vq_dir, tokens=str(ensure_tokens()), progress=False)
    run = load_prior_run(vq_dir)
    rows = []
    for s in map(float, args.scales.split(",")):
        m = evaluate_prior(run, judge, n_per_class=args.n_per_class, guidance_scale=s)
        rows.append({"guidance_scale": s, "judge_accuracy": m["judge_accuracy"], "fd": m["fd"],
                     "samples_per_s": m["samples_per_s"]})
    cond = torch.arange(10).repeat_interleave(10)
    save_grid(generate(run, 100, cond=cond, guidance_scale=1.0, seed=0), REPO / "docs" / "images" / "samples.png",
              nrow=10, scale=2)  # the README's grid, captioned "guidance scale 1"
    write_result("prior_guidance", {"rows": rows, "fd_reconstructions": m["fd_reconstructions"],
                                    "test_bits_per_token": m["test_bits_per_token"], "machine": machine(),
                                    "note": "judge-classifier FD, not Inception FID; Fashion-MNIST re-split copy",
                                    "command": " ".join(["python"] + sys.argv)}, args.out)


if __name__ == "__main__":
    main()
