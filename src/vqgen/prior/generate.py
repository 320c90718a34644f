"""From a trained prior run to pictures: load the prior with the codec its tokens were made with,
sample token grids, decode them to uint8 images."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .codec import Codec, load_codec
from .gpt import GPTPrior
from .sampling import sample, sample_sliding


@dataclass
class PriorRun:
    prior: GPTPrior
    codec: Codec
    tokens_dir: str
    class_names: list[str]


def load_prior_run(run_dir: str | Path) -> PriorRun:
    run_dir = Path(run_dir)
    cfg_file = run_dir / "train_config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{run_dir} is not a prior run directory (no train_config.json)")
    tokens_dir = json.loads(cfg_file.read_text())["tokens"]
    prior = GPTPrior.from_pretrained(run_dir).eval()
    codec = load_codec(tokens_dir)
    meta = json.loads((Path(tokens_dir) / "meta.json").read_text())
    return PriorRun(prior, codec, tokens_dir, list(meta.get("class_names", [])))


def generate(run: PriorRun, n: int, *, cond: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
             grid: tuple[int, int] | None = None, window: int | tuple[int, int] | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             guidance_scale: float = 1.0, seed: int = 0, batch_size: int = 100) -> torch.Tensor:
    """Sample ``n`` images (uint8 (n, C, H, W)); ``grid`` larger than trained uses sliding windows."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        c = cond[i:i + m] if cond is not None else None
        opts = dict(cond=c, temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale, generator=g)
        if grid is not None and tuple(grid) != tuple(run.prior.config.grid):
            if prefix is not None:
                raise ConfigError("image completion works on the trained grid only")
            tokens = sample_sliding(run.prior, m, tuple(grid), window, **opts)
        else:
            p = prefix[i:i + m] if prefix is not None else None
            tokens = sample(run.prior, m, prefix=p, **opts)  # (m, h, w)
        out.append(run.codec.decode(tokens))
    return torch.cat(out)
