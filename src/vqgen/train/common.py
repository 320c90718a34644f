"""What every training stage shares: optimiser and schedule configs, the run directory, atomic
checkpoints with exact resume, deterministic data order, distribution, and logging.

Exact resume: the batch of step ``s`` is a pure function of (seed, s) — a permutation of the dataset
per epoch drawn from a generator seeded with (seed, epoch) — so the data position is the step itself.
A checkpoint holds model, optimisers, schedulers and RNG states; restoring it and continuing gives the
same weights, bit for bit on CPU, as a run that was never interrupted.

Distribution: launched by ``torchrun`` (which sets RANK / WORLD_SIZE / LOCAL_RANK), each rank takes
an equal slice of the global batch and gradients are averaged by DistributedDataParallel
(:func:`distribute`); rank 0 writes the checkpoints and every rank resumes from them.

Sharding (``loop.fsdp``, prior and text2img): each transformer block and the root module are
sharded over the ranks with FSDP2 (:func:`shard`) instead of replicated by DDP; checkpoints stay full
state dicts written by rank 0, the same as DDP's, gathered and scattered through
``torch.distributed.checkpoint.state_dict`` (:func:`checkpoint_parts`, :func:`gather_parts`), so a run
resumes with or without sharding.

GPUs: bf16 autocast (:func:`autocast`), TF32 matmuls (:func:`setup_distributed`), fused AdamW
(:func:`make_optimizer`) on CUDA, and ``loop.compile`` (``torch.compile``) anywhere.

Faults (``RunDir``): one process at a time trains into a run directory (an OS file lock, released by
the kernel when its holder dies, so it never goes stale); checkpoints carry a checksum and the one
before the newest is kept, so a damaged or half-written ``last.pt`` costs at most ``save_every``
steps; SIGTERM / SIGINT end the loop after the current step with a checkpoint written; a run may be
continued with a larger ``loop.max_steps``, and every other change of config is refused.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from ..config import diff_keys, from_dict, to_dict
from ..errors import (CheckpointError, ConfigError, RunInUse, TrainingDiverged, TrainingInterrupted, VqgenError,
                      WriteError)
from ..hub import TMP_SUFFIX, atomic_write_bytes, first_line, read_json, read_payload, state_digest


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
    compile: bool = False       # torch.compile what the loop calls (https://pytorch.org/docs/stable/torch.compiler.html)
    fsdp: bool = False          # shard blocks and root over the ranks with FSDP2 (prior, text2img; no-op on one rank)

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
    opt = adamw(decay_groups(params, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, max_steps, cfg.min_lr_ratio))
    return opt, sched


def decay_groups(params, weight_decay: float) -> list[dict]:
    """Two parameter groups: weight decay on matrices and kernels (ndim ≥ 2), none on biases and norms."""
    params = list(params)
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def adamw(groups: list[dict], **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused into one CUDA kernel per step when every parameter is on a GPU
    (https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html, ``fused``); the default
    (foreach) implementation elsewhere."""
    on_gpu = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, fused=on_gpu or None, **kwargs)


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
    """Read torchrun's environment; initialise the process group when there are several ranks (NCCL on
    GPUs, gloo on CPUs). On CUDA, float32 matmuls and convolutions run on TF32 tensor cores."""
    use_cuda = resolve_device(device).type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
        enable_tf32()
    return Dist(rank, world, dev)


def enable_tf32() -> None:
    """TF32 for what runs in float32 on an Ampere or newer GPU (what bf16 autocast leaves in fp32): a
    10-bit mantissa, ~8× the fp32 matmul rate (https://pytorch.org/docs/stable/notes/cuda.html#tf32-on-ampere)."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def distribute(module: torch.nn.Module, d: Dist, compile: bool = False) -> torch.nn.Module:
    """What a loop calls in place of ``module``: wrapped in DistributedDataParallel among several ranks
    (gradients all-reduced during backward; run the whole loss inside it), then compiled with
    ``torch.compile`` when asked (``loop.compile``). ``module`` itself is what checkpoints save. A
    module holding parts sharded by :func:`shard` is not wrapped: FSDP reduces its gradients itself."""
    if d.world > 1 and not is_sharded(module):
        from torch.nn.parallel import DistributedDataParallel as DDP
        module = DDP(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return torch.compile(module) if compile else module


# --- sharded training (loop.fsdp) -------------------------------------------------------------------

# Model kinds whose trainers shard with FSDP: the transformer stages.
FSDP_KINDS = frozenset({"prior", "text2img"})
_FULL = dict(full_state_dict=True, cpu_offload=True)  # whole tensors, on the CPU of rank 0 only


def shard(model: torch.nn.Module, units: list[torch.nn.Module], d: Dist,
          forward_methods: tuple[str, ...] = ()) -> None:
    """Shard ``model`` over the ``d.world`` ranks in place with FSDP2 (``fully_shard``, Zhao et al. 2023,
    https://arxiv.org/abs/2304.11277; https://pytorch.org/docs/stable/distributed.fsdp.fully_shard.html):
    each of ``units`` — the transformer blocks, and a block's part that runs outside the block's forward
    (listed before the block) — is one unit: its parameters are all-gathered just before its forward
    and freed after it, again in backward; ``model`` is the root holding the rest (embeddings, final
    norm, head). Each rank keeps 1/world of every parameter, gradient and optimiser moment; gradients are averaged
    over the ranks (reduce-scatter), as DDP would. Build the optimiser afterwards: it must hold the
    shards. ``forward_methods``: methods of ``model`` other than ``forward`` that run the network
    (the prior's ``loss``), so that they gather the root's parameters too. Needs a process group
    (``setup_distributed`` starts one among several ranks)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    mesh = init_device_mesh(d.device.type, (d.world,))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name in forward_methods:
        register_fsdp_forward_method(model, name)


def _fsdp_module() -> type | None:
    """FSDP's module class, or None when FSDP was never imported — then nothing is sharded, and runs
    without it do not pay the second its import takes."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp.FSDPModule if fsdp is not None else None


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether ``module`` or one of its submodules was sharded by :func:`shard`."""
    fsdp_module = _fsdp_module()
    return fsdp_module is not None and any(isinstance(m, fsdp_module) for m in module.modules())


def reshard(model: torch.nn.Module) -> None:
    """After a forward outside training (evaluation): FSDP's root keeps its parameters gathered after
    forward (backward would need them at once), so they are put back into shards, which the next step
    and the checkpoint's state dicts expect. Nothing to do for a model that is not sharded."""
    fsdp_module = _fsdp_module()
    if fsdp_module is not None and isinstance(model, fsdp_module):
        model.reshard()


def checkpoint_parts(model: torch.nn.Module, opt: torch.optim.Optimizer,
                     sched: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The parts a loop gives ``RunDir.restore`` (and, through :func:`gather_parts`, ``RunDir.save``):
    model, optimiser and schedule themselves — or, for a model sharded by :func:`shard`, stand-ins whose
    ``load_state_dict`` takes the full state dicts of a checkpoint (what DDP and single-process runs
    write) and gives every rank its shards. Loading is then a collective: every rank restores."""
    if not is_sharded(model):
        return {"model": model, "optimizer": opt, "scheduler": sched}
    return {"model": _ShardedModel(model), "optimizer": _ShardedOptimizer(model, opt), "scheduler": sched}


def gather_parts(parts: dict[str, Any], build: Callable[[], torch.nn.Module]) -> dict[str, Any]:
    """What ``RunDir.save`` writes: ``parts`` themselves, or — sharded by :func:`shard` — the full model
    and optimiser states gathered now (a collective: every rank calls it; rank 0 receives them, on the
    CPU). On rank 0 the ``"model"`` is then a plain module made by ``build`` holding the whole trained
    weights (what ``save_pretrained``, the model card and the trainer's result use); on the other ranks
    it is the sharded model itself."""
    if not isinstance(parts["model"], _ShardedModel):
        return parts
    state = parts["model"].state_dict()
    held = {key: _Held(part.state_dict()) if isinstance(part, _ShardedOptimizer) else part
            for key, part in parts.items()}
    if not state:  # not rank 0: cpu_offload leaves the other ranks nothing
        held["model"] = parts["model"].model
        return held
    with torch.random.fork_rng(devices=[]):  # a new module's initial weights must not move the training RNG
        plain = build()
    plain.load_state_dict(state)
    held["model"] = plain
    return held


class _ShardedModel:
    """A sharded model as a checkpoint part: full state dicts in and out
    (``torch.distributed.checkpoint.state_dict``; collectives)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(self.model, options=StateDictOptions(**_FULL))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))


class _ShardedOptimizer:
    """The optimiser of a sharded model as a checkpoint part. Its full state dict is the one
    ``torch.optim`` itself writes — parameters numbered in the order of the parameter groups — so the
    checkpoints of sharded and unsharded runs are the same; ``torch.distributed.checkpoint`` names the
    parameters instead, and the two are translated here."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer):
        self.model, self.opt = model, opt
        names = {id(p): name for name, p in model.named_parameters()}
        self.names = [names[id(p)] for group in opt.param_groups for p in group["params"]]  # index → name

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        state = get_optimizer_state_dict(self.model, self.opt, options=StateDictOptions(**_FULL))
        if not state:
            return state
        index = {name: i for i, name in enumerate(self.names)}
        return {"state": {index[name]: value for name, value in state["state"].items()},
                "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in state["param_groups"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        named = {"state": {self.names[i]: value for i, value in state["state"].items()},
                 "param_groups": [{**g, "params": [self.names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.opt, named, options=StateDictOptions(full_state_dict=True))


class _Held:
    """A state dict gathered beforehand, as a checkpoint part."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, in place (``t`` itself with one process). A CPU tensor travels
    through the GPU when the ranks talk NCCL."""
    if _multi_rank():
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        total = t.to(on)
        dist.all_reduce(total)
        t.copy_(total)
    return t


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


def _multi_rank() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


LOCK_NAME = ".lock"
# Keys of a training config that only record sampling defaults (the measured best guidance scale and
# temperature of a model): they take no part in training, so a run resumes when only they differ, and
# its model is exported with the new values (at the next save, or at once when the run is finished:
# ``finished_metrics``).
SAMPLING_DEFAULTS = frozenset({"model.guidance_scale", "model.temperature"})
# Keys that say how the computation is laid out, not what is trained: checkpoints are the same with and
# without them, so a run resumes when they change (say, continued with FSDP on more GPUs, or with
# activation checkpointing after running out of memory).
LAYOUT_KEYS = frozenset({"loop.fsdp", "loop.compile", "model.activation_checkpointing"})


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint as saved (``torch.load(weights_only=True)``: never unpickled); CheckpointError when
    it cannot be read, is not a vqgen checkpoint, or differs from the checksum it was written with."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever a truncated or damaged zip raises
        raise CheckpointError(f"{path} cannot be read ({first_line(exc)})") from exc
    if not isinstance(ckpt, dict) or "step" not in ckpt:
        raise CheckpointError(f"{path} is not a vqgen checkpoint")
    digest = ckpt.pop("sha256", None)
    if digest is not None and state_digest(ckpt) != digest:
        raise CheckpointError(f"{path} is damaged: its contents differ from the checksum it was written with")
    return ckpt


class _StopSignals:
    """SIGTERM and SIGINT handlers that only note the signal, so the loop can finish its step and write a
    checkpoint; a second SIGINT (Ctrl-C twice) stops at once. Installed from the main thread only."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: Any = None) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class RunDir:
    """A run directory: ``train_config.json``, ``checkpoints/last.pt`` and ``checkpoints/previous.pt``,
    ``logs/``, ``metrics.json`` and the exported model.

    A loop uses it as ``ckpt = run.prepare(is_main)`` (lock, config check, newest readable checkpoint),
    ``start, clock = run.restore(ckpt, parts, ...)``, ``for step in run.steps(start, max_steps):`` (stops
    after a step when SIGTERM / SIGINT came; releases the lock however the loop ends) and, after each
    step, ``if run.checkpoint_due(done) and is_main: run.save(...)``. ``kind`` (the model kind the run
    exports) names the expected run when a directory holds another kind of run.
    """

    def __init__(self, path: str | Path, train_cfg: Any, kind: str | None = None):
        self.path = Path(path)
        self.cfg = train_cfg
        self.kind = kind
        self.ckpt = self.path / "checkpoints" / "last.pt"
        self.previous = self.path / "checkpoints" / "previous.pt"
        self.config_file = self.path / "train_config.json"
        self.metrics_file = self.path / "metrics.json"
        self._lock = None
        self._signals = _StopSignals()
        self._stopping = False
        self._every = self._stop = 0  # set by steps()
        self.sampling_changed: list[str] = []  # SAMPLING_DEFAULTS keys that differ from the run's (prepare)

    # --- before the loop --------------------------------------------------------------------------

    def prepare(self, is_main: bool = True) -> dict | None:
        """Take the run's lock (main rank), check the config against the run's, and return the newest
        readable checkpoint to resume from (None for a new run).

        RunInUse when another process trains into the directory; ConfigError when the run was made with
        another config — except a larger ``loop.max_steps``, which continues the run and says what changes
        in the learning-rate schedule, or when ``loop.fsdp`` is asked of a stage that does not shard."""
        loop = getattr(self.cfg, "loop", None)
        if getattr(loop, "fsdp", False) and self.kind not in FSDP_KINDS:
            raise ConfigError(f"loop.fsdp shards the transformer stages ({', '.join(sorted(FSDP_KINDS))}), not a "
                              f"{self.kind} run: drop loop.fsdp=true (DDP trains it on several ranks)")
        if is_main:
            self._acquire()
        try:
            return self._prepare(is_main)
        except BaseException:
            self.release()
            raise

    def _acquire(self) -> None:
        from filelock import FileLock, Timeout
        lock_file = self.path / LOCK_NAME
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot create the run directory {self.path} ({exc.strerror or exc})") from exc
        lock = FileLock(lock_file, timeout=0, is_singleton=True)  # the same process may take it again
        try:
            lock.acquire()
        except Timeout:
            raise RunInUse(f"{self.path} is in use: another process is training into it (it holds {lock_file}); "
                           "wait for it to finish, or choose another --out") from None
        self._lock = lock

    def release(self) -> None:
        """Let go of the run's lock (the loop does it when it ends)."""
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

    def _prepare(self, is_main: bool) -> dict | None:
        if is_main:
            for folder in (self.path, self.ckpt.parent):  # half-written files of a killed process
                for tmp in folder.glob(f".*{TMP_SUFFIX}"):
                    tmp.unlink(missing_ok=True)
        ckpt = self.newest_checkpoint(set_aside=is_main)
        from_ckpt = ckpt.get("config") if ckpt is not None else None  # older checkpoints have none
        on_file = self._config_on_file(from_ckpt, is_main)
        saved = from_ckpt if from_ckpt is not None else on_file
        now = to_dict(self.cfg)
        extended = self._check_config(saved, now) if saved is not None else None
        if is_main and on_file != now:
            text = json.dumps(now, indent=2)
            atomic_write_bytes(self.config_file, lambda p: Path(p).write_text(text))
        if extended is not None and is_main:
            print(self._extension_note(*extended, ckpt["step"] if ckpt is not None else 0), flush=True)
        return ckpt

    def _config_on_file(self, from_ckpt: dict | None, is_main: bool) -> Any:
        """``train_config.json`` (None when missing). When the checkpoint holds the run's config, that copy
        rules: a damaged or differing file is warned about and rewritten, not an error."""
        if not self.config_file.exists():
            return None
        try:
            data = read_json(self.config_file, ConfigError, "the run has no checkpoint yet: delete the file and "
                             "run again")
        except ConfigError as exc:
            if from_ckpt is None:
                raise
            data, problem = None, str(exc)
        else:
            free = SAMPLING_DEFAULTS | LAYOUT_KEYS
            off = sorted(set(diff_keys(data, from_ckpt)) - free) if from_ckpt is not None else []
            problem = f"{self.config_file} differs from the run's checkpoint at {off}" if off not in ([], [
                "loop.max_steps"]) else None
        if problem and is_main:
            warnings.warn(f"{problem}; the config saved in the checkpoint is used", stacklevel=4)
        return data

    def _check_config(self, saved: Any, now: dict) -> tuple[int, int] | None:
        """None when ``saved`` is ``now`` up to ``SAMPLING_DEFAULTS`` (a key missing from an older run's
        config counts as its default); (old, new) max_steps when only a larger ``loop.max_steps`` differs;
        ConfigError otherwise."""
        held = self._held_kind()
        if self.kind and held and held != self.kind:
            raise ConfigError(f"{self.path} holds a {held!r} run, not a {self.kind!r} run; choose another --out")
        if not isinstance(saved, dict):
            raise ConfigError(f"{self.config_file} does not hold a config (a JSON object); the run has no checkpoint "
                              "yet: delete the file and run again")
        try:  # fields added since the run was made take their defaults
            saved = to_dict(from_dict(type(self.cfg), saved))
        except (VqgenError, TypeError, ValueError):
            pass  # not a config of this kind: the key-by-key difference below names what differs
        changed = set(diff_keys(saved, now))
        self.sampling_changed = sorted(changed & SAMPLING_DEFAULTS)
        diff = sorted(changed - SAMPLING_DEFAULTS - LAYOUT_KEYS)
        if not diff:
            return None
        if diff == ["loop.max_steps"]:
            old, new = saved["loop"]["max_steps"], now["loop"]["max_steps"]
            if isinstance(old, int) and new > old:
                return old, new
            raise ConfigError(f"{self.path} is a run of loop.max_steps {old}: it can be continued with a larger "
                              f"--max-steps, not set to {new}; resume with --max-steps {old} or more, or choose "
                              "another --out")
        raise ConfigError(f"{self.path} holds a run with a different config (differs at {diff}); resume with the same "
                          "config (only a larger --max-steps may change) or choose another --out")

    def _held_kind(self) -> str | None:
        """The kind of model the run directory exports (its config.json), if it has exported one."""
        if not (self.path / "config.json").exists():
            return None
        try:
            kind = read_payload(self.path).get("kind")
        except VqgenError:
            return None
        return kind if isinstance(kind, str) else None

    def _extension_note(self, old: int, new: int, step: int) -> str:
        text = f"{self.path}: loop.max_steps {old} → {new}, continuing from step {step}"
        optim = getattr(self.cfg, "optim", None)
        if isinstance(optim, OptimConfig):
            was = lr_factor(step, optim.warmup_steps, old, optim.min_lr_ratio)
            now = lr_factor(step, optim.warmup_steps, new, optim.min_lr_ratio)
            text += (f"; the cosine decay of the learning rate is stretched to end at step {new} instead of {old}: "
                     f"from step {step} on the rate is {now:.3g}× optim.lr (it was {was:.3g}×) and decays to "
                     f"{optim.min_lr_ratio:g}× at step {new}")
        return text

    def newest_checkpoint(self, set_aside: bool = False) -> dict | None:
        """The newest readable checkpoint: ``last.pt``, or ``previous.pt`` when ``last.pt`` is missing or
        damaged (with a warning saying so; ``set_aside`` renames the damaged file ``last.pt.damaged``, so
        the next save does not rotate it into ``previous.pt``). None when the run has none;
        CheckpointError when none can be read."""
        problems = []
        for path in (self.ckpt, self.previous):
            if not path.exists():
                continue
            try:
                ckpt = read_checkpoint(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if path == self.previous:
                why = problems[0] if problems else f"{self.ckpt} is missing"
                if set_aside:
                    warnings.warn(f"{why}; resuming from the previous checkpoint {path} (step {ckpt['step']})",
                                  stacklevel=3)
                    if self.ckpt.exists():
                        os.replace(self.ckpt, self.ckpt.with_name(self.ckpt.name + ".damaged"))
            return ckpt
        if problems:
            raise CheckpointError(f"no checkpoint of {self.path} can be read: {'; '.join(problems)}; the run cannot "
                                  f"resume — delete {self.ckpt.parent} to train it again from step 0, or choose "
                                  "another --out")
        return None

    def restore(self, ckpt: dict | None, parts: dict[str, Any], announce: bool) -> tuple[int, "Stopwatch"]:
        """Load every part (model, optimisers, schedulers: anything with load_state_dict) and the RNG
        from ``ckpt``; return the step to start from and the training clock. Each LambdaLR schedule then
        sets the learning rate of the step it is at from its own (current) function, so a run continued
        with a larger ``loop.max_steps`` follows the stretched schedule from its first step on."""
        if ckpt is None:
            return 0, Stopwatch()
        for key, part in parts.items():
            part.load_state_dict(ckpt[key])
        for part in parts.values():
            if isinstance(part, torch.optim.lr_scheduler.LambdaLR):
                lrs = [base * fn(part.last_epoch) for base, fn in zip(part.base_lrs, part.lr_lambdas)]
                for group, lr in zip(part.optimizer.param_groups, lrs):
                    group["lr"] = lr
                part._last_lr = lrs
        set_rng_state(ckpt["rng"])
        if announce:
            print(f"resumed {self.path} from step {ckpt['step']}", flush=True)
        return ckpt["step"], Stopwatch(ckpt.get("seconds", 0.0))

    # --- the loop ---------------------------------------------------------------------------------

    def steps(self, start: int, stop: int, save_every: int | None = None) -> Iterator[int]:
        """``range(start, stop)`` with the run's safety around it: SIGTERM and SIGINT are noted, the step
        under way finishes (``checkpoint_due`` then says to save), and the loop ends with
        TrainingInterrupted. The handlers are restored and the lock released however the loop ends.
        ``save_every`` (default ``loop.save_every`` of the config) spaces the regular checkpoints."""
        self._every = save_every if save_every is not None else self.cfg.loop.save_every
        self._stop = stop
        self._signals.install()
        try:
            for step in range(start, stop):
                yield step
                if self._stopping and step + 1 < stop:
                    if _multi_rank():
                        dist.barrier()  # rank 0 has saved: no rank exits (and gets the job torn down) before
                    signum = self._signals.received or signal.SIGTERM  # a rank told by the all-reduce got none
                    name = signal.Signals(signum).name
                    raise TrainingInterrupted(f"{name} received: stopped after step {step + 1} of {stop} with a "
                                              f"checkpoint in {self.ckpt}; run the same command again to resume",
                                              signum)
        finally:
            self._signals.restore()
            self.release()

    def checkpoint_due(self, done: int) -> bool:
        """Whether to save after step ``done`` of the loop ``steps()`` runs: every ``save_every`` steps,
        after the last, and after a step during which a stop signal came. Call it on every rank after
        every step: the ranks agree on stopping (a max all-reduce) before any of them saves."""
        stop = self._signals.received is not None
        if _multi_rank():
            flag = torch.tensor([float(stop)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        self._stopping = self._stopping or stop
        return self._stopping or done % self._every == 0 or done == self._stop

    def save(self, step: int, clock: "Stopwatch", parts: dict[str, Any],
             export: Callable[[Path], Any] | None = None, metrics: dict | None = None) -> None:
        """After ``step``: ``export(run directory)`` (the model's ``save_pretrained``), ``metrics.json`` with
        the step when there are ``metrics``, then the checkpoint — every part's state, the RNG, the
        training time and the config, with their checksum, atomically, the checkpoint before kept as
        ``previous.pt``. The checkpoint comes last: a run found at its last step has its model exported.
        CheckpointError when the checkpoint cannot be written (the older ones are intact)."""
        seconds = clock.elapsed()
        if export is not None:
            export(self.path)
        if metrics:
            self.write_metrics({"step": step, **metrics})
        state = {"step": step, "seconds": seconds, "rng": rng_state(), "config": to_dict(self.cfg),
                 **{key: part.state_dict() for key, part in parts.items()}}
        state["sha256"] = state_digest(state)
        try:
            atomic_write_bytes(self.ckpt, lambda p: torch.save(state, p), keep_previous=self.previous)
        except WriteError as exc:
            kept = f"{self.ckpt} is unchanged" if self.ckpt.exists() else "no checkpoint had been written yet"
            raise CheckpointError(f"could not write the checkpoint of step {step} ({first_line(exc.__cause__ or exc)}); "
                                  f"{kept} — free space and run the same command again to resume") from exc

    # --- metrics ----------------------------------------------------------------------------------

    def write_metrics(self, metrics: dict) -> None:
        """``metrics.json``: what the run measured (written atomically)."""
        text = json.dumps(metrics, indent=2)
        atomic_write_bytes(self.metrics_file, lambda p: Path(p).write_text(text))

    def read_metrics(self) -> dict:
        """``metrics.json`` as written, or {} when the run wrote none; CheckpointError when it is damaged."""
        if not self.metrics_file.exists():
            return {}
        metrics = read_json(self.metrics_file, CheckpointError, "delete it (the trained model is intact) and run again")
        if not isinstance(metrics, dict):
            raise CheckpointError(f"{self.metrics_file} does not hold a JSON object; delete it and run again")
        return metrics

    def finished_metrics(self, step: int, announce: bool = True, clock: "Stopwatch | None" = None,
                         parts: dict[str, Any] | None = None, export: Callable[[Path], Any] | None = None) -> dict:
        """For a run found already trained to ``step``: say so (when ``announce``) and return what it
        measured (``metrics.json``, not recomputed). When only its sampling defaults changed (``prepare``)
        and the loop's ``clock``, ``parts`` and ``export`` are given, the checkpoint and the exported model
        are written again with the new values."""
        if announce:
            print(f"{self.path} is already trained to step {step}", flush=True)
        if self.sampling_changed and parts is not None and clock is not None:
            print(f"{self.path}: new sampling defaults ({', '.join(self.sampling_changed)}); exporting the model "
                  "again", flush=True)
            self.save(step, clock, parts, export=export)
        return self.read_metrics()


def load_train_config(cls: type, path: str | Path):
    data = read_json(path, ConfigError, "give a run's train_config.json")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return from_dict(cls, data)


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
    """Wall-clock training seconds recorded in a run's newest readable checkpoint (all resumes together)."""
    ckpt = RunDir(run_dir, None).newest_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no checkpoint: it is not a training run, or it has not saved yet")
    return float(ckpt["seconds"])
