"""Training the shapes judge (``vqgen.eval.shapes_judge``) on renders it makes itself.

The judge never sees a dataset file or a generated image: every batch is a fresh set of 1- or
2-object scenes drawn with ``random_scene`` from every colour–shape pair (the held-out pairs too, since
the judge must grade them) and rendered with random jitter. Batch ``s`` is a pure function of
(seed, s), so the data position is the step itself and a resumed run (``RunDir`` checkpoint: model,
optimiser, schedule, RNG) continues bit for bit. The loss is the sum of the per-cell cross-entropies of
the shape, colour and size heads, colour and size ignored (``-100``) in empty cells. Under ``torchrun``
each rank renders the global batch (milliseconds) and trains on its slice; DDP averages the gradients,
so any number of ranks follows the single-process run.

At the end the judge is scored on renders drawn from a separate random stream (fully-correct
accuracy, ``accuracy_on_renders``), on the held-out colour–shape pairs alone, and on the ``shapes``
test split; ``out_dir`` gets the judge (``config.json`` + ``model.safetensors``), ``train_config.json``,
``checkpoints/last.pt``, ``logs/`` and ``metrics.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shapes import (HELD_OUT, JITTER_STEPS, MAX_JITTER, SPLIT_SIZES, load_shapes, random_scene, render,
                           scene_targets)
from ..errors import ConfigError
from ..eval.shapes_judge import IGNORE, ShapesJudge, ShapesJudgeConfig, render_accuracy
from ..images import to_model_range
from .cards import write_model_card
from .common import (LoopConfig, OptimConfig, RunDir, check_finite, distribute, make_optimizer, optimizer_step,
                     progress_bar, setup_distributed, summary_writer)

TRAIN_STREAM, EVAL_STREAM, HELD_OUT_STREAM = 0, 1, 2  # independent random streams per seed


@dataclass
class ShapesJudgeTrainConfig:
    model: ShapesJudgeConfig = field(default_factory=ShapesJudgeConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=30,
                                                                   min_lr_ratio=0.02))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=64, max_steps=1500, save_every=500,
                                                                log_every=25))
    eval_renders: int = 2000  # held-out renders scored at the end (and as many per extra check)

    def __post_init__(self) -> None:
        if self.eval_renders < 1:
            raise ConfigError(f"shapes judge training: eval_renders must be >= 1, got {self.eval_renders}")


def _is_held_out(color: str, shape: str) -> bool:
    return (color, shape) in HELD_OUT


def render_scenes(rng: np.random.Generator, n: int, resolution: int,
                  allow: Callable[[str, str], bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random scenes of 1 or 2 objects, each jittered in its cell as in the ``shapes`` dataset
    (uniform within ``MAX_JITTER`` of its size): uint8 (n, 3, R, R) images and int64 (n, 9, 3) targets.

    ``allow(color, shape)`` (passed to ``random_scene``) restricts the pairs; None allows them all."""
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)  # (n, R, R, 3)
    targets = np.empty((n, 9, 3), dtype=np.int64)  # (n, 9, 3)
    for i in range(n):
        objects = random_scene(rng, int(rng.integers(1, 3)), allow=allow)
        limits = np.array([MAX_JITTER[o.size] for o in objects])[:, None]  # (k, 1)
        offsets = rng.integers(-limits, limits + 1, size=(len(objects), 2)) / JITTER_STEPS  # (k, 2) cell widths
        images[i] = render(objects, resolution, offsets.tolist())  # (R, R, 3)
        targets[i] = scene_targets(objects)  # (9, 3)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(targets)


def training_batch(cfg: ShapesJudgeTrainConfig, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """This rank's share of the batch of step ``step``, a pure function of (seed, step): uint8
    (b, 3, R, R) images, int64 (b, 9, 3) targets; b = B / world."""
    rng = np.random.default_rng([cfg.loop.seed, TRAIN_STREAM, step])
    images, targets = render_scenes(rng, cfg.loop.batch_size, cfg.model.resolution)  # the global batch
    return images[rank::world], targets[rank::world]


def judge_loss(logits: tuple[torch.Tensor, torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Sum over the shape, colour and size heads of the mean per-cell cross-entropy; colour and size
    targets of empty cells are ``-100`` and ignored. ``targets`` int64 (B, 9, 3)."""
    loss = logits[0].new_zeros(())
    for k, head in enumerate(logits):  # (B, 9, classes) each
        loss = loss + F.cross_entropy(head.flatten(0, 1), targets[:, :, k].flatten(), ignore_index=IGNORE)
    return loss


def evaluate_shapes_judge(judge: ShapesJudge, cfg: ShapesJudgeTrainConfig, progress: bool = False) -> dict:
    """Fully-correct accuracy on ``eval_renders`` fresh renders (a stream training never draws from), on
    as many renders of the held-out colour–shape pairs only, and on the first ``eval_renders`` images
    (at most its 1 000) of the ``shapes:0`` test split."""
    res = cfg.model.resolution
    images, targets = render_scenes(np.random.default_rng([cfg.loop.seed, EVAL_STREAM]), cfg.eval_renders, res)
    metrics = {"accuracy_on_renders": render_accuracy(judge, images, targets), "n_renders": cfg.eval_renders}
    images, targets = render_scenes(np.random.default_rng([cfg.loop.seed, HELD_OUT_STREAM]), cfg.eval_renders, res,
                                    allow=_is_held_out)
    metrics["accuracy_on_heldout_pair_renders"] = render_accuracy(judge, images, targets)
    test = load_shapes(split="test", resolution=res, n=min(cfg.eval_renders, SPLIT_SIZES["test"]), progress=progress)
    metrics["accuracy_on_test_split"] = render_accuracy(judge, test.images, test.targets)
    metrics["n_test_split"] = len(test)
    return metrics


def train_shapes_judge(cfg: ShapesJudgeTrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume) a shapes judge into ``out_dir``; returns the metrics written to ``metrics.json``."""
    run = RunDir(out_dir, cfg, kind="shapes-judge")
    d = setup_distributed(cfg.loop.device)
    loop = cfg.loop
    if loop.batch_size % (d.world * loop.grad_accum):
        raise ConfigError(f"batch_size {loop.batch_size} must split over {d.world} ranks × {loop.grad_accum} "
                          "micro-batches")
    ckpt = run.prepare(d.is_main)
    torch.manual_seed(loop.seed)
    model = ShapesJudge(cfg.model).to(d.device)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, loop.max_steps)
    parts = {"model": model, "optimizer": opt, "scheduler": sched}
    start, clock = run.restore(ckpt, parts, announce=progress and d.is_main)
    if start >= loop.max_steps and run.metrics_file.exists():
        run.release()
        if d.is_main:
            write_model_card(run.path, model, overwrite=False)  # README.md, when the run has none yet
        return run.finished_metrics(start, announce=progress and d.is_main)
    net = distribute(model, d, loop.compile)

    def loss_fn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return judge_loss(net(to_model_range(images)), targets)

    writer = summary_writer(run.path, start if ckpt is not None else None, progress and d.is_main)
    bar = progress_bar(loop.max_steps, start, progress and d.is_main, "shapes judge")
    loss_value = float("nan")
    model.train()
    for step in run.steps(start, loop.max_steps):  # ends after the step on SIGTERM / SIGINT
        images, targets = training_batch(cfg, step, d.rank, d.world)  # uint8 (b, 3, R, R), int64 (b, 9, 3)
        # zero_grad; per micro-batch autocast loss, finite check, backward; clip; optimiser and schedule step
        loss_value = optimizer_step(loss_fn, (images.to(d.device), targets.to(d.device)), loop.grad_accum, model, opt,
                                    sched, cfg.optim.grad_clip, d.device,
                                    check=lambda loss: check_finite(loss, step, run.path))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if writer is not None and (done % loop.log_every == 0 or done == loop.max_steps):
            writer.add_scalar("train/loss", loss_value, done)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
        if run.checkpoint_due(done) and d.is_main:  # every save_every steps, after the last, or on a stop signal
            run.save(done, clock, parts)
    bar.close()
    if writer is not None:
        writer.close()

    model.eval()
    train_seconds = clock.elapsed()
    metrics = {**evaluate_shapes_judge(model, cfg, progress and d.is_main), "steps": loop.max_steps,
               "final_train_loss": loss_value, "train_seconds": round(train_seconds, 2)}
    if not d.is_main:
        return metrics
    model.cpu().save_pretrained(run.path)
    run.write_metrics(metrics)
    write_model_card(run.path, model)  # README.md: what the run is, its figures and the command that made it
    if progress:
        print(f"shapes judge: {100 * metrics['accuracy_on_renders']:.2f} % fully correct on "
              f"{metrics['n_renders']} held-out renders, trained {train_seconds:.0f} s; saved to {run.path}")
    return metrics


def _tiny() -> ShapesJudgeTrainConfig:
    """Seconds on a CPU: smoke tests, not a useful judge."""
    model = ShapesJudgeConfig(widths=(8, 16), blocks=(1, 1), feature_dim=16, norm_groups=4, patch=4)
    return ShapesJudgeTrainConfig(model=model, optim=OptimConfig(lr=3e-3, warmup_steps=2),
                                  loop=LoopConfig(batch_size=16, max_steps=8, save_every=4, log_every=4),
                                  eval_renders=32)


def _shapes() -> ShapesJudgeTrainConfig:
    """The judge of the 32×32 ``shapes`` scenes: 1000 steps of 64 fresh renders, 0.3 M parameters.

    Measured (seed 0, current data): 100 % fully correct on 2 000 held-out renders and on held-out-pair
    renders, 99.9 % on the 1 000 ``shapes:0`` test images; 1500 steps: 100 % everywhere. On the earlier,
    more jittered data 1500 steps gave 99.55 % and 400 steps 73.5 %. About 55 ms/step on 2 threads of
    an idle 2-core CPU."""
    cfg = ShapesJudgeTrainConfig()
    cfg.loop.max_steps = 1000
    return cfg


SHAPES_JUDGE_PRESETS: dict[str, Callable[[], ShapesJudgeTrainConfig]] = {
    "tiny": _tiny,
    "shapes": _shapes,
}
