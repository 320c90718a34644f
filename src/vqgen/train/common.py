"""What every training stage shares: optimiser and schedule configs, the run directory, atomic
checkpoints with exact resume, deterministic data order, distribution, and logging.

Exact resume: the batch of step ``s`` is a pure function of (seed, s) — a permutation of the dataset
per epoch drawn from a generator seeded with (seed, epoch) — so the data position is the step itself.
A checkpoint holds model, optimisers, schedulers and RNG states; restoring it and continuing gives the
same weights, bit for bit on CPU, as a run that was never interrupted.

Distribution: launched by ``torchrun`` (which sets RANK / WORLD_SIZE / LOCAL_RANK), each rank takes
an equal slice of the global batch and gradients are averaged by DistributedDataParallel.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..config import from_dict, to_dict
from ..errors import ConfigError, TrainingDiverged
from ..hub import atomic_write_bytes


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1   # cosine decays to lr · min_lr_ratio at max_steps
    grad_clip: float = 1.0      # max global grad norm; 0 = no clipping

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or self.grad_clip < 0:
            raise ValueError(f"bad optimiser settings: {self}")


@dataclass
class LoopConfig:
    batch_size: int = 64        # global batch (all ranks, all accumulation steps together)
    grad_accum: int = 1         # micro-batches per optimiser step
    max_steps: int = 1000
    seed: int = 0
    save_every: int = 500       # checkpoint every N steps (and at the end)
    log_every: int = 10         # TensorBoard scalars
    image_every: int = 500      # TensorBoard image grids
    device: str = "auto"        # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_steps < 1 or self.save_every < 1:
            raise ValueError(f"bad loop settings: {self}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``max_steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(params, cfg: OptimConfig, max_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019) with warm-up + cosine schedule."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms are not decayed
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, max_steps, cfg.min_lr_ratio))
    return opt, sched


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is a ConfigError."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but CUDA is not available")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def setup_distributed(device: str = "auto") -> Dist:
    """Read torchrun's environment; initialise the process group when there are several ranks."""
    use_cuda = resolve_device(device).type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return Dist(rank, world, dev)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full fp32 on CPU (CPU bf16 is slow and changes numerics)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of this rank's share of step ``step``'s global batch: a pure function of (seed, step)."""
    if n < batch_size:
        raise ConfigError(f"dataset has {n} items, fewer than one batch of {batch_size}")
    per_epoch = n // batch_size  # the remainder of each epoch's permutation is dropped
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    batch = perm[pos * batch_size:(pos + 1) * batch_size]
    return batch[rank::world]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(loss: torch.Tensor, step: int, run_dir: Path) -> None:
    if not torch.isfinite(loss):
        ckpt = run_dir / "checkpoints" / "last.pt"
        kept = f"the last good checkpoint {ckpt} is kept" if ckpt.exists() else "no checkpoint had been written yet"
        raise TrainingDiverged(f"loss became {float(loss)} at step {step}; training stopped ({kept}). "
                               "Lower the learning rate or check the data.")


def optimizer_step(loss_fn: Callable[..., torch.Tensor], batch: tuple[torch.Tensor | None, ...], accum: int,
                   model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                   grad_clip: float, device: torch.device, check: Callable[[torch.Tensor], None]) -> float:
    """One optimiser step with gradient accumulation; returns the mean loss of the micro-batches.

    Each tensor of ``batch`` is cut into ``accum`` micro-batches along dim 0 (None stays None for every
    micro-batch). Per micro-batch: ``loss_fn(*micro)`` under :func:`autocast`, ``check`` on the detached
    loss (``check_finite``: it stops a diverged run), backward of ``loss / accum``. Then the global
    gradient norm of ``model`` is clipped at ``grad_clip`` (0 = no clipping) and the optimiser and the
    schedule step. Gradients are zeroed first.
    """
    opt.zero_grad(set_to_none=True)
    micro_batches = zip(*(t.chunk(accum) if t is not None else [None] * accum for t in batch))
    loss_sum = 0.0
    for micro in micro_batches:
        with autocast(device):
            loss = loss_fn(*micro)
        check(loss.detach())
        (loss / accum).backward()
        loss_sum += float(loss.detach()) / accum
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss_sum


class RunDir:
    """A run directory: ``train_config.json``, ``checkpoints/last.pt``, ``logs/`` and the exported model."""

    def __init__(self, path: str | Path, train_cfg: Any):
        self.path = Path(path)
        self.cfg = train_cfg
        self.ckpt = self.path / "checkpoints" / "last.pt"
        self.config_file = self.path / "train_config.json"
        self.metrics_file = self.path / "metrics.json"

    def prepare(self, is_main: bool = True) -> dict | None:
        """Return the checkpoint to resume from (or None); refuse a run made with another config."""
        if self.config_file.exists():
            saved = json.loads(self.config_file.read_text())
            now = to_dict(self.cfg)
            if saved != now:
                diff = sorted(_diff_keys(saved, now))
                raise ConfigError(f"{self.path} holds a run with a different config (differs at {diff}); "
                                  "resume with the same config or choose another --out")
        elif is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.config_file, lambda p: Path(p).write_text(json.dumps(to_dict(self.cfg), indent=2)))
        if self.ckpt.exists():
            return torch.load(self.ckpt, map_location="cpu", weights_only=True)
        return None

    def restore(self, ckpt: dict | None, parts: dict[str, Any], announce: bool) -> tuple[int, "Stopwatch"]:
        """Load every part (model, optimisers, schedulers: anything with load_state_dict) and the RNG
        from ``ckpt``; return the step to start from and the training clock."""
        if ckpt is None:
            return 0, Stopwatch()
        for key, part in parts.items():
            part.load_state_dict(ckpt[key])
        set_rng_state(ckpt["rng"])
        if announce:
            print(f"resumed {self.path} from step {ckpt['step']}", flush=True)
        return ckpt["step"], Stopwatch(ckpt.get("seconds", 0.0))

    def save(self, step: int, clock: "Stopwatch", parts: dict[str, Any],
             export: Callable[[Path], Any] | None = None, metrics: dict | None = None) -> None:
        """Checkpoint after ``step``: every part's state, the RNG and the training time, atomically; then
        ``export(run directory)`` (the model's ``save_pretrained``) and, when there are ``metrics``,
        ``metrics.json`` with the step."""
        state = {"step": step, "seconds": clock.elapsed(), "rng": rng_state(),
                 **{key: part.state_dict() for key, part in parts.items()}}
        atomic_write_bytes(self.ckpt, lambda p: torch.save(state, p))
        if export is not None:
            export(self.path)
        if metrics:
            self.write_metrics({"step": step, **metrics})

    def write_metrics(self, metrics: dict) -> None:
        """``metrics.json``: what the run measured."""
        self.metrics_file.write_text(json.dumps(metrics, indent=2))

    def read_metrics(self) -> dict:
        """``metrics.json`` as written, or {} when the run wrote none."""
        return json.loads(self.metrics_file.read_text()) if self.metrics_file.exists() else {}

    def finished_metrics(self, step: int, announce: bool = True) -> dict:
        """For a run found already trained to ``step``: say so (when ``announce``) and return what it
        measured (``metrics.json``, not recomputed)."""
        if announce:
            print(f"{self.path} is already trained to step {step}", flush=True)
        return self.read_metrics()


def load_train_config(cls: type, path: str | Path):
    return from_dict(cls, json.loads(Path(path).read_text()))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)


def summary_writer(run_dir: Path, purge_step: int | None, enabled: bool):
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir / "logs"), purge_step=purge_step)


class Stopwatch:
    """Training wall-clock time, carried across resumes in the checkpoint (``"seconds"``)."""

    def __init__(self, carried: float = 0.0):
        self.carried = carried
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.carried + time.perf_counter() - self.started

    @contextmanager
    def paused(self):
        """Time spent inside (evaluation) does not count as training time."""
        t = time.perf_counter()
        yield
        self.carried -= time.perf_counter() - t


def train_seconds(run_dir: str | Path) -> float:
    """Wall-clock training seconds recorded in a run's last checkpoint (all resumes together)."""
    ckpt = torch.load(Path(run_dir) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return float(ckpt["seconds"])
