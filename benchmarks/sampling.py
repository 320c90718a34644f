"""Sampling speed of the stage-2 prior: KV-cached vs naive sampler vs Hugging Face GPT-2 ``generate``.

    python benchmarks/sampling.py --json [--batch 32] [--preset fashion-mnist-class] [--repeats 3] [--out FILE]

Weights are random (speed does not depend on them). Each sampler runs once as a warm-up, then the
best of ``--repeats`` timed runs (interleaved across samplers) is kept. Throughput is generated
image tokens per second (batch · H·W per run). The Hugging Face baseline is a randomly initialised
``GPT2LMHeadModel`` of the same depth/width/heads whose vocabulary also holds the condition tokens
(n_positions = seq_len = 1 + H·W), sampling H·W new tokens from a one-token prompt with its own KV
cache and no top-k/top-p filtering, like ours.

FLOP count for ``kv_gflops`` (forward pass only, multiply-adds counted as 2 FLOPs): one sample feeds
H·W positions (the condition and the first H·W − 1 image tokens; the last token is never fed back).
The position at index p (0-based) attends over p + 1 cached positions, so it costs

    2 · 12·n_layer·n_embd²          (qkv 3C², attention projection C², MLP 4C² + 4C² weights)
  + 2 · n_embd · vocab_size         (the output head, computed for the newest position only)
  + 4 · n_layer · n_embd · (p + 1)  (q·kᵀ and attention·v)

Embedding look-ups, LayerNorms, softmaxes and sampling are not counted. ``peak_gflops`` is a
2048³ float32 matmul timed in the same run, for scale.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from vqgen.config import ConfigError, resolve_config
from vqgen.prior import PRESETS, GPTPrior, PriorConfig, sample


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds per call of each function: one warm-up each, then the best of ``repeats`` runs.

    The repeats are interleaved (a, b, c, a, b, c, ...) so that a change in machine load during the
    run affects every contender alike.
    """
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def kv_flops_per_sample(cfg: PriorConfig) -> int:
    c, layers, v, seq = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.seq_len
    dense = seq * (2 * 12 * layers * c * c + 2 * c * v)
    attention = 4 * layers * c * sum(p + 1 for p in range(seq))
    return dense + attention


def peak_gflops(repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_times({"mm": lambda: a @ b}, repeats)["mm"] / 1e9


def hf_sampler(cfg: PriorConfig, batch: int) -> Callable[[], torch.Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    seq = cfg.seq_len
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size + cfg.num_classes + 1, n_positions=seq + 1, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = GPT2LMHeadModel(hf_cfg).eval()
    # one condition token per sample, ids after the image vocabulary
    prompt = (cfg.vocab_size + torch.arange(batch) % (cfg.num_classes + 1))[:, None]  # (B, 1)
    mask = torch.ones_like(prompt)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=mask, do_sample=True, max_new_tokens=seq, min_new_tokens=seq,
                                 use_cache=True, top_k=None, top_p=None, temperature=None)
        if out.shape != (batch, 1 + seq):
            raise RuntimeError(f"HF generate returned {tuple(out.shape)}, expected {(batch, 1 + seq)}")
        return out

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (default: a short table)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="fashion-mnist-class", help=f"one of {sorted(PRESETS)} or a YAML file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be ≥ 1")
    try:
        cfg = resolve_config(PriorConfig, args.preset, PRESETS)
    except ConfigError as e:
        ap.error(str(e))

    torch.manual_seed(0)
    model = GPTPrior(cfg).eval()
    cond = torch.arange(args.batch) % cfg.num_classes if cfg.num_classes else None
    gen = torch.Generator().manual_seed(0)
    tokens = args.batch * cfg.seq_len

    secs = best_times({
        "kv": lambda: sample(model, args.batch, cond=cond, generator=gen, use_cache=True),
        "naive": lambda: sample(model, args.batch, cond=cond, generator=gen, use_cache=False),
        "hf": hf_sampler(cfg, args.batch),
    }, args.repeats)
    kv_s, naive_s, hf_s = secs["kv"], secs["naive"], secs["hf"]
    result = {
        "preset": args.preset,
        "seq_len": cfg.seq_len + 1,  # condition token + H·W image tokens
        "tokens_per_sample": cfg.seq_len,
        "batch": args.batch,
        "params": model.num_params(),
        "kv_tokens_per_s": round(tokens / kv_s, 1),
        "naive_tokens_per_s": round(tokens / naive_s, 1),
        "hf_tokens_per_s": round(tokens / hf_s, 1),
        "kv_gflops": round(args.batch * kv_flops_per_sample(cfg) / kv_s / 1e9, 3),
        "peak_gflops": round(peak_gflops(args.repeats), 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
    }
    text = json.dumps(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
