"""Stage-1 training throughput: images/s and achieved GFLOP/s of one autoencoder training step
(forward, backward, AdamW) for tokenizer presets, against a large fp32 matmul measured in the same run.

    python benchmarks/throughput.py --json

FLOPs are counted by torch.utils.flop_counter (matmuls and convolutions, forward + backward).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_peak_gflops, write_result  # noqa: E402

from vqgen.tokenizer.losses import reconstruction_loss  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS  # noqa: E402


def measure(preset: str, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    cfg = TOKENIZER_PRESETS[preset]()
    ae = cfg.model.autoencoder
    model = VQTokenizer(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, ae.in_channels, ae.resolution, ae.resolution) * 2 - 1

    def step() -> None:
        xr, q = model(x)
        loss = reconstruction_loss(x, xr, cfg.loss.recon) + q.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"preset": preset, "resolution": ae.resolution, "batch": batch,
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "gflop_per_image": round(flops / batch / 1e9, 3), "seconds_per_step": round(best, 3),
            "images_per_s": round(batch / best, 2), "achieved_gflops": round(flops / best / 1e9, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    peak = matmul_peak_gflops()
    rows = [measure("fashion-mnist", 128, args.steps), measure("imagenet-f16", 1, args.steps)]
    for r in rows:
        r["fraction_of_matmul_peak"] = round(r["achieved_gflops"] / peak, 3)
    write_result("throughput", {"matmul_peak_gflops": round(peak, 1), "rows": rows, "machine": machine(),
                                "command": " ".join(["python"] + sys.argv)}, args.out)


if __name__ == "__main__":
    main()
