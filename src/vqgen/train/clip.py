"""Training the CLIP-style reranker on captioned images, in one readable loop.

Step 0 fits the byte-level BPE caption tokenizer on the training captions and saves it in the run
directory (``tokenizer.json``); a resumed run reloads it, never retrains it. Then the symmetric
contrastive loss of CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) runs on the shared
machinery of ``train/common.py`` (exact resume, deterministic batches, TensorBoard). At the end,
``metrics.json`` holds the in-batch image→text top-1 accuracy on the first ``eval_images`` test
images (batches of ``loop.batch_size``; a pick counts as right when its caption is the true one,
word for word) next to the chance level of that test.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import ImageDataset, load_images, splits_of
from ..errors import ConfigError, DataError
from ..hub import check_model_files
from ..images import to_model_range
from ..rerank.clip import ClipConfig, ClipModel, check_tokenizer, contrastive_loss
from ..text.bpe import TOKENIZER_FILE, CaptionTokenizer
from .cards import write_model_card
from .common import (LoopConfig, OptimConfig, RunDir, batch_indices, check_finite, distribute, make_optimizer,
                     optimizer_step, progress_bar, setup_distributed, summary_writer)


@dataclass
class ClipTrainConfig:
    model: ClipConfig = field(default_factory=ClipConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=50))
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: str = "shapes"           # dataset spec with captions; --data overrides
    bpe_vocab_size: int = 512      # BPE size fitted at step 0; at most model.vocab_size
    eval_images: int = 512         # test images for the final retrieval accuracy

    def __post_init__(self) -> None:
        if self.bpe_vocab_size > self.model.vocab_size:
            raise ConfigError(f"bpe_vocab_size {self.bpe_vocab_size} exceeds model.vocab_size {self.model.vocab_size}: "
                              "the text embedding must cover every caption id")
        if self.eval_images < 1:
            raise ConfigError(f"eval_images must be >= 1, got {self.eval_images}")


def _captions(data: ImageDataset, what: str) -> list[str]:
    if data.captions is None:
        raise DataError(f"{what} data {data.source or ''!r} has no captions: CLIP trains on captioned images "
                        "(e.g. the shapes dataset)")
    return list(data.captions)  # a lazy dataset holds them in a compact StringArray


def _encode(tokenizer: CaptionTokenizer, captions: list[str], max_len: int, what: str) -> torch.Tensor:
    ids, truncated = tokenizer.encode(captions, max_len)  # (N, L)
    if truncated:
        warnings.warn(f"{truncated} of {len(captions)} {what} captions are longer than model.max_len={max_len} "
                      "ids and were truncated", stacklevel=3)
    return ids


def in_batch_hits(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, B) image→text logits, (B, L) caption ids → bool (B,): image i picked a caption equal to its own."""
    pick = logits.argmax(dim=1)  # (B,)
    return (ids[pick] == ids).all(dim=1)  # (B,)


@torch.inference_mode()
def retrieval_accuracy(model: ClipModel, images: torch.Tensor, ids: torch.Tensor, batch_size: int,
                       device: str | torch.device = "cpu") -> dict:
    """In-batch image→text top-1 accuracy over consecutive batches, and its chance level (guessing
    uniformly among the batch's captions; duplicates of the true caption count as right)."""
    was = model.training
    model.eval()
    hits, chance = 0.0, 0.0
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i:i + batch_size].to(device))  # (b, C, H, W)
        t = ids[i:i + batch_size].to(device)  # (b, L)
        hits += float(in_batch_hits(model.logits(x, t), t).sum())
        same = (t[:, None, :] == t[None, :, :]).all(-1)  # (b, b) caption i equals caption j
        chance += float(same.float().mean(dim=1).sum())
    model.train(was)
    return {"test_retrieval_top1": hits / len(images), "test_retrieval_chance": chance / len(images),
            "test_images": len(images), "eval_batch": min(batch_size, len(images))}


def train_clip(cfg: ClipTrainConfig, out_dir: str | Path, data: str | None = None,
               train_data: ImageDataset | None = None, test_data: ImageDataset | None = None,
               progress: bool = True) -> tuple[ClipModel, dict]:
    """Train (or resume) a CLIP reranker into ``out_dir``; returns (model on CPU with its tokenizer, metrics).

    ``train_data`` / ``test_data`` (captioned ``ImageDataset``) replace loading ``cfg.data``; without
    test data there is no accuracy in the metrics.
    """
    if data:
        cfg.data = data
    run = RunDir(out_dir, cfg, kind="clip")
    d = setup_distributed(cfg.loop.device)
    ckpt = run.prepare(d.is_main)
    mc, loop = cfg.model, cfg.loop
    if train_data is None:
        # Past IN_MEMORY_MAX_BYTES of decoded pixels a folder-like set is read lazily, a batch at a time.
        train_data = load_images(cfg.data, "train", mc.resolution, mc.channels, progress=progress and d.is_main,
                                 lazy=None)
        if "test" in splits_of(cfg.data):  # a folder-like spec has no held-out split to measure on
            test_data = load_images(cfg.data, "test", mc.resolution, mc.channels, progress=False)
    for what, ds in (("training", train_data), ("test", test_data)):
        if ds is not None and tuple(ds.image_shape) != (mc.channels, mc.resolution, mc.resolution):
            raise ConfigError(f"the model takes ({mc.channels}, {mc.resolution}, {mc.resolution}) images, but the "
                              f"{what} images are {tuple(ds.image_shape)}; set model.channels / model.resolution")
    captions = _captions(train_data, "training")
    if loop.batch_size % (d.world * loop.grad_accum):
        raise ConfigError(f"batch_size {loop.batch_size} must split over {d.world} ranks × {loop.grad_accum} micro-batches")

    # The caption tokenizer: fitted once at step 0, reloaded (never refitted) on resume.
    if ckpt is None:
        tokenizer = CaptionTokenizer.train(captions, cfg.bpe_vocab_size)
        if d.is_main:
            tokenizer.save(run.path)
    else:
        check_model_files(run.path)  # tokenizer.json against the checksum the exported model recorded
        tokenizer = CaptionTokenizer.load(run.path / TOKENIZER_FILE)
    check_tokenizer(mc, tokenizer, run.path)
    train_ids = _encode(tokenizer, captions, mc.max_len, "training")  # (N, L)
    test_ids = None
    if test_data is not None:
        n_eval = min(cfg.eval_images, len(test_data))
        test_images = test_data.batch(range(n_eval))  # (n, C, H, W) uint8
        test_ids = _encode(tokenizer, _captions(test_data, "test")[:n_eval], mc.max_len, "test")  # (n, L)

    torch.manual_seed(loop.seed)
    model = ClipModel(mc).to(d.device)
    model.tokenizer = tokenizer
    opt, sched = make_optimizer(model.parameters(), cfg.optim, loop.max_steps)
    parts = {"model": model, "optimizer": opt, "scheduler": sched}
    start, clock = run.restore(ckpt, parts, announce=d.is_main)
    # DDP all-reduces gradients of what runs through its forward(); negatives are this rank's slice.
    loss_fn = distribute(_Loss(model), d, loop.compile)

    def evaluate() -> dict:
        if test_ids is None:
            return {}
        return retrieval_accuracy(model, test_images, test_ids, loop.batch_size, device=d.device)

    writer = summary_writer(run.path, start if ckpt is not None else None, d.is_main)
    bar = progress_bar(loop.max_steps, start, progress and d.is_main, "clip")
    metrics: dict = {}
    for step in run.steps(start, loop.max_steps):  # ends after the step on SIGTERM / SIGINT
        model.train()
        idx = batch_indices(len(train_data), loop.batch_size, step, loop.seed, d.rank, d.world)
        x = to_model_range(train_data.batch(idx).to(d.device))  # (b, C, H, W)
        ids = train_ids[idx].to(d.device)  # (b, L)
        hits: list[float] = []

        def micro_loss(xm: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:  # the loss; counts the batch's hits
            loss, logits = loss_fn(xm, tm)
            hits.append(float(in_batch_hits(logits.detach(), tm).float().sum()))
            return loss

        # zero_grad; per micro-batch autocast loss, finite check, backward; clip; optimiser and schedule step
        loss_sum = optimizer_step(micro_loss, (x, ids), loop.grad_accum, model, opt, sched, cfg.optim.grad_clip,
                                  d.device, check=lambda loss: check_finite(loss, step, run.path))
        done = step + 1
        acc = sum(hits) / len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", acc=f"{acc:.2f}")
        if writer is not None and (done % loop.log_every == 0 or done == loop.max_steps):
            writer.add_scalar("train/loss", loss_sum, done)
            writer.add_scalar("train/retrieval_top1", acc, done)
            writer.add_scalar("train/logit_scale", float(model.scale().detach()), done)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
        if done == loop.max_steps:
            with clock.paused():
                metrics = evaluate()
            metrics["train_seconds"] = clock.elapsed()
            if writer is not None and "test_retrieval_top1" in metrics:
                writer.add_scalar("test/retrieval_top1", metrics["test_retrieval_top1"], done)
        if run.checkpoint_due(done) and d.is_main:  # every save_every steps, after the last, or on a stop signal
            run.save(done, clock, parts, export=model.save_pretrained, metrics=metrics)
    bar.close()
    if writer is not None:
        writer.close()
    if start >= loop.max_steps and d.is_main:
        metrics = run.finished_metrics(start)
    if d.is_main:  # README.md: what the run is, its data, figures and command (kept when found finished)
        write_model_card(run.path, model, data=train_data.source, overwrite=start < loop.max_steps)
    model = model.cpu().eval()
    return model, metrics


class _Loss(torch.nn.Module):
    def __init__(self, model: ClipModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.logits(x, ids)  # (b, b)
        return contrastive_loss(logits), logits


# --- named presets --------------------------------------------------------------------------------

def _tiny() -> ClipTrainConfig:
    """Trains in about a second: for tests."""
    model = ClipConfig(resolution=16, widths=(8, 16), blocks=(1, 1), norm_groups=4, vocab_size=300, max_len=12,
                       n_layer=1, n_head=2, n_embd=32, embed_dim=32)
    return ClipTrainConfig(model=model, optim=OptimConfig(lr=3e-3, warmup_steps=5), bpe_vocab_size=300,
                           loop=LoopConfig(batch_size=16, max_steps=20, save_every=10, log_every=5),
                           eval_images=32)


def _shapes() -> ClipTrainConfig:
    """The shapes dataset at 32×32 within about 2 minutes on 2 CPU threads."""
    model = ClipConfig(resolution=32, widths=(32, 64, 64), blocks=(1, 1, 1), norm_groups=8, patch=2, vocab_size=512,
                       max_len=24, n_layer=2, n_head=4, n_embd=64, embed_dim=64)
    return ClipTrainConfig(model=model, optim=OptimConfig(lr=2e-3, weight_decay=0.05, warmup_steps=50),
                           bpe_vocab_size=512, loop=LoopConfig(batch_size=64, max_steps=500, save_every=250,
                                                               log_every=20),
                           eval_images=512)


CLIP_PRESETS = {
    "tiny": _tiny,
    "shapes": _shapes,
}
