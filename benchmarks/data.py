"""Memory and speed of encoding a folder read lazily: does peak memory grow with the number of images?

    python benchmarks/data.py --json [--n 100000] [--workers 0,1,2] [--dir runs/bench-data] [--out FILE]

Writes two folders of 64×64 RGB JPEGs (``--n`` images and ``--n``/10; kept and reused), saves a tiny
random tokenizer (64 px RGB, f=4: data, not the model, is measured), then runs ``vqgen encode``'s code
(``vqgen.data.encode.encode_dataset``) in a child process per (folder, worker count), with the dataset
forced lazy (``IN_MEMORY_MAX_BYTES = 0``; at full size the 100 000-image folder, 1.2 GB decoded, is
lazy anyway and the 10 000 one, 123 MB, would be kept in memory). While a child runs, the RSS of it and
of all its descendants (the DataLoader workers) is summed every 20 ms from /proc; the peak is reported.
Shared pages (torch's libraries in forked workers) count once per process, so this sum overstates the
machine's memory; it is what ``ps`` and schedulers see. For reference, the small folder is also encoded
in memory (``peak_rss_mib_10k_in_memory``).

Keys: ``peak_rss_mib_10k`` / ``peak_rss_mib_100k`` (the largest over the worker counts), the same per
worker count under ``peak_rss_mib``, and ``images_per_s`` (large folder, per worker count: images /
seconds of the encode call, listing included, start-up excluded); ``runs`` adds the seconds spent in
the tokenizer itself (``model_seconds``), the part no data loader can hide on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, machine, write_result  # noqa: E402

RESOLUTION = 64


def write_folder(root: Path, n: int) -> Path:
    """n 64×64 RGB JPEGs in 10 class folders of 1000-image subfolders (kept: a DONE file says n)."""
    from PIL import Image
    done = root / "DONE"
    if done.exists() and done.read_text().strip() == str(n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RESOLUTION, 0:RESOLUTION]
    for i in range(n):
        sub = root / f"class{i % 10}" / f"{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        cx, cy, r = rng.integers(8, 56, 2).tolist() + [int(rng.integers(4, 20))]
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        img = np.full((RESOLUTION, RESOLUTION, 3), rng.integers(0, 256, 3, dtype=np.uint8), dtype=np.uint8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour  # a disc on a flat background
        Image.fromarray(img).save(sub / f"{i:07d}.jpg", quality=90)
    done.write_text(str(n))
    return root


def tiny_tokenizer(out: Path) -> Path:
    import torch

    from vqgen.tokenizer.autoencoder import AutoencoderConfig
    from vqgen.tokenizer.quantizer import QuantizerConfig
    from vqgen.tokenizer.vqgan import TokenizerConfig, VQTokenizer
    torch.manual_seed(0)
    # As small as the architecture goes (f=8, no residual blocks per level): ~600 images/s on one CPU
    # thread against ~3000/s for decoding, so the data path still shows.
    cfg = TokenizerConfig(AutoencoderConfig(in_channels=3, resolution=RESOLUTION, ch=4, ch_mult=(1, 1, 1, 1),
                                            num_res_blocks=0, attn_resolutions=(), mid_attention=False, z_channels=4,
                                            norm_groups=2),
                          QuantizerConfig(codebook_size=256, code_dim=4, l2_normalize=True))
    VQTokenizer(cfg).eval().save_pretrained(out)
    return out


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and all its descendants, from /proc (0 for processes that are gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def measure(tokenizer: Path, folder: Path, workers: int, lazy: bool) -> dict:
    """Run one encode in a child process; its peak tree RSS (MiB), seconds and images/s."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", "--tokenizer", str(tokenizer), "--data", f"folder:{folder}",
               "--tokens", str(Path(tmp) / "tokens"), "--workers", str(workers)] + ([] if lazy else ["--in-memory"])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.02)
        out = proc.stdout.read()
        if proc.returncode != 0:
            raise SystemExit(f"encode child failed ({proc.returncode}): {' '.join(cmd)}")
    child = json.loads(out.strip().splitlines()[-1])
    return {"peak_rss_mib": round(peak / 2**20, 1), "seconds": round(child["seconds"], 2),
            "model_seconds": round(child["model_seconds"], 2),
            "images_per_s": round(child["n"] / child["seconds"], 1), "n": child["n"]}


def child(args: argparse.Namespace) -> None:
    import torch

    import vqgen.data.lazy as lazy
    from vqgen.data.encode import encode_dataset
    from vqgen.prior.codec import TokenizerCodec
    from vqgen.tokenizer.vqgan import VQTokenizer
    torch.set_num_threads(1)
    if not args.in_memory:
        lazy.IN_MEMORY_MAX_BYTES = 0  # the lazy path whatever the size
    codec = TokenizerCodec(VQTokenizer.from_pretrained(args.tokenizer).eval(), args.tokenizer)
    model_s, encode = 0.0, codec.encode

    def timed(images: torch.Tensor) -> torch.Tensor:
        nonlocal model_s
        t0 = time.perf_counter()
        out = encode(images)
        model_s += time.perf_counter() - t0
        return out

    codec.encode = timed
    t = time.perf_counter()
    counts = encode_dataset(codec, args.data, args.tokens, progress=False, workers=args.workers)
    print(json.dumps({"seconds": time.perf_counter() - t, "model_seconds": model_s, "n": counts["train"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n", type=int, default=100_000, help="images in the large folder (the small one has n/10)")
    ap.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to measure, comma-separated")
    ap.add_argument("--dir", default=str(RUNS / "bench-data"), help="where the folders and the tokenizer are kept")
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", help=argparse.SUPPRESS)
    ap.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.workers = int(args.workers)
        return child(args)
    base = Path(args.dir)
    workers = [int(w) for w in args.workers.split(",")]
    sizes = {"10k": args.n // 10, "100k": args.n}
    t = time.perf_counter()
    folders = {k: write_folder(base / f"folder-{n}", n) for k, n in sizes.items()}
    write_s = time.perf_counter() - t
    tok = tiny_tokenizer(base / "tokenizer")
    runs = {k: {str(w): measure(tok, folders[k], w, lazy=True) for w in workers} for k in sizes}
    in_memory = measure(tok, folders["10k"], 0, lazy=False)
    result = {
        "peak_rss_mib_10k": max(r["peak_rss_mib"] for r in runs["10k"].values()),
        "peak_rss_mib_100k": max(r["peak_rss_mib"] for r in runs["100k"].values()),
        "images_per_s": {w: r["images_per_s"] for w, r in runs["100k"].items()},
        "peak_rss_mib": {k: {w: r["peak_rss_mib"] for w, r in v.items()} for k, v in runs.items()},
        "peak_rss_mib_10k_in_memory": in_memory["peak_rss_mib"],
        "images_per_s_10k_in_memory": in_memory["images_per_s"],
        "runs": runs, "n_10k": sizes["10k"], "n_100k": sizes["100k"], "resolution": RESOLUTION,
        "image_format": "JPEG q90, 64x64 RGB", "folder_write_seconds": round(write_s, 1),
        "machine": machine(), "cpu_count": os.cpu_count(), "command": " ".join(["python"] + sys.argv),
    }
    write_result("data", result, args.out)


if __name__ == "__main__":
    main()
