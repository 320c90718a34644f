"""One object from a trained run to pictures: load once, generate many times.

``Pipeline.from_pretrained(RUN_DIR)`` reads the run's ``config.json`` to see what it holds:

* a **text-to-image** run (``vqgen train text2img``): ``pipe("a red circle", n=8, keep=2)`` samples
  ``n`` candidates and, with a CLIP (``clip=CLIP_DIR``), keeps the ``keep`` best by CLIP score;
* a **prior** run (``vqgen train prior``): ``pipe(class_label=7, n=8)`` (an id or a class name)
  samples a class; ``pipe.complete(image, n=4)`` keeps the top token rows of a picture and samples the
  rest;
* a **tokenizer** run (``vqgen train tokenizer``): ``pipe.reconstruct(images)``.

With a CLIP, a tokenizer or text-to-image run also generates without sampling anything:
``pipe("a red circle", method="clip-guided", n=4)`` optimises the tokenizer's latents until the CLIP
scores the pictures close to the caption (``vqgen.rerank.clip_guided``, "VQGAN + CLIP").

Every call returns a :class:`Generation` (PIL images, their uint8 pixels, CLIP scores when ranked).
Unset sampling options take the run's recorded defaults (``default_guidance``: the measured best
guidance scale of a run trained with caption / condition dropout). The same arguments and ``seed``
give the same pictures. Mistakes (wrong kind of directory, ``keep > n``, an unknown class, an empty
caption, ...) raise :class:`vqgen.errors.VqgenError` subclasses with one-line messages. This is a thin
face over ``vqgen.text.generate`` and ``vqgen.prior.generate``, which the command line uses too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError, DataError
from .hub import read_payload
from .images import load_picture, save_captioned_grid, save_grid, to_pil, to_uint8

Picture = str | Path | Image.Image | np.ndarray | torch.Tensor  # a file, a PIL image, uint8 (H, W[, C]) or (C, H, W)


@dataclass
class Generation:
    """What one pipeline call made."""
    images: list[Image.Image]          # best first when ranked
    pixels: torch.Tensor               # the same, uint8 (k, C, H, W)
    scores: list[float] | None = None  # CLIP score of each image, descending; None when not ranked
    indices: list[int] = field(default_factory=list)  # which of the n candidates each image is
    prompt: str | None = None          # the caption as sampled, or the class name
    n: int = 0                         # candidates sampled
    guidance: float | None = None      # guidance scale used (None: no sampling, e.g. reconstruction)
    seed: int | None = None
    source: Image.Image | None = None  # completion / reconstruction: the input picture as the codec saw it
    tokens: torch.Tensor | None = None  # reconstruction, clip-guided: the token grids decoded, int64 (k, h, w)

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path, nrow: int | None = None, scale: int = 4) -> Path:
        """A PNG grid of the images (``nrow`` a row, default all), enlarged ``scale``×; the prompt and
        CLIP score under each picture when there are any."""
        nrow = nrow or len(self)
        if self.prompt is None and self.scores is None:
            return save_grid(self.pixels, path, nrow=nrow, scale=scale)
        scores = self.scores or [None] * len(self)
        labels = [" ".join(x for x in (self.prompt or "", f"({s:.1f})" if s is not None else "") if x) for s in scores]
        return save_captioned_grid(self.pixels, labels, path, nrow=nrow, scale=scale)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available")
    return dev


class Pipeline:
    """A loaded run; see the module docstring. Build it with :meth:`from_pretrained`."""

    def __init__(self, kind: str, path: Path, run: Any, scorer: Any = None, device: torch.device | None = None):
        self.kind = kind           # "text2img", "prior" or "tokenizer"
        self.path = path
        self.run = run             # TextToImageRun, PriorRun or VQTokenizer
        self.scorer = scorer       # a CLIP scorer (text-to-image only) or None
        self.device = device or torch.device("cpu")

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, clip: str | Path | None = None,
                        device: str | torch.device = "cpu") -> "Pipeline":
        """Load a text-to-image, prior or tokenizer run (with what it decodes with); ``clip`` (a vqgen
        CLIP run or a local transformers CLIPModel directory) ranks a text-to-image run's candidates and
        steers ``method="clip-guided"`` (text-to-image and tokenizer runs)."""
        path = Path(run_dir)
        kind = read_payload(path).get("kind")
        dev = _device(device)
        if kind not in ("text2img", "prior", "tokenizer"):
            raise ConfigError(f"{path} holds a {kind!r} model; a Pipeline loads a text-to-image run, a prior run or "
                              "a tokenizer run")
        if clip is not None and kind == "prior":
            raise ConfigError(f"clip= ranks the candidates of a caption; {path} is a prior run, which takes none")
        if kind == "text2img":
            from .text.generate import load_text2img_run
            run = load_text2img_run(path, device=dev)
            scorer = None
            if clip is not None:
                from .rerank.clip import load_clip
                scorer = load_clip(clip, map_location=dev)
            return cls(kind, path, run, scorer, dev)
        if kind == "prior":
            from .prior.generate import load_prior_run
            return cls(kind, path, load_prior_run(path, device=dev), None, dev)
        from .tokenizer.vqgan import VQTokenizer
        scorer = None
        if clip is not None:
            from .rerank.clip import load_clip
            scorer = load_clip(clip, map_location=dev)
        return cls(kind, path, VQTokenizer.from_pretrained(path, map_location=dev), scorer, dev)

    # ---- what the run is (for a UI) ------------------------------------------------------------

    @property
    def conditioning(self) -> str:
        """What a sample is asked for with: "caption", "class" or "none" (unconditional / tokenizer)."""
        if self.kind == "text2img":
            return "caption"
        if self.kind == "prior" and self.run.prior.config.num_classes > 0:
            return "class"
        return "none"

    @property
    def class_names(self) -> list[str]:
        """A class-conditional prior's class names (ids as strings when the data named none); else []."""
        if self.conditioning != "class":
            return []
        n = self.run.prior.config.num_classes
        return list(self.run.class_names) if len(self.run.class_names) == n else [str(i) for i in range(n)]

    @property
    def default_guidance(self) -> float | None:
        """The guidance scale used when a call gives none: the run's recorded one (the measured best for
        a run trained with caption / condition dropout, else 1); None for a tokenizer."""
        if self.kind == "text2img":
            return self.run.model.config.guidance_scale
        if self.kind == "prior":
            from .prior.generate import default_guidance
            return default_guidance(self.run, self.conditioning == "class")
        return None

    @property
    def default_temperature(self) -> float | None:
        if self.kind == "text2img":
            return self.run.model.config.temperature
        return 1.0 if self.kind == "prior" else None

    @property
    def can_rank(self) -> bool:
        """Whether ``keep < n`` is possible: a run loaded with a CLIP."""
        return self.scorer is not None

    @property
    def can_complete(self) -> bool:
        return self.kind == "prior"

    @property
    def resolution(self) -> int:
        if self.kind == "tokenizer":
            return self.run.cfg.autoencoder.resolution
        return self.run.codec.resolution

    @property
    def channels(self) -> int:
        if self.kind == "tokenizer":
            return self.run.cfg.autoencoder.in_channels
        return self.run.codec.channels

    def info(self) -> dict:
        """A JSON-able description of the run for a UI."""
        return {"kind": self.kind, "path": str(self.path), "conditioning": self.conditioning,
                "class_names": self.class_names, "default_guidance": self.default_guidance,
                "default_temperature": self.default_temperature, "can_rank": self.can_rank,
                "can_complete": self.can_complete, "resolution": self.resolution, "channels": self.channels,
                "device": str(self.device)}

    def __repr__(self) -> str:
        return f"Pipeline({self.kind!r}, {str(self.path)!r}, conditioning={self.conditioning!r})"

    # ---- generation ----------------------------------------------------------------------------

    def __call__(self, caption: str | None = None, *, class_label: int | str | None = None, n: int = 8,
                 keep: int | None = None, guidance: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0, method: str | None = None,
                 steps: int | None = None, lr: float | None = None, cutouts: int | None = None,
                 init: str | Path | None = None) -> Generation:
        """``n`` samples for a caption (text-to-image) or a class (prior), ``keep`` of them kept (default
        all; fewer needs a CLIP, which then ranks them best first). Unset options take the run's defaults.

        ``method="clip-guided"`` (a text-to-image or tokenizer run loaded with ``clip=``): ``n`` pictures of
        the caption made by optimising the tokenizer's latents against the CLIP, best first; ``steps``,
        ``lr``, ``cutouts`` and ``init`` ("noise", "tokens" or an image file) default to
        ``ClipGuidedConfig``'s measured values."""
        guided = {"steps": steps, "lr": lr, "cutouts": cutouts, "init": init}
        if method == "clip-guided":
            return self._clip_guided(caption, class_label, n, keep, seed, guided,
                                     {"guidance": guidance, "temperature": temperature, "top_k": top_k, "top_p": top_p})
        if method is not None:
            raise ConfigError(f"unknown method {method!r}: None (sample the run's model) or 'clip-guided'")
        given = [k for k, v in guided.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} are options of method='clip-guided'")
        if self.kind == "tokenizer":
            hint = "" if self.scorer is None else " or, with its CLIP, generates (method='clip-guided')"
            raise ConfigError(f"{self.path} is a tokenizer run: it reconstructs pictures (pipe.reconstruct(images))"
                              f"{hint}; it does not sample")
        hint = "load the pipeline with clip=CLIP_DIR" if self.kind == "text2img" else \
            "only a text-to-image run's candidates are ranked (by a CLIP)"
        from .text.generate import check_counts
        keep = check_counts(n, keep, can_rank=self.can_rank, rank_hint=hint)
        if self.kind == "text2img":
            if class_label is not None:
                raise ConfigError("a text-to-image run takes a caption, not class_label")
            if caption is None:
                raise ConfigError('a text-to-image run needs a caption, e.g. pipe("a red circle")')
            return self._text(caption, n, keep, guidance, temperature, top_k, top_p, seed)
        if caption is not None:
            what = (f"class_label= (one of {self.class_names})" if self.class_names
                    else "no caption (it is unconditional)")
            raise ConfigError(f"{self.path} is a prior run: it takes {what}, not a caption")
        cls = self._class(class_label, required=True)
        return self._prior(n, cls, None, guidance, temperature, top_k, top_p, seed)

    def complete(self, image: Picture, *, n: int = 8, keep_rows: int | None = None,
                 class_label: int | str | None = None, guidance: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0) -> Generation:
        """``n`` completions of one picture (a file, PIL image, uint8 array or (C, H, W) tensor, resized to
        the codec's resolution): its first ``keep_rows`` token rows (default half) are kept, the rest
        sampled — of a class when ``class_label`` is given (then guided by default), else unguided."""
        if self.kind != "prior":
            raise ConfigError(f"{self.path} is a {self.kind} run; completion needs a prior run")
        from .prior.generate import completion_prefix
        from .text.generate import check_counts
        check_counts(n, None, can_rank=False, rank_hint="")
        picture = load_picture(image, self.resolution, self.channels)  # (C, H, W)
        prefix = completion_prefix(self.run, picture[None].repeat(n, 1, 1, 1), keep_rows)  # (n, rows·W)
        cls = self._class(class_label, required=False)
        out = self._prior(n, cls, prefix, guidance, temperature, top_k, top_p, seed)
        out.source = to_pil(picture[None])[0]
        return out

    def reconstruct(self, images: Picture) -> Generation:
        """A tokenizer run's reconstructions of one picture, or of uint8 (N, C, H, W) images at its resolution."""
        if self.kind != "tokenizer":
            raise ConfigError(f"{self.path} is a {self.kind} run; reconstruction needs a tokenizer run")
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            if images.dtype != torch.uint8 or images.shape[1] != self.channels:
                raise DataError(f"reconstruct takes uint8 (N, {self.channels}, H, W) images, got "
                                f"{tuple(images.shape)} {images.dtype}")
            x = images
        else:
            x = load_picture(images, self.resolution, self.channels)[None]  # (1, C, H, W)
        try:
            with torch.inference_mode():
                tokens = self.run.encode(x.to(self.device))  # (N, h, w)
                pixels = to_uint8(self.run.decode(tokens)).cpu()  # (N, C, H, W)
        except ValueError as exc:  # e.g. a size the tokenizer's downsampling does not divide
            raise DataError(str(exc)) from exc
        return Generation(to_pil(pixels), pixels, indices=list(range(len(pixels))), n=len(pixels),
                          source=to_pil(x[:1].cpu())[0], tokens=tokens.cpu())

    # ---- internals -----------------------------------------------------------------------------

    def _clip_guided(self, caption: str | None, class_label, n: int, keep: int | None, seed: int, options: dict,
                     sampling: dict) -> Generation:
        from .rerank.clip_guided import ClipGuidedConfig, clip_guided
        from .text.generate import check_caption, check_counts
        if self.kind == "prior" or self.scorer is None:
            raise ConfigError(f"method='clip-guided' needs a tokenizer or text-to-image run loaded with clip=CLIP_DIR; "
                              f"{self.path} is a {self.kind} run" + ("" if self.kind == "prior" else " without a CLIP"))
        given = [k for k, v in sampling.items() if v is not None] + (["class_label"] if class_label is not None else [])
        if given:
            raise ConfigError(f"{', '.join(given)} are options of sampling, not of method='clip-guided'")
        if caption is None:
            raise ConfigError('method=\'clip-guided\' needs a caption, e.g. pipe("a red circle", method="clip-guided")')
        keep = check_counts(n, keep, can_rank=True, rank_hint="")
        caption = check_caption(caption)
        cfg = ClipGuidedConfig(seed=seed, **{k: v for k, v in options.items() if v is not None})
        from .tokenizer.vqgan import VQTokenizer
        tokenizer = self.run if self.kind == "tokenizer" else getattr(self.run.codec, "model", None)
        if not isinstance(tokenizer, VQTokenizer):
            raise ConfigError(f"{self.path} decodes pixel tokens, not a tokenizer's: method='clip-guided' needs "
                              "a tokenizer")
        out = clip_guided(tokenizer, self.scorer, [caption] * n, cfg)
        order = torch.argsort(out.scores, descending=True, stable=True)[:keep]  # (keep,) best first
        pixels = out.images[order]  # (keep, C, H, W)
        return Generation(to_pil(pixels), pixels, out.scores[order].tolist(), order.tolist(), caption, n, None, seed,
                          tokens=out.tokens[order])

    def _class(self, label: int | str | None, required: bool) -> int | None:
        if self.conditioning != "class":
            if label is not None:
                raise ConfigError(f"{self.path} is an unconditional prior: it takes no class_label")
            return None
        if label is None:
            if required:
                raise ConfigError(f"this prior is class-conditional: pass class_label=, an id or one of "
                                  f"{self.class_names}")
            return None
        from .prior.generate import class_index
        return class_index(self.run, label)

    def _check_options(self, guidance: float, temperature: float, top_k: int | None, top_p: float | None,
                       vocab_size: int) -> None:
        from .prior.sampling import check_sampling_options
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < math.inf:
            raise ConfigError(f"guidance must be a finite number ≥ 0, got {guidance!r}")
        try:
            check_sampling_options(temperature, top_k, top_p, guidance, vocab_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def _text(self, caption: str, n: int, keep: int, guidance, temperature, top_k, top_p, seed: int) -> Generation:
        from .text.generate import best_of
        cfg = self.run.model.config
        guidance = self.default_guidance if guidance is None else guidance
        temperature = self.default_temperature if temperature is None else temperature
        self._check_options(guidance, temperature, top_k, top_p, cfg.vocab_size)
        ranked = best_of(self.run, [caption], n, keep, self.scorer, guidance_scale=guidance, temperature=temperature,
                         top_k=top_k, top_p=top_p, seed=seed)[0]
        scores = ranked.scores.tolist() if ranked.scores is not None else None
        return Generation(to_pil(ranked.images), ranked.images, scores, ranked.indices.tolist(), ranked.caption, n,
                          float(guidance), seed)

    def _prior(self, n: int, cls: int | None, prefix: torch.Tensor | None, guidance, temperature, top_k, top_p,
               seed: int) -> Generation:
        from .prior.generate import default_guidance, generate
        guidance = default_guidance(self.run, cls is not None) if guidance is None else guidance
        temperature = 1.0 if temperature is None else temperature
        if cls is None and guidance != 1:
            raise ConfigError(f"guidance {guidance:g} needs a class: pass class_label= (or guidance=1)")
        self._check_options(guidance, temperature, top_k, top_p, self.run.prior.config.vocab_size)
        cond = torch.full((n,), cls, dtype=torch.long) if cls is not None else None
        pixels = generate(self.run, n, cond=cond, prefix=prefix, guidance_scale=guidance, temperature=temperature,
                          top_k=top_k, top_p=top_p, seed=seed)  # uint8 (n, C, H, W)
        prompt = self.class_names[cls] if cls is not None else None
        return Generation(to_pil(pixels), pixels, None, list(range(n)), prompt, n, float(guidance), seed)
