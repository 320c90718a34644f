"""Dataset specs: tiny IDX files and image folders written in tmp_path; offline and fast."""
from __future__ import annotations

import gzip
import hashlib
import re
import struct
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data import DATASET_KINDS, ImageDataset, load_images, parse_spec
from vqgen.data import fashion_mnist as fm
from vqgen.errors import DataError

SHARED_FMNIST = Path(__file__).parents[2] / "shared/data/fashion-mnist"


# ---------------------------------------------------------------------------------------------------
# helpers


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_fmnist(root: Path, n_train: int = 5, n_test: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # nonzero, so padding is visible
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        img_name, lbl_name = fm.FILES[split]
        write_idx(root / img_name, images)
        write_idx(root / lbl_name, labels)
        out[split] = (images, labels)
    return out


def save(path: Path, size: tuple[int, int] = (20, 12), color=(200, 30, 60), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


# ---------------------------------------------------------------------------------------------------
# specs


def test_parse_spec():
    assert parse_spec("fashion-mnist") == ("fashion-mnist", None)
    assert parse_spec("fashion-mnist:/a/b") == ("fashion-mnist", "/a/b")
    assert parse_spec("folder:/x:y") == ("folder", "/x:y")
    assert DATASET_KINDS == ("fashion-mnist", "folder", "shapes", "pairs", "manifest", "wds")
    assert parse_spec("shapes:7") == ("shapes", "7")


def test_unknown_kind_lists_kinds():
    with pytest.raises(DataError, match="fashion-mnist.*folder"):
        parse_spec("cifar10:/data")
    with pytest.raises(DataError):
        load_images("imagenet")


def test_bad_split_and_channels(tmp_path):
    make_fmnist(tmp_path)
    with pytest.raises(DataError, match="split"):
        load_images(f"fashion-mnist:{tmp_path}", split="val")
    with pytest.raises(DataError, match="channels"):
        load_images(f"fashion-mnist:{tmp_path}", channels=2)


# ---------------------------------------------------------------------------------------------------
# fashion-mnist


def test_fmnist_shapes_padding_labels(tmp_path):
    data = make_fmnist(tmp_path)
    ds = load_images(f"fashion-mnist:{tmp_path}", split="train", resolution=32, channels=1, progress=False)
    assert isinstance(ds, ImageDataset)
    assert ds.images.shape == (5, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == data["train"][1].tolist()
    assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert len(ds) == 5 and ds.skipped == 0
    # 2 zero pixels each side, original image in the middle
    assert torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(data["train"][0]))
    border = ds.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0


def test_fmnist_splits(tmp_path):
    data = make_fmnist(tmp_path)
    spec = f"fashion-mnist:{tmp_path}"
    test = load_images(spec, split="test", resolution=28, progress=False)
    assert test.images.shape == (3, 1, 28, 28)
    assert torch.equal(test.images[:, 0], torch.from_numpy(data["test"][0]))
    both = load_images(spec, split="all", resolution=28, progress=False)
    assert len(both) == 8
    expected = np.concatenate([data["train"][1], data["test"][1]])
    assert both.labels.tolist() == expected.tolist()


def test_fmnist_channels_and_downscale(tmp_path):
    make_fmnist(tmp_path)
    rgb = load_images(f"fashion-mnist:{tmp_path}", resolution=32, channels=3, progress=False)
    assert rgb.images.shape == (5, 3, 32, 32)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 1]) and torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    small = load_images(f"fashion-mnist:{tmp_path}", resolution=16, progress=False)
    assert small.images.shape == (5, 1, 16, 16) and small.images.dtype == torch.uint8
    odd = load_images(f"fashion-mnist:{tmp_path}", resolution=31, progress=False)
    assert odd.images.shape == (5, 1, 31, 31)


def test_fmnist_truncated_file(tmp_path):
    make_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))  # valid gzip, short payload
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_images(f"fashion-mnist:{tmp_path}", progress=False)
    path.write_bytes(path.read_bytes()[:50])  # broken gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_images(f"fashion-mnist:{tmp_path}", progress=False)


def test_fmnist_bad_magic(tmp_path):
    make_fmnist(tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="magic"):
        load_images(f"fashion-mnist:{tmp_path}", progress=False)


def test_fmnist_missing_files_offline(tmp_path, monkeypatch):
    def no_network(url, dest, progress=False):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fm, "_download", no_network)
    monkeypatch.delenv("VQGEN_OFFLINE", raising=False)
    root = tmp_path / "fm"
    with pytest.raises(DataError) as e:
        load_images(f"fashion-mnist:{root}", split="test", progress=False)
    msg = str(e.value)
    assert str(root) in msg and "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert not list(root.glob("*"))  # no partial files left behind


def test_fmnist_default_root_is_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VQGEN_OFFLINE", "1")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "cache" / "fashion-mnist"))):
        load_images("fashion-mnist", progress=False)
    make_fmnist(tmp_path / "cache" / "fashion-mnist")
    assert len(load_images("fashion-mnist", progress=False)) == 5


def test_fmnist_download_verifies_md5(tmp_path, monkeypatch):
    payload = b"not the real file"

    def fake_download(url, dest, progress=False):
        dest.write_bytes(payload)
        return hashlib.md5(payload).hexdigest()

    monkeypatch.setattr(fm, "_download", fake_download)
    monkeypatch.delenv("VQGEN_OFFLINE", raising=False)
    root = tmp_path / "fm"
    with pytest.raises(DataError, match="MD5"):
        load_images(f"fashion-mnist:{root}", split="test", progress=False)
    assert not list(root.glob("*"))

    # With matching checksums the files land atomically under their real names.
    make_fmnist(tmp_path / "src")
    blobs = {name: (tmp_path / "src" / name).read_bytes() for name in fm.MD5}

    def good_download(url, dest, progress=False):
        blob = blobs[url.rsplit("/", 1)[1]]
        dest.write_bytes(blob)
        return hashlib.md5(blob).hexdigest()

    monkeypatch.setattr(fm, "MD5", {n: hashlib.md5(b).hexdigest() for n, b in blobs.items()})
    monkeypatch.setattr(fm, "_download", good_download)
    ds = load_images(f"fashion-mnist:{root}", split="test", progress=False)
    assert len(ds) == 3
    assert sorted(p.name for p in root.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.mark.skipif(not SHARED_FMNIST.is_dir(), reason="shared Fashion-MNIST copy not present")
def test_real_fashion_mnist_test_split():
    ds = load_images(f"fashion-mnist:{SHARED_FMNIST}", split="test", resolution=32, progress=False)
    assert ds.images.shape == (10000, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.num_classes == 10 and ds.labels.shape == (10000,)
    assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9


# ---------------------------------------------------------------------------------------------------
# folder


def test_folder_imagefolder_layout(tmp_path):
    save(tmp_path / "dog" / "b.png")
    save(tmp_path / "dog" / "a.JPG", color=(10, 20, 30))
    save(tmp_path / "cat" / "x.png")
    save(tmp_path / "cat" / "nested" / "y.webp")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = load_images(f"folder:{tmp_path}", split="test", resolution=8, channels=3, progress=False)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 8, 8) and ds.images.dtype == torch.uint8
    # sorted order: dog/a.JPG comes before dog/b.png
    assert ds.images[2, :, 4, 4].tolist() == [10, 20, 30]
    grey = load_images(f"folder:{tmp_path}", resolution=8, channels=1, progress=False)
    assert grey.images.shape == (4, 1, 8, 8)


def test_folder_flat_has_no_labels(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "sub" / "b.png")  # one image outside any subfolder -> no labels at all
    ds = load_images(f"folder:{tmp_path}", resolution=4, channels=3, progress=False)
    assert ds.labels is None and ds.class_names == [] and ds.num_classes == 0
    assert len(ds) == 2


def test_folder_corrupt_file_skipped_and_warned_once(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "c.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (tmp_path / "d.jpg").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_images(f"folder:{tmp_path}", resolution=8, channels=3, progress=False)
    assert len(ds) == 2 and ds.skipped == 2
    msgs = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(msgs) == 1 and "2" in msgs[0] and "b.png" in msgs[0]


def test_folder_empty_or_missing(tmp_path):
    with pytest.raises(DataError, match="no readable images"):
        load_images(f"folder:{tmp_path}", progress=False)
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no readable images"):
        load_images(f"folder:{tmp_path}", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        load_images(f"folder:{tmp_path / 'nope'}", progress=False)
    with pytest.raises(DataError):
        load_images("folder", progress=False)


def test_folder_resize_center_crop(tmp_path):
    # 40x20 image: left half black, middle white, right half black -> after shorter side 10, crop keeps middle
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 10:30] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    tall = np.full((50, 25), 77, dtype=np.uint8)
    Image.fromarray(tall).save(tmp_path / "tall.png")
    ds = load_images(f"folder:{tmp_path}", resolution=10, channels=3, progress=False)
    assert ds.images.shape == (2, 3, 10, 10)
    assert int(ds.images[0].min()) == 77 and int(ds.images[0].max()) == 77  # tall (sorted first), grey -> RGB
    wide = ds.images[1]
    assert int(wide.float().mean()) > 240  # the white middle was kept, the black sides cropped away


def test_folder_alpha_over_white(tmp_path):
    Image.new("RGBA", (6, 6), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    ds = load_images(f"folder:{tmp_path}", resolution=6, channels=1, progress=False)
    assert ds.images.shape == (1, 1, 6, 6) and int(ds.images.min()) == 255
