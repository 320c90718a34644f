"""Stage 1 commands: train / evaluate a tokenizer, show reconstructions, encode a dataset into tokens."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import add_train_common, loop_overrides, print_metrics


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from ..config import resolve_config
    from ..train.tokenizer import TOKENIZER_PRESETS, TokenizerTrainConfig, train_tokenizer
    cfg = resolve_config(TokenizerTrainConfig, args.config, TOKENIZER_PRESETS, loop_overrides(args))
    train_tokenizer(cfg, args.out, data=args.data, progress=not args.no_progress, workers=_workers(args.workers))
    print(f"tokenizer saved to {args.out}")


def _load_tokenizer_and_data(run_dir: str, spec: str, split: str):
    from ..data import load_images
    from ..tokenizer.vqgan import VQTokenizer
    model = VQTokenizer.from_pretrained(run_dir)
    ae = model.cfg.autoencoder
    return model, load_images(spec, split, ae.resolution, ae.in_channels, progress=False)


def cmd_eval_tokenizer(args: argparse.Namespace) -> None:
    from ..eval.tokenizer import evaluate_tokenizer
    model, data = _load_tokenizer_and_data(args.run_dir, args.data, args.split)
    metrics = evaluate_tokenizer(model, data, progress=not args.json)
    metrics.update(split=args.split, data=args.data, skipped=data.skipped)
    print_metrics(metrics, args.json)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    import torch

    from ..images import save_grid, to_uint8
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    model, data = _load_tokenizer_and_data(args.run_dir, args.data, args.split)
    x = data.images[: args.n]
    rec = to_uint8(model.reconstruct(x))
    # Rows alternate: originals, then their reconstructions.
    nrow = min(args.n, 8)
    rows = [torch.cat([x[i:i + nrow], rec[i:i + nrow]]) for i in range(0, len(x), nrow)]
    path = save_grid(torch.cat(rows), args.out, nrow=nrow, scale=args.scale)
    print(f"wrote {path} (odd rows: originals, even rows: reconstructions)")


def _workers(n: int) -> int:
    if n < 0:
        raise ConfigError(f"--workers must be 0 (decode in the main process) or more, got {n}")
    return n


def cmd_encode(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..data.encode import encode_dataset
    from ..prior.codec import PALETTE_FILE, PaletteCodec, TokenizerCodec
    from ..train.common import setup_distributed
    if (args.tokenizer is None) == (args.pixels is None):
        raise ConfigError("give exactly one of --tokenizer RUN_DIR or --pixels K")
    workers = _workers(args.workers)
    if args.tokenizer is not None:
        from ..tokenizer.vqgan import VQTokenizer
        codec = TokenizerCodec(VQTokenizer.from_pretrained(args.tokenizer), args.tokenizer)
    else:
        from ..data import load_images
        from ..prior.pixels import fit_palette
        train = load_images(args.data, "train", args.resolution, args.channels, progress=not args.no_progress)
        codec = PaletteCodec(fit_palette(train.images, args.pixels, seed=0), args.resolution)
    # Gloo on GPUs too: the codec runs on the CPU, and encoding only gathers counts and waits at barriers.
    d = setup_distributed("cpu")
    out = Path(args.out)
    if isinstance(codec, PaletteCodec) and d.is_main and not (out / PALETTE_FILE).exists():
        from ..prior.pixels import save_palette
        out.mkdir(parents=True, exist_ok=True)
        save_palette(codec.palette, out / PALETTE_FILE)  # the token directory names it (load_codec)
    counts = encode_dataset(codec, args.data, out, batch_size=args.batch_size, progress=not args.no_progress,
                            workers=workers, rank=d.rank, world=d.world)
    if d.world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    if d.is_main:
        print(f"encoded {counts} into {args.out}" + (f" ({d.world} ranks)" if d.world > 1 else ""))


def register(sub, train, evaluate) -> None:
    """``train tokenizer``, ``eval tokenizer``, ``reconstruct``, ``encode``."""
    p = train.add_parser("tokenizer", help="train a VQ-GAN tokenizer")
    add_train_common(p)
    p.add_argument("--data", help="dataset spec KIND[:PATH] (default: the config's)")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader processes decoding batches of a dataset read lazily (default 2; 0: in this process)")
    p.set_defaults(func=cmd_train_tokenizer)

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

    p = sub.add_parser("encode", help="encode a dataset once into token shards (under torchrun: across ranks)")
    p.add_argument("--tokenizer", help="tokenizer run directory")
    p.add_argument("--pixels", type=int, metavar="K", help="Image GPT baseline: a K-colour k-means palette instead")
    p.add_argument("--resolution", type=int, default=28, help="image size for --pixels")
    p.add_argument("--channels", type=int, default=1, help="channels for --pixels")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader processes decoding a lazily read dataset or streaming wds shards (default 2; "
                        "0: in this process)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_encode)
