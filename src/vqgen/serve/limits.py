"""The web page's caps, and why each default (light: the command line reads them for its help)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

DEFAULT_HOST = "127.0.0.1"  # loopback: the page is this machine's unless --host says otherwise
DEFAULT_PORT = 7860

# ServeLimits' defaults (`vqgen serve` flags override the first four).

# Candidates per request. Each is a full autoregressive sample (one transformer pass per image token)
# and CLIP-scored; 64 is the "64 → best few" of DALL·E-mini-style reranking and takes seconds to a few
# minutes on a CPU for the project's models. More would let one request hold the machine.
MAX_CANDIDATES = 64
# Characters of a caption. Captions are cut to the model's `max_text_len` ids (32 by default, about
# 100 characters) anyway; the cap bounds what a request can make the server normalise and tokenise.
MAX_CAPTION_CHARS = 300
# Jobs sampled at once: one model shares the machine's cores, so parallel jobs only slow each other.
CONCURRENT_JOBS = 1
# Requests waiting behind them; the next one is told the queue is full instead of waiting for minutes.
QUEUE_SIZE = 16
# An upload's size (bytes) and pixels: a picture is resized to the tokenizer's resolution anyway.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096
# Ranges of the sampling options: wider values are legal for the library but never useful on a page.
MAX_GUIDANCE = 20.0
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**32 - 1
# Pictures are enlarged (nearest neighbour) to about this many pixels a side for display.
DISPLAY_PX = 256


@dataclass(frozen=True)
class ServeLimits:
    """The page's caps (see the module constants for why each default)."""
    max_candidates: int = MAX_CANDIDATES
    max_caption_chars: int = MAX_CAPTION_CHARS
    concurrent_jobs: int = CONCURRENT_JOBS
    queue_size: int = QUEUE_SIZE
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_upload_pixels: int = MAX_UPLOAD_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_candidates", "max_caption_chars", "concurrent_jobs", "queue_size", "max_upload_bytes",
                     "max_upload_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
