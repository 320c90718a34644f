"""vqgen's vector quantizer against vector-quantize-pytorch's ``VectorQuantize``, inside the same preset.

Only the quantizer differs: the `fashion-mnist` tokenizer preset (autoencoder, loss, optimiser,
schedule, batch) is trained once per seed with vqgen's ``VectorQuantizer`` and once with the library's,
its settings mapped from the preset (512 codes, 16-d codebook behind projections, EMA 0.99, k-means
init, cosine similarity, commitment 0.25, its dead-code threshold 2 — the mapping the issue measured).
Runs are interleaved (seed 0: vqgen then library, seed 1: library then vqgen, ...) so that their
seconds per step compare; every run starts fresh. Test metrics on the whole test split.

    pip install --no-deps vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 \\
        loguru==0.7.3 torch-einops-utils==0.2.0        # benchmark only; sympy comes with torch
    python benchmarks/quantizers.py --json [--steps 2000] [--seeds 0,1,2] [--set key=value ...]
    python benchmarks/quantizers.py --json --timing-only   # the quantizer step alone, both, interleaved
    python benchmarks/quantizers.py --merge A.json B.json [LABEL=C.json ...] --out FILE  # one table from runs
                                                     # made apart (e.g. one seed per process); LABEL renames
                                                     # C's vqgen side (an earlier version of the code)

``--set`` overrides the vqgen side only (to measure a candidate change), e.g.
``--set model.quantizer.dead_code_threshold=2``. Writes benchmarks/results/quantizers.json.
The Fashion-MNIST copy in ../shared is a re-split (not the official test split).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, fmnist_spec, machine, write_result  # noqa: E402

import vqgen.tokenizer.vqgan as vqgan_module  # noqa: E402
from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data import load_images  # noqa: E402
from vqgen.eval.tokenizer import evaluate_tokenizer  # noqa: E402
from vqgen.tokenizer.quantizer import QuantizerConfig, QuantizerOutput, code_histogram_stats  # noqa: E402
from vqgen.train.common import train_seconds  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402

PRESET = "fashion-mnist"
LIBRARY_DEAD_CODE_THRESHOLD = 2.0  # vector-quantize-pytorch's `threshold_ema_dead_code`, as the issue mapped it


class LibraryQuantizer(nn.Module):
    """vector-quantize-pytorch's ``VectorQuantize`` behind vqgen's quantizer interface."""

    def __init__(self, in_dim: int, cfg: QuantizerConfig):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize
        self.codebook_size = cfg.codebook_size
        self.beta = cfg.beta
        self.vq = VectorQuantize(dim=in_dim, codebook_size=cfg.codebook_size, codebook_dim=cfg.code_dim,
                                 decay=cfg.ema_decay, kmeans_init=cfg.kmeans_init, kmeans_iters=cfg.kmeans_iters,
                                 use_cosine_sim=cfg.l2_normalize, commitment_weight=cfg.beta,
                                 threshold_ema_dead_code=LIBRARY_DEAD_CODE_THRESHOLD, accept_image_fmap=True)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # z: (B, C, h, w)
        z_q, idx, loss = self.vq(z)  # (B, C, h, w), (B, h, w), scalar (β · commitment)
        counts = torch.bincount(idx.flatten(), minlength=self.codebook_size)
        perplexity, usage = code_histogram_stats(counts)
        return QuantizerOutput(z_q, idx, loss, loss.detach() / self.beta, perplexity, usage)

    def codes_to_latents(self, indices: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, C, h, w)
        # Looked up and projected as its forward does: 1.32.0's get_output_from_indices mis-shapes
        # image feature maps when accept_image_fmap=True.
        codes = self.vq.codebook[indices]  # (B, h, w, D)
        return rearrange(self.vq.project_out(codes), "b h w c -> b c h w")


@contextlib.contextmanager
def library_quantizer():
    """Build every tokenizer made inside this block with the library's quantizer."""
    original = vqgan_module.build_quantizer
    vqgan_module.build_quantizer = LibraryQuantizer
    try:
        yield
    finally:
        vqgan_module.build_quantizer = original


def train_one(kind: str, seed: int, steps: int, overrides: list[str], train, test, runs: Path) -> dict:
    cfg = apply_overrides(TOKENIZER_PRESETS[PRESET](), [f"loop.seed={seed}", f"loop.max_steps={steps}",
                                                        *(overrides if kind == "vqgen" else [])])
    out = runs / f"{kind}-seed{seed}-{steps}"
    shutil.rmtree(out, ignore_errors=True)  # timings are measured here, in this interleaved run
    with library_quantizer() if kind == "vqp" else contextlib.nullcontext():
        model = train_tokenizer(cfg, out, train_data=train, progress=sys.stderr.isatty())
    seconds = train_seconds(out)
    metrics = evaluate_tokenizer(model, test)
    row = {"seed": seed, "steps": steps, "seconds_per_step": seconds / steps,
           **{k: metrics[k] for k in ("psnr", "ssim", "codebook_usage", "perplexity")}}
    print(f"{kind} seed {seed}: {row}", file=sys.stderr, flush=True)
    return row


def time_quantizers(repeats: int = 7, steps: int = 20) -> dict:
    """Milliseconds per training step of the quantizer alone (forward + backward on one batch of the
    preset's latents, 32 × 8 × 8 vectors of 32 channels): the two alternate ``repeats`` times and the
    best of each is kept, so background load cancels out better than in whole training runs."""
    cfg = TOKENIZER_PRESETS[PRESET]().model.quantizer
    torch.manual_seed(0)
    z = torch.randn(32, 32, 8, 8)  # (B, C, h, w) as the preset's encoder gives
    best = {"vqgen": float("inf"), "vqp": float("inf")}
    quantizers = {"vqgen": vqgan_module.build_quantizer(32, cfg).train(), "vqp": LibraryQuantizer(32, cfg).train()}
    for q in quantizers.values():
        q(z)  # k-means init
    for _ in range(repeats):
        for name, q in quantizers.items():
            start = time.perf_counter()
            for _ in range(steps):
                zz = z.clone().requires_grad_(True)
                out = q(zz)
                (out.z_q.square().mean() + out.loss).backward()
            best[name] = min(best[name], (time.perf_counter() - start) / steps * 1000)
    return {f"{k}_ms": round(v, 3) for k, v in best.items()}


def summarise(rows: list[dict]) -> dict:
    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    def std(key: str) -> float:
        return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0

    return {"psnr_mean": mean("psnr"), "psnr_std": std("psnr"), "ssim_mean": mean("ssim"), "ssim_std": std("ssim"),
            "usage_mean": mean("codebook_usage"), "perplexity_mean": mean("perplexity"),
            "seconds_per_step": mean("seconds_per_step"), "n_seeds": len(rows), "runs": rows}


def merge(specs: list[str]) -> dict:
    """One result from several (``[LABEL=]FILE``): runs concatenated per side and summarised again. A
    LABEL files that result's vqgen runs under LABEL, e.g. the quantizer as an earlier commit had it."""
    import json
    rows: dict[str, list[dict]] = {}
    first, vqp_version = None, None
    for spec in specs:
        label, _, path = spec.rpartition("=")
        r = json.loads(Path(path).read_text())
        first = first or r
        if (r["preset"], r["steps"]) != (first["preset"], first["steps"]):
            raise SystemExit(f"quantizers.py: error: {path} ran {r['preset']} for {r['steps']} steps, "
                             f"the first file {first['preset']} for {first['steps']}: merge like with like")
        vqp_version = vqp_version or r.get("vqp_version")
        for kind in ("vqgen", "vqp"):
            if kind in r:
                side = label if label and kind == "vqgen" else kind
                rows.setdefault(side, []).extend(r[kind]["runs"])
    out = {k: first[k] for k in ("data", "note", "machine", "preset", "steps", "n_test_images")}
    return {**out, "command": " ".join(["python"] + sys.argv), "merged": [s.rpartition("=")[2] for s in specs],
            "vqp_version": vqp_version, **{k: summarise(sorted(v, key=lambda row: row["seed"])) for k, v in rows.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--which", default="vqgen,vqp", help="comma list of vqgen, vqp")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the vqgen side's preset (repeatable)")
    ap.add_argument("--test-images", type=int, help="evaluate on the first N test images only (quick looks)")
    ap.add_argument("--runs", default=str(REPO / "runs" / "bench-quantizers"))
    ap.add_argument("--out")
    ap.add_argument("--merge", nargs="+", metavar="[LABEL=]FILE",
                    help="merge result files of separate runs (same preset and steps) into one")
    ap.add_argument("--timing-only", action="store_true",
                    help="only time the two quantizers' training steps on one batch (seconds; no training runs)")
    args = ap.parse_args()
    if args.merge:
        write_result("quantizers", merge(args.merge), args.out)
        return
    if args.timing_only:
        result = {"machine": machine(), "command": " ".join(["python"] + sys.argv), "preset": PRESET,
                  "batch": "32 × 8 × 8 vectors of 32 channels", **time_quantizers()}
        if args.json:
            write_result("quantizer_timing", result, args.out)
        return
    spec = fmnist_spec()
    train = load_images(spec, "train", 32, 1, progress=False)
    test = load_images(spec, "test", 32, 1, progress=False)
    if args.test_images:
        test = dataclasses.replace(test, images=test.images[:args.test_images], labels=test.labels[:args.test_images])
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = args.which.split(",")
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    for i, seed in enumerate(seeds):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:  # alternate who goes first
            rows[kind].append(train_one(kind, seed, args.steps, args.overrides, train, test, Path(args.runs)))
    result = {"data": spec, "note": "Fashion-MNIST re-split copy; not the official test split",
              "machine": machine(), "command": " ".join(["python"] + sys.argv), "preset": PRESET,
              "steps": args.steps, "vqgen_overrides": args.overrides, "n_test_images": len(test),
              "vqp_version": version("vector-quantize-pytorch") if "vqp" in kinds else None,
              **{k: summarise(v) for k, v in rows.items()}}
    if args.json:
        write_result("quantizers", result, args.out)



if __name__ == "__main__":
    main()
