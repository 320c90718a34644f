"""Building blocks shared by vqgen's models.

Convolutional blocks (tokenizer encoder/decoder, judge classifier) follow the VQ-GAN design
(Esser et al. 2020, https://arxiv.org/abs/2012.09841): pre-activation ResNet blocks with GroupNorm
and swish, stride-2 convolution down, nearest-neighbour + convolution up, single-head attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``min(groups, channels)`` groups; channels must split evenly."""
    g = min(groups, channels)
    if channels % g:
        raise ValueError(f"GroupNorm: {channels} channels do not split into {g} groups")
    return nn.GroupNorm(g, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm → swish → conv3×3 → norm → swish → dropout → conv3×3, plus a (1×1 projected) skip."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, Cin, H, W)
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Cout, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, Cout, H, W)
        return self.skip(x) + h


class AttnBlock2d(nn.Module):
    """Single-head self-attention over the H×W positions of a feature map, with a residual."""

    def __init__(self, ch: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(ch, groups)
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
