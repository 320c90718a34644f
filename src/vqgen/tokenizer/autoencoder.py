"""Convolutional encoder and decoder of the VQ-GAN kind (Esser et al. 2020,
https://arxiv.org/abs/2012.09841): ResNet blocks per level, stride-2 down / nearest-up between levels,
optional attention at chosen resolutions, and a Res–Attn–Res middle. The downsampling factor is
f = 2^(len(ch_mult) − 1); the decoder has num_res_blocks + 1 blocks per level.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import NORMS, AttnBlock2d, Downsample, ResnetBlock, Upsample, norm_2d


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    resolution: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    mid_attention: bool = True
    z_channels: int = 256
    dropout: float = 0.0
    norm_groups: int = 32
    encoder_norm: str = "group"  # or "channel": per-position LayerNorm, each code sees only its receptive field

    def __post_init__(self) -> None:
        if not self.ch_mult:
            raise ValueError("ch_mult must list at least one level")
        if self.resolution % self.downsample_factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by f={self.downsample_factor}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.encoder_norm not in NORMS:
            raise ValueError(f"encoder_norm must be one of {', '.join(NORMS)}, got {self.encoder_norm!r}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.downsample_factor


def _middle(ch: int, cfg: AutoencoderConfig, norm: str) -> nn.Sequential:
    g = cfg.norm_groups
    attn = [AttnBlock2d(ch, g, norm)] if cfg.mid_attention else []
    return nn.Sequential(ResnetBlock(ch, ch, cfg.dropout, g, norm), *attn, ResnetBlock(ch, ch, cfg.dropout, g, norm))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        blocks: list[nn.Module] = []
        res, ch = cfg.resolution, cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(ch, out, cfg.dropout, g, cfg.encoder_norm))
                ch = out
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock2d(ch, g, cfg.encoder_norm))
            if level != len(cfg.ch_mult) - 1:
                blocks.append(Downsample(ch))
                res //= 2
        self.down = nn.Sequential(*blocks)
        self.mid = _middle(ch, cfg, cfg.encoder_norm)
        self.norm_out = norm_2d(ch, g, cfg.encoder_norm)
        self.conv_out = nn.Conv2d(ch, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) in [-1, 1]
        h = self.mid(self.down(self.conv_in(x)))  # (B, ch·mult[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g = cfg.norm_groups
        ch = cfg.ch * cfg.ch_mult[-1]
        res = cfg.latent_resolution
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = _middle(ch, cfg, "group")
        blocks: list[nn.Module] = []
        for level in reversed(range(len(cfg.ch_mult))):
            out = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, out, cfg.dropout, g))
                ch = out
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock2d(ch, g))
            if level != 0:
                blocks.append(Upsample(ch))
                res *= 2
        self.up = nn.Sequential(*blocks)
        self.norm_out = norm_2d(ch, g, "group")  # the decoder's statistics never reach the tokens
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final convolution: where VQ-GAN's adaptive GAN weight is measured."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, z_channels, h, w)
        h = self.up(self.mid(self.conv_in(z)))  # (B, ch, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W), unbounded; images in [-1, 1]
