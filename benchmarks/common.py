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
    text = json.dumps(result, indent=2)
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(json.dumps(result))
