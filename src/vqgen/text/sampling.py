"""Sampling image tokens from a :class:`TextToImage` model.

The caption is encoded once and each decoder layer's cross-attention keys/values (and, with
``text_modulation``, its LayerNorm shifts and scales) are computed once per caption; self-attention keys/values are KV-cached, so each step runs the decoder on one new
position. Super-conditioning (DALL·E mini's name for classifier-free guidance, Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598) runs the caption and the empty caption as one batch of 2n rows and
mixes logits = uncond + s·(cond − uncond). Temperature, top-k, top-p and seeded generators are the
prior's (``vqgen.prior.sampling``), so both samplers draw the same way.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..layers import additive_mask
from ..prior.sampling import check_sampling_options, eval_mode, pick_next
from .dalle import TextToImage


@torch.inference_mode()
def sample_tokens(model: TextToImage, ids: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                  use_cache: bool = True) -> torch.Tensor:
    """One token grid per caption row of ``ids`` (n, L) → LongTensor (n, H, W) on the model's device.

    ``guidance_scale`` ≠ 1 adds the empty caption's batch. ``use_cache=False`` recomputes the whole
    decoder prefix (and its cross-attention projections) every step: the same tokens, O(T²) a step;
    kept as the reference the cache is tested and benchmarked against.
    """
    cfg = model.config
    model.check_caption_ids(ids)
    n = ids.shape[0]
    if n < 1:
        raise ConfigError("need at least one caption")
    check_sampling_options(temperature, top_k, top_p, guidance_scale, cfg.vocab_size)
    guided = guidance_scale != 1.0
    if guided:
        ids = torch.cat([ids, model.null_caption(n, ids.shape[1])])  # (2n, L): [cond; uncond]
    b = ids.shape[0]
    seq = cfg.seq_len
    out = torch.empty(n, seq, dtype=torch.long, device=ids.device)  # (n, HW)
    inputs = torch.full((b, seq), model.start_id, dtype=torch.long, device=ids.device)  # (B, HW) decoder inputs

    def pick(logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (n,)
        return pick_next(logits, n, guidance_scale, temperature, top_k, top_p, generator)

    with eval_mode(model):
        states, mask = model.encode_text(ids)  # (B, L, C), (B, L)
        mods = model.modulations(states, mask)  # per layer (B, 1, 6C) or None, once per caption
        # the bool caption mask as the additive mask attention would convert it to at every call
        bool_mask, mask = mask, additive_mask(mask, states.dtype)  # (B, L): 0 at real tokens, -inf at padding
        if use_cache:
            memories = model.memories(states)  # per layer: 2 × (B, nh, L, hd), once per caption
            caches = model.new_caches(b)
            positions = model.position_table()  # (HW, C), once instead of once per step
            logits = model.decode(memories, mask, inputs[:, :1], 0, caches, positions=positions,
                                  modulations=mods)  # (B, 1, V)
            for i in range(seq):
                tok = pick(logits[:, -1])  # (n,)
                out[:, i] = tok
                if i + 1 < seq:
                    step_in = torch.cat([tok, tok])[:, None] if guided else tok[:, None]  # (B, 1)
                    logits = model.decode(memories, mask, step_in, i + 1, caches, positions=positions,
                                          modulations=mods)  # (B, 1, V)
        else:
            for i in range(seq):
                logits = model.decode(model.memories(states), mask, inputs[:, :i + 1], 0, last_only=True,
                                      modulations=model.modulations(states, bool_mask))  # (B, 1, V)
                tok = pick(logits[:, -1])  # (n,)
                out[:, i] = tok
                if i + 1 < seq:
                    inputs[:, i + 1] = torch.cat([tok, tok]) if guided else tok
    h, w = cfg.grid
    return out.view(n, h, w)
