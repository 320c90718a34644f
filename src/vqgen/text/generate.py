"""From a trained text-to-image run to pictures: the model, its caption tokenizer and the image codec
its tokens were made with; captions in, uint8 candidate images out."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..hub import check_kind
from ..prior.codec import Codec, load_codec
from .bpe import CaptionTokenizer, normalize_caption
from .dalle import KIND, TextToImage
from .sampling import sample_tokens


@dataclass
class TextToImageRun:
    model: TextToImage
    tokenizer: CaptionTokenizer
    codec: Codec
    path: Path


def load_text2img_run(run_dir: str | Path) -> TextToImageRun:
    run_dir = Path(run_dir)
    check_kind(run_dir, KIND)
    cfg_file = run_dir / "train_config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{run_dir} has no train_config.json (it names the token directory to decode with)")
    model = TextToImage.from_pretrained(run_dir)
    tokenizer = CaptionTokenizer.load(run_dir)
    codec = load_codec(json.loads(cfg_file.read_text())["tokens"])
    return TextToImageRun(model, tokenizer, codec, run_dir)


def check_caption(caption: str) -> str:
    """ConfigError for an empty caption (after normalisation); the normalised caption otherwise."""
    text = normalize_caption(caption)
    if not text:
        raise ConfigError("the caption is empty: describe the picture, e.g. \"a red circle in the top left\"")
    return text


def generate_candidates(run: TextToImageRun, captions: list[str], n: int, *, guidance_scale: float | None = None,
                        temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                        seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """``n`` candidate images per caption → uint8 (len(captions), n, C, H, W).

    ``guidance_scale`` None takes the model's default (its config's measured best). A caption longer
    than the model's maximum is truncated with a warning.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of candidates must be a positive integer, got {n!r}")
    captions = [check_caption(c) for c in captions]
    scale = run.model.config.guidance_scale if guidance_scale is None else guidance_scale
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
