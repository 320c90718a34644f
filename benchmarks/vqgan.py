"""Does the adversarial stage earn its place at high compression? (issue 9)

Three tokenizers on the Fashion-MNIST test split — ``fashion-mnist`` (f=4, 8×8 tokens, today's VQ-VAE
preset), ``fashion-mnist-f8-nogan`` (f=8, 4×4 tokens) and ``fashion-mnist-f8`` (the same with the
PatchGAN on, at the same training time) — then the class-conditional prior on the f8 GAN tokens
against the prior on the f4 tokens, both the ``fashion-mnist-class`` preset with the same budget: the same
steps and the same tokens per step (the f8 prior's batch holds 4× as many sequences of a quarter the length).

    python benchmarks/vqgan.py --json [--tok-steps N --prior-steps N --judge RUN --n-test N --n-per-class N]

Tokenizers: PSNR, SSIM, codebook usage (``vqgen.eval.tokenizer``), the judge FD of reconstructions
against the originals (the judge never sees tokenizer training, so this is not circular; judge FD,
not Inception FID) and a sharpness ratio: mean gradient magnitude of the reconstructions over that of
the originals (1 = as crisp as the data, < 1 = blurred). Priors: judge accuracy, judge FD of samples,
samples/s (sampling + decoding) at the run's default guidance, and bits per image = tokens × the
prior's test NLL in bits/token.

Full size (no step flags) reuses the shared runs of ``benchmarks/common.py``: the judge, the f4
tokenizer, its tokens and its prior (``runs/bench-prior/vq``, also used by ``vq_vs_pixels.py``); the
f8 runs go to ``--runs``. Any of ``--tok-steps`` / ``--prior-steps`` (a smoke test) trains every run,
the f4 ones included, under ``--runs`` with those steps instead, and writes the PNG there.
Writes benchmarks/results/vqgan.json (``--out``) and docs/images/vqgan_f8.png (``--png``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RUNS, ensure_judge, ensure_tokenizer, ensure_tokens, fmnist_spec, machine, write_result  # noqa: E402

from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data import load_images  # noqa: E402
from vqgen.eval.fd import judge_fd  # noqa: E402
from vqgen.eval.judge import JudgeClassifier  # noqa: E402
from vqgen.eval.prior import evaluate_prior  # noqa: E402
from vqgen.eval.tokenizer import evaluate_tokenizer  # noqa: E402
from vqgen.images import save_grid, to_uint8  # noqa: E402
from vqgen.data.encode import encode_dataset  # noqa: E402
from vqgen.prior.codec import TokenizerCodec  # noqa: E402
from vqgen.prior.generate import load_prior_run  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.common import train_seconds  # noqa: E402
from vqgen.train.prior import PRIOR_PRESETS, train_prior  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402

TOKENIZERS = {"f4": "fashion-mnist", "f8_nogan": "fashion-mnist-f8-nogan", "f8_gan": "fashion-mnist-f8"}
PRIOR_PRESET = "fashion-mnist-class"


def sharpness(images: torch.Tensor) -> float:
    """Mean gradient magnitude of uint8 (N, C, H, W) images: forward differences, in grey levels."""
    x = images.float()  # (N, C, H, W)
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]  # (N, C, H-1, W-1)
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]  # (N, C, H-1, W-1)
    return float((dx.pow(2) + dy.pow(2)).sqrt().mean())


@torch.inference_mode()
def reconstruct(model: VQTokenizer, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 reconstructions (N, C, H, W)."""
    return torch.cat([to_uint8(model.reconstruct(images[i:i + batch])) for i in range(0, len(images), batch)])


def tokenizer_metrics(model: VQTokenizer, test, judge: JudgeClassifier, seconds: float) -> tuple[dict, dict]:
    """The issue's keys, and details (perplexity, steps) kept apart so the keys stay exactly as listed."""
    m = evaluate_tokenizer(model, test)
    recon = reconstruct(model, test.images)  # (N, C, H, W) uint8
    keys = {"psnr": round(m["psnr"], 3), "ssim": round(m["ssim"], 4), "codebook_usage": round(m["codebook_usage"], 4),
            "fd_reconstructions": round(judge_fd(judge, recon, test.images), 3),
            "sharpness": round(sharpness(recon) / sharpness(test.images), 4), "train_seconds": round(seconds, 1)}
    return keys, {"perplexity": round(m["perplexity"], 1), "tokens": model.cfg.grid[0] * model.cfg.grid[1],
                  "codebook_size": model.codebook_size}


def prior_metrics(run_dir: Path, judge: JudgeClassifier, n_per_class: int, steps: int) -> tuple[dict, dict]:
    run = load_prior_run(run_dir)
    m = evaluate_prior(run, judge, n_per_class=n_per_class)  # at the run's default guidance
    tokens = run.prior.config.grid[0] * run.prior.config.grid[1]
    keys = {"judge_accuracy": round(m["judge_accuracy"], 4), "fd": round(m["fd"], 3),
            "samples_per_s": round(m["samples_per_s"], 2), "bits_per_image": round(m["test_bits_per_token"] * tokens, 1)}
    return keys, {"tokens": tokens, "test_bits_per_token": round(m["test_bits_per_token"], 4), "steps": steps,
                  "guidance_scale": m["guidance_scale"], "n_samples": m["n_samples"],
                  "train_seconds": round(train_seconds(run_dir), 1),
                  "fd_reconstructions_10k": round(m["fd_reconstructions"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tok-steps", type=int, help="smoke test: every tokenizer trains this many steps (GAN start scaled)")
    ap.add_argument("--prior-steps", type=int, help="smoke test: both priors train this many steps")
    ap.add_argument("--judge", help="an existing judge run (default: benchmarks/common.py's shared one)")
    ap.add_argument("--n-test", type=int, help="first N test images only (default: all)")
    ap.add_argument("--n-per-class", type=int, default=100, help="prior samples per class")
    ap.add_argument("--runs", default=str(RUNS / "bench-vqgan"))
    ap.add_argument("--png", help="side-by-side PNG (default docs/images/vqgan_f8.png; under --runs for a smoke test)")
    ap.add_argument("--out")
    args = ap.parse_args()
    smoke = args.tok_steps is not None or args.prior_steps is not None
    runs, spec = Path(args.runs), fmnist_spec()
    progress = sys.stderr.isatty()
    judge = JudgeClassifier.from_pretrained(args.judge or ensure_judge(progress))
    train = load_images(spec, "train", 32, 1, progress=False)
    test = load_images(spec, "test", 32, 1, progress=False)
    if args.n_test:
        test = type(test)(test.images[:args.n_test], test.labels[:args.n_test], test.class_names, source=test.source)

    result = {"data": spec, "machine": machine(), "command": " ".join(["python"] + sys.argv),
              "note": "FD is the judge classifier's Fréchet distance (not Inception FID); Fashion-MNIST re-split "
                      "copy, test split" + ("; SMOKE TEST at a tiny size, not a measurement" if smoke else "")}
    details: dict = {}
    models: dict[str, VQTokenizer] = {}
    for key, preset in TOKENIZERS.items():
        if key == "f4" and not smoke:
            out = ensure_tokenizer(progress)  # the shared f4 run (benchmarks/common.py)
            cfg = TOKENIZER_PRESETS[preset]()
        else:
            out = runs / preset
            over = []
            if args.tok_steps:
                start = TOKENIZER_PRESETS[preset]().gan.start
                over = [f"loop.max_steps={args.tok_steps}", f"gan.start={min(start, args.tok_steps // 2)}"]
            cfg = apply_overrides(TOKENIZER_PRESETS[preset](), over)
            train_tokenizer(cfg, out, train_data=train, progress=progress)
        models[key] = VQTokenizer.from_pretrained(out)
        result[key], details[key] = tokenizer_metrics(models[key], test, judge, train_seconds(out))
        details[key].update(preset=preset, run=str(out), steps=cfg.loop.max_steps)
        print(key, result[key], file=sys.stderr, flush=True)

    # The same test images reconstructed by all three, one per class: originals, f4, f8 no GAN, f8 GAN.
    labels = test.labels.tolist()
    pick = [labels.index(c) for c in sorted(set(labels))]
    x = test.images[pick]  # (10, 1, 32, 32) uint8
    grid = torch.cat([x] + [reconstruct(models[k], x) for k in TOKENIZERS])
    png = Path(args.png) if args.png else (runs / "vqgan_f8.png" if smoke else REPO / "docs" / "images" / "vqgan_f8.png")
    save_grid(grid, png, nrow=len(pick), scale=3)

    # Stage 2: the same prior preset and budget on f4 tokens and on f8 GAN tokens: the same steps, and the
    # same tokens per step, so the f8 prior's batch holds as many more sequences as they are shorter.
    base = PRIOR_PRESETS[PRIOR_PRESET]().loop
    steps = args.prior_steps or base.max_steps
    over = [f"loop.max_steps={steps}", f"optim.warmup_steps={min(100, max(1, steps // 10))}"] if args.prior_steps else []
    if smoke:
        f4_tokens = runs / "tokens-f4"
        encode_dataset(TokenizerCodec(models["f4"], details["f4"]["run"]), spec, f4_tokens, progress=progress)
        f4_prior = runs / "prior-f4"
    else:
        f4_tokens, f4_prior = ensure_tokens(progress), RUNS / "bench-prior" / "vq"  # shared with vq_vs_pixels.py
    f8_tokens = runs / "tokens-f8-gan"
    encode_dataset(TokenizerCodec(models["f8_gan"], details["f8_gan"]["run"]), spec, f8_tokens, progress=progress)
    f8_prior = runs / "prior-f8-gan"
    grid8 = list(models["f8_gan"].cfg.grid)
    batch8 = base.batch_size * details["f4"]["tokens"] // details["f8_gan"]["tokens"]  # 32 × 64 / 16 = 128
    for key, tokens, prior_dir, f8_over in [
            ("prior_f4", f4_tokens, f4_prior, []),
            ("prior_f8_gan", f8_tokens, f8_prior, [f"model.grid={grid8}", f"loop.batch_size={batch8}"])]:
        cfg = apply_overrides(PRIOR_PRESETS[PRIOR_PRESET](), over + f8_over)
        train_prior(cfg, prior_dir, tokens=str(tokens), progress=progress)
        result[key], details[key] = prior_metrics(prior_dir, judge, args.n_per_class, steps)
        details[key].update(run=str(prior_dir), preset=PRIOR_PRESET, batch_size=cfg.loop.batch_size)
        print(key, result[key], file=sys.stderr, flush=True)
    result["details"] = details
    result["png"] = str(png)
    write_result("vqgan", result, args.out)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
