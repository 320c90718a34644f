"""``vqgen serve RUN_DIR``: a web page over a trained run (the page is ``vqgen.serve``)."""
from __future__ import annotations

import argparse

from ..serve.limits import (CONCURRENT_JOBS, DEFAULT_HOST, DEFAULT_PORT, MAX_CANDIDATES, MAX_CAPTION_CHARS,
                            QUEUE_SIZE, ServeLimits)


def cmd_serve(args: argparse.Namespace) -> None:
    from ..serve.app import serve
    limits = ServeLimits(max_candidates=args.max_candidates, max_caption_chars=args.max_caption_chars,
                         concurrent_jobs=args.concurrent_jobs, queue_size=args.queue_size)
    serve(args.run_dir, clip=args.clip, host=args.host, port=args.port, device=args.device, limits=limits)


def register(sub, train, evaluate) -> None:
    """``serve``."""
    p = sub.add_parser("serve", help="a web page over a run: caption → images, class samples, or reconstructions")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a text2img, prior or tokenizer run (loaded once, at start)")
    p.add_argument("--clip", metavar="CLIP_DIR", help="a CLIP run (or transformers CLIPModel directory) to rank a "
                   "text-to-image run's candidates")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST}: this "
                   "machine only; 0.0.0.0 opens the page to the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.add_argument("--max-candidates", type=int, default=MAX_CANDIDATES, metavar="N",
                   help=f"most candidates (samples) one request may ask for (default {MAX_CANDIDATES})")
    p.add_argument("--max-caption-chars", type=int, default=MAX_CAPTION_CHARS, metavar="N",
                   help=f"longest caption accepted (default {MAX_CAPTION_CHARS})")
    p.add_argument("--concurrent-jobs", type=int, default=CONCURRENT_JOBS, metavar="N",
                   help=f"requests sampled at once (default {CONCURRENT_JOBS})")
    p.add_argument("--queue-size", type=int, default=QUEUE_SIZE, metavar="N",
                   help=f"requests that may wait; more are refused (default {QUEUE_SIZE})")
    p.set_defaults(func=cmd_serve)
