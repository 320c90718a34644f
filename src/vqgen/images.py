"""Image conversions and picture output (Pillow + numpy; no torchvision).

Models take float images in [-1, 1], shape (B, C, H, W). Datasets keep uint8 (B, C, H, W).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]; a float tensor must already be in [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div(127.5).sub(1.0)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"float images must lie in [-1, 1], got values in [{lo:.3f}, {hi:.3f}]")
    return images


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (values outside are clipped: model outputs are unbounded) -> uint8 [0, 255]."""
    return images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 array (rows·(H+pad)+pad, nrow·(W+pad)+pad, C) holding a grid."""
    if images.dtype != torch.uint8:
        raise ValueError("make_grid expects uint8 images; use to_uint8 first")
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 1) -> Path:
    """Save uint8 (N, C, H, W) images as a PNG grid, optionally enlarged ``scale``× (nearest)."""
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
