"""Stage 2 commands: train a prior, sample from it, evaluate it; the judge classifier."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import add_train_common, loop_overrides, print_metrics


def cmd_train_prior(args: argparse.Namespace) -> None:
    from ..config import resolve_config
    from ..train.prior import PRIOR_PRESETS, PriorTrainConfig, train_prior
    overrides = loop_overrides(args) + [f"tokens={Path(args.tokens).resolve()}"]  # runs load from any folder
    cfg = resolve_config(PriorTrainConfig, args.config, PRIOR_PRESETS, overrides)
    _, metrics = train_prior(cfg, args.out, progress=not args.no_progress)
    print(f"prior saved to {args.out}" + (f"; test bits/token {metrics['test_bits_per_token']:.4f}" if metrics else ""))


def _completion_sources(run, source: str, n: int):
    """n uint8 images (n, C, H, W) to complete: one image file repeated, or the first n of a dataset's test split."""
    from ..data import load_images
    from ..errors import DataError
    from ..images import load_picture
    codec = run.codec
    if Path(source).is_file():
        return load_picture(source, codec.resolution, codec.channels)[None].repeat(n, 1, 1, 1)  # (n, C, H, W)
    data = load_images(source, "test", codec.resolution, codec.channels, progress=False)
    if len(data) < n:
        raise DataError(f"{source} has {len(data)} images, fewer than --n {n}")
    return data.images[:n]


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from ..images import save_grid
    from ..prior.generate import class_index, completion_prefix, default_guidance, generate, load_prior_run
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    run = load_prior_run(args.prior)
    num_classes = run.prior.config.num_classes
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                grid=tuple(args.grid) if args.grid else None, window=tuple(args.window) if args.window else None)
    if args.complete is not None and args.cls is not None:
        raise ConfigError("--class and --complete are exclusive")
    conditional = args.complete is None and num_classes > 0
    scale = default_guidance(run, conditional) if args.guidance is None else args.guidance
    if args.complete is not None:
        originals = _completion_sources(run, args.complete, args.n)
        prefix = completion_prefix(run, originals, args.keep_rows)
        images = generate(run, args.n, prefix=prefix, guidance_scale=scale, **opts)
        grid, nrow, what = torch.cat([originals, images]), args.n, "top row: originals; bottom row: completions"
    elif args.cls is not None or num_classes == 0:
        cond = None
        if args.cls is not None:
            cond = torch.full((args.n,), class_index(run, args.cls), dtype=torch.long)
        images = generate(run, args.n, cond=cond, guidance_scale=scale, **opts)
        grid, nrow, what = images, min(args.n, 10), f"{args.n} samples"
    else:  # class-conditional prior, no class given: one row per class
        cond = torch.arange(num_classes).repeat_interleave(args.n)
        images = generate(run, args.n * num_classes, cond=cond, guidance_scale=scale, **opts)
        grid, nrow, what = images, args.n, "one row per class: " + ", ".join(run.class_names or map(str, range(num_classes)))
    path = save_grid(grid, args.out, nrow=nrow, scale=args.scale)
    print(f"wrote {path} ({what}; guidance {scale:g})")


def cmd_eval_prior(args: argparse.Namespace) -> None:
    from ..eval.judge import JudgeClassifier
    from ..eval.prior import evaluate_prior
    from ..prior.generate import load_prior_run
    inception = None
    if args.inception_weights:
        import torch

        from ..eval.inception import InceptionFeatures
        inception = InceptionFeatures.from_file(args.inception_weights)
        if torch.cuda.is_available():  # ~6 GFLOP per image at 299×299
            inception = inception.cuda()
    metrics = evaluate_prior(load_prior_run(args.run_dir), JudgeClassifier.from_pretrained(args.judge),
                             n_per_class=args.n_per_class, guidance_scale=args.guidance, seed=args.seed,
                             inception=inception)
    print_metrics(metrics, args.json)


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from ..config import resolve_config
    from ..train.classifier import CLASSIFIER_PRESETS, ClassifierTrainConfig, train_classifier
    cfg = resolve_config(ClassifierTrainConfig, args.config, CLASSIFIER_PRESETS, args.overrides)
    metrics = train_classifier(cfg, args.data, args.out, progress=not args.no_progress)
    print(f"judge saved to {args.out}; test accuracy {metrics['accuracy']:.4f}")


def cmd_eval_classifier(args: argparse.Namespace) -> None:
    from ..eval.classifier import evaluate_classifier
    print_metrics(evaluate_classifier(args.judge_dir, args.data, args.split), args.json)


def register(sub, train, evaluate) -> None:
    """``train prior``, ``sample``, ``eval prior``, ``train classifier``, ``eval classifier``."""
    p = train.add_parser("prior", help="train a transformer prior over token shards")
    add_train_common(p)
    p.add_argument("--tokens", required=True, help="token directory made by `vqgen encode`")
    p.set_defaults(func=cmd_train_prior)

    p = sub.add_parser("sample", help="sample images from a prior")
    p.add_argument("--prior", required=True)
    p.add_argument("--class", dest="cls", help="class id or name (default: one row per class)")
    p.add_argument("--complete", help="image file or dataset spec whose top rows are kept and completed")
    p.add_argument("--keep-rows", type=int, help="token rows kept for --complete (default: half)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the run's recommended "
                   "one, 2 for a prior trained with condition dropout, else 1; 1 for completions)")
    p.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"), help="token grid larger than trained (sliding window)")
    p.add_argument("--window", type=int, nargs=2, metavar=("h", "w"), help="sliding-window size (default: trained grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=3)
    p.set_defaults(func=cmd_sample)

    p = evaluate.add_parser("prior", help="test bits/token, judge accuracy and judge FD of samples")
    p.add_argument("run_dir")
    p.add_argument("--judge", required=True)
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--guidance", type=float, help="guidance scale of the samples (default: the run's recommended one; "
                   "the report's guidance_scale says which)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inception-weights", metavar="PATH",
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .safetensors): adds standard "
                        "FID (fid_inception)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_prior)

    p = train.add_parser("classifier", help="train the judge classifier used by evaluations")
    p.add_argument("--config", default="fashion-mnist")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_classifier)

    p = evaluate.add_parser("classifier", help="accuracy of a judge classifier")
    p.add_argument("judge_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_classifier)
