"""The `fashion-mnist` tokenizer preset, unchanged, on someone else's images through `folder:`.

The images are 64×64 crops of the photographs that ship with scikit-image (astronaut, coffee,
coins, rocket, …; `pip install scikit-image`), grey and resized to 32×32 by the folder loader.
Crops from the left three quarters of each photo train; crops from the right quarter are held out.

    python benchmarks/folder_tokenizer.py --json [--max-steps N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_result  # noqa: E402

from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data import load_images  # noqa: E402
from vqgen.eval.tokenizer import evaluate_tokenizer  # noqa: E402
from vqgen.train.common import train_seconds  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402

PHOTOS = ["astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel", "horse",
          "hubble_deep_field", "ihc", "moon", "motorcycle_left", "page", "retina", "rocket", "text"]


def make_crops(root: Path, n_train: int, n_test: int, crop: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Write crops as PNG into root/train/<photo>/ and root/test/<photo>/ (once)."""
    import skimage
    data_dir = Path(skimage.__file__).parent / "data"
    rng = np.random.default_rng(seed)
    train, test = root / "train", root / "test"
    if train.is_dir() and test.is_dir():
        return train, test
    photos = {}
    for name in PHOTOS:
        path = next(p for p in data_dir.iterdir() if p.stem == name)
        photos[name] = np.asarray(Image.open(path).convert("RGB"))
    for split, n, lo, hi in [(train, n_train, 0.0, 0.75), (test, n_test, 0.75, 1.0)]:
        for i in range(n):
            name = PHOTOS[i % len(PHOTOS)]
            img = photos[name]
            h, w = img.shape[:2]
            x0, x1 = int(lo * w), int(hi * w) - crop
            x = rng.integers(x0, max(x0 + 1, x1))
            y = rng.integers(0, h - crop)
            out = split / name
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[y:y + crop, x:x + crop]).save(out / f"{i:05d}.png")
    return train, test


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--runs", default=str(REPO / "runs" / "bench-folder"))
    ap.add_argument("--out")
    args = ap.parse_args()
    runs = Path(args.runs)
    train_dir, test_dir = make_crops(runs / "images", 12000, 2000)
    cfg = TOKENIZER_PRESETS["fashion-mnist"]()
    if args.max_steps:
        cfg = apply_overrides(cfg, [f"loop.max_steps={args.max_steps}"])
    ae = cfg.model.autoencoder
    train = load_images(f"folder:{train_dir}", "train", ae.resolution, ae.in_channels, progress=False)
    test = load_images(f"folder:{test_dir}", "test", ae.resolution, ae.in_channels, progress=False)
    model = train_tokenizer(cfg, runs / "run", train_data=train, progress=sys.stderr.isatty())
    seconds = train_seconds(runs / "run")
    metrics = evaluate_tokenizer(model, test)
    write_result("folder_tokenizer", {
        "data": "crops of scikit-image's sample photos (folder:), held-out right quarter of each photo",
        "preset": "fashion-mnist", "n_train": len(train), "train_seconds": round(seconds, 1), **metrics,
        "machine": machine(), "command": " ".join(["python"] + sys.argv)}, args.out)


if __name__ == "__main__":
    main()
