"""The evaluation "judge": a small image classifier trained by this project, not Inception.

Generated samples are judged with it in two ways: the share of samples it assigns to the class they
were asked for, and the Fréchet distance between its penultimate features on samples and on real
test images (see ``vqgen.eval.fd``). Numbers from it are "judge FD", never "FID": they are only
comparable between runs that use the same judge directory.

Architecture: a stem that folds each ``patch``×``patch`` pixel block into channels
(``pixel_unshuffle``: lossless, and much cheaper on a CPU than narrow convolutions at full
resolution) followed by a 3×3 convolution, then per stage ``blocks`` pre-activation ResNet blocks
(``vqgen.layers.ResnetBlock``) with a stride-2 ``Downsample`` between stages, then a 1×1
projection to ``feature_dim`` channels, GroupNorm, swish and global average pooling. The pooled
vector is the judge feature; a dropout + linear head gives the class logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..hub import load_pretrained, save_pretrained
from ..images import to_model_range  # noqa: F401  (re-exported: callers turn uint8 batches into model input)
from ..layers import Downsample, ResnetBlock, group_norm

KIND = "judge"


@dataclass
class JudgeConfig:
    channels: int = 1
    resolution: int = 32
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # one entry per stage; stages after the first halve H, W
    blocks: tuple[int, ...] = (1, 1, 1)  # ResnetBlocks per stage
    feature_dim: int = 128
    dropout: float = 0.1  # before the linear head (features themselves are not dropped)
    norm_groups: int = 8
    patch: int = 2  # the stem folds patch×patch pixel blocks into channels; 1 = convolve at full resolution

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        self.blocks = tuple(self.blocks)
        if self.channels < 1:
            raise ConfigError(f"judge: channels must be >= 1, got {self.channels}")
        if self.num_classes < 2:
            raise ConfigError(f"judge: num_classes must be >= 2, got {self.num_classes}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(f"judge: widths must be a non-empty list of positive ints, got {list(self.widths)}")
        if len(self.blocks) != len(self.widths) or any(b < 1 for b in self.blocks):
            raise ConfigError(f"judge: blocks must give one count >= 1 per stage ({len(self.widths)} stages), "
                              f"got {list(self.blocks)}")
        if self.patch < 1:
            raise ConfigError(f"judge: patch must be >= 1, got {self.patch}")
        factor = self.patch * 2 ** (len(self.widths) - 1)
        if self.resolution < factor or self.resolution % factor:
            raise ConfigError(f"judge: resolution {self.resolution} is not divisible by {factor} "
                              f"(patch {self.patch}, {len(self.widths)} stages)")
        if self.feature_dim < 1:
            raise ConfigError(f"judge: feature_dim must be >= 1, got {self.feature_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"judge: dropout must be in [0, 1), got {self.dropout}")
        if self.norm_groups < 1:
            raise ConfigError(f"judge: norm_groups must be >= 1, got {self.norm_groups}")
        for ch in (*self.widths, self.feature_dim):
            if ch % min(self.norm_groups, ch):
                raise ConfigError(f"judge: {ch} channels do not split into {self.norm_groups} GroupNorm groups")


class JudgeClassifier(nn.Module):
    """Small ResNet classifier on float images in [-1, 1], shape (B, channels, resolution, resolution)."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        g = config.norm_groups
        self.stem = nn.Conv2d(config.channels * config.patch ** 2, config.widths[0], 3, padding=1)
        stages = []
        ch = config.widths[0]
        for i, (width, n_blocks) in enumerate(zip(config.widths, config.blocks)):
            layers: list[nn.Module] = [Downsample(ch)] if i > 0 else []
            for _ in range(n_blocks):
                layers.append(ResnetBlock(ch, width, dropout=0.0, groups=g))
                ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(ch, config.feature_dim, 1)
        self.norm_out = group_norm(config.feature_dim, g)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    @property
    def num_features(self) -> int:
        return self.config.feature_dim

    def _check_input(self, x: torch.Tensor) -> None:
        c, r = self.config.channels, self.config.resolution
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] != r or x.shape[3] != r:
            raise ValueError(f"judge expects (B, {c}, {r}, {r}) images, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"judge expects float images in [-1, 1] (see to_model_range), got {x.dtype}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, feature_dim) pooled penultimate features."""
        self._check_input(x)
        p = self.config.patch
        h = self.stem(F.pixel_unshuffle(x, p) if p > 1 else x)  # (B, widths[0], H / p, W / p)
        h = self.stages(h)  # (B, widths[-1], H / (p 2^(S-1)), W / (p 2^(S-1)))
        h = F.silu(self.norm_out(self.proj(h)))  # (B, feature_dim, h, w)
        return h.mean(dim=(2, 3))  # (B, feature_dim)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) features -> (B, num_classes) logits."""
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.classify(self.features(x))

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(self, self.config, directory, KIND)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "JudgeClassifier":
        model = load_pretrained(cls, JudgeConfig, directory, KIND, map_location=map_location)
        return model.eval()
