"""GAN settings of ``fashion-mnist-f8`` at full size, beside the preset (issue 9).

    python benchmarks/vqgan_sweep.py --json [--only NAME[,NAME]] [--n-test N] [--out FILE]

Each setting is one of the two f8 presets with one change: the first four were measured on one H200 when
``fashion-mnist-f8`` had gan.weight 0.3 (vqgan_sweep.json), the last three on this CPU with weight 0.5 and
the discriminator at the autoencoder's lr (``gan_seed1`` says so; the preset then took ``dlr02``'s lr 2e-4;
vqgan_sweep_cpu.json). Each is trained under runs/gan-sweep/NAME (reused when finished) and evaluated
exactly as ``benchmarks/vqgan.py`` evaluates its tokenizers (PSNR, SSIM, usage, judge FD of
reconstructions, sharpness ratio) with the judge of ``benchmarks/common.py``. Settings run one after
another, or one per process with ``--only`` (each writes its own ``--out``). Writes
benchmarks/results/vqgan_sweep.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, ensure_judge, fmnist_spec, machine, write_result  # noqa: E402
from vqgan import tokenizer_metrics  # noqa: E402

from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data import load_images  # noqa: E402
from vqgen.eval.judge import JudgeClassifier  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.common import train_seconds  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402

GAN, NOGAN = "fashion-mnist-f8", "fashion-mnist-f8-nogan"
SETTINGS = {  # name: (preset, overrides)
    "w01": (GAN, ["gan.weight=0.1"]),                   # a third of the weight 0.3 the preset had then
    "w05": (GAN, ["gan.weight=0.5"]),                   # between 0.3 and taming's 0.8 (which collapsed)
    "s800": (GAN, ["gan.start=800"]),                   # the discriminator later, once the autoencoder has settled
    "d3x64": (GAN, ["gan.n_layers=3", "gan.ndf=64"]),   # taming's discriminator size
    "dlr02": (GAN, ["gan.lr=0.0002"]),                  # the discriminator at a fifth of the autoencoder's lr
    "gan_seed1": (GAN, ["loop.seed=1", "gan.lr=null"]),  # the preset before dlr02, another seed: single runs' scatter
    "nogan_seed1": (NOGAN, ["loop.seed=1"]),            # the baseline again, another seed
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", help="comma list of settings: " + ", ".join(SETTINGS))
    ap.add_argument("--n-test", type=int, help="first N test images only (default: all)")
    ap.add_argument("--out")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"vqgan_sweep.py: error: unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    spec = fmnist_spec()
    train = load_images(spec, "train", 32, 1, progress=False)
    test = load_images(spec, "test", 32, 1, progress=False)
    if args.n_test:
        test = type(test)(test.images[:args.n_test], test.labels[:args.n_test], test.class_names, source=test.source)
    judge = JudgeClassifier.from_pretrained(ensure_judge())
    rows = {}
    for name in names:
        out = RUNS / "gan-sweep" / name
        preset, over = SETTINGS[name]
        cfg = apply_overrides(TOKENIZER_PRESETS[preset](), over)
        train_tokenizer(cfg, out, train_data=train, progress=sys.stderr.isatty())
        keys, details = tokenizer_metrics(VQTokenizer.from_pretrained(out), test, judge, train_seconds(out))
        rows[name] = {"preset": preset, "overrides": over, **keys, **details}
        print(name, rows[name], file=sys.stderr, flush=True)
    result = {"data": spec, "machine": machine(), "command": " ".join(["python"] + sys.argv),
              "note": "Fashion-MNIST re-split copy, test split; judge FD (not Inception FID)", "settings": rows}
    if args.json:
        write_result("vqgan_sweep", result, args.out)


if __name__ == "__main__":
    main()
