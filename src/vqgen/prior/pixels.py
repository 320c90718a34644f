"""Pixel palette for the Image GPT baseline (Chen et al. 2020,
https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf, section 3.1): pixels are
clustered with k-means into a small colour palette and each pixel becomes the index of its nearest
palette entry, so a GPT prior can model raw pixels as a token grid.

Everything is pure torch and deterministic for a given seed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from ..errors import DataError, VqgenError
from ..hub import read_safetensors, write_safetensors
from ..kmeans import kmeans

PALETTE_KEY = "palette"


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) torch.uint8 tensor, got {got}")


def _check_palette(palette: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(palette, torch.Tensor) or not palette.is_floating_point() or palette.dim() != 2 \
            or palette.shape[0] < 1:
        got = f"{tuple(palette.shape)} {palette.dtype}" if isinstance(palette, torch.Tensor) else type(palette).__name__
        raise ValueError(f"palette must be a (k, C) float tensor with k ≥ 1, got {got}")
    if channels is not None and palette.shape[1] != channels:
        raise ValueError(f"palette has {palette.shape[1]} channels, images have {channels}")


def _sq_dists(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (P, C) × (k, C) → (P, k), computed exactly (no expansion trick)."""
    return (x[:, None, :] - centers[None, :, :]).pow(2).sum(-1)  # (P, k)


def _nearest(x: torch.Tensor, centers: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Index of the nearest centre for each row of x (P, C) → (P,) long; ties go to the lower index."""
    return torch.cat([_sq_dists(x[s:s + chunk], centers).argmin(dim=1) for s in range(0, x.shape[0], chunk)])


def fit_palette(images: torch.Tensor, k: int, seed: int = 0, max_pixels: int = 200_000,
                iters: int = 10) -> torch.Tensor:
    """k-means colour palette of uint8 ``images`` (N, C, H, W) → float32 (k, C) in [0, 255].

    At most ``max_pixels`` pixels (drawn with replacement by a generator seeded with ``seed``) are clustered;
    k-means++ seeding (Arthur & Vassilvitskii 2007) then ``iters`` Lloyd iterations. A cluster that
    loses all its pixels keeps its previous centre. The palette is sorted by brightness (channel
    mean) so that index order is meaningful and stable.
    """
    _check_images(images)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if max_pixels < 1 or iters < 0:
        raise ValueError(f"max_pixels must be ≥ 1 and iters ≥ 0, got {max_pixels}, {iters}")
    c = images.shape[1]
    pixels = images.permute(0, 2, 3, 1).reshape(-1, c)  # (N·H·W, C) uint8
    g = torch.Generator().manual_seed(seed)
    if pixels.shape[0] > max_pixels:
        # with replacement: cheap on tens of millions of pixels, and duplicates do not hurt k-means
        pixels = pixels[torch.randint(pixels.shape[0], (max_pixels,), generator=g).to(pixels.device)]
    x = pixels.cpu().double()  # (P, C): float64 so that sums do not depend on the summation order much
    distinct = torch.unique(pixels.cpu(), dim=0).shape[0]
    if distinct < k:
        raise ValueError(f"cannot fit {k} palette colours: the (sampled) pixels have only {distinct} distinct colours")

    centers = kmeans(x, k, iters, generator=g)  # (k, C)
    centers = centers[centers.mean(dim=1).argsort(stable=True)]  # dark → bright
    return centers.float().to(images.device)


def to_indices(images: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Nearest palette entry of each pixel: uint8 (N, C, H, W) → long (N, H, W)."""
    _check_images(images)
    _check_palette(palette, images.shape[1])
    n, c, h, w = images.shape
    pixels = images.permute(0, 2, 3, 1).reshape(-1, c).float()  # (N·H·W, C)
    return _nearest(pixels, palette.float().to(images.device)).view(n, h, w)


def from_indices(idx: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Palette colours of index grids: long (N, H, W) → uint8 images (N, C, H, W)."""
    _check_palette(palette)
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long or idx.dim() != 3:
        got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (N, H, W) torch.long tensor, got {got}")
    k = palette.shape[0]
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise ValueError(f"idx: palette indices must be in [0, {k}), got [{int(idx.min())}, {int(idx.max())}]")
    colours = palette.round().clamp(0, 255).to(torch.uint8).to(idx.device)  # (k, C)
    return colours[idx].permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def save_palette(palette: torch.Tensor, path: str | Path) -> Path:
    """Write the palette as a safetensors file with one tensor, ``palette``."""
    _check_palette(palette)
    path = Path(path)
    write_safetensors(path, {PALETTE_KEY: palette.detach().float()})
    return path


def load_palette(path: str | Path) -> torch.Tensor:
    """The palette of a ``palette.safetensors``; DataError when the file is missing, damaged or not a palette."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no palette file at {path}")
    fix = "encode the pixels again (`vqgen encode --pixels K`) into a new --out"
    try:
        state, _ = read_safetensors(path, fix=fix)
    except VqgenError as exc:
        raise DataError(str(exc)) from None
    if set(state) != {PALETTE_KEY}:
        raise DataError(f"{path} is not a palette file: expected one tensor {PALETTE_KEY!r}, got {sorted(state)}; {fix}")
    palette = state[PALETTE_KEY]
    try:
        _check_palette(palette)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}; {fix}") from None
    return palette
