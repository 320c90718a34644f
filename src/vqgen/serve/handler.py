"""What the web page does with a request, without the web page: validate every value, run the loaded
:class:`vqgen.Pipeline`, and answer with pictures, labels and a one-line status.

Everything here is plain Python (no gradio), so tests call it directly. The page's widgets carry the
same limits, but a request can come from anything that speaks HTTP, so every value is checked again
here. Nothing a request carries becomes a path: pictures arrive as PIL images or uint8 arrays (a string
is refused, never opened), and answers are PIL images, never files named by the request.

No exception leaves a handler: a :class:`vqgen.errors.VqgenError` (a bad value, an unknown class, an
empty caption...) becomes its one-line message; anything else is logged on the server with its
traceback and the page is told only that the request failed.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, VqgenError
from .limits import DISPLAY_PX, MAX_GUIDANCE, MAX_SEED, MAX_TEMPERATURE, ServeLimits

log = logging.getLogger("vqgen.serve")


@dataclass
class Reply:
    """One answer for the page."""
    ok: bool
    status: str                                   # what was made and how long it took, or what was wrong
    images: list[tuple[Image.Image, str]] = field(default_factory=list)  # (picture, its label)
    tokens: str = ""                              # a tokenizer's token grid, one row a line
    seconds: float | None = None                  # time the model took


# ---- value checks ------------------------------------------------------------------------------------

def _shown(value: Any) -> str:
    """A value for a message, never long (a request may send megabytes)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def whole_number(name: str, value: Any, lo: int, hi: int) -> int:
    """An int in [lo, hi]; a float with no fraction (what number widgets send) counts as one."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a whole number from {lo} to {hi}, got {_shown(value)}")
    return value


def real_number(name: str, value: Any, lo: float, hi: float, above: bool = False) -> float:
    """A finite number in [lo, hi] (in (lo, hi] when ``above``)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (lo < value if above else lo <= value) and value <= hi)
    if not ok:
        span = f"above {lo:g} and at most {hi:g}" if above else f"from {lo:g} to {hi:g}"
        raise ConfigError(f"{name} must be a number {span}, got {_shown(value)}")
    return float(value)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def enlarged(image: Image.Image, size: int = DISPLAY_PX) -> Image.Image:
    """``image`` scaled up by a whole factor (nearest neighbour: pixels stay crisp) to about ``size``."""
    factor = max(1, size // max(image.size))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def token_grid_text(tokens: torch.Tensor) -> str:
    """A (h, w) token grid as aligned text, one row a line."""
    rows = tokens.tolist()
    width = max(len(str(t)) for row in rows for t in row)
    return "\n".join(" ".join(str(t).rjust(width) for t in row) for row in rows)


# ---- the handler ---------------------------------------------------------------------------------------

class Handler:
    """The page's requests against one loaded pipeline (``pipe``, a :class:`vqgen.Pipeline`)."""

    def __init__(self, pipe: Any, limits: ServeLimits | None = None):
        self.pipe = pipe
        self.limits = limits or ServeLimits()

    @property
    def kind(self) -> str:
        return self.pipe.kind

    @property
    def max_guidance(self) -> float:
        """MAX_GUIDANCE, or the run's own default scale when that is larger."""
        return max(MAX_GUIDANCE, self.pipe.default_guidance or 0.0)

    def _answer(self, work: Callable[[], Reply]) -> Reply:
        start = time.perf_counter()
        try:
            reply = work()
        except VqgenError as exc:
            return Reply(False, " ".join(str(exc).split()))  # one line, as the CLI prints it
        except Exception:  # a bug, not a bad value: the details go to the server log, not the page
            log.exception("vqgen serve: a %s request failed", self.kind)
            return Reply(False, "the request failed on the server (the server log has the details)")
        reply.seconds = time.perf_counter() - start
        reply.status = f"{reply.status} · {reply.seconds:.2f} s"
        return reply

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise ConfigError(f"this page serves a {self.kind} run, not a {kind} one")

    # ---- text to image ---------------------------------------------------------------------------------

    def text2img(self, caption: Any, n: Any = 8, keep: Any = None, guidance: Any = None, temperature: Any = None,
                 top_k: Any = 0, seed: Any = 0) -> Reply:
        """``n`` candidates for ``caption``, the ``keep`` best by CLIP score (all when None or without a
        CLIP); ``guidance`` / ``temperature`` None take the run's defaults; ``top_k`` 0 or None: off."""
        return self._answer(lambda: self._text2img(caption, n, keep, guidance, temperature, top_k, seed))

    def _text2img(self, caption, n, keep, guidance, temperature, top_k, seed) -> Reply:
        self._need("text2img")
        lim = self.limits
        if not isinstance(caption, str):
            raise ConfigError(f"the caption must be text, got {type(caption).__name__}")
        if len(caption) > lim.max_caption_chars:
            raise ConfigError(f"the caption has {len(caption)} characters; the limit is {lim.max_caption_chars}")
        n = whole_number("candidates", n, 1, lim.max_candidates)
        if keep is None or not self.pipe.can_rank:  # without a CLIP every candidate is kept
            keep = n
        keep = whole_number("kept", keep, 1, n)
        guidance = self.pipe.default_guidance if guidance is None else real_number("guidance", guidance, 0,
                                                                                   self.max_guidance)
        temperature = self.pipe.default_temperature if temperature is None else \
            real_number("temperature", temperature, 0, MAX_TEMPERATURE, above=True)
        vocab = self.pipe.run.model.config.vocab_size
        top_k = None if top_k is None else (whole_number("top-k", top_k, 0, vocab) or None)  # 0: off
        seed = whole_number("seed", seed, 0, MAX_SEED)

        from ..text.generate import check_caption
        text = check_caption(caption)
        cut = ""
        max_len = self.pipe.run.model.config.max_text_len
        if self.pipe.run.tokenizer.encode([text], max_len)[1]:
            cut = f" · the caption is longer than the model reads ({max_len - 2} tokens): its end was left out"
        out = self.pipe(caption, n=n, keep=keep, guidance=guidance, temperature=temperature, top_k=top_k,
                        seed=seed)
        if out.scores is not None:
            labels = [f"CLIP {s:.2f}" for s in out.scores]
            what = f"best {len(out)} of {n} by CLIP score"
        else:
            labels = [f"candidate {i + 1}" for i in out.indices]
            what = f"{_count(len(out), 'sample')} (no CLIP loaded: not ranked)"
        status = (f"{what} for {out.prompt!r} · guidance {guidance:g} · temperature {temperature:g} · "
                  f"top-k {top_k or 'off'} · seed {seed}{cut}")
        return Reply(True, status, [(enlarged(im), label) for im, label in zip(out.images, labels)])

    # ---- prior -------------------------------------------------------------------------------------------

    def prior(self, class_name: Any = None, n: Any = 8, guidance: Any = None, seed: Any = 0) -> Reply:
        """``n`` samples of a class (a class-conditional prior: a name from ``pipe.class_names`` or an
        id) at ``guidance`` (None: the run's default), or unconditional ones (then no class, no guidance)."""
        return self._answer(lambda: self._prior(class_name, n, guidance, seed))

    def _prior(self, class_name, n, guidance, seed) -> Reply:
        self._need("prior")
        n = whole_number("samples", n, 1, self.limits.max_candidates)
        seed = whole_number("seed", seed, 0, MAX_SEED)
        names = self.pipe.class_names
        if self.pipe.conditioning != "class":
            if class_name not in (None, "") or guidance is not None:
                raise ConfigError("this prior is unconditional: it takes no class and no guidance")
            out = self.pipe(n=n, seed=seed)
            what = f"{_count(n, 'unconditional sample')}"
        else:
            if isinstance(class_name, str) and class_name in names:
                label: int | str = names.index(class_name)
            elif isinstance(class_name, (int, float)) and not isinstance(class_name, bool):
                label = whole_number("class", class_name, 0, len(names) - 1)
            else:
                raise ConfigError(f"pick a class from the list ({len(names)} classes), got {_shown(class_name)}")
            guidance = self.pipe.default_guidance if guidance is None else real_number("guidance", guidance, 0,
                                                                                       self.max_guidance)
            out = self.pipe(class_label=label, n=n, guidance=guidance, seed=seed)
            what = f"{_count(n, 'sample')} of {out.prompt!r} · guidance {guidance:g}"
        return Reply(True, f"{what} · seed {seed}",
                     [(enlarged(im), f"sample {i + 1}") for i, im in enumerate(out.images)])

    # ---- tokenizer -----------------------------------------------------------------------------------------

    def tokenizer(self, image: Any) -> Reply:
        """An uploaded picture (PIL image or uint8 array; a string is refused, never opened) → the picture
        as the tokenizer sees it, its reconstruction, and its token grid."""
        return self._answer(lambda: self._tokenizer(image))

    def _tokenizer(self, image) -> Reply:
        self._need("tokenizer")
        if image is None:
            raise ConfigError("upload a picture first")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ConfigError(f"a picture array must be uint8 (H, W) or (H, W, C), got {image.shape} {image.dtype}")
            height, width = image.shape[:2]
        elif isinstance(image, Image.Image):
            width, height = image.size
        else:  # in particular a str or path: requests never name files on the server
            raise ConfigError(f"the picture must be an uploaded image, got {type(image).__name__}")
        size = width * height
        if size > self.limits.max_upload_pixels:
            raise ConfigError(f"the picture has {size} pixels; the limit is {self.limits.max_upload_pixels}")
        if size == 0:
            raise ConfigError("the picture is empty")

        from ..images import load_picture
        picture = load_picture(image, self.pipe.resolution, self.pipe.channels)  # uint8 (C, H, W)
        out = self.pipe.reconstruct(picture)
        tokens = out.tokens[0]  # (h, w): the grid the reconstruction was decoded from
        h, w = tokens.shape
        r = self.pipe.resolution
        status = (f"{h}×{w} tokens of a {self.pipe.run.codebook_size}-entry codebook for a {r}×{r} picture "
                  f"(uploaded {width}×{height})")
        return Reply(True, status, [(enlarged(out.source), "input as the tokenizer sees it"),
                                    (enlarged(out.images[0]), "reconstruction")], tokens=token_grid_text(tokens))
