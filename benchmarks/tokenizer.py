"""Stage-1 quality: the `fashion-mnist` tokenizer preset against the same preset with a plain
taming-style quantizer, trained with the same budget in one run, evaluated on the test split.

    python benchmarks/tokenizer.py --json [--max-steps N]

Writes benchmarks/results/tokenizer.json and docs/images/reconstructions.png.
The Fashion-MNIST copy in ../shared is a re-split (not the official test split).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, fmnist_spec, machine, write_result  # noqa: E402

from vqgen.config import apply_overrides, to_dict  # noqa: E402
from vqgen.data import load_images  # noqa: E402
from vqgen.eval.tokenizer import evaluate_tokenizer  # noqa: E402
from vqgen.images import save_grid, to_uint8  # noqa: E402
from vqgen.train.common import train_seconds  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402


def run(preset: str, out: Path, train, test, overrides: list[str]) -> dict:
    cfg = apply_overrides(TOKENIZER_PRESETS[preset](), overrides)
    model = train_tokenizer(cfg, out, train_data=train, progress=sys.stderr.isatty())
    seconds = train_seconds(out)  # recorded by the run itself (a finished run is reused, not retrained)
    metrics = evaluate_tokenizer(model, test)
    return {"preset": preset, "train_seconds": round(seconds, 1), "steps": cfg.loop.max_steps,
            "batch_size": cfg.loop.batch_size, "quantizer": to_dict(cfg.model.quantizer), **metrics}, model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--runs", default=str(REPO / "runs" / "bench-tokenizer"))
    ap.add_argument("--presets", default="fashion-mnist,fashion-mnist-plain")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. how a reused run was made)")
    ap.add_argument("--out")
    args = ap.parse_args()
    spec = fmnist_spec()
    train = load_images(spec, "train", 32, 1, progress=False)
    test = load_images(spec, "test", 32, 1, progress=False)
    overrides = [f"loop.max_steps={args.max_steps}"] if args.max_steps else []
    result = {"data": spec, "note": "Fashion-MNIST re-split copy; not the official test split",
              "machine": machine(), "command": " ".join(["python"] + sys.argv), "run_note": args.note}
    for preset in args.presets.split(","):
        out = Path(args.runs) / preset
        metrics, model = run(preset, out, train, test, overrides)
        result[preset] = metrics
        if preset == "fashion-mnist":
            x = test.images[:16]
            grid = torch.cat([x[:8], to_uint8(model.reconstruct(x[:8])), x[8:], to_uint8(model.reconstruct(x[8:]))])
            save_grid(grid, REPO / "docs" / "images" / "reconstructions.png", nrow=8, scale=3)
    write_result("tokenizer", result, args.out)


if __name__ == "__main__":
    main()
