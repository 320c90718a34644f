"""Stage 1 training: the VQ-GAN tokenizer, in one readable loop.

Per step: reconstruction (L1/L2) + optional LPIPS + quantizer loss + (after ``disc_start``) the
adaptive-weighted adversarial term for the autoencoder; then a hinge-loss step for the PatchGAN
discriminator. See Esser et al. 2020 (https://arxiv.org/abs/2012.09841), eq. 7 for the adaptive weight.

Training health (TensorBoard ``train/*``): besides the losses, PSNR and codebook usage, a GAN run logs
the discriminator's mean logits on real and reconstructed images (``d_logits_real`` / ``d_logits_fake``),
its hinge loss (``d_loss``), the adaptive weight λ (``adaptive_weight``; ``gan_w`` = λ · gan.weight)
and the generator's unweighted adversarial term −D(x̂) (``g_adv``). The progress bar shows the step at
which the discriminator starts, then its hinge loss. ``GANHealth`` prints one line, once, when the
discriminator wins outright or the codebook usage collapses after the GAN starts (docs/vqgan.md).
"""
from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from ..data import ImageDataset, load_images
from ..errors import ConfigError
from ..images import to_model_range, to_uint8
from ..tokenizer.discriminator import PatchDiscriminator
from ..tokenizer.losses import adaptive_weight, generator_adv_loss, hinge_d_loss, reconstruction_loss
from ..tokenizer.vqgan import TokenizerConfig, VQTokenizer
from .cards import write_model_card
from .common import (LoopConfig, OptimConfig, RunDir, autocast, batch_indices, check_finite, distribute,
                     make_optimizer, progress_bar, setup_distributed, summary_writer)


@dataclass
class LossConfig:
    recon: Literal["l1", "l2"] = "l1"
    perceptual_weight: float = 0.0     # LPIPS weight; > 0 needs lpips_vgg and lpips_lin files
    lpips_vgg: str | None = None       # torchvision vgg16 state dict (.pth or .safetensors)
    lpips_lin: str | None = None       # lpips package's weights/v0.1/vgg.pth

    def __post_init__(self) -> None:
        if self.perceptual_weight > 0 and not (self.lpips_vgg and self.lpips_lin):
            raise ValueError("loss.perceptual_weight > 0 needs loss.lpips_vgg and loss.lpips_lin (weight files "
                             "you supply; nothing is downloaded)")


@dataclass
class GANConfig:
    weight: float = 0.0                # disc_weight; 0 = no discriminator
    start: int = 0                     # step at which the adversarial terms switch on
    n_layers: int = 3
    ndf: int = 64
    lr: float | None = None            # None = the autoencoder's lr


@dataclass
class TokenizerTrainConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: str = "fashion-mnist"        # default dataset spec; --data overrides


def _psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Batch PSNR (dB) of [-1, 1] images, i.e. data range 2 (= 255 on 8-bit images)."""
    mse = float((x.detach().float().clamp(-1, 1) - y.float()).pow(2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


# Instability checks (``GANHealth``); module constants rather than options, like the loss's own margins.
WIN_LOSS = 0.01          # a hinge loss below this means the discriminator separates real from fake outright
HEALTH_WINDOW = 100      # steps: how long a condition must last (and the window of the usage mean)
USAGE_COLLAPSE = 0.5     # codebook usage below this share of its best window mean is a collapse


class GANHealth:
    """Watches a GAN run for the two failures that quietly ruin it, and says so in one line, once each.

    * The discriminator wins outright: its hinge loss stays below ``win_loss`` for ``window`` steps in
      a row. Both hinge terms are then zero: it no longer learns, and the generator chases a fixed
      critic (remedies: a later ``gan.start``, a smaller ``gan.weight``, ``gan.ndf`` or ``gan.lr``).
    * The codebook usage collapses after the GAN starts: the mean batch usage over the last ``window``
      steps falls below ``collapse`` × the best such mean seen in the run. A GAN that pushes the encoder
      onto a few codes buys sharpness with the tokenizer's vocabulary.
    ``update`` returns the messages of this step (also printed to stderr, above the progress bar)."""

    def __init__(self, gan_start: int, window: int = HEALTH_WINDOW, win_loss: float = WIN_LOSS,
                 collapse: float = USAGE_COLLAPSE, say=None):
        if window < 1 or win_loss <= 0 or not 0 < collapse < 1:
            raise ValueError(f"GANHealth: window >= 1, win_loss > 0 and 0 < collapse < 1, got {window}, "
                             f"{win_loss}, {collapse}")
        self.gan_start, self.window, self.win_loss, self.collapse = gan_start, window, win_loss, collapse
        self.say = say if say is not None else _say
        self.usage: deque[float] = deque(maxlen=window)
        self.best_usage = 0.0
        self.low_d_steps = 0
        self.gan_steps = 0
        self.warned: set[str] = set()

    def update(self, step: int, usage: float, d_loss: float | None = None) -> list[str]:
        """Feed step ``step``'s batch usage and, once the GAN is on, the discriminator's hinge loss."""
        messages = []
        self.usage.append(usage)
        mean = sum(self.usage) / len(self.usage)
        if len(self.usage) == self.window:
            self.best_usage = max(self.best_usage, mean)
        if d_loss is None:
            return messages
        self.gan_steps += 1
        self.low_d_steps = self.low_d_steps + 1 if d_loss < self.win_loss else 0
        if self.low_d_steps >= self.window and "d_wins" not in self.warned:
            messages.append(f"vqgen: warning: the discriminator wins outright at step {step}: hinge loss below "
                            f"{self.win_loss} for {self.window} steps; it no longer learns (try a later gan.start, "
                            f"a smaller gan.weight, gan.ndf or gan.lr)")
            self.warned.add("d_wins")
        if (self.gan_steps >= self.window and mean < self.collapse * self.best_usage
                and "usage" not in self.warned):
            messages.append(f"vqgen: warning: codebook usage collapsed after the discriminator started (step "
                            f"{self.gan_start}): {mean:.1%} of the codes per batch over the last {self.window} "
                            f"steps, down from {self.best_usage:.1%} (try a smaller gan.weight or a later gan.start)")
            self.warned.add("usage")
        for m in messages:
            self.say(m)
        return messages


def _say(message: str) -> None:
    from tqdm.auto import tqdm
    tqdm.write(message, file=sys.stderr)


def train_tokenizer(cfg: TokenizerTrainConfig, out_dir: str | Path, data: str | None = None,
                    train_data: ImageDataset | None = None, progress: bool = True, workers: int = 0) -> VQTokenizer:
    """Train (or resume) a tokenizer into ``out_dir``; returns the trained model (unwrapped, on CPU).
    ``workers``: DataLoader processes decoding batches of a lazily read dataset (``vqgen.data.lazy``)."""
    run = RunDir(out_dir, cfg, kind="tokenizer")
    d = setup_distributed(cfg.loop.device)
    ckpt = run.prepare(d.is_main)
    ae = cfg.model.autoencoder
    if train_data is None:
        train_data = load_images(data or cfg.data, "train", ae.resolution, ae.in_channels, progress=progress and d.is_main,
                                 lazy=None)
    if tuple(train_data.image_shape) != (ae.in_channels, ae.resolution, ae.resolution):
        raise ConfigError(f"data images {tuple(train_data.image_shape)} do not match the model "
                          f"({ae.in_channels}, {ae.resolution}, {ae.resolution})")
    loop = cfg.loop
    if loop.batch_size % (d.world * loop.grad_accum):
        raise ConfigError(f"batch_size {loop.batch_size} must split over {d.world} ranks × {loop.grad_accum} micro-batches")

    torch.manual_seed(loop.seed)
    model = VQTokenizer(cfg.model).to(d.device)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, loop.max_steps)
    disc = d_opt = d_sched = None
    if cfg.gan.weight > 0:
        disc = PatchDiscriminator(ae.in_channels, cfg.gan.ndf, cfg.gan.n_layers).to(d.device)
        d_optim = OptimConfig(**{**vars(cfg.optim), "lr": cfg.gan.lr or cfg.optim.lr})
        # The discriminator's schedule starts when it does, at gan.start.
        d_opt, d_sched = make_optimizer(disc.parameters(), d_optim, max(1, loop.max_steps - cfg.gan.start))
    lpips = None
    if cfg.loss.perceptual_weight > 0:
        from ..tokenizer.lpips import LPIPS
        lpips = LPIPS.from_files(cfg.loss.lpips_vgg, cfg.loss.lpips_lin).to(d.device)

    parts = {"model": model, "optimizer": opt, "scheduler": sched}
    if disc is not None:
        parts.update(disc=disc, disc_optimizer=d_opt, disc_scheduler=d_sched)
    start, clock = run.restore(ckpt, parts, announce=d.is_main)
    ddp_model = distribute(model, d, loop.compile)
    ddp_disc = distribute(disc, d, loop.compile) if disc is not None else None

    writer = summary_writer(run.path, start if ckpt is not None else None, d.is_main)
    fixed = to_model_range(train_data.batch(range(min(16, len(train_data))))).to(d.device)  # shown in TensorBoard
    bar = progress_bar(loop.max_steps, start, progress and d.is_main, "tokenizer")
    health = GANHealth(cfg.gan.start, HEALTH_WINDOW, WIN_LOSS, USAGE_COLLAPSE) if disc is not None and d.is_main else None
    n_micro = loop.grad_accum
    batches = train_data.step_batches(  # step s's batch, decoded ahead by workers when read lazily
        lambda s: batch_indices(len(train_data), loop.batch_size, s, loop.seed, d.rank, d.world), start, loop.max_steps,
        workers)
    for step in run.steps(start, loop.max_steps):  # ends after the step on SIGTERM / SIGINT
        model.train()
        x = to_model_range(next(batches)).to(d.device, non_blocking=True)  # (b, C, H, W)
        gan_on = disc is not None and step >= cfg.gan.start

        # --- autoencoder + quantizer step -------------------------------------------------------
        opt.zero_grad(set_to_none=True)
        recons, logs = [], {"loss": 0.0, "recon": 0.0, "commit": 0.0, "gan_w": 0.0, "perplexity": 0.0, "usage": 0.0}
        for xm in x.chunk(n_micro):
            with autocast(d.device):
                xr, q = ddp_model(xm)  # (m, C, H, W)
                rec = reconstruction_loss(xm, xr.float(), cfg.loss.recon)
                nll = rec + (cfg.loss.perceptual_weight * lpips(xm, xr.float()).mean() if lpips is not None else 0.0)
                loss = nll + q.loss
                if gan_on:
                    g = generator_adv_loss(ddp_disc(xr))  # () −mean D(x̂)
                    lam = adaptive_weight(nll, g, model.decoder.last_layer)  # () λ, eq. 7
                    w = lam * cfg.gan.weight
                    loss = loss + w * g
                    logs["gan_w"] += float(w) / n_micro
                    for k, v in (("adaptive_weight", lam), ("g_adv", g)):
                        logs[k] = logs.get(k, 0.0) + float(v.detach()) / n_micro
            check_finite(loss.detach(), step, run.path)
            (loss / n_micro).backward()
            recons.append(xr.detach())
            logs["loss"] += float(loss.detach()) / n_micro
            logs["recon"] += float(rec.detach()) / n_micro
            logs["commit"] += float(q.commitment) / n_micro
            logs["perplexity"] += float(q.perplexity) / n_micro
            logs["usage"] += float(q.usage) / n_micro
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()

        # --- discriminator step (hinge loss) -----------------------------------------------------
        if gan_on:
            d_opt.zero_grad(set_to_none=True)
            for xm, xr in zip(x.chunk(n_micro), recons):
                with autocast(d.device):
                    real, fake = ddp_disc(xm), ddp_disc(xr)  # (m, 1, h, w) patch logits each
                    d_loss = hinge_d_loss(real, fake)
                check_finite(d_loss.detach(), step, run.path)
                (d_loss / n_micro).backward()
                for k, v in (("d_loss", d_loss), ("d_logits_real", real.mean()), ("d_logits_fake", fake.mean())):
                    logs[k] = logs.get(k, 0.0) + float(v.detach()) / n_micro
            d_opt.step()
            d_sched.step()

        done = step + 1
        logs["psnr"] = _psnr(torch.cat(recons), x)
        bar.update(1)
        post = {"loss": f"{logs['loss']:.4f}", "psnr": f"{logs['psnr']:.2f}", "usage": f"{logs['usage']:.2f}"}
        if disc is not None:  # when the discriminator starts, then its hinge loss
            post["disc"] = f"{logs['d_loss']:.3f}" if gan_on else f"from {cfg.gan.start}"
        bar.set_postfix(post)
        if health is not None:
            health.update(step, logs["usage"], logs.get("d_loss"))
        if writer is not None and (done % loop.log_every == 0 or done == loop.max_steps):
            for k, v in logs.items():
                writer.add_scalar(f"train/{k}", v, done)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
        if writer is not None and (done % loop.image_every == 0 or done == loop.max_steps):
            model.eval()
            with torch.no_grad():
                rec = model.reconstruct(fixed)
            pair = torch.cat([to_uint8(fixed), to_uint8(rec)], dim=0)  # originals above reconstructions
            writer.add_images("reconstructions", pair.cpu(), done, dataformats="NCHW")
        if run.checkpoint_due(done) and d.is_main:  # every save_every steps, after the last, or on a stop signal
            run.save(done, clock, parts, export=model.save_pretrained)
    bar.close()
    if writer is not None:
        writer.close()
    if ckpt is not None and start >= loop.max_steps and d.is_main:
        print(f"{run.path} is already trained to step {start}", flush=True)
    if d.is_main:  # README.md: what the run is, its data, figures and command (kept when found finished)
        write_model_card(run.path, model, data=train_data.source, overwrite=start < loop.max_steps)
    return model.cpu().eval()


# --- named presets --------------------------------------------------------------------------------
from ..tokenizer.autoencoder import AutoencoderConfig  # noqa: E402
from ..tokenizer.quantizer import QuantizerConfig  # noqa: E402


def _tiny() -> TokenizerTrainConfig:
    """Seconds on a CPU: for tests. 16×16 grey, f=4, 32 codes."""
    return TokenizerTrainConfig(
        model=TokenizerConfig(
            AutoencoderConfig(in_channels=1, resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                              attn_resolutions=(), mid_attention=False, z_channels=8, norm_groups=4),
            QuantizerConfig(codebook_size=32, code_dim=4, ema_decay=0.9, kmeans_init=True,
                            dead_code_threshold=0.05, l2_normalize=True)),
        optim=OptimConfig(lr=2e-3, warmup_steps=5),
        loop=LoopConfig(batch_size=16, max_steps=20, save_every=10, log_every=5, image_every=10),
        data="fashion-mnist")


def _fashion_mnist_model() -> AutoencoderConfig:
    return AutoencoderConfig(in_channels=1, resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                             attn_resolutions=(), mid_attention=False, z_channels=32, norm_groups=8)


def _fashion_mnist() -> TokenizerTrainConfig:
    """32×32 (28×28 padded), f=4 → 8×8 tokens, 512 l2-normalised 16-d codes with EMA updates,
    k-means init, dead-code restart and the rotation trick. Default budget fits in 10 minutes on a
    2-core CPU.

    Measured at equal budget (test PSNR): batch 64 × 1000 steps 25.8 dB, lr 2e-3 worse; batch 32 ×
    2000 steps 26.6 dB — at this scale more updates beat bigger batches.

    The quantizer against vector-quantize-pytorch's in this preset (benchmarks/quantizers.py; first
    look: 500 steps, seed 0, 2 000 test images, PSNR / SSIM / test perplexity): the library 24.02 dB /
    0.847 / 488; vqgen with restart threshold 0.03 (only codes with next to no use restarted) 23.75 / 0.859 /
    376 — the batch used ~40 % of the codes for the first 300 steps against the library's ~90 %;
    threshold 2 (restart a code whose running count per batch of 2 048 vectors falls below 2, half the
    mean count, as the library does) 23.83 / 0.853 / 484; rotation trick alone 23.79 / 0.857 / 382;
    both 23.93 / 0.845 / 486; both, with the restart fix (the batch's codes are looked up before the
    EMA update and restarts move them — before, a vector whose code was restarted in that step was
    handed a random encoder output) 23.99 / 0.857 / 490. Then, measured together on the full test split
    (docs/benchmarks.md): 3 seeds × 600 steps on this CPU 24.17 ± 0.14 dB / SSIM 0.864 against the
    library's 24.27 ± 0.17 / 0.871, still a little behind. Last change, the library's restart semantics
    in full: k-means sets the running counts to the cluster sizes (a count of 1 was below the threshold,
    so every code restarted at step 0 and the k-means was lost), restarts draw distinct batch vectors,
    and a restarted code's counts start at the threshold. 3 seeds × 2000 steps on one H200: 26.87 ±
    0.30 dB / 0.934, against 26.70 ± 0.30 / 0.930 before it and the library's 26.83 ± 0.27 / 0.933:
    this preset. (The first half alone, on 2 seeds × 600 steps on this CPU, had shown no clear gain:
    24.41 and 24.00 dB against 24.33 and 24.08.)"""
    return TokenizerTrainConfig(
        model=TokenizerConfig(
            _fashion_mnist_model(),
            QuantizerConfig(codebook_size=512, code_dim=16, ema_decay=0.99, kmeans_init=True,
                            dead_code_threshold=2.0, l2_normalize=True, rotation_trick=True)),
        loss=LossConfig(recon="l2"),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.05),
        loop=LoopConfig(batch_size=32, max_steps=2000, save_every=500, log_every=25, image_every=500),
        data="fashion-mnist")


def _fashion_mnist_plain() -> TokenizerTrainConfig:
    """The same preset with a plain taming-style quantizer: codebook loss, no EMA, no k-means init,
    no restarts, full-dimensional unnormalised codes. The baseline of benchmarks/tokenizer.py."""
    cfg = _fashion_mnist()
    cfg.model.quantizer = QuantizerConfig(codebook_size=512)
    return cfg


def _fashion_mnist_f8_nogan() -> TokenizerTrainConfig:
    """``fashion-mnist-f8`` without the discriminator: the VQ-VAE baseline at f=8 (4×4 = 16 tokens),
    ``fashion-mnist`` with one more encoder / decoder level, its quantizer, loss and optimiser as they are.
    1600 steps: the training time of ``fashion-mnist`` (2000 × 0.45 s) and of ``fashion-mnist-f8``,
    at 0.55 s/step (one thread of the busy 2-core CPU; ≤ 10 minutes with two)."""
    cfg = _fashion_mnist()  # built from it, so it follows changes of its quantizer settings
    cfg.model.autoencoder = replace(_fashion_mnist_model(), ch_mult=(1, 2, 2, 4))  # one more level: f = 8
    cfg.loop = replace(cfg.loop, max_steps=1600)
    return cfg


def _fashion_mnist_f8() -> TokenizerTrainConfig:
    """32×32 → 4×4 = 16 tokens (f=8) with the adversarial stage on: a VQ-GAN (Esser et al. 2020,
    https://arxiv.org/abs/2012.09841) at 4× fewer tokens than ``fashion-mnist``. No LPIPS (no weight
    files here): the discriminator is the only perceptual signal. A 2-layer PatchGAN with ndf 32 (6×6
    patch logits on 32×32; 0.67 s/step against 0.55 without it) from step 400 of 1400 (the training
    time of ``fashion-mnist-f8-nogan``'s 1600 steps), gan.weight 0.5, the discriminator at lr 2e-4.

    First tuning was short (600-step CPU runs, docs/vqgan.md): taming's weight 0.8 collapsed (the
    discriminator won outright, codebook usage halved), so 0.3. At full size on one H200
    (``benchmarks/vqgan_sweep.py``; single runs, the quantizer of commit 26298a0; judge FD of
    reconstructions / sharpness ratio, test split): no GAN 0.114 / 0.74; weight 0.3 0.149 / 0.83; 0.1
    0.126 / 0.75; 0.5 0.124 / 0.89; start 800 0.148 / 0.81; 3 layers × ndf 64 0.132 / 0.81. Hence 0.5.
    On this CPU at weight 0.5 (``benchmarks/vqgan.py`` and ``vqgan_sweep.py --only ...``): the discriminator
    at the autoencoder's lr 1e-3, seeds 0 and 1, 0.152 / 0.88 and 0.160 / 0.87; at lr 2e-4, seed 0 twice
    (1 and 2 threads), 0.128 / 0.87 and 0.153 / 0.81; no GAN 0.123 / 0.73 and 0.116 / 0.76. Hence lr 2e-4,
    better on average by a margin single runs scatter over. No GAN setting lowers the judge FD below no
    GAN: at 16 tokens most of that FD is lost content, not blur (``benchmarks/vqgan_why.py``, docs/vqgan.md)."""
    cfg = _fashion_mnist_f8_nogan()
    cfg.gan = GANConfig(weight=0.5, start=400, n_layers=2, ndf=32, lr=2e-4)
    cfg.loop = replace(cfg.loop, max_steps=1400)
    return cfg


def _shapes() -> TokenizerTrainConfig:
    """32×32 RGB ``shapes`` images, f=4 → 8×8 tokens of FSQ with levels 8·8·8 (512 codes; Mentzer et al.
    2023, https://arxiv.org/abs/2309.15505), an encoder normalised per position (``encoder_norm="channel"``),
    800 steps × 32 (0.31 s/step on 2 CPU threads).

    Why FSQ: stage 2 has to predict every token, and most of a ``shapes`` picture is plain background. The
    VQ codebook this preset had (512 l2-normalised 16-d codes, EMA, k-means init, dead-code restarts) spread
    that background over hundreds of codes: k-means and restarts put most codes in the dense background
    cluster, and each background vector shifted a little with every object in the picture, so the nearest
    code flipped (``benchmarks/token_entropy.py`` on the benchmark's tokenizer then: 270 distinct codes, 3.9
    bits, in the top-left cell, which is background in 8 of 9 pictures). FSQ's fixed grid of levels has no
    codes to crowd there: 153 codes, 2.9 bits.

    Why the per-position norm: with GroupNorm in the encoder every code depends on the whole picture (its
    statistics span it), and an object far away still changed 4.8 of the 9 top-left codes of the
    benchmark's tokenizer; the text-to-image model had to guess that dependence before drawing anything.
    Normalising each position on its own (ConvNeXt's LayerNorm, ``vqgen.layers.ChannelNorm``) leaves a code
    depending only on its receptive field. At 32×32 that field still spans most of the picture, but the
    convolutions learn to look near: 1.0 of 9 change, against 3.0 for the same run with GroupNorm. The
    decoder keeps GroupNorm, whose statistics never reach the tokens.

    ``python benchmarks/shapes_tokenizers.py --json`` (single runs at this budget; judged = every cell's
    shape, colour and size read right on the 1000 test images; mean per-cell token entropy): VQ 85.1 % and
    6.7 bits; FSQ 8·8·8 with GroupNorm 88.3 % and 4.1 bits; this preset 89.4 % and 3.3 bits; FSQ 5·5·5 (GroupNorm)
    86.9 % and 3.7 bits, FSQ 4·4·4 78.6 % and 3.1 bits; VQ without k-means and restarts collapses to 12 codes
    (41 %). The text-to-image model on this preset's tokens against the GroupNorm encoder's: at the demo's
    budget (the ``shapes`` text2img preset, 1000 steps, first 200 test captions, one run each) not better,
    single-object captions fully right 25 % / 44 % (one sample / CLIP's best of 8, guided) against 31 % /
    51 %; at the benchmark's (``shapes-long``, 4000 steps, all 1000 test captions) clearly better: 62 % /
    84.5 % against 48 % / 74 %, with position right 42 % of the time against 22 % (``benchmarks/text2img.py``).

    The encoder (ch 16, ch_mult 1,4,8), measured on earlier data with VQ: the fashion-mnist architecture (ch
    32, ch_mult 1,2,2, z 32) for 600 steps reconstructed 54 % fully correct (small crosses, squares and
    triangles blur into blobs); wider lower levels (ch_mult 1,2,4, z 64) for 1000 steps 93.5 %; ch 16,
    ch_mult 1,4,8 for 1000 steps 93.4 % at 12 % less time per step. L1 reconstruction learned slower than L2
    over the first 250 steps and was dropped."""
    cfg = _fashion_mnist()
    cfg.model.autoencoder = AutoencoderConfig(in_channels=3, resolution=32, ch=16, ch_mult=(1, 4, 8), num_res_blocks=1,
                                              attn_resolutions=(), mid_attention=False, z_channels=64, norm_groups=8,
                                              encoder_norm="channel")
    cfg.model.quantizer = QuantizerConfig(kind="fsq", fsq_levels=(8, 8, 8))
    cfg.loop = LoopConfig(batch_size=32, max_steps=800, save_every=200, log_every=25, image_every=200)
    cfg.data = "shapes"
    return cfg


def _imagenet_f16() -> TokenizerTrainConfig:
    """Taming's ImageNet VQGAN architecture (ch 128, ch_mult 1,1,2,2,4, attention at 16, 1024 codes)
    with its GAN settings (PatchGAN, disc_weight 0.8, start at 250k steps), Adam betas (0.5, 0.9).
    LPIPS needs weight files: set loss.perceptual_weight=1 and loss.lpips_vgg / loss.lpips_lin."""
    return TokenizerTrainConfig(
        model=TokenizerConfig(AutoencoderConfig(),
                              QuantizerConfig(codebook_size=1024, code_dim=8, ema_decay=0.99, kmeans_init=True,
                                              dead_code_threshold=0.01, l2_normalize=True)),
        loss=LossConfig(recon="l1"),
        gan=GANConfig(weight=0.8, start=250_000),
        optim=OptimConfig(lr=4.5e-6 * 12, betas=(0.5, 0.9), warmup_steps=0, min_lr_ratio=1.0),
        loop=LoopConfig(batch_size=12, max_steps=1_000_000, save_every=5000, log_every=50, image_every=2000),
        data="folder:imagenet/train")


def _imagenet_f16_16384() -> TokenizerTrainConfig:
    """Taming's ImageNet f16 VQGAN with 16384 codes (``vqgan_imagenet_f16_16384``): the ``imagenet-f16``
    architecture and quantizer with 16384 codes, and that model's GAN settings: a 2-layer PatchGAN from
    step 0 with disc_weight 0.75. No k-means init: a first batch (12 × 16 × 16 = 3072 vectors) holds
    fewer vectors than there are codes; the codes start random and dead-code restarts bring them in."""
    cfg = _imagenet_f16()
    cfg.model.quantizer.codebook_size = 16384
    cfg.model.quantizer.kmeans_init = False
    cfg.gan = GANConfig(weight=0.75, start=0, n_layers=2)
    return cfg


TOKENIZER_PRESETS = {
    "tiny": _tiny,
    "fashion-mnist": _fashion_mnist,
    "fashion-mnist-plain": _fashion_mnist_plain,
    "fashion-mnist-f8": _fashion_mnist_f8,
    "fashion-mnist-f8-nogan": _fashion_mnist_f8_nogan,
    "shapes": _shapes,
    "imagenet-f16": _imagenet_f16,
    "imagenet-f16-16384": _imagenet_f16_16384,
}
