"""The evaluation "judge": a small image classifier trained by this project, not Inception.

Generated samples are judged with it in two ways: the share of samples it assigns to the class they
were asked for, and the Fréchet distance between its penultimate features on samples and on real
test images (see ``vqgen.eval.fd``). Numbers from it are "judge FD", never "FID": they are only
comparable between runs that use the same judge directory.

Architecture (``vqgen.layers.ConvTower``): a stem that folds each ``patch``×``patch`` pixel block into channels
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
from torch import nn

from ..errors import ConfigError
from ..hub import load_pretrained, save_pretrained
from ..images import to_model_range  # noqa: F401  (re-exported: callers turn uint8 batches into model input)
from ..layers import ConvTower, check_tower_config

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
        if self.feature_dim < 1:
            raise ConfigError(f"judge: feature_dim must be >= 1, got {self.feature_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"judge: dropout must be in [0, 1), got {self.dropout}")
        check_tower_config("judge", self.resolution, self.widths, self.blocks, self.patch, self.norm_groups,
                           out_channels=(self.feature_dim,))


class JudgeClassifier(nn.Module):
    """Small ResNet classifier on float images in [-1, 1], shape (B, channels, resolution, resolution)."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        self.tower = ConvTower(config.channels, config.widths, config.blocks, config.patch, config.norm_groups,
                               out_channels=config.feature_dim)
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
        h = self.tower(x)  # (B, feature_dim, H / (p 2^(S-1)), W / (p 2^(S-1)))
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
