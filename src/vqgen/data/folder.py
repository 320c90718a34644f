"""Every image under a folder, decoded once into memory, with ImageFolder-style labels when they exist.

Files are found recursively (hidden files and folders are ignored) and sorted for determinism. When
every image sits inside a first-level subfolder (``DIR/<class>/.../img.png``), the sorted subfolder
names are the classes; otherwise there are no labels. Each image is converted to L or RGB (alpha is
composited over white), its shorter side resized to the resolution (bicubic) and the centre cropped
square. Unreadable files are skipped, counted and reported in one warning. ``lazy=True`` (or ``None``
past ``IN_MEMORY_MAX_BYTES``) lists the files only and decodes batches on demand (``vqgen.data.lazy``).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .base import ImageDataset, check_image_args
from .lazy import FileImages, LazyImageDataset, StringArray, use_lazy

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PROGRESS_MIN_FILES = 500


def find_image_names(root: Path) -> list[str]:
    """Paths (relative to ``root``) of all image files under it: recursive, symlinks followed once,
    hidden entries skipped, sorted by path components. Strings, not ``Path`` objects: a million of
    them is ~100 MB less."""
    found: list[str] = []
    seen: set[str] = set()
    top = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = dirpath[len(top):].lstrip(os.sep)
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(rel, name) if rel else name)
    # "\0" sorts before every other character, so this orders by path components (a/b before a.b/c).
    return sorted(found, key=lambda r: r.replace(os.sep, "\0"))


def find_images(root: Path) -> list[Path]:
    """All image files under ``root`` (see ``find_image_names``), sorted."""
    return [root / name for name in find_image_names(root)]


def resolve_source(path: str | Path, resolution: int, channels: int, scheme: str, source: str) -> tuple[Path, str]:
    """What every file loader does first: check the image arguments, then return (``path`` with ``~``
    expanded, the dataset's source name: ``source``, or ``scheme:path`` when it is empty)."""
    check_image_args(resolution, channels)
    path = Path(path).expanduser()
    return path, source or f"{scheme}:{path}"


def check_folder(root: Path, source: str) -> None:
    """DataError unless ``root`` is an existing folder."""
    if not root.exists():
        raise DataError(f"{source}: folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{source}: {root} is not a folder")


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Bring 16-bit/float grey to 8-bit and composite transparency over white (hidden pixels must not leak)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        if a.max(initial=0) > 255:  # 16-bit range
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba)
    return img


def load_image(path: Path, resolution: int, mode: str) -> np.ndarray:
    """Decode one file to uint8 (R, R) for mode "L" or (R, R, 3) for "RGB": shorter side to R, centre crop."""
    with Image.open(path) as img:
        w, h = img.size
        scale = resolution / min(w, h)
        # Let JPEG decode at a reduced size when it is much larger than needed (never below the target).
        img.draft(mode, (max(resolution, int(w * scale + 0.999)), max(resolution, int(h * scale + 0.999))))
        img = _normalise_mode(img).convert(mode)
        w, h = img.size
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
        return np.asarray(img, dtype=np.uint8)


def _try_load(path: Path, resolution: int, mode: str) -> np.ndarray | Exception:
    try:
        return load_image(path, resolution, mode)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
        return e


def decode_images(
    paths: list[Path], resolution: int, channels: int, progress: bool = True, desc: str = "decoding"
) -> tuple[np.ndarray, np.ndarray, tuple[Path, Exception] | None]:
    """Decode ``paths`` in parallel with ``load_image``; failures do not raise.

    Returns (uint8 (N, R, R, C) pixels, bool (N,) decoded?, (path, error) of the first failure or None);
    rows that failed to decode hold garbage.
    """
    mode = "L" if channels == 1 else "RGB"
    arr = np.empty((len(paths), resolution, resolution, channels), dtype=np.uint8)  # (N, R, R, C)
    ok = np.zeros(len(paths), dtype=bool)  # (N,) decoded?
    first_error: tuple[Path, Exception] | None = None
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        it = pool.map(lambda p: _try_load(p, resolution, mode), paths)
        if progress and len(paths) > PROGRESS_MIN_FILES:
            from tqdm import tqdm

            it = tqdm(it, total=len(paths), desc=desc, unit="img")
        for i, r in enumerate(it):
            if isinstance(r, np.ndarray):
                arr[i] = r.reshape(resolution, resolution, channels)
                ok[i] = True
            elif first_error is None:
                first_error = (paths[i], r)
    return arr, ok, first_error


def load_folder(
    root: str | Path,
    resolution: int = 32,
    channels: int = 3,
    progress: bool = True,
    source: str = "",
    lazy: bool | None = False,
) -> ImageDataset | LazyImageDataset:
    """Load every image under ``root`` (the whole folder: there are no splits).

    Returns uint8 (N, channels, resolution, resolution) images; labels from first-level subfolders
    when every image is inside one, else None. ``lazy``: True lists the files and returns a
    ``LazyImageDataset`` that decodes on demand; None does so only past ``IN_MEMORY_MAX_BYTES``
    decoded (``vqgen.data.lazy``); False decodes everything now.
    """
    root, source = resolve_source(root, resolution, channels, "folder", source)
    check_folder(root, source)
    names = find_image_names(root)
    if not names:
        raise DataError(
            f"no readable images in {root} (no files with extension {', '.join(IMAGE_EXTENSIONS)})"
        )

    firsts = [n.split(os.sep, 1)[0] if os.sep in n else None for n in names]
    labelled = all(f is not None for f in firsts)
    class_names = sorted(set(firsts)) if labelled else []
    class_index = {name: i for i, name in enumerate(class_names)}
    all_labels = torch.tensor([class_index[f] for f in firsts], dtype=torch.int64) if labelled else None  # (N,)
    del firsts
    if use_lazy(lazy, len(names), resolution, channels):
        return LazyImageDataset(FileImages(os.fspath(root), StringArray(names)), resolution, channels, all_labels,
                                class_names, source=source)

    paths = [root / n for n in names]
    arr, ok, first_error = decode_images(paths, resolution, channels, progress, desc=f"decoding {root.name or root}")
    skipped = int(len(paths) - ok.sum())
    if skipped:
        bad_path, err = first_error  # type: ignore[misc]
        warnings.warn(
            f"{source}: skipped {skipped} unreadable image file(s) of {len(paths)}; "
            f"first: {bad_path} ({type(err).__name__}: {err})",
            stacklevel=3,
        )
        if skipped == len(paths):
            raise DataError(f"no readable images in {root}: all {len(paths)} image files failed to decode")
        arr = arr[ok]  # (N_ok, R, R, C)
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, C, R, R)
    labels = all_labels[torch.from_numpy(ok)] if all_labels is not None else None  # (N,)
    return ImageDataset(images, labels, class_names, skipped=skipped, source=source)
