"""Helpers shared by the benchmark scripts (not part of the package)."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_FMNIST = REPO.parent / "shared" / "data" / "fashion-mnist"
RESULTS = REPO / "benchmarks" / "results"


def fmnist_spec() -> str:
    """The Fashion-MNIST copy beside the checkout when present, else the loader's cache/download."""
    return f"fashion-mnist:{SHARED_FMNIST}" if SHARED_FMNIST.is_dir() else "fashion-mnist"


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best-of-``repeats`` fp32 GFLOP/s of an n×n×n matmul: the machine's practical ceiling."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def write_result(name: str, result: dict, out: str | None) -> None:
    result = {**result, "date": time.strftime("%Y-%m-%d", time.gmtime())}  # UTC day the figures were measured
    text = json.dumps(result, indent=2)
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(json.dumps(result))


# --- shared prerequisites: each is made once under runs/ and reused by later benchmarks ----------

RUNS = REPO / "runs"


def ensure_tokenizer(progress: bool = False) -> Path:
    """The `fashion-mnist` tokenizer preset trained on the train split (reused if finished)."""
    from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer
    out = RUNS / "bench-tokenizer" / "fashion-mnist"
    train_tokenizer(TOKENIZER_PRESETS["fashion-mnist"](), out, data=fmnist_spec(), progress=progress)
    return out


def ensure_judge(progress: bool = False) -> Path:
    """The judge classifier (`fashion-mnist` classifier preset), trained once."""
    from vqgen.train.classifier import CLASSIFIER_PRESETS, train_classifier
    out = RUNS / "bench-judge"
    if not (out / "model.safetensors").exists():
        train_classifier(CLASSIFIER_PRESETS["fashion-mnist"](), fmnist_spec(), out, progress=progress)
    return out


def ensure_tokens(progress: bool = False) -> Path:
    from vqgen.data.encode import encode_dataset
    from vqgen.prior.codec import TokenizerCodec
    from vqgen.tokenizer.vqgan import VQTokenizer
    tok = ensure_tokenizer(progress)
    out = RUNS / "bench-tokens"
    encode_dataset(TokenizerCodec(VQTokenizer.from_pretrained(tok), str(tok)), fmnist_spec(), out, progress=progress)
    return out


def ensure_pixel_tokens(k: int = 16, progress: bool = False) -> Path:
    from vqgen.data import load_images
    from vqgen.data.encode import encode_dataset
    from vqgen.prior.codec import PALETTE_FILE, PaletteCodec
    from vqgen.prior.pixels import fit_palette, load_palette, save_palette
    out = RUNS / "bench-pixels"
    if (out / PALETTE_FILE).exists():
        palette = load_palette(out / PALETTE_FILE)
    else:
        palette = fit_palette(load_images(fmnist_spec(), "train", 28, 1, progress=False).images, k, seed=0)
        out.mkdir(parents=True, exist_ok=True)
        save_palette(palette, out / PALETTE_FILE)  # the token directory names it (load_codec)
    encode_dataset(PaletteCodec(palette, 28), fmnist_spec(), out, progress=progress)
    return out
