"""From a trained text-to-image run to pictures: the model, its caption tokenizer and the image codec
its tokens were made with; captions in, uint8 candidate images out."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError
from ..hub import run_tokens_dir
from ..prior.codec import Codec, TokenizerCodec, load_codec
from .bpe import CaptionTokenizer, normalize_caption
from .dalle import KIND, TextToImage
from .sampling import sample_tokens

if TYPE_CHECKING:  # the reranker is imported where candidates are ranked
    from ..rerank.clip import ClipScorer


@dataclass
class TextToImageRun:
    model: TextToImage
    tokenizer: CaptionTokenizer
    codec: Codec
    path: Path


def load_text2img_run(run_dir: str | Path, device: str | torch.device = "cpu") -> TextToImageRun:
    """The model of ``run_dir`` (eval mode), its caption tokenizer and the codec of its token directory,
    the networks on ``device``."""
    run_dir = Path(run_dir)
    tokens_dir = run_tokens_dir(run_dir, KIND)  # ConfigError for another kind of run, or a damaged train_config.json
    model = TextToImage.from_pretrained(run_dir, map_location=device).eval()
    tokenizer = CaptionTokenizer.load(run_dir)
    codec = load_codec(tokens_dir)
    if isinstance(codec, TokenizerCodec):
        codec.model.to(device)
    return TextToImageRun(model, tokenizer, codec, run_dir)


def check_caption(caption: str) -> str:
    """ConfigError for an empty caption (after normalisation); the normalised caption otherwise."""
    text = normalize_caption(caption)
    if not text:
        raise ConfigError("the caption is empty: describe the picture, e.g. \"a red circle in the top left\"")
    return text


def generate_candidates(run: TextToImageRun, captions: list[str], n: int, *, guidance_scale: float | None = None,
                        temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                        seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """``n`` candidate images per caption → uint8 (len(captions), n, C, H, W).

    ``guidance_scale`` and ``temperature`` None take the model's defaults (its config's measured best,
    see ``TextToImageConfig``). A caption longer
    than the model's maximum is truncated with a warning.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of candidates must be a positive integer, got {n!r}")
    captions = [check_caption(c) for c in captions]
    scale = run.model.config.guidance_scale if guidance_scale is None else guidance_scale
    temperature = run.model.config.temperature if temperature is None else temperature
    ids, truncated = run.tokenizer.encode(captions, run.model.config.max_text_len)  # (N, L)
    if truncated:
        warnings.warn(f"{truncated} caption(s) exceed {run.model.config.max_text_len} ids and were truncated",
                      stacklevel=2)
    rows = ids.repeat_interleave(n, dim=0)  # (N·n, L): caption i's candidates are rows i·n .. i·n+n-1
    device = run.model.head.weight.device
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, rows.shape[0], batch_size):
        tokens = sample_tokens(run.model, rows[i:i + batch_size].to(device), temperature=temperature, top_k=top_k,
                               top_p=top_p, guidance_scale=scale, generator=g)  # (b, h, w)
        with torch.inference_mode():
            out.append(run.codec.decode(tokens).cpu())
    images = torch.cat(out)  # (N·n, C, H, W)
    return images.view(len(captions), n, *images.shape[1:])


def check_counts(n: int, keep: int | None, can_rank: bool, rank_hint: str, flag: str = "") -> int:
    """The number of candidates to keep (``keep``, or all ``n`` when None); ConfigError unless
    1 ≤ keep ≤ n, and when keeping fewer than ``n`` without a ranker (``can_rank``), saying
    ``rank_hint``. ``flag`` prefixes the names in messages (``--`` for the command line)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{flag}n must be at least 1, got {n!r}")
    keep = n if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise ConfigError(f"{flag}keep must be between 1 and {flag}n ({n}), got {keep!r}")
    if keep < n and not can_rank:
        raise ConfigError(f"{flag}keep {keep} < {flag}n {n} ranks candidates: {rank_hint}")
    return keep


@dataclass
class Ranked:
    """The kept candidates of one caption."""
    caption: str                  # the caption as sampled (normalised)
    images: torch.Tensor          # uint8 (keep, C, H, W): best first when scored
    indices: torch.Tensor         # (keep,) which of the n candidates each kept image is
    scores: torch.Tensor | None   # (keep,) CLIP scores, descending; None without a scorer


def best_of(run: TextToImageRun, captions: list[str], n: int, keep: int, scorer: ClipScorer | None = None,
            **sampling) -> list[Ranked]:
    """``n`` candidates per caption (:func:`generate_candidates`, ``sampling`` its options), of which
    the ``keep`` best by ``scorer``'s CLIP score are kept — or the first ``keep`` without a scorer."""
    captions = [check_caption(c) for c in captions]
    candidates = generate_candidates(run, captions, n, **sampling)  # (N, n, C, H, W)
    out = []
    for caption, cands in zip(captions, candidates):
        if scorer is not None:
            from ..rerank.clip import rerank
            kept, scores = rerank(cands, caption, scorer, keep)  # (keep,), (n,)
            out.append(Ranked(caption, cands[kept], kept, scores[kept]))
        else:
            out.append(Ranked(caption, cands[:keep], torch.arange(keep), None))
    return out
