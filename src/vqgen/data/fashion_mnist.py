"""Fashion-MNIST from the four standard IDX ``.gz`` files, downloaded into the cache when missing.

Files already present are used as they are (no checksum check: a re-split copy in the same format is
fine); only fresh downloads are verified against the official MD5 sums. Images are 28×28 grey; they
are zero-padded symmetrically up to a larger resolution, or resized (PIL bilinear) down to a smaller
one.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .base import ImageDataset, cache_dir, check_image_args, check_split

log = logging.getLogger(__name__)

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# split -> (images file, labels file)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Tried in order; the second is the raw copy in the official GitHub repository.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
_DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, ValueError)  # URLError/HTTPError/timeouts are OSErrors


def default_root() -> Path:
    return cache_dir() / "fashion-mnist"


def _download(url: str, dest: Path, progress: bool = False) -> str:
    """Stream ``url`` into ``dest``; return the MD5 hex digest of what was written."""
    md5 = hashlib.md5()
    req = urllib.request.Request(url, headers={"User-Agent": "vqgen"})
    with urllib.request.urlopen(req, timeout=60) as resp, open(dest, "wb") as f:
        total = resp.headers.get("Content-Length")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=dest.name.split(".tmp")[0])
        try:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                md5.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    return md5.hexdigest()


def _fetch_file(name: str, root: Path, progress: bool) -> None:
    """Download one file into ``root`` atomically, trying each mirror; raise the last failure."""
    dest = root / name
    tmp = root / f"{name}.tmp{os.getpid()}"
    last: BaseException | None = None
    for base in MIRRORS:
        url = base + name
        log.info("downloading %s", url)
        try:
            digest = _download(url, tmp, progress)
            if digest != MD5[name]:
                raise ValueError(f"MD5 mismatch for {url}: got {digest}, expected {MD5[name]}")
            os.replace(tmp, dest)
            return
        except _DOWNLOAD_ERRORS as e:
            last = e
            log.warning("download of %s failed: %s", url, e)
        finally:
            tmp.unlink(missing_ok=True)
    assert last is not None
    raise last


def ensure_files(root: Path, names: list[str], progress: bool = True) -> None:
    """Make sure ``names`` exist in ``root``, downloading the missing ones; DataError if impossible."""
    missing = [n for n in names if not (root / n).is_file()]
    if not missing:
        return
    hint = (
        f"put {', '.join(missing)} (the standard IDX .gz files from {HOMEPAGE}) into {root}, "
        f"or point at a folder that has them with fashion-mnist:DIR"
    )
    if os.environ.get("VQGEN_OFFLINE"):
        raise DataError(f"Fashion-MNIST files missing and VQGEN_OFFLINE is set: {hint}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Fashion-MNIST files missing and {root} cannot be created ({e}): {hint}") from e
    for name in missing:
        try:
            _fetch_file(name, root, progress)
        except _DOWNLOAD_ERRORS as e:
            raise DataError(f"Fashion-MNIST files missing and the download failed ({e}): {hint}") from e


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes into an array of the shape its header declares."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header declares shape {dims} ({expected} bytes) but the file holds {len(raw) - header}"
            " bytes (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = FILES[split]
    images = read_idx(root / img_name)  # (N, 28, 28)
    labels = read_idx(root / lbl_name)  # (N,)
    if images.ndim != 3:
        raise DataError(f"{root / img_name}: expected a 3-D IDX array (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{root / lbl_name}: expected a 1-D IDX array (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images in {img_name} but {len(labels)} labels in {lbl_name}")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{root / lbl_name}: label {int(labels.max())} out of range 0..{len(CLASS_NAMES) - 1}")
    return images, labels


def _to_resolution(images: np.ndarray, resolution: int) -> np.ndarray:
    """(N, h, w) uint8 -> (N, R, R): zero-pad symmetrically when R >= h, w, else PIL bilinear resize."""
    n, h, w = images.shape
    if resolution >= h and resolution >= w:
        top, left = (resolution - h) // 2, (resolution - w) // 2
        out = np.zeros((n, resolution, resolution), dtype=np.uint8)  # (N, R, R)
        out[:, top : top + h, left : left + w] = images
        return out
    out = np.empty((n, resolution, resolution), dtype=np.uint8)  # (N, R, R)
    size = (resolution, resolution)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(images[i]).resize(size, Image.BILINEAR))
    return out


def load_fashion_mnist(
    root: str | Path | None = None,
    split: str = "train",
    resolution: int = 32,
    channels: int = 1,
    progress: bool = True,
    source: str = "",
) -> ImageDataset:
    """Load Fashion-MNIST from ``root`` (default: the cache folder, downloading when files are missing).

    ``split`` is "train", "test" (the t10k files) or "all" (train then test). Setting the environment
    variable ``VQGEN_OFFLINE`` turns downloads off.
    """
    check_split(split)
    check_image_args(resolution, channels)
    root = Path(root).expanduser() if root else default_root()
    if root.exists() and not root.is_dir():
        raise DataError(f"fashion-mnist: {root} is not a folder")
    splits = ["train", "test"] if split == "all" else [split]
    ensure_files(root, [name for s in splits for name in FILES[s]], progress)
    parts = [_read_split(root, s) for s in splits]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]  # (N, 28, 28)
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]  # (N,)
    images = _to_resolution(images, resolution)  # (N, R, R)
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, R, R)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)  # (N, 3, R, R)
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return ImageDataset(x, y, list(CLASS_NAMES), skipped=0, source=source or f"fashion-mnist:{root}")
