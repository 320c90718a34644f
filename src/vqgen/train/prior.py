"""Stage 2 training: a GPT prior over pre-encoded token grids, in one readable loop.

Reads token shards only (``vqgen encode`` made them); the image encoder never runs here. Reports the
test negative log-likelihood in bits per token at the end (and every ``eval_every`` steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..data.tokens import TokenDataset, load_tokens
from ..errors import ConfigError
from ..prior.gpt import GPTPrior, PriorConfig
from ..prior.likelihood import bits_per_token
from ..prior.presets import PRESETS as MODEL_PRESETS
from .cards import write_model_card
from .common import (Dist, LoopConfig, OptimConfig, RunDir, batch_indices, check_finite, checkpoint_parts, distribute,
                     gather_parts, is_sharded, make_optimizer, optimizer_step, progress_bar, reshard, setup_distributed,
                     shard, summary_writer)


@dataclass
class PriorTrainConfig:
    model: PriorConfig = field(default_factory=MODEL_PRESETS["tiny"])
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.01))
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval_every: int = 0            # test bits/token every N steps (0 = only at the end)
    tokens: str = ""               # token directory; --tokens overrides


def _check_match(cfg: PriorConfig, data: TokenDataset) -> None:
    if tuple(cfg.grid) != data.grid or cfg.vocab_size != data.vocab_size:
        raise ConfigError(f"prior expects grid {tuple(cfg.grid)} / vocabulary {cfg.vocab_size}, but the tokens are "
                          f"grid {data.grid} / vocabulary {data.vocab_size}; set model.grid / model.vocab_size")
    if cfg.num_classes and (data.labels is None or int(data.labels.max()) >= cfg.num_classes):
        raise ConfigError(f"a class-conditional prior ({cfg.num_classes} classes) needs labelled tokens in range")


def train_prior(cfg: PriorTrainConfig, out_dir: str | Path, tokens: str | None = None,
                train_data: TokenDataset | None = None, test_data: TokenDataset | None = None,
                progress: bool = True) -> tuple[GPTPrior, dict]:
    """Train (or resume) a prior into ``out_dir``; returns (model on CPU, metrics). With ``loop.fsdp`` among
    several ranks, rank 0 returns the whole model and the other ranks their shards of it."""
    if tokens:
        cfg.tokens = tokens
    run = RunDir(out_dir, cfg, kind="prior")
    d = setup_distributed(cfg.loop.device)
    ckpt = run.prepare(d.is_main)
    if train_data is None:
        if not cfg.tokens:
            raise ConfigError("no token directory: pass --tokens TOKENS_DIR (made by `vqgen encode`)")
        train_data = load_tokens(cfg.tokens, "train")
        test_path = Path(cfg.tokens) / "test" / "done.json"
        test_data = load_tokens(cfg.tokens, "test") if test_path.exists() else None
    _check_match(cfg.model, train_data)
    loop = cfg.loop
    if loop.batch_size % (d.world * loop.grad_accum):
        raise ConfigError(f"batch_size {loop.batch_size} must split over {d.world} ranks × {loop.grad_accum} micro-batches")

    torch.manual_seed(loop.seed)
    model = GPTPrior(cfg.model).to(d.device)
    if loop.fsdp and d.world > 1:  # before the optimiser, which must hold the shards
        shard_prior(model, d)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, loop.max_steps)
    parts = checkpoint_parts(model, opt, sched)  # FSDP: full state dicts in and out, as DDP's
    start, clock = run.restore(ckpt, parts, announce=d.is_main)
    # DDP all-reduces gradients of what runs through its forward(): run the loss (with condition
    # dropout) inside it.
    loss_fn = distribute(_Loss(model), d, loop.compile)
    conditional = cfg.model.num_classes > 0

    def evaluate() -> dict:
        if test_data is None:
            return {}
        bits = bits_per_token(model, test_data.tokens, test_data.labels, device=d.device)
        reshard(model)
        return {"test_bits_per_token": bits}

    writer = summary_writer(run.path, start if ckpt is not None else None, d.is_main)
    bar = progress_bar(loop.max_steps, start, progress and d.is_main, "prior")
    metrics: dict = {}
    for step in run.steps(start, loop.max_steps):  # ends after the step on SIGTERM / SIGINT
        model.train()
        idx = batch_indices(len(train_data), loop.batch_size, step, loop.seed, d.rank, d.world)
        toks = train_data.tokens[idx].flatten(1).to(d.device)  # (b, HW)
        cond = train_data.labels[idx].to(d.device) if conditional else None
        # zero_grad; per micro-batch autocast loss, finite check, backward; clip; optimiser and schedule step
        loss_sum = optimizer_step(loss_fn, (toks, cond), loop.grad_accum, model, opt, sched, cfg.optim.grad_clip,
                                  d.device, check=lambda loss: check_finite(loss, step, run.path))
        done = step + 1
        bar.update(1)
        bar.set_postfix(bits=f"{loss_sum / math.log(2):.3f}")
        if writer is not None and (done % loop.log_every == 0 or done == loop.max_steps):
            writer.add_scalar("train/bits_per_token", loss_sum / math.log(2), done)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
        if cfg.eval_every and done % cfg.eval_every == 0 and done != loop.max_steps:
            with clock.paused():
                metrics = evaluate()
            if writer is not None and metrics:
                writer.add_scalar("test/bits_per_token", metrics["test_bits_per_token"], done)
        if done == loop.max_steps:
            with clock.paused():
                metrics = evaluate()
            if writer is not None and metrics:
                writer.add_scalar("test/bits_per_token", metrics["test_bits_per_token"], done)
        if run.checkpoint_due(done):  # every save_every steps, after the last, or on a stop signal
            saved = gather_parts(parts, partial(GPTPrior, cfg.model))  # every rank: FSDP gathers to rank 0
            if d.is_main:
                run.save(done, clock, saved, export=saved["model"].save_pretrained, metrics=metrics)
            del saved  # under FSDP, rank 0 keeps no whole copy between checkpoints
    bar.close()
    if writer is not None:
        writer.close()
    full = gather_parts(parts, partial(GPTPrior, cfg.model))  # the parts themselves; FSDP: gathered again
    trained = full["model"]  # the model itself; under FSDP, on rank 0, a whole copy
    if start >= loop.max_steps and d.is_main:  # exported again when only the sampling defaults changed
        metrics = run.finished_metrics(start, clock=clock, parts=full, export=trained.save_pretrained)
    if d.is_main:  # README.md: what the run is, its data, figures and command (kept when found finished)
        write_model_card(run.path, trained, overwrite=start < loop.max_steps or bool(run.sampling_changed))
    return (trained if is_sharded(trained) else trained.cpu()).eval(), metrics


def shard_prior(model: GPTPrior, d: Dist) -> None:
    """``loop.fsdp``: every transformer block a unit of FSDP, the rest in the root; ``loss`` (which runs
    the network without ``forward``) gathers the root's parameters as ``forward`` does."""
    shard(model, list(model.blocks), d, forward_methods=("loss",))


class _Loss(torch.nn.Module):
    def __init__(self, model: GPTPrior):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.model.loss(tokens, cond)


# --- named presets --------------------------------------------------------------------------------

def _tiny() -> PriorTrainConfig:
    return PriorTrainConfig(model=MODEL_PRESETS["tiny"](), optim=OptimConfig(lr=3e-3, warmup_steps=5),
                            loop=LoopConfig(batch_size=16, max_steps=20, save_every=10, log_every=5))


def _fashion_mnist_class() -> PriorTrainConfig:
    """Class-conditional prior on the fashion-mnist tokenizer's 8×8 tokens: 6 layers × 256, batch 32 ×
    1500 steps, about 11 minutes on 2 CPU cores (0.45 s/step measured; budget ≤ 15 min)."""
    return PriorTrainConfig(model=MODEL_PRESETS["fashion-mnist-class"](),
                            optim=OptimConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, warmup_steps=100,
                                              min_lr_ratio=0.1),
                            loop=LoopConfig(batch_size=32, max_steps=1500, save_every=500, log_every=25))


def _fashion_mnist_pixels() -> PriorTrainConfig:
    """Image GPT baseline over 28×28 palette indices; the same transformer and trainer."""
    cfg = _fashion_mnist_class()
    cfg.model = MODEL_PRESETS["fashion-mnist-pixels"]()
    return cfg


def _imagenet_cin_300m() -> PriorTrainConfig:
    """The ~0.3 B class-conditional ImageNet prior (``prior.presets.imagenet_cin_300m``) on GPUs: global
    batch 256 sequences of 256 tokens, AdamW lr 3e-4 (GPT-3 medium's, Brown et al. 2020), 5000 warm-up
    steps, bf16 autocast. Not trained here: docs/gpu.md has its size and estimated memory;
    benchmarks/gpu.py measures its speed on a GPU."""
    return PriorTrainConfig(model=MODEL_PRESETS["imagenet-cin-300m"](),
                            optim=OptimConfig(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=5000,
                                              min_lr_ratio=0.1),
                            loop=LoopConfig(batch_size=256, max_steps=300_000, save_every=5000, log_every=50))


PRIOR_PRESETS = {
    "tiny": _tiny,
    "fashion-mnist-class": _fashion_mnist_class,
    "fashion-mnist-pixels": _fashion_mnist_pixels,
    "imagenet-cin-300m": _imagenet_cin_300m,
}
