"""Image conversions and picture output (Pillow + numpy; no torchvision).

Models take float images in [-1, 1], shape (B, C, H, W). Datasets keep uint8 (B, C, H, W).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError


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


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 (N, C, H, W) with C = 1 or 3 -> N PIL images (mode "L" or "RGB")."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or images.shape[1] not in (1, 3):
        raise ValueError("to_pil expects uint8 (N, C, H, W) images with 1 or 3 channels")
    arr = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def load_picture(source: "str | Path | Image.Image | np.ndarray | torch.Tensor", resolution: int,
                 channels: int) -> torch.Tensor:
    """One picture as uint8 (C, H, W) at ``resolution`` with ``channels`` (1 grey, 3 RGB): from an image
    file, a PIL image, a uint8 (H, W) / (H, W, C) array or a uint8 (C, H, W) tensor. Resized (bicubic)
    when its size differs; DataError for anything else."""
    if isinstance(source, torch.Tensor):
        if source.dtype != torch.uint8 or source.dim() != 3 or source.shape[0] not in (1, 3):
            raise DataError(f"a picture tensor must be uint8 (C, H, W) with C = 1 or 3, got "
                             f"{tuple(source.shape)} {source.dtype}")
        source = source.permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise DataError(f"a picture array must be uint8 (H, W) or (H, W, C), got {source.shape} {source.dtype}")
        source = Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[-1] == 1 else source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no image file {path}")
        try:
            source = Image.open(path)
            source.load()
        except OSError as exc:
            raise DataError(f"{path} is not a readable image: {exc}") from exc
    if not isinstance(source, Image.Image):
        raise DataError(f"a picture is an image file, a PIL image, a uint8 array or tensor, "
                        f"got {type(source).__name__}")
    img = source.convert("L" if channels == 1 else "RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img).copy())  # (H, W) or (H, W, 3)
    return arr[None] if channels == 1 else arr.permute(2, 0, 1).contiguous()  # (C, H, W)


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


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` pixels."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def save_captioned_grid(images: torch.Tensor, labels: list[str], path: str | Path, nrow: int,
                        scale: int = 4, pad: int = 6) -> Path:
    """Save uint8 (N, C, H, W) images as a PNG grid with a text label (wrapped) under each picture."""
    from PIL import ImageDraw, ImageFont
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("save_captioned_grid expects uint8 (N, C, H, W) images")
    if len(labels) != images.shape[0]:
        raise ValueError(f"{len(labels)} labels for {images.shape[0]} images")
    n, c, h, w = images.shape
    cell_w, cell_h = w * scale, h * scale
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(probe, label, font, cell_w) for label in labels]
    line_h = 12
    text_h = line_h * max(len(lines) for lines in wrapped) + 4
    rows = (n + nrow - 1) // nrow
    canvas = Image.new("RGB", (nrow * (cell_w + pad) + pad, rows * (cell_h + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    for i in range(n):
        r, col = divmod(i, nrow)
        x, y = pad + col * (cell_w + pad), pad + r * (cell_h + text_h + pad)
        pic = Image.fromarray(arr[i][..., 0] if c == 1 else arr[i]).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
        canvas.paste(pic, (x, y))
        for k, line in enumerate(wrapped[i]):
            draw.text((x, y + cell_h + 2 + k * line_h), line, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
