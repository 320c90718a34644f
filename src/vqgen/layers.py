"""Building blocks shared by vqgen's models.

Convolutional blocks (tokenizer encoder/decoder, judge classifier) follow the VQ-GAN design
(Esser et al. 2020, https://arxiv.org/abs/2012.09841): pre-activation ResNet blocks with GroupNorm
and swish, stride-2 convolution down, nearest-neighbour + convolution up, single-head attention.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``min(groups, channels)`` groups; channels must split evenly."""
    g = min(groups, channels)
    if channels % g:
        raise ValueError(f"GroupNorm: {channels} channels do not split into {g} groups")
    return nn.GroupNorm(g, channels, eps=1e-6, affine=True)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position of a (B, C, H, W) map, as ConvNeXt's channels-first
    LayerNorm (Liu et al. 2022, https://arxiv.org/abs/2201.03545). GroupNorm's statistics span the whole
    map, so every output depends on every position; here a position's output depends on it alone."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        h = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)  # (B, H, W, C)
        return h.permute(0, 3, 1, 2)  # (B, C, H, W)


NORMS = ("group", "channel")


def norm_2d(channels: int, groups: int = 32, kind: str = "group") -> nn.Module:
    """The normalisation of a conv block: ``"group"`` (:func:`group_norm`) or ``"channel"`` (:class:`ChannelNorm`,
    per position; ``groups`` unused)."""
    if kind == "group":
        return group_norm(channels, groups)
    if kind == "channel":
        return ChannelNorm(channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


class ResnetBlock(nn.Module):
    """norm → swish → conv3×3 → norm → swish → dropout → conv3×3, plus a (1×1 projected) skip."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0, groups: int = 32, norm: str = "group"):
        super().__init__()
        self.norm1 = norm_2d(in_ch, groups, norm)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm_2d(out_ch, groups, norm)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, Cin, H, W)
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Cout, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, Cout, H, W)
        return self.skip(x) + h


class AttnBlock2d(nn.Module):
    """Single-head self-attention over the H×W positions of a feature map, with a residual."""

    def __init__(self, ch: int, groups: int = 32, norm: str = "group"):
        super().__init__()
        self.norm = norm_2d(ch, groups, norm)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)  # 3 × (B, C, H, W)
        q, k, v = (rearrange(t, "b c h w -> b 1 (h w) c") for t in (q, k, v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 convolution (asymmetric pad, as in VQ-GAN)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3×3 convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ---------------------------------------------------------------------------------------------
# Transformer blocks, GPT-2 style (Radford et al. 2019,
# https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf):
# pre-LayerNorm residual blocks of causal self-attention and a GELU MLP. Used by the stage-2 prior;
# kept free of prior-specific details so that a text decoder can reuse them.


class KVCache:
    """Keys and values of one attention layer, preallocated for ``max_len`` positions.

    Incremental decoding (as in any autoregressive Transformer decoder) appends the new positions'
    keys/values and attends over the filled prefix, so one decoding step costs O(T) instead of
    recomputing the whole sequence (O(T²)). Writes go into a fixed buffer: no per-step concatenation.
    """

    def __init__(self, batch: int, n_head: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        if min(batch, n_head, head_dim, max_len) < 1:
            raise ValueError(f"KVCache: sizes must be positive, got batch={batch}, n_head={n_head}, "
                             f"head_dim={head_dim}, max_len={max_len}")
        self.k = torch.empty(batch, n_head, max_len, head_dim, device=device, dtype=dtype)  # (B, nh, Tmax, hd)
        self.v = torch.empty_like(self.k)  # (B, nh, Tmax, hd)
        self.len = 0  # positions filled so far

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, nh, T, hd) after the filled prefix; return all keys/values so far."""
        if k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3] or v.shape != k.shape:
            raise ValueError(f"KVCache: got keys {tuple(k.shape)} / values {tuple(v.shape)} for a cache of "
                             f"(batch, heads, _, head_dim) = {tuple(self.k.shape[:2])}, _, {self.k.shape[3]}")
        end = self.len + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions exceed the preallocated max_len {self.max_len}")
        self.k[:, :, self.len:end] = k
        self.v[:, :, self.len:end] = v
        self.len = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nh, end, hd) each


class MLP(nn.Module):
    """Linear → GELU → Linear → dropout (the Transformer position-wise feed-forward layer)."""

    def __init__(self, n_embd: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        return self.dropout(self.proj(self.act(self.fc(x))))  # (B, T, C)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``, causal by default.

    With a :class:`KVCache` the input holds only the new positions, which come after the cached
    ones; each attends to every cached position and causally to the new ones. ``causal=False``
    (a bidirectional encoder) takes an optional ``key_mask`` (B, T), True where a key is a real token
    and False at padding; it has no cache.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"SelfAttention: n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.dropout = dropout
        self.causal = causal
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def new_cache(self, batch: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        return KVCache(batch, self.n_head, self.head_dim, max_len, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:  # x: (B, T, C)
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 × (B, T, C)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        p = self.dropout if self.training else 0.0
        if not self.causal:
            if cache is not None:
                raise ValueError("a bidirectional SelfAttention has no KV cache")
            mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hd)
        elif key_mask is not None:
            raise ValueError("key_mask is for bidirectional attention (causal=False)")
        elif cache is None or cache.len == 0:
            if cache is not None:
                cache.append(k, v)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hd)
        else:
            start = cache.len
            k, v = cache.append(k, v)  # (B, nh, start+T, hd)
            if t == 1:  # the one new position sees every position: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, nh, 1, hd)
            else:  # new position i (absolute start+i) sees absolute positions ≤ start+i
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x)) (GPT-2 ordering).

    ``causal=False`` makes it an encoder block (bidirectional, optional padding ``key_mask``)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, dropout, causal=causal)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, 4 * n_embd, dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:  # x: (B, T, C)
        x = x + self.attn(self.ln1(x), cache, key_mask)  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)


def run_block(block: nn.Module, recompute: bool, *args) -> torch.Tensor:
    """``block(*args)``; with ``recompute``, while training with gradients, the block keeps none of its
    activations and recomputes them in backward (activation checkpointing, Chen et al. 2016,
    https://arxiv.org/abs/1604.06174): a deep stack keeps one tensor per block instead of every
    intermediate, for about one more forward of compute. Non-reentrant ``torch.utils.checkpoint``
    restores the RNG, so dropout draws the same masks and loss and gradients are those without it."""
    if recompute and block.training and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A boolean key mask (True = attend) as the additive mask (0 / −inf) that
    ``F.scaled_dot_product_attention`` turns it into on every call: converting it once lets a decoding
    loop skip that per-call conversion, with the same attention weights."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


class CrossAttention(nn.Module):
    """Multi-head attention from decoder positions to an encoded context (the caption).

    The context's keys and values do not change while a sequence is decoded, so ``memory`` projects
    them once per context and every decoding step reuses them (Vaswani et al. 2017,
    https://arxiv.org/abs/1706.03762, the encoder–decoder attention).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"CrossAttention: n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.dropout = dropout
        self.q = nn.Linear(n_embd, n_embd)
        self.kv = nn.Linear(n_embd, 2 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def memory(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context`` (B, S, C) → two (B, nh, S, hd) tensors."""
        b, s, c = context.shape
        k, v = self.kv(context).split(c, dim=2)  # 2 × (B, S, C)
        return (k.view(b, s, self.n_head, self.head_dim).transpose(1, 2),  # (B, nh, S, hd)
                v.view(b, s, self.n_head, self.head_dim).transpose(1, 2))  # (B, nh, S, hd)

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:  # x: (B, T, C)
        """``memory`` from :meth:`memory`; ``memory_mask`` (B, S) is True at real context tokens (or
        that mask through :func:`additive_mask`: 0 at real tokens, −inf at padding)."""
        b, t, c = x.shape
        q = self.q(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k, v = memory  # (B, nh, S, hd) each
        mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (B, 1, 1, S)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hd)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))  # (B, T, C)


class DecoderBlock(nn.Module):
    """Pre-LayerNorm decoder block: causal self-attention (KV-cached), cross-attention to the
    context, MLP — each a residual branch (the Transformer decoder, https://arxiv.org/abs/1706.03762).

    ``modulation`` (B, 1, 6·C), when given, shifts and scales the three normalised inputs,
    ``LN(x)·(1 + scale) + shift`` (adaptive LayerNorm, as DiT conditions its blocks, Peebles & Xie 2022,
    https://arxiv.org/abs/2212.09748); zeros leave the block as it is without."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.cross = CrossAttention(n_embd, n_head, dropout)
        self.ln3 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, 4 * n_embd, dropout)

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None, cache: KVCache | None = None,
                modulation: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C)
        mods = (None,) * 3 if modulation is None else modulation.chunk(3, dim=-1)  # 3 × (B, 1, 2C) or None
        x = x + self.attn(_modulate(self.ln1(x), mods[0]), cache)  # (B, T, C)
        x = x + self.cross(_modulate(self.ln2(x), mods[1]), memory, memory_mask)  # (B, T, C)
        return x + self.mlp(_modulate(self.ln3(x), mods[2]))  # (B, T, C)


def _modulate(h: torch.Tensor, shift_scale: torch.Tensor | None) -> torch.Tensor:
    """``h·(1 + scale) + shift`` for ``shift_scale`` = [shift, scale] (B, 1, 2C); ``h`` itself for None."""
    if shift_scale is None:
        return h
    shift, scale = shift_scale.chunk(2, dim=-1)  # 2 × (B, 1, C)
    return h * (1 + scale) + shift  # (B, T, C)


# ---------------------------------------------------------------------------------------------
# The convolutional image tower of the small classifiers (the judge, the shapes judge, CLIP's image side).


class ConvTower(nn.Module):
    """Images (B, in_channels, H, W) → features (B, out_channels, H / f, W / f), f = patch · 2^(S−1).

    A stem that folds each ``patch``×``patch`` pixel block into channels (``pixel_unshuffle``: lossless,
    and much cheaper on a CPU than narrow convolutions at full resolution) followed by a 3×3 convolution;
    then S stages, stage i holding ``blocks[i]`` :class:`ResnetBlock` s of ``widths[i]`` channels, with a
    stride-2 :class:`Downsample` before every stage but the first; then a 1×1 projection to
    ``out_channels`` (none when it is None: the output keeps ``widths[-1]`` channels), GroupNorm and swish.
    Check a config's sizes with :func:`check_tower_config`.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks: tuple[int, ...], patch: int = 1,
                 groups: int = 32, out_channels: int | None = None):
        super().__init__()
        self.patch = patch
        self.stem = nn.Conv2d(in_channels * patch ** 2, widths[0], 3, padding=1)
        stages = []
        ch = widths[0]
        for i, (width, n_blocks) in enumerate(zip(widths, blocks)):
            layers: list[nn.Module] = [Downsample(ch)] if i > 0 else []
            for _ in range(n_blocks):
                layers.append(ResnetBlock(ch, width, dropout=0.0, groups=groups))
                ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Identity() if out_channels is None else nn.Conv2d(ch, out_channels, 1)
        self.out_channels = ch if out_channels is None else out_channels
        self.norm_out = group_norm(self.out_channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H / f, W / f)
        p = self.patch
        h = self.stem(F.pixel_unshuffle(x, p) if p > 1 else x)  # (B, widths[0], H / p, W / p)
        h = self.stages(h)  # (B, widths[-1], H / f, W / f)
        return F.silu(self.norm_out(self.proj(h)))  # (B, Cout, H / f, W / f)


def check_tower_config(what: str, resolution: int, widths: tuple[int, ...], blocks: tuple[int, ...], patch: int,
                       norm_groups: int, out_channels: tuple[int, ...] = (), min_map: int = 1) -> None:
    """ConfigError (prefixed ``what``) unless a :class:`ConvTower` can be built from these sizes and turns
    ``resolution``² images into a feature map of at least ``min_map``² cells; ``out_channels`` (already
    checked ≥ 1) are further channel counts that must split into the GroupNorm groups."""
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"{what}: widths must be a non-empty list of positive ints, got {list(widths)}")
    if len(blocks) != len(widths) or any(b < 1 for b in blocks):
        raise ConfigError(f"{what}: blocks must give one count >= 1 per stage ({len(widths)} stages), "
                          f"got {list(blocks)}")
    if patch < 1:
        raise ConfigError(f"{what}: patch must be >= 1, got {patch}")
    factor = patch * 2 ** (len(widths) - 1)
    if resolution % factor or resolution // factor < min_map:
        small = f" or leaves a feature map smaller than {min_map}×{min_map}" if min_map > 1 else ""
        raise ConfigError(f"{what}: resolution {resolution} is not divisible by {factor} "
                          f"(patch {patch}, {len(widths)} stages){small}")
    if norm_groups < 1:
        raise ConfigError(f"{what}: norm_groups must be >= 1, got {norm_groups}")
    for ch in (*widths, *out_channels):
        if ch % min(norm_groups, ch):
            raise ConfigError(f"{what}: {ch} channels do not split into {norm_groups} GroupNorm groups")


# ---------------------------------------------------------------------------------------------
# GPT-2 initialisation and token checks, shared by the stage-2 prior and the text-to-image decoder.


def _normal_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_gpt_weights(model: nn.Module, blocks: nn.Module, n_residual: int, skip: tuple[str, ...] = ()) -> None:
    """GPT-2 initialisation (Radford et al. 2019, section 2.3) of ``model``: every Linear and Embedding
    weight of its children and its own parameters (e.g. a learned position vector) N(0, 0.02), Linear
    biases zero; then the residual projections in ``blocks`` (parameters named ``…proj.weight``)
    N(0, 0.02 / sqrt(n_residual)), ``n_residual`` being the number of residual branches in the stack.
    Children named in ``skip`` (a pretrained encoder) are left as they are."""
    for name, child in model.named_children():
        if name not in skip:
            child.apply(_normal_init)
    for p in model.parameters(recurse=False):
        nn.init.normal_(p, mean=0.0, std=0.02)
    for name, p in blocks.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(n_residual))


def check_token_ids(tokens: torch.Tensor, vocab_size: int, length: int, what: str = "tokens",
                    whole: bool = False) -> None:
    """ValueError unless ``tokens`` is a (B, L) torch.long tensor of ids in [0, vocab_size) with
    L ≤ ``length`` (L == ``length`` with ``whole``)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
        got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{what} must be a (B, L) torch.long tensor, got {got}")
    if whole and tokens.shape[1] != length:
        raise ValueError(f"{what}: need whole grids of {length} tokens, got {tokens.shape[1]}")
    if tokens.shape[1] > length:
        raise ValueError(f"{what}: {tokens.shape[1]} tokens exceed the grid's {length}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"{what} must be ids in [0, {vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]")
