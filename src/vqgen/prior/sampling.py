"""Sampling token grids from a :class:`GPTPrior`.

* ``sample``: batched ancestral sampling in raster order, with a KV cache (one new position per
  step) or naively (the whole sequence recomputed each step; kept as a reference and for the
  benchmark). Same generator seed ⇒ same tokens for both.
* ``sample_sliding``: grids larger than the trained one, each token predicted from a window of at
  most the trained size (Esser et al. 2020, https://arxiv.org/abs/2012.09841, section 3.3).
* Classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598): the conditional
  and null-condition batches run together and logits = uncond + s·(cond − uncond).
* ``top_k_filter`` / ``top_p_filter`` (nucleus sampling, Holtzman et al. 2019,
  https://arxiv.org/abs/1904.09751) are pure functions on logits.

Sampling runs the model in eval mode (no dropout) and restores its previous mode afterwards.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import ConfigError
from .gpt import GPTPrior


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the ``k`` largest logits along the last dim (ties: lowest index); others → -inf."""
    v = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= v:
        raise ConfigError(f"top_k must be an integer in [1, {v}], got {k!r}")
    keep = logits.sort(dim=-1, descending=True, stable=True).indices[..., :k]  # (..., k)
    out = torch.full_like(logits, -math.inf)
    return out.scatter(-1, keep, logits.gather(-1, keep))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to ≥ ``p``.

    A token is kept iff the probability of the tokens ranked above it is < p (so the most likely
    token is always kept); the others → -inf.
    """
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {p!r}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.softmax(dim=-1)  # (..., V)
    mass_above = probs.cumsum(dim=-1) - probs  # (..., V) probability of strictly better-ranked tokens
    remove_sorted = mass_above >= p  # (..., V)
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, -math.inf)


def guide(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance mix: uncond + scale·(cond − uncond)."""
    return uncond_logits + scale * (cond_logits - uncond_logits)


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None, guidance_scale: float,
                   vocab_size: int) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size):
        raise ConfigError(f"top_k must be None or an integer in [1, {vocab_size}], got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ConfigError(f"guidance_scale must be a finite number ≥ 0, got {guidance_scale!r}")


def pick_next(logits: torch.Tensor, n: int, guidance_scale: float, temperature: float, top_k: int | None,
          top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
    """logits (n or 2n, V) for the next token → sampled ids (n,)."""
    if logits.shape[0] != n:  # guided: [cond; null] halves
        logits = guide(logits[:n], logits[n:], guidance_scale)  # (n, V)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(dim=-1)  # (n, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # (n,)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _condition_batch(model: GPTPrior, n: int, cond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """Condition ids (n,) — or (2n,) = [cond; null] when guidance is on."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    ids = model.cond_ids(cond, n)  # (n,)
    if guidance_scale == 1.0:
        return ids
    if cond is None:
        raise ConfigError(f"guidance_scale={guidance_scale} needs class conditions (cond), got cond=None")
    return torch.cat([ids, torch.full_like(ids, model.null_class)])  # (2n,)


@torch.inference_mode()
def sample(model: GPTPrior, n: int, *, cond: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           guidance_scale: float = 1.0, generator: torch.Generator | None = None,
           use_cache: bool = True) -> torch.Tensor:
    """Sample ``n`` token grids → LongTensor (n, H, W) on the model's device.

    cond: (n,) class ids, or None for the null condition. prefix: (n, P) given first image tokens in
    raster order (image completion), kept verbatim. guidance_scale ≠ 1 needs ``cond``. ``generator``
    (on the model's device) makes the draw reproducible. ``use_cache=False`` recomputes the whole
    sequence every step (same tokens, O(T²) per step).
    """
    cfg = model.config
    h, w = cfg.grid
    seq = cfg.seq_len
    check_sampling_options(temperature, top_k, top_p, guidance_scale, cfg.vocab_size)
    cond_ids = _condition_batch(model, n, cond, guidance_scale)  # (n,) or (2n,)
    guided = cond_ids.shape[0] != n
    device = cond_ids.device
    out = torch.empty(n, seq, dtype=torch.long, device=device)  # (n, HW)
    start = 0
    if prefix is not None:
        model.check_tokens(prefix, "prefix")
        if prefix.shape[0] != n:
            raise ConfigError(f"prefix: expected {n} rows (one per sample), got {prefix.shape[0]}")
        start = prefix.shape[1]
        out[:, :start] = prefix

    def both(x: torch.Tensor) -> torch.Tensor:  # (n, T) -> (2n, T) when guided
        return torch.cat([x, x]) if guided else x

    def pick(logits: torch.Tensor) -> torch.Tensor:  # (n or 2n, V) -> (n,)
        return pick_next(logits, n, guidance_scale, temperature, top_k, top_p, generator)

    with eval_mode(model):
        if start == seq:
            return out.view(n, h, w)
        if use_cache:
            caches = model.new_caches(cond_ids.shape[0])
            # prefill: condition + prefix in one pass; its last output predicts token `start`
            logits = model.decode(cond_ids, both(out[:, :start]), slice(0, start), caches, last_only=True)  # (B, 1, V)
            for i in range(start, seq):
                tok = pick(logits[:, -1])  # (n,)
                out[:, i] = tok
                if i + 1 < seq:
                    logits = model.decode(None, both(tok[:, None]), slice(i, i + 1), caches)  # (B, 1, V)
        else:
            for i in range(start, seq):
                logits = model.decode(cond_ids, both(out[:, :i]), slice(0, i), last_only=True)  # (B, 1, V)
                out[:, i] = pick(logits[:, -1])
    return out.view(n, h, w)


def _window_start(i: int, size: int, window: int) -> int:
    """First row (column) of the window around row (column) i: centred, clamped inside the grid."""
    return min(max(i - window // 2, 0), size - window)


@torch.inference_mode()
def sample_sliding(model: GPTPrior, n: int, grid: tuple[int, int], window: tuple[int, int] | int | None = None, *,
                   cond: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, guidance_scale: float = 1.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``n`` grids of ``grid`` = (H2, W2) tokens → LongTensor (n, H2, W2).

    Taming-transformers' high-resolution sampling (https://arxiv.org/abs/2012.09841, section 3.3):
    token (i, j) is predicted from the (h, w) window that is centred on it as far as the grid allows,
    fed in the window's raster order with the window's cells at rows 0..h-1, columns 0..w-1 of the
    trained grid. ``window`` (default: the trained grid; an int means square) may be any size ≤ the
    trained grid. With w equal to the trained width this is exactly the training distribution; with
    a narrower window the jump from one window row to the next is one the model never saw (its
    outputs predict the next cell of the trained raster), so expect lower quality there.
    No KV cache: every token sees a different window, so each step is a full window pass.
    """
    cfg = model.config
    th, tw = cfg.grid
    if window is None:
        window = (th, tw)
    elif isinstance(window, int) and not isinstance(window, bool):
        window = (window, window)
    window = tuple(window)
    if len(window) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in window) \
            or not (1 <= window[0] <= th and 1 <= window[1] <= tw):
        raise ConfigError(f"window must be (h, w) with 1 ≤ h ≤ {th}, 1 ≤ w ≤ {tw} (the trained grid), got {window}")
    grid = tuple(grid)
    if len(grid) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in grid) \
            or grid[0] < window[0] or grid[1] < window[1]:
        raise ConfigError(f"grid must be (H2, W2) integers at least the window {window}, got {grid}")
    check_sampling_options(temperature, top_k, top_p, guidance_scale, cfg.vocab_size)
    cond_ids = _condition_batch(model, n, cond, guidance_scale)  # (n,) or (2n,)
    guided = cond_ids.shape[0] != n
    (h, w), (gh, gw) = window, grid
    device = cond_ids.device
    # window cell (r, c) sits at trained-grid cell r·W + c
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    cells = (rows[:, None] * tw + cols[None]).flatten()  # (h·w,)
    out = torch.empty(n, gh, gw, dtype=torch.long, device=device)  # (n, H2, W2)
    with eval_mode(model):
        for i in range(gh):
            i0 = _window_start(i, gh, h)
            for j in range(gw):
                j0 = _window_start(j, gw, w)
                k = (i - i0) * w + (j - j0)  # position of (i, j) in the window's raster order
                ctx = out[:, i0:i0 + h, j0:j0 + w].reshape(n, h * w)[:, :k]  # (n, k): already sampled
                if guided:
                    ctx = torch.cat([ctx, ctx])  # (2n, k)
                logits = model.decode(cond_ids, ctx, cells[:k], last_only=True)  # (B, 1, V)
                out[:, i, j] = pick_next(logits[:, -1], n, guidance_scale, temperature, top_k, top_p, generator)
    return out
