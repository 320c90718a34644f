"""Training speed of the full-size GPU presets on one CUDA GPU: one command, a few minutes on an H100/H200.

    python benchmarks/gpu.py --json [--out FILE]      # needs CUDA: refuses clearly without it
    python benchmarks/gpu.py --sizes [--json]         # parameter counts and memory estimates (CPU; docs/gpu.md)
    python benchmarks/gpu.py --smoke --json [--out FILE]   # the same code path at tiny sizes on the CPU
    torchrun --standalone --nproc_per_node=N benchmarks/gpu.py --fsdp --json   # transformers sharded (loop.fsdp)

For each preset — taming's ImageNet f16 VQGAN with 1024 and 16384 codes (``imagenet-f16``,
``imagenet-f16-16384``), the ~0.3 B class-conditional prior (``imagenet-cin-300m``) and the DALL·E-mini-sized
text-to-image model (``dalle-mini``) — it builds the model on the GPU and times training steps on random
data as the trainers take them (bf16 autocast, TF32, fused AdamW; the tokenizer with its PatchGAN on
and no LPIPS, whose VGG weights are the user's files; k-means init off): images/s or tokens/s, the
FLOPs of one step counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; forward
and backward) and so the achieved TFLOP/s and its share of the card's dense bf16 peak, and the peak
memory allocated. The estimate of ``--sizes`` is printed beside the measured peak.

Memory estimate (``--sizes``): 16 bytes per trained parameter (fp32 weights and gradients, AdamW's two
moments) + 2 bytes per parameter (the bf16 weight copies autocast keeps during the step) + batch ×
the activations autograd saves for one sample, measured by tracing one training forward on PyTorch's
``meta`` device (no memory, no compute) with ``torch.autograd.graph.saved_tensors_hooks``. That trace
runs in fp32 and takes the math attention path, which keeps the T×T attention weights that flash
attention does not, so the activation term is an upper bound (bf16 halves most saved tensors).
Allocator fragmentation and CUDA workspaces are not in it.

``--fsdp``: the transformer presets only (prior, text2img), each model sharded as ``loop.fsdp`` shards it
(``train.prior.shard_prior``, ``train.text2img.shard_text2img``: FSDP2 over the ranks) before its
optimiser is built. Under ``torchrun`` with N GPUs every rank runs the same per-GPU batch and rank 0
reports its own speed and peak memory (per GPU); one process makes a process group of one rank, so the
sharded code path runs (its overhead) while memory stays that of one whole copy. No memory estimate is
printed beside the measured peak under ``--fsdp`` (the estimate is for unsharded training).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

from vqgen.config import apply_overrides  # noqa: E402
from vqgen.prior.gpt import GPTPrior  # noqa: E402
from vqgen.text.dalle import TextToImage  # noqa: E402
from vqgen.tokenizer.discriminator import PatchDiscriminator  # noqa: E402
from vqgen.tokenizer.losses import adaptive_weight, generator_adv_loss, hinge_d_loss, reconstruction_loss  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.common import (Dist, autocast, enable_tf32, make_optimizer, optimizer_step,  # noqa: E402
                                setup_distributed)
from vqgen.train.prior import PRIOR_PRESETS, shard_prior  # noqa: E402
from vqgen.train.text2img import TEXT2IMG_PRESETS, shard_text2img  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS  # noqa: E402

GPU_PRESETS = [("tokenizer", "imagenet-f16"), ("tokenizer", "imagenet-f16-16384"), ("prior", "imagenet-cin-300m"),
               ("text2img", "dalle-mini")]
SMOKE_PRESETS = [("tokenizer", "tiny"), ("prior", "tiny"), ("text2img", "tiny")]
BATCH = {"tokenizer": 16, "prior": 64, "text2img": 64}  # per GPU, at the full sizes
SMOKE_BATCH = 4
WARMUP, STEPS = 3, 10
GIB = 2 ** 30

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device name.
PEAK_BF16_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1)]


def card_peak_tflops(name: str) -> float | None:
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def train_config(kind: str, name: str):
    cfg = {"tokenizer": TOKENIZER_PRESETS, "prior": PRIOR_PRESETS, "text2img": TEXT2IMG_PRESETS}[kind][name]()
    if kind == "tokenizer":  # k-means init is a one-off at step 0; the discriminator runs, as in steady training
        gan = [] if cfg.gan.weight else ["gan.weight=0.8", "gan.n_layers=2", "gan.ndf=8"]  # tiny: a small one
        cfg = apply_overrides(cfg, ["model.quantizer.kmeans_init=false", *gan])
    return cfg


# --- one training step per kind, as the trainers take it ---------------------------------------------------

@dataclass
class Job:
    params: int                   # trained parameters
    items: int                    # images or image tokens per step
    unit: str
    step: Callable[[], float]     # one optimiser step (both for the tokenizer: autoencoder, discriminator)


def tokenizer_job(cfg, batch: int, device: torch.device) -> Job:
    """The autoencoder + quantizer step with the adaptive-weighted PatchGAN term, then the hinge-loss
    discriminator step (train/tokenizer.py, one micro-batch)."""
    ae = cfg.model.autoencoder
    model = VQTokenizer(cfg.model).to(device)
    disc = PatchDiscriminator(ae.in_channels, cfg.gan.ndf, cfg.gan.n_layers).to(device)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, cfg.loop.max_steps)
    d_opt, d_sched = make_optimizer(disc.parameters(), cfg.optim, cfg.loop.max_steps)
    x = torch.rand(batch, ae.in_channels, ae.resolution, ae.resolution, device=device) * 2 - 1  # (B, C, H, W)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            xr, q = model(x)  # (B, C, H, W)
            nll = reconstruction_loss(x, xr.float(), cfg.loss.recon)
            g = generator_adv_loss(disc(xr))
            loss = nll + q.loss + adaptive_weight(nll, g, model.decoder.last_layer) * cfg.gan.weight * g
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        d_opt.zero_grad(set_to_none=True)
        with autocast(device):
            d_loss = hinge_d_loss(disc(x), disc(xr.detach()))
        d_loss.backward()
        d_opt.step()
        d_sched.step()
        return float(loss.detach())

    params = sum(p.numel() for m in (model, disc) for p in m.parameters() if p.requires_grad)
    return Job(params, batch, "images", step)


def prior_job(cfg, batch: int, device: torch.device, sharded: Dist | None = None) -> Job:
    """``optimizer_step`` over the prior's loss, as train/prior.py calls it (sharded over ``sharded``'s
    ranks as ``loop.fsdp`` shards it, when given)."""
    mc = cfg.model
    model = GPTPrior(mc).to(device)
    if sharded is not None:
        shard_prior(model, sharded)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, cfg.loop.max_steps)
    g = torch.Generator(device=device).manual_seed(0)
    toks = torch.randint(0, mc.vocab_size, (batch, mc.seq_len), device=device, generator=g)  # (B, HW)
    cond = torch.randint(0, max(mc.num_classes, 1), (batch,), device=device, generator=g) if mc.num_classes else None
    model.train()

    def step() -> float:
        return optimizer_step(model.loss, (toks, cond), 1, model, opt, sched, cfg.optim.grad_clip, device,
                              check=lambda loss: None)

    return Job(sum(p.numel() for p in model.parameters() if p.requires_grad), batch * mc.seq_len, "tokens", step)


def text2img_job(cfg, batch: int, device: torch.device, sharded: Dist | None = None) -> Job:
    """``optimizer_step`` over the text-to-image loss (full-length captions), as train/text2img.py calls it
    (sharded over ``sharded``'s ranks as ``loop.fsdp`` shards it, when given)."""
    mc = cfg.model
    model = TextToImage(mc).to(device)
    if sharded is not None:
        shard_text2img(model, sharded)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, cfg.loop.max_steps)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(3, mc.text_vocab_size, (batch, mc.max_text_len), device=device, generator=g)  # (B, L)
    ids[:, 0], ids[:, -1] = mc.bos_id, mc.eos_id
    toks = torch.randint(0, mc.vocab_size, (batch, mc.seq_len), device=device, generator=g)  # (B, HW)
    model.train()

    def step() -> float:
        return optimizer_step(model.loss, (ids, toks), 1, model, opt, sched, cfg.optim.grad_clip, device,
                              check=lambda loss: None)

    return Job(sum(p.numel() for p in model.parameters() if p.requires_grad), batch * mc.seq_len, "tokens", step)


JOBS = {"tokenizer": tokenizer_job, "prior": prior_job, "text2img": text2img_job}


def _sig(x: float) -> float:
    """Four significant digits."""
    return float(f"{x:.4g}")


def step_flops(job: Job) -> float:
    """FLOPs of one step (forward and backward), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        job.step()
    return float(counter.get_total_flops())


def measure(kind: str, name: str, batch: int, device: torch.device, peak: float | None, estimate: dict | None,
            sharded: Dist | None = None) -> dict:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    job = JOBS[kind](train_config(kind, name), batch, device, *([sharded] if sharded else []))
    for _ in range(WARMUP):
        loss = job.step()
    flops = step_flops(job)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(STEPS):
        loss = job.step()
    sync()
    step_s = (time.perf_counter() - t) / STEPS
    tflops = flops / step_s / 1e12
    result = {"kind": kind, "preset": name, "params_m": _sig(job.params / 1e6), "batch": batch,
              f"{job.unit}_per_s": _sig(job.items / step_s), "step_s": _sig(step_s),
              "tflop_per_step": _sig(flops / 1e12), "achieved_tflops": _sig(tflops),
              "fraction_of_peak": _sig(tflops / peak) if peak else None, "final_loss": _sig(loss)}
    if cuda:
        result["peak_memory_gib"] = _sig(torch.cuda.max_memory_allocated() / GIB)
    if estimate is not None:
        result["estimated_memory_gib"] = _sig(estimate_gib(estimate, batch))
    del job
    return result


# --- sizes: parameter counts and memory estimates, on the meta device --------------------------------------

def saved_bytes(forward: Callable[[], object], params: list[torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward`` runs (parameters excluded)."""
    own = {id(p) for p in params}
    saved: dict[int, torch.Tensor] = {}  # held, so that no id is reused by a later tensor

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in own and (t._base is None or id(t._base) not in own):
            saved[id(t)] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(t.numel() * t.element_size() for t in saved.values())


def _trace_tokenizer(cfg, b: int) -> tuple[int, int]:
    ae = cfg.model.autoencoder
    with torch.device("meta"):
        model = VQTokenizer(cfg.model).train()
        disc = PatchDiscriminator(ae.in_channels, cfg.gan.ndf, cfg.gan.n_layers).train()
    quantizer = VQTokenizer(cfg.model).quantizer.train()  # on the CPU: its statistics read values
    lat = ae.latent_resolution
    params = [*model.parameters(), *disc.parameters()]

    def forward() -> None:
        x = torch.zeros(b, ae.in_channels, ae.resolution, ae.resolution, device="meta")  # (b, C, H, W)
        model.quant_conv(model.encoder(x))  # (b, z, h, w)
        z = torch.randn(b, ae.z_channels, lat, lat, requires_grad=True)  # (b, z, h, w) on the CPU
        q = quantizer(z)
        xr = model.decoder(model.post_quant_conv(q.z_q.to("meta")))  # (b, C, H, W)
        disc(xr)

    return sum(p.numel() for p in params), saved_bytes(forward, params)


def _trace_prior(cfg, b: int) -> tuple[int, int]:
    mc = cfg.model
    with torch.device("meta"):
        model = GPTPrior(mc).train()
    toks = torch.zeros(b, mc.seq_len, dtype=torch.long, device="meta")  # (b, HW)
    cond = torch.zeros(b, dtype=torch.long, device="meta")  # (b,)
    return model.num_params(), saved_bytes(lambda: model.decode(cond, toks[:, :-1], slice(0, mc.seq_len - 1)),
                                           list(model.parameters()))


def _trace_text2img(cfg, b: int) -> tuple[int, int]:
    mc = cfg.model
    with torch.device("meta"):
        model = TextToImage(mc).train()
    ids = torch.ones(b, mc.max_text_len, dtype=torch.long, device="meta")  # (b, L)
    inputs = torch.zeros(b, mc.seq_len, dtype=torch.long, device="meta")  # (b, HW)

    def forward() -> None:
        states, mask = model.encode_text(ids)  # (b, L, C), (b, L)
        model.decode(model.memories(states), mask, inputs, 0, modulations=model.modulations(states, mask))  # (b, HW, V)

    return model.num_params(), saved_bytes(forward, list(model.parameters()))


TRACES = {"tokenizer": _trace_tokenizer, "prior": _trace_prior, "text2img": _trace_text2img}


def preset_size(kind: str, name: str, checkpointing: bool = False) -> dict:
    """Parameters and the memory model's terms of one preset (activation checkpointing for transformers)."""
    cfg = train_config(kind, name)
    if checkpointing:
        cfg.model.activation_checkpointing = True
    params, one = TRACES[kind](cfg, 1)
    _, two = TRACES[kind](cfg, 2)
    per_sample = two - one  # what grows with the batch (the rest is per-step, e.g. a shared mask)
    return {"kind": kind, "preset": name, "params": params, "activation_checkpointing": checkpointing,
            "fixed_bytes": 18 * params + (one - per_sample), "activation_bytes_per_sample": per_sample}


def estimate_gib(size: dict, batch: int) -> float:
    return (size["fixed_bytes"] + batch * size["activation_bytes_per_sample"]) / GIB


def sizes(presets: list[tuple[str, str]]) -> list[dict]:
    out = []
    for kind, name in presets:
        out.append(preset_size(kind, name))
        if kind != "tokenizer":
            out.append(preset_size(kind, name, checkpointing=True))
    return out


def sizes_table(rows: list[dict]) -> str:
    """The markdown table of docs/gpu.md."""
    lines = ["| preset | kind | parameters | activation checkpointing | fixed (GiB) | per sample (GiB) | "
             "batch 8 | batch 32 | batch 64 |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ckpt = "on" if r["activation_checkpointing"] else "off"
        lines.append(f"| `{r['preset']}` | {r['kind']} | {r['params']:,} | {ckpt} | {r['fixed_bytes'] / GIB:.1f} | "
                     f"{r['activation_bytes_per_sample'] / GIB:.2f} | "
                     + " | ".join(f"{estimate_gib(r, b):.0f} GiB" for b in (8, 32, 64)) + " |")
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--out", help="where to write the JSON (default benchmarks/results/gpu.json)")
    ap.add_argument("--sizes", action="store_true", help="parameter counts and memory estimates only (no GPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny presets on the CPU: checks the code, measures nothing")
    ap.add_argument("--fsdp", action="store_true", help="the transformer presets sharded with FSDP as loop.fsdp shards "
                    "them, over the ranks of torchrun (one rank without it)")
    args = ap.parse_args()
    if args.smoke or args.sizes:  # CPU work on a shared machine: one thread
        torch.set_num_threads(1)
    if args.sizes:
        rows = sizes(GPU_PRESETS)
        if args.json:
            import json
            print(json.dumps(rows))
        else:
            print(sizes_table(rows))
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("gpu.py: error: this benchmark needs a CUDA GPU and torch sees none (torch.cuda.is_available() is "
              "False); --sizes gives parameter counts and memory estimates without one", file=sys.stderr)
        return 2
    started = time.perf_counter()
    d = setup_distributed("cpu" if args.smoke else "cuda")  # torchrun's ranks, if any (TF32 on CUDA)
    device = d.device
    if device.type == "cuda":
        enable_tf32()
    sharded = None
    if args.fsdp:
        if not dist.is_initialized():  # one process: a group of one rank, so that fully_shard runs
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                    world_size=1)
        sharded = d
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test)"
    peak = card_peak_tflops(name)
    presets = [(k, p) for k, p in (SMOKE_PRESETS if args.smoke else GPU_PRESETS) if not args.fsdp or k != "tokenizer"]
    results = []
    for kind, preset in presets:
        estimate = None if args.fsdp else preset_size(kind, preset)
        results.append(measure(kind, preset, SMOKE_BATCH if args.smoke else BATCH[kind], device, peak, estimate,
                               sharded))
        if d.is_main:
            print(f"{kind} {preset}: {results[-1]}", file=sys.stderr, flush=True)
    result = {"device": name, "peak_bf16_tflops": peak, "precision": "bf16 autocast, TF32 matmuls, fused AdamW"
              if device.type == "cuda" else "fp32 (CPU smoke test)", "warmup_steps": WARMUP, "timed_steps": STEPS,
              "fsdp": args.fsdp, "world_size": d.world, "results": results,
              "seconds": round(time.perf_counter() - started, 1), "machine": machine()}
    if d.is_main:  # per GPU: rank 0's speed and memory
        write_result(("gpu_smoke" if args.smoke else "gpu") + ("_fsdp" if args.fsdp else ""), result, args.out)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
