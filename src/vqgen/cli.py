"""The ``vqgen`` command: thin wrappers over library functions.

    vqgen train tokenizer --config NAME_OR_YAML [--data SPEC] --out RUN_DIR [--max-steps N] [--save-every N] [--set k=v ...]
    vqgen eval tokenizer RUN_DIR --data SPEC [--split test] [--json]
    vqgen reconstruct RUN_DIR --data SPEC [--split test] --out grid.png
    vqgen encode (--tokenizer RUN_DIR | --pixels K) --data SPEC --out TOKENS_DIR
    vqgen train prior --config NAME_OR_YAML --tokens TOKENS_DIR --out RUN_DIR [...]
    vqgen sample --prior RUN_DIR [--class K | --complete IMAGE_OR_SPEC] --n N --out grid.png
    vqgen eval prior RUN_DIR --judge JUDGE_DIR [--inception-weights PATH] [--json]
    vqgen train classifier --data SPEC --out JUDGE_DIR [--config fashion-mnist]
    vqgen eval classifier JUDGE_DIR --data SPEC [--split test] [--json]

User errors (bad config, data, paths) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ConfigError, VqgenError


def _add_train_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="preset name or YAML file")
    p.add_argument("--out", required=True, help="run directory (an existing one is resumed)")
    p.add_argument("--max-steps", type=int, help="override loop.max_steps")
    p.add_argument("--save-every", type=int, help="override loop.save_every")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _loop_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.max_steps is not None:
        extra.append(f"loop.max_steps={args.max_steps}")
    if args.save_every is not None:
        extra.append(f"loop.save_every={args.save_every}")
    return list(args.overrides) + extra


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from .config import resolve_config
    from .train.tokenizer import TOKENIZER_PRESETS, TokenizerTrainConfig, train_tokenizer
    cfg = resolve_config(TokenizerTrainConfig, args.config, TOKENIZER_PRESETS, _loop_overrides(args))
    train_tokenizer(cfg, args.out, data=args.data, progress=not args.no_progress)
    print(f"tokenizer saved to {args.out}")


def _load_tokenizer_and_data(run_dir: str, spec: str, split: str):
    from .data import load_images
    from .tokenizer.vqgan import VQTokenizer
    model = VQTokenizer.from_pretrained(run_dir)
    ae = model.cfg.autoencoder
    return model, load_images(spec, split, ae.resolution, ae.in_channels, progress=False)


def cmd_eval_tokenizer(args: argparse.Namespace) -> None:
    from .eval.tokenizer import evaluate_tokenizer
    model, data = _load_tokenizer_and_data(args.run_dir, args.data, args.split)
    metrics = evaluate_tokenizer(model, data, progress=not args.json)
    metrics.update(split=args.split, data=args.data, skipped=data.skipped)
    _print_metrics(metrics, args.json)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    import torch

    from .images import save_grid, to_uint8
    model, data = _load_tokenizer_and_data(args.run_dir, args.data, args.split)
    x = data.images[: args.n]
    rec = to_uint8(model.reconstruct(x))
    # Rows alternate: originals, then their reconstructions.
    nrow = min(args.n, 8)
    rows = [torch.cat([x[i:i + nrow], rec[i:i + nrow]]) for i in range(0, len(x), nrow)]
    path = save_grid(torch.cat(rows), args.out, nrow=nrow, scale=args.scale)
    print(f"wrote {path} (odd rows: originals, even rows: reconstructions)")


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics))
        return
    for k, v in metrics.items():
        print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")


def cmd_encode(args: argparse.Namespace) -> None:
    from .prior.codec import PaletteCodec, TokenizerCodec, encode_dataset
    if (args.tokenizer is None) == (args.pixels is None):
        raise ConfigError("give exactly one of --tokenizer RUN_DIR or --pixels K")
    if args.tokenizer is not None:
        from .tokenizer.vqgan import VQTokenizer
        codec = TokenizerCodec(VQTokenizer.from_pretrained(args.tokenizer), args.tokenizer)
    else:
        from .data import load_images
        from .prior.pixels import fit_palette
        train = load_images(args.data, "train", args.resolution, args.channels, progress=not args.no_progress)
        codec = PaletteCodec(fit_palette(train.images, args.pixels, seed=0), args.resolution)
    counts = encode_dataset(codec, args.data, args.out, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"encoded {counts} into {args.out}")


def cmd_train_prior(args: argparse.Namespace) -> None:
    from .config import resolve_config
    from .train.prior import PRIOR_PRESETS, PriorTrainConfig, train_prior
    overrides = _loop_overrides(args) + [f"tokens={args.tokens}"]
    cfg = resolve_config(PriorTrainConfig, args.config, PRIOR_PRESETS, overrides)
    _, metrics = train_prior(cfg, args.out, progress=not args.no_progress)
    print(f"prior saved to {args.out}" + (f"; test bits/token {metrics['test_bits_per_token']:.4f}" if metrics else ""))


def _completion_prefix(run, source: str, n: int, keep_rows: int | None):
    """Token prefixes (the first rows of the grid) of n images from an image file or a dataset spec."""
    import torch

    from .data import load_images
    from .errors import DataError
    codec = run.codec
    path = Path(source)
    if path.is_file():
        import numpy as np
        from PIL import Image
        img = Image.open(path).convert("L" if codec.channels == 1 else "RGB").resize((codec.resolution,) * 2)
        arr = torch.from_numpy(np.asarray(img).copy())
        images = (arr[None] if codec.channels == 1 else arr.permute(2, 0, 1))[None].repeat(n, 1, 1, 1)
    else:
        data = load_images(source, "test", codec.resolution, codec.channels, progress=False)
        if len(data) < n:
            raise DataError(f"{source} has {len(data)} images, fewer than --n {n}")
        images = data.images[:n]
    h, w = run.prior.config.grid
    keep = h // 2 if keep_rows is None else keep_rows
    if not 0 < keep < h:
        raise ConfigError(f"--keep-rows must be between 1 and {h - 1}")
    tokens = codec.encode(images)  # (n, h, w)
    return images, tokens[:, :keep].flatten(1)


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .images import save_grid
    from .prior.generate import generate, load_prior_run
    run = load_prior_run(args.prior)
    num_classes = run.prior.config.num_classes
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, guidance_scale=args.guidance,
                seed=args.seed, grid=tuple(args.grid) if args.grid else None,
                window=tuple(args.window) if args.window else None)
    if args.complete is not None and args.cls is not None:
        raise ConfigError("--class and --complete are exclusive")
    if args.complete is not None:
        originals, prefix = _completion_prefix(run, args.complete, args.n, args.keep_rows)
        images = generate(run, args.n, prefix=prefix, **opts)
        grid, nrow, what = torch.cat([originals, images]), args.n, "top row: originals; bottom row: completions"
    elif args.cls is not None or num_classes == 0:
        if args.cls is not None and not 0 <= args.cls < max(1, num_classes):
            raise ConfigError(f"--class must be in [0, {num_classes}) for this prior")
        cond = torch.full((args.n,), args.cls, dtype=torch.long) if args.cls is not None else None
        images = generate(run, args.n, cond=cond, **opts)
        grid, nrow, what = images, min(args.n, 10), f"{args.n} samples"
    else:  # class-conditional prior, no class given: one row per class
        cond = torch.arange(num_classes).repeat_interleave(args.n)
        images = generate(run, args.n * num_classes, cond=cond, **opts)
        grid, nrow, what = images, args.n, "one row per class: " + ", ".join(run.class_names or map(str, range(num_classes)))
    path = save_grid(grid, args.out, nrow=nrow, scale=args.scale)
    print(f"wrote {path} ({what})")


def cmd_eval_prior(args: argparse.Namespace) -> None:
    from .eval.judge import JudgeClassifier
    from .eval.prior import evaluate_prior
    from .prior.generate import load_prior_run
    inception = None
    if args.inception_weights:
        import torch

        from .eval.inception import InceptionFeatures
        inception = InceptionFeatures.from_file(args.inception_weights)
        if torch.cuda.is_available():  # ~6 GFLOP per image at 299×299
            inception = inception.cuda()
    metrics = evaluate_prior(load_prior_run(args.run_dir), JudgeClassifier.from_pretrained(args.judge),
                             n_per_class=args.n_per_class, guidance_scale=args.guidance, seed=args.seed,
                             inception=inception)
    _print_metrics(metrics, args.json)


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from .config import resolve_config
    from .train.classifier import CLASSIFIER_PRESETS, ClassifierTrainConfig, train_classifier
    cfg = resolve_config(ClassifierTrainConfig, args.config, CLASSIFIER_PRESETS, args.overrides)
    metrics = train_classifier(cfg, args.data, args.out, progress=not args.no_progress)
    print(f"judge saved to {args.out}; test accuracy {metrics['accuracy']:.4f}")


def cmd_eval_classifier(args: argparse.Namespace) -> None:
    from .eval.classifier import evaluate_classifier
    _print_metrics(evaluate_classifier(args.judge_dir, args.data, args.split), args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgen", description="Two-stage image generation with discrete codebooks.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    p = train.add_parser("tokenizer", help="train a VQ-GAN tokenizer")
    _add_train_common(p)
    p.add_argument("--data", help="dataset spec KIND[:PATH] (default: the config's)")
    p.set_defaults(func=cmd_train_tokenizer)

    evaluate = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    p = evaluate.add_parser("tokenizer", help="PSNR / SSIM / codebook usage on a dataset split")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval_tokenizer)

    p = sub.add_parser("reconstruct", help="grid of originals and reconstructions")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--scale", type=int, default=3, help="enlarge the PNG this many times")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", help="encode a dataset once into token shards")
    p.add_argument("--tokenizer", help="tokenizer run directory")
    p.add_argument("--pixels", type=int, metavar="K", help="Image GPT baseline: a K-colour k-means palette instead")
    p.add_argument("--resolution", type=int, default=28, help="image size for --pixels")
    p.add_argument("--channels", type=int, default=1, help="channels for --pixels")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_encode)

    p = train.add_parser("prior", help="train a transformer prior over token shards")
    _add_train_common(p)
    p.add_argument("--tokens", required=True, help="token directory made by `vqgen encode`")
    p.set_defaults(func=cmd_train_prior)

    p = train.add_parser("classifier", help="train the judge classifier used by evaluations")
    p.add_argument("--config", default="fashion-mnist")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("sample", help="sample images from a prior")
    p.add_argument("--prior", required=True)
    p.add_argument("--class", dest="cls", type=int, help="class id (default: one row per class)")
    p.add_argument("--complete", help="image file or dataset spec whose top rows are kept and completed")
    p.add_argument("--keep-rows", type=int, help="token rows kept for --complete (default: half)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"), help="token grid larger than trained (sliding window)")
    p.add_argument("--window", type=int, nargs=2, metavar=("h", "w"), help="sliding-window size (default: trained grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=3)
    p.set_defaults(func=cmd_sample)

    p = evaluate.add_parser("prior", help="test bits/token, judge accuracy and judge FD of samples")
    p.add_argument("run_dir")
    p.add_argument("--judge", required=True)
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inception-weights", metavar="PATH",
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .safetensors): adds standard "
                        "FID (fid_inception)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_prior)

    p = evaluate.add_parser("classifier", help="accuracy of a judge classifier")
    p.add_argument("judge_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_classifier)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (VqgenError, FileNotFoundError) as e:
        print(f"vqgen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqgen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
