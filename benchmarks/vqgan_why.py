"""Why the GAN does not lower the judge FD at f8 (issue 9): what the judge FD of reconstructions measures.

    python benchmarks/vqgan_why.py --json [--tokenizers f4,f8_nogan,f8_gan] [--n-test N] [--out FILE]

Reads the runs that ``benchmarks/vqgan.py`` trains (the f4, f8 without and f8 with GAN tokenizers, the
judge) and, on the Fashion-MNIST test split, reports for each tokenizer:

* ``judge_accuracy``: the judge's accuracy on its reconstructions (labels of the originals), beside its
  accuracy on the originals: content lost or changed in a class-relevant way shows here;
* ``fd``, split into the mean term ||mu_a - mu_b||² and the covariance term of the Fréchet distance;
* ``blur_fd``: the judge FD of the *originals* blurred by a Gaussian whose σ gives the tokenizer's own
  sharpness ratio (mean gradient magnitude over the originals'): how much of its FD blur alone explains.

Writes benchmarks/results/vqgan_why.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, fmnist_spec, machine, write_result  # noqa: E402
from vqgan import reconstruct, sharpness  # noqa: E402

from vqgen.data import load_images  # noqa: E402
from vqgen.eval.classifier import judge_predictions  # noqa: E402
from vqgen.eval.fd import feature_stats, frechet_distance_from_stats  # noqa: E402
from vqgen.eval.judge import JudgeClassifier  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402

RUN_DIRS = {"f4": RUNS / "bench-tokenizer" / "fashion-mnist",
            "f8_nogan": RUNS / "bench-vqgan" / "fashion-mnist-f8-nogan",
            "f8_gan": RUNS / "bench-vqgan" / "fashion-mnist-f8"}


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8, a separable Gaussian blur (reflect padding)."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()  # (2r+1,)
    x = images.float()  # (N, C, H, W)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x.round().clamp(0, 255).to(torch.uint8)


def sigma_for_sharpness(images: torch.Tensor, target: float) -> float:
    """The blur σ whose sharpness ratio on ``images`` is ``target`` (bisection; the ratio falls with σ)."""
    base = sharpness(images)
    lo, hi = 0.05, 5.0
    for _ in range(25):
        mid = (lo + hi) / 2
        if sharpness(gaussian_blur(images, mid)) / base > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def fd_terms(stats_a, stats_b) -> dict:
    (mu_a, s_a), (mu_b, s_b) = stats_a, stats_b
    fd = frechet_distance_from_stats(mu_a, s_a, mu_b, s_b)
    mean_term = float((mu_a - mu_b).pow(2).sum())
    return {"fd": round(fd, 4), "fd_mean_term": round(mean_term, 4), "fd_covariance_term": round(fd - mean_term, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n-test", type=int, help="first N test images only (default: all)")
    ap.add_argument("--judge", default=str(RUNS / "bench-judge"))
    ap.add_argument("--tokenizers", default=",".join(RUN_DIRS), help="which of " + ", ".join(RUN_DIRS))
    ap.add_argument("--out")
    args = ap.parse_args()
    spec = fmnist_spec()
    test = load_images(spec, "test", 32, 1, progress=False)
    images, labels = test.images[:args.n_test], test.labels[:args.n_test]  # (N, 1, 32, 32) uint8, (N,)
    judge = JudgeClassifier.from_pretrained(args.judge)

    def judged(x: torch.Tensor) -> tuple[float, tuple]:
        preds, feats = judge_predictions(judge, x)
        return float((preds == labels).float().mean()), feature_stats(feats)

    acc_orig, stats_orig = judged(images)
    result = {"data": spec, "machine": machine(), "command": " ".join(["python"] + sys.argv), "n_test": len(images),
              "note": "Fashion-MNIST re-split copy, test split; judge FD (not Inception FID)",
              "judge_accuracy_originals": round(acc_orig, 4), "tokenizers": {}}
    for key in args.tokenizers.split(","):
        if key not in RUN_DIRS:
            raise SystemExit(f"vqgan_why.py: error: unknown tokenizer {key!r}; choose from {', '.join(RUN_DIRS)}")
        run = RUN_DIRS[key]
        recon = reconstruct(VQTokenizer.from_pretrained(run), images)  # (N, 1, 32, 32) uint8
        acc, stats = judged(recon)
        ratio = sharpness(recon) / sharpness(images)
        sigma = sigma_for_sharpness(images, ratio) if ratio < 1 else None
        blur = fd_terms(judged(gaussian_blur(images, sigma))[1], stats_orig) if sigma else None
        result["tokenizers"][key] = {"run": str(run), "judge_accuracy": round(acc, 4), **fd_terms(stats, stats_orig),
                                     "sharpness": round(ratio, 4), "blur_sigma": sigma and round(sigma, 3),
                                     "blur_fd": blur and blur["fd"]}
        print(key, result["tokenizers"][key], file=sys.stderr, flush=True)
    if args.json:
        write_result("vqgan_why", result, args.out)


if __name__ == "__main__":
    main()
