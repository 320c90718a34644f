"""From a trained prior run to pictures: load the prior with the codec its tokens were made with,
sample token grids, decode them to uint8 images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..data.tokens import read_meta
from ..hub import run_tokens_dir
from .codec import Codec, TokenizerCodec, load_codec
from .gpt import KIND, GPTPrior
from .sampling import sample, sample_sliding


@dataclass
class PriorRun:
    prior: GPTPrior
    codec: Codec
    tokens_dir: str
    class_names: list[str]


def load_prior_run(run_dir: str | Path, device: str | torch.device = "cpu") -> PriorRun:
    """The prior of ``run_dir`` (eval mode) and the codec of its token directory, both on ``device``."""
    run_dir = Path(run_dir)
    tokens_dir = run_tokens_dir(run_dir, KIND)  # ConfigError for another kind of run, or a damaged train_config.json
    prior = GPTPrior.from_pretrained(run_dir, map_location=device).eval()
    codec = load_codec(tokens_dir)
    if isinstance(codec, TokenizerCodec):
        codec.model.to(device)
    meta = read_meta(tokens_dir)
    return PriorRun(prior, codec, tokens_dir, list(meta.get("class_names", [])))


def class_index(run: PriorRun, label: int | str) -> int:
    """A class id from an id or a class name (an id written as a string too); ConfigError naming the
    classes when the prior has no such class."""
    n = run.prior.config.num_classes
    if n == 0:
        raise ConfigError("this prior is unconditional: it takes no class")
    names = run.class_names if len(run.class_names) == n else [str(i) for i in range(n)]
    if isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < n:
        return label
    listed = ", ".join(f"{i} {name!r}" for i, name in enumerate(names))
    raise ConfigError(f"class {label!r} is not one of this prior's {n} classes: {listed}")


def default_guidance(run: PriorRun, conditional: bool) -> float:
    """The scale sampling uses when given none: the run's recommended one (``PriorConfig.default_guidance``)
    for class-conditional draws, 1 for draws from the null condition (guidance needs a class)."""
    return run.prior.config.default_guidance if conditional else 1.0


def completion_prefix(run: PriorRun, images: torch.Tensor, keep_rows: int | None = None) -> torch.Tensor:
    """The first ``keep_rows`` token rows (default: half the grid) of uint8 images (n, C, H, W) at the
    codec's resolution → (n, keep_rows·W) token prefixes in raster order, for ``generate(prefix=...)``."""
    h, w = run.prior.config.grid
    keep = h // 2 if keep_rows is None else keep_rows
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 < keep < h:
        raise ConfigError(f"the rows kept for completion must be between 1 and {h - 1} (the grid has {h}), "
                          f"got {keep!r}")
    device = run.prior.head.weight.device
    tokens = run.codec.encode(images.to(device))  # (n, h, w)
    return tokens[:, :keep].flatten(1)  # (n, keep·w)


def generate(run: PriorRun, n: int, *, cond: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
             grid: tuple[int, int] | None = None, window: int | tuple[int, int] | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             guidance_scale: float | None = None, seed: int = 0, batch_size: int = 100) -> torch.Tensor:
    """Sample ``n`` images (uint8 (n, C, H, W) on the CPU); ``grid`` larger than trained uses sliding
    windows. ``guidance_scale`` None takes :func:`default_guidance` (the run's recommended scale when
    ``cond`` is given). The draw is a function of ``seed`` (the generator lives on the prior's device)."""
    if guidance_scale is None:
        guidance_scale = default_guidance(run, cond is not None)
    device = run.prior.head.weight.device
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        c = cond[i:i + m].to(device) if cond is not None else None
        opts = dict(cond=c, temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale, generator=g)
        if grid is not None and tuple(grid) != tuple(run.prior.config.grid):
            if prefix is not None:
                raise ConfigError("image completion works on the trained grid only")
            tokens = sample_sliding(run.prior, m, tuple(grid), window, **opts)
        else:
            p = prefix[i:i + m].to(device) if prefix is not None else None
            tokens = sample(run.prior, m, prefix=p, **opts)  # (m, h, w)
        with torch.inference_mode():
            out.append(run.codec.decode(tokens).cpu())
    return torch.cat(out)
