import os

import pytest
import torch

from vqgen.data import ImageDataset

# Tests never reach the network: a missing Fashion-MNIST must fail fast, not try to download.
os.environ.setdefault("VQGEN_OFFLINE", "1")
# Tiny models gain nothing from threads, and on a loaded 2-core machine OpenMP spinning makes them
# many times slower; one thread also keeps timings of the suite steady.
torch.set_num_threads(1)


def synthetic_images(n: int, size: int = 16, channels: int = 1, seed: int = 0, classes: int = 3) -> ImageDataset:
    """Blurry blobs and stripes: structured enough to learn, made in milliseconds."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.arange(n) % classes
    imgs = []
    for i in range(n):
        cx, cy = torch.randint(3, size - 3, (2,), generator=g).tolist()
        if labels[i] == 0:
            img = 255 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
        elif labels[i] == 1:
            img = 255 * ((xx + cx) % 6 < 3).float()
        else:
            img = 255 * ((yy + cy) % 6 < 3).float()
        imgs.append(img.expand(channels, size, size))
    images = torch.stack(imgs).round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(images, labels.long(), [f"c{i}" for i in range(classes)], source="synthetic")


@pytest.fixture
def tiny_images() -> ImageDataset:
    return synthetic_images(64)
