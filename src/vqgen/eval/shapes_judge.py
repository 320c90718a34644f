"""The independent judge of the synthetic ``shapes`` scenes: which object stands in each grid cell.

A ``shapes`` image (``vqgen.data.shapes``) is a 3×3 grid of cells, each empty or holding one object
with a shape, a colour and a size. The judge reads all of it back: for each of the 9 cells the shape
(or "empty": class 0, shapes are 1 + their index), the colour and the size. Text-to-image samples are
graded with it (``vqgen.eval.text2img``); it is trained on renders only (``vqgen.train.shapes_judge``),
never on generated images, and has nothing to do with the CLIP model used for re-ranking.

Architecture: the judge classifier's tower (``vqgen.layers.ConvTower``: a ``pixel_unshuffle`` stem, stages of
``vqgen.layers.ResnetBlock`` with a stride-2 ``Downsample`` between them, a 1×1 projection to
``feature_dim`` channels with GroupNorm and swish), adaptive average pooling to the 3×3 grid, and per
cell its own linear heads (weights not shared between cells) for shape, colour and size logits.

The names of the shapes, colours and sizes are part of the saved config, so a judge decodes its
predictions with the names it was trained on; ``render_accuracy`` refuses targets indexed by another
list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import COLORS, POSITIONS, SHAPES, SIZES
from ..errors import ConfigError
from ..hub import load_pretrained, save_pretrained
from ..images import to_model_range
from ..layers import ConvTower, check_tower_config

KIND = "shapes-judge"
GRID = 3  # cells per side; cell index = row * 3 + col, named by ``POSITIONS``
EMPTY = 0  # shape class of an empty cell; shape k of the name list is class k + 1
IGNORE = -100  # colour / size target of an empty cell


@dataclass
class ShapesJudgeConfig:
    resolution: int = 32
    shapes: tuple[str, ...] = field(default_factory=lambda: tuple(SHAPES))
    colors: tuple[str, ...] = field(default_factory=lambda: tuple(COLORS))
    sizes: tuple[str, ...] = field(default_factory=lambda: tuple(SIZES))
    widths: tuple[int, ...] = (32, 64, 96)  # one entry per stage; stages after the first halve H, W
    blocks: tuple[int, ...] = (1, 1, 1)  # ResnetBlocks per stage
    feature_dim: int = 128  # per-cell feature size fed to the heads
    norm_groups: int = 8
    patch: int = 2  # the stem folds patch×patch pixel blocks into channels (lossless)

    def __post_init__(self) -> None:
        self.shapes, self.colors, self.sizes = tuple(self.shapes), tuple(self.colors), tuple(self.sizes)
        self.widths, self.blocks = tuple(self.widths), tuple(self.blocks)
        for what, names in (("shapes", self.shapes), ("colors", self.colors), ("sizes", self.sizes)):
            if len(names) < 2 or len(set(names)) != len(names):
                raise ConfigError(f"shapes judge: {what} must be at least 2 distinct names, got {list(names)}")
        if self.feature_dim < 1:
            raise ConfigError(f"shapes judge: feature_dim must be >= 1, got {self.feature_dim}")
        check_tower_config("shapes judge", self.resolution, self.widths, self.blocks, self.patch, self.norm_groups,
                           out_channels=(self.feature_dim,), min_map=GRID)

    @property
    def head_sizes(self) -> tuple[int, int, int]:
        """Classes of the (shape-or-empty, colour, size) heads."""
        return 1 + len(self.shapes), len(self.colors), len(self.sizes)


class ShapesJudge(nn.Module):
    """Per-cell scene reader on float images in [-1, 1], shape (B, 3, resolution, resolution)."""

    def __init__(self, config: ShapesJudgeConfig):
        super().__init__()
        self.config = config
        self.tower = ConvTower(3, config.widths, config.blocks, config.patch, config.norm_groups,
                               out_channels=config.feature_dim)
        k = sum(config.head_sizes)
        cells = GRID * GRID
        # One linear map per cell, all heads together: (cells, feature_dim, k) weights.
        self.head_weight = nn.Parameter(torch.randn(cells, config.feature_dim, k) * config.feature_dim ** -0.5)
        self.head_bias = nn.Parameter(torch.zeros(cells, k))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, R, R) in [-1, 1] -> logits per cell: shape (B, 9, 1 + S), colour (B, 9, C), size (B, 9, Z)."""
        r = self.config.resolution
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, r, r):
            raise ValueError(f"shapes judge expects (B, 3, {r}, {r}) images, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"shapes judge expects float images in [-1, 1] (see to_model_range), got {x.dtype}")
        h = self.tower(x)  # (B, feature_dim, h, w)
        cells = F.adaptive_avg_pool2d(h, GRID).flatten(2).transpose(1, 2)  # (B, 9, feature_dim)
        logits = torch.einsum("bnd,ndk->bnk", cells, self.head_weight) + self.head_bias  # (B, 9, K)
        n_shape, n_color, n_size = self.config.head_sizes
        return tuple(logits.split([n_shape, n_color, n_size], dim=2))  # type: ignore[return-value]

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(self, self.config, directory, KIND)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "ShapesJudge":
        model = load_pretrained(cls, ShapesJudgeConfig, directory, KIND, map_location=map_location)
        return model.eval()


def predict_cells(judge: ShapesJudge, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 (N, 3, R, R) -> int64 (N, 9, 3) on the CPU: per cell (shape class, 0 = empty; colour; size),
    colour and size ``-100`` where the cell is predicted empty (the layout of ``scene_targets``).

    The judge runs in eval mode (its previous mode is restored) on the device its parameters are on.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"shapes judge expects uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(judge.parameters()).device
    was_training = judge.training
    judge.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = to_model_range(images[start:start + batch_size].to(device))  # (b, 3, R, R)
                shape, color, size = (t.argmax(dim=2).cpu() for t in judge(x))  # (b, 9) each
                pred = torch.stack([shape, color, size], dim=2)  # (b, 9, 3)
                pred[:, :, 1:][shape == EMPTY] = IGNORE
                out.append(pred)
    finally:
        judge.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, GRID * GRID, 3, dtype=torch.long)


def predict_scenes(judge: ShapesJudge, images: torch.Tensor, batch_size: int = 256) -> list[list[dict]]:
    """uint8 (N, 3, R, R) -> per image the objects the judge sees, in cell order, each
    ``{"shape", "color", "size", "position"}`` with the position the name of its cell."""
    cfg = judge.config
    scenes = []
    for cells in predict_cells(judge, images, batch_size).tolist():  # (9, 3) per image
        scenes.append([{"shape": cfg.shapes[s - 1], "color": cfg.colors[c], "size": cfg.sizes[z],
                        "position": POSITIONS[cell]}
                       for cell, (s, c, z) in enumerate(cells) if s != EMPTY])
    return scenes


def check_names(judge: ShapesJudge) -> None:
    """ConfigError unless the judge was trained with the shape, colour and size lists of ``vqgen.data.shapes``
    (scene targets are indices into those lists)."""
    cfg = judge.config
    now = (tuple(SHAPES), tuple(COLORS), tuple(SIZES))
    if (cfg.shapes, cfg.colors, cfg.sizes) != now:
        raise ConfigError(f"the shapes judge was trained with shapes {list(cfg.shapes)}, colours {list(cfg.colors)}, "
                          f"sizes {list(cfg.sizes)}, but vqgen.data.shapes now has {[list(v) for v in now]}; "
                          "retrain the judge")


def cell_correct(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """bool (N, 9): the cell's occupancy and shape, and for an object also its colour and size, are right.
    ``pred`` and ``targets`` are int64 (N, 9, 3) in the ``scene_targets`` layout."""
    occupied = targets[:, :, 0] != EMPTY  # (N, 9)
    same = pred == targets  # (N, 9, 3)
    return same[:, :, 0] & (~occupied | (same[:, :, 1] & same[:, :, 2]))  # (N, 9)


def render_accuracy(judge: ShapesJudge, images: torch.Tensor, targets: torch.Tensor | np.ndarray,
                    batch_size: int = 256) -> float:
    """Fraction of images read fully correctly: every cell's occupancy, and every object's shape, colour and
    size. ``images`` uint8 (N, 3, R, R), ``targets`` int64 (N, 9, 3) from ``scene_targets``."""
    check_names(judge)
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (images.shape[0], GRID * GRID, 3):
        raise ValueError(f"targets must be ({images.shape[0]}, 9, 3) for {images.shape[0]} images, "
                         f"got {tuple(targets.shape)}")
    if images.shape[0] == 0:
        raise ValueError("render_accuracy needs at least one image")
    pred = predict_cells(judge, images, batch_size)  # (N, 9, 3)
    return cell_correct(pred, targets).all(dim=1).float().mean().item()
