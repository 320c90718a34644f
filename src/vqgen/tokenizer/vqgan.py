"""The stage-1 tokenizer: encoder → 1×1 conv → quantizer → 1×1 conv → decoder.

``VQTokenizer.encode`` turns images into a grid of integer tokens, ``decode`` turns tokens back into
images, ``reconstruct`` does both. A trained tokenizer is a directory with ``config.json`` and
``model.safetensors``; ``VQTokenizer.from_pretrained(dir)`` loads it with strict keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..hub import load_pretrained, save_pretrained
from ..images import to_model_range
from .autoencoder import AutoencoderConfig, Decoder, Encoder
from .quantizer import QuantizerConfig, QuantizerOutput, build_quantizer

KIND = "tokenizer"


@dataclass
class TokenizerConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    @property
    def grid(self) -> tuple[int, int]:
        r = self.autoencoder.latent_resolution
        return (r, r)


class VQTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        ae = cfg.autoencoder
        self.encoder = Encoder(ae)
        self.decoder = Decoder(ae)
        self.quant_conv = nn.Conv2d(ae.z_channels, ae.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(ae.z_channels, ae.z_channels, 1)
        self.quantizer = build_quantizer(ae.z_channels, cfg.quantizer)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        ae = self.cfg.autoencoder
        if x.ndim != 4 or x.shape[1] != ae.in_channels or x.shape[2] % ae.downsample_factor or x.shape[3] % ae.downsample_factor:
            raise ValueError(f"expected images (B, {ae.in_channels}, H, W) with H, W divisible by "
                             f"{ae.downsample_factor}, got {tuple(x.shape)}")
        return to_model_range(x)

    def quantize(self, x: torch.Tensor) -> QuantizerOutput:
        h = self.quant_conv(self.encoder(self._check(x)))  # (B, z, h, w)
        return self.quantizer(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Training forward: (reconstruction in [-1, 1]-ish (B, C, H, W), quantizer output)."""
        q = self.quantize(x)
        return self.decoder(self.post_quant_conv(q.z_q)), q

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] float images (B, C, H, W) -> int64 token grid (B, H/f, W/f)."""
        return self.quantize(images).indices

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grid (B, h, w) -> float images in [-1, 1] (B, C, h·f, w·f), clipped."""
        if tokens.ndim != 3:
            raise ValueError(f"expected a token grid (B, h, w), got shape {tuple(tokens.shape)}")
        z = self.quantizer.codes_to_latents(tokens.long())  # (B, z, h, w)
        return self.decoder(self.post_quant_conv(z)).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(self, self.cfg, directory, KIND)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "VQTokenizer":
        model = load_pretrained(cls, TokenizerConfig, directory, KIND, map_location)
        return model.eval()
