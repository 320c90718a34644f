"""Why the GAN does not lower the judge FD at f8 (issue 9): what the judge FD of reconstructions measures.

    python benchmarks/vqgan_why.py --json [--tokenizers f4,f8_nogan,f8_gan] [--n-test N] [--out FILE]

Reads the runs that ``benchmarks/vqgan.py`` trains (the f4, f8 without and f8 with GAN tokenizers, the
judge) and, on the Fashion-MNIST test split, reports for each tokenizer:

* ``judge_accuracy``: the judge's accuracy on its reconstructions (labels of the originals), beside its
  accuracy on the originals: content lost or changed in a class-relevant way shows here;
* ``fd``, split into the mean term ||mu_a - mu_b||² and the covariance term of the Fréchet distance;
* ``blur_fd``: the judge FD of the *originals* blurred by a Gaussian whose σ gives the tokenizer's own
  sharpness ratio (mean gradient magnitude over the originals'): how much of its FD blur alone explains.

Then it holds the content fixed (``decoder_finetune``; ``--decoder-steps 0`` skips it): from the finished
f8 no-GAN tokenizer, only the decoder trains ``--decoder-steps`` more steps on the training split, on its
L2 loss alone or with the preset's adversarial term added, ``--seeds`` times each. Encoder and codebook
stay frozen, so the tokens, and the content they carry, are the same for both: a difference in judge FD
between the two is the GAN's rendering, nothing else.

Writes benchmarks/results/vqgan_why.json.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, fmnist_spec, machine, write_result  # noqa: E402
from vqgan import reconstruct, sharpness  # noqa: E402

from vqgen.data import load_images  # noqa: E402
from vqgen.eval.classifier import judge_predictions  # noqa: E402
from vqgen.eval.fd import feature_stats, frechet_distance_from_stats  # noqa: E402
from vqgen.eval.judge import JudgeClassifier  # noqa: E402
from vqgen.images import to_model_range  # noqa: E402
from vqgen.tokenizer.discriminator import PatchDiscriminator  # noqa: E402
from vqgen.tokenizer.losses import adaptive_weight, generator_adv_loss, hinge_d_loss, reconstruction_loss  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.common import OptimConfig, batch_indices, make_optimizer  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, GANConfig  # noqa: E402

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


# Decoder fine-tuning: a fine-tune's learning rate (a fifth of the preset's peak), cosine to 0 over the
# steps without warm-up or clipping, and taming's Adam betas, for the decoder and the discriminator alike.
FINETUNE_OPTIM = OptimConfig(lr=2e-4, betas=(0.5, 0.9), warmup_steps=0, min_lr_ratio=0.0, grad_clip=0.0)
FINETUNE_BATCH = 32


def finetune_decoder(model: VQTokenizer, images: torch.Tensor, steps: int, gan: GANConfig | None,
                     seed: int = 0, batch: int = FINETUNE_BATCH) -> VQTokenizer:
    """A copy of ``model`` whose decoder (with the post-quantisation conv) alone trained ``steps`` more steps
    on uint8 ``images`` (N, C, H, W): L2 loss, plus, with ``gan``, its adversarial term from the first step
    (PatchGAN of gan.ndf × gan.n_layers, hinge loss, adaptive weight × gan.weight, as the training loop).
    Encoder, codebook and so the tokens stay exactly as they are."""
    if steps < 1:
        raise ValueError(f"finetune_decoder: steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    model = copy.deepcopy(model).eval()  # eval: the quantizer neither updates its EMA nor restarts codes
    opt, sched = make_optimizer([*model.post_quant_conv.parameters(), *model.decoder.parameters()],
                                FINETUNE_OPTIM, steps)
    if gan is not None:
        disc = PatchDiscriminator(images.shape[1], gan.ndf, gan.n_layers).train()
        d_opt, d_sched = make_optimizer(disc.parameters(), FINETUNE_OPTIM, steps)
    for step in range(steps):
        x = to_model_range(images[batch_indices(len(images), batch, step, seed)])  # (b, C, H, W)
        with torch.no_grad():
            z_q = model.quantize(x).z_q  # (b, z, h, w): fixed codes
        xr = model.decoder(model.post_quant_conv(z_q))  # (b, C, H, W)
        rec = reconstruction_loss(x, xr, "l2")
        loss = rec
        if gan is not None:
            g = generator_adv_loss(disc(xr))  # () −mean D(x̂)
            loss = rec + gan.weight * adaptive_weight(rec, g, model.decoder.last_layer) * g
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if gan is not None:
            d_opt.zero_grad(set_to_none=True)
            hinge_d_loss(disc(x), disc(xr.detach())).backward()
            d_opt.step()
            d_sched.step()
    return model


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
    ap.add_argument("--decoder-steps", type=int, default=400, help="decoder fine-tuning steps (0: skip it)")
    ap.add_argument("--seeds", type=int, default=2, help="decoder fine-tuning runs per variant")
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

    if args.decoder_steps:
        base = VQTokenizer.from_pretrained(RUN_DIRS["f8_nogan"])
        train = load_images(spec, "train", 32, 1, progress=False).images  # (60000, 1, 32, 32) uint8
        gan = TOKENIZER_PRESETS["fashion-mnist-f8"]().gan
        runs: dict = {"l2": [], "l2_gan": []}
        for seed in range(args.seeds):
            for name, g in (("l2", None), ("l2_gan", gan)):
                recon = reconstruct(finetune_decoder(base, train, args.decoder_steps, g, seed), images)
                acc, stats = judged(recon)
                psnr = peak_signal_noise_ratio(recon.float(), images.float(), data_range=255.0, reduction="none",
                                               dim=(1, 2, 3)).mean()  # mean over images, as vqgen.eval.tokenizer
                runs[name].append({"seed": seed, "psnr": round(float(psnr), 2),
                                   "judge_accuracy": round(acc, 4), **fd_terms(stats, stats_orig),
                                   "sharpness": round(sharpness(recon) / sharpness(images), 4)})
                print(name, runs[name][-1], file=sys.stderr, flush=True)
        result["decoder_finetune"] = {"from": str(RUN_DIRS["f8_nogan"]), "steps": args.decoder_steps,
                                      "lr": FINETUNE_OPTIM.lr, "betas": list(FINETUNE_OPTIM.betas), "batch": FINETUNE_BATCH,
                                      "gan": {"weight": gan.weight, "ndf": gan.ndf, "n_layers": gan.n_layers},
                                      **runs}
    if args.json:
        write_result("vqgan_why", result, args.out)


if __name__ == "__main__":
    main()
