"""Users' captioned data (pairs:DIR, manifest:FILE), ImageDataset caption fields, captioned token shards."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data import DATASET_KINDS, ImageDataset, load_images
from vqgen.data import shapes as sh
from vqgen.data.captioned import CAPTION_STAT_KEYS, MAX_CAPTION_CHARS
from vqgen.data.tokens import TokenWriter, load_tokens
from vqgen.errors import DataError

torch.set_num_threads(1)


def save(path, color=(200, 30, 60), size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def load_quiet(spec: str, **kw) -> tuple[ImageDataset, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_images(spec, resolution=8, channels=3, progress=False, **kw)
    return ds, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------------------------
# ImageDataset


def test_image_dataset_caption_fields_validated():
    imgs = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    ds = ImageDataset(imgs, None, captions=["a", "b"], targets=torch.zeros(2, 9, 3, dtype=torch.int32))
    assert ds.targets.dtype == torch.int64 and ds.caption_stats == {} and "captioned" in repr(ds)
    plain = ImageDataset(imgs, torch.tensor([0, 1]), ["x", "y"])
    assert plain.captions is None and plain.records is None and plain.targets is None
    with pytest.raises(DataError, match="captions"):
        ImageDataset(imgs, None, captions=["only one"], source="mine")
    with pytest.raises(DataError, match="records"):
        ImageDataset(imgs, None, records=[{}])
    with pytest.raises(DataError, match="targets"):
        ImageDataset(imgs, None, targets=torch.zeros(3, 9, 3))


def test_kinds_registered():
    assert DATASET_KINDS == ("fashion-mnist", "folder", "shapes", "pairs", "manifest", "wds")
    with pytest.raises(DataError, match="pairs:"):
        load_images("pairs", progress=False)
    with pytest.raises(DataError, match="manifest:"):
        load_images("manifest", progress=False)


# ---------------------------------------------------------------------------------------------------
# pairs:DIR


def test_pairs_counts_every_reason(tmp_path):
    save(tmp_path / "a.png", (10, 20, 30))
    (tmp_path / "a.txt").write_text("  a dark square\n", encoding="utf-8")
    save(tmp_path / "sub" / "b.jpg", (250, 250, 250))
    (tmp_path / "sub" / "b.txt").write_bytes("\ufeffun carré blanc".encode("utf-8"))  # BOM is fine
    save(tmp_path / "c.png")  # no caption
    save(tmp_path / "d.png")
    (tmp_path / "d.txt").write_text(" \n\t ")  # empty
    save(tmp_path / "e.png")
    (tmp_path / "e.txt").write_bytes(b"caf\xe9 latin-1")  # not UTF-8
    save(tmp_path / "f.png", (0, 200, 0))
    (tmp_path / "f.txt").write_text("x" * (MAX_CAPTION_CHARS + 50))  # kept, truncated
    (tmp_path / "g.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # unreadable image
    (tmp_path / "g.txt").write_text("a broken image")
    (tmp_path / "notes.txt").write_text("a caption without an image is ignored")
    ds, msgs = load_quiet(f"pairs:{tmp_path}", split="test")  # split is ignored
    assert len(ds) == 3 and ds.images.shape == (3, 3, 8, 8) and ds.labels is None
    assert ds.captions == ["a dark square", "x" * MAX_CAPTION_CHARS, "un carré blanc"]  # sorted by path
    assert ds.images[0, :, 4, 4].tolist() == [10, 20, 30]
    assert set(ds.caption_stats) == set(CAPTION_STAT_KEYS)
    assert ds.caption_stats == {"no_caption": 1, "empty": 1, "undecodable": 1, "bad_row": 0, "missing_image": 0,
                                "unreadable": 1, "truncated": 1}
    assert ds.skipped == 4
    assert sum("skipped 4 of 7" in m for m in msgs) == 1 and any("1000 characters" in m for m in msgs)


def test_pairs_nothing_usable(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(f"pairs:{tmp_path / 'nope'}", progress=False)
    with pytest.raises(DataError, match="no images"):
        load_images(f"pairs:{tmp_path}", progress=False)
    save(tmp_path / "a.png")
    with pytest.raises(DataError, match=f"{tmp_path}.*1 no caption"):
        load_images(f"pairs:{tmp_path}", progress=False)


# ---------------------------------------------------------------------------------------------------
# manifest:FILE


def test_manifest_jsonl_bad_rows(tmp_path):
    save(tmp_path / "imgs" / "a.png", (1, 2, 3))
    save(tmp_path / "imgs" / "b.png", (4, 5, 6))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    abs_b = str(tmp_path / "imgs" / "b.png")
    lines = [
        json.dumps({"image": "imgs/a.png", "caption": "first"}),
        "",
        "{not json",
        json.dumps({"image": "imgs/a.png"}),  # no caption
        json.dumps(["imgs/a.png", "x"]),  # not an object
        json.dumps({"image": "imgs/missing.png", "caption": "gone"}),
        json.dumps({"image": "imgs/a.png", "caption": "   "}),
        json.dumps({"image": "imgs/bad.png", "caption": "corrupt"}),
        json.dumps({"image": abs_b, "caption": "second", "extra": 1}),
        json.dumps({"image": 3, "caption": "bad type"}),
    ]
    m = tmp_path / "m.jsonl"
    m.write_bytes(("\n".join(lines) + "\n").encode() + b'{"image": "imgs/a.png", "caption": "caf\xe9"}\n')
    ds, msgs = load_quiet(f"manifest:{m}")
    assert ds.captions == ["first", "second"] and ds.images[1, :, 0, 0].tolist() == [4, 5, 6]
    assert ds.caption_stats == {"no_caption": 0, "empty": 1, "undecodable": 1, "bad_row": 4, "missing_image": 1,
                                "unreadable": 1, "truncated": 0}
    assert ds.skipped == 8 and any("m.jsonl:3" in msg for msg in msgs)


def test_manifest_csv(tmp_path):
    save(tmp_path / "a.png", (9, 9, 9))
    m = tmp_path / "m.csv"
    m.write_text('id,image,caption\n1,a.png,"a grey square, small"\n2,a.png\n3,,no image\n4,b.png,missing\n'
                 '5,a.png,"two\nlines"\n', encoding="utf-8")
    ds, _ = load_quiet(f"manifest:{m}")
    assert ds.captions == ["a grey square, small", "two\nlines"]
    assert ds.caption_stats["bad_row"] == 2 and ds.caption_stats["missing_image"] == 1 and ds.skipped == 3
    (tmp_path / "h.csv").write_text("path,text\na.png,hello\n")
    with pytest.raises(DataError, match="h.csv.*'image' and 'caption'"):
        load_images(f"manifest:{tmp_path / 'h.csv'}", progress=False)
    (tmp_path / "m.txt").write_text("a.png hello\n")
    with pytest.raises(DataError, match=".jsonl or .csv"):
        load_images(f"manifest:{tmp_path / 'm.txt'}", progress=False)
    (tmp_path / "e.jsonl").write_text('{"image": "zzz.png", "caption": "x"}\n')
    with pytest.raises(DataError, match="e.jsonl.*1 missing image"):
        load_images(f"manifest:{tmp_path / 'e.jsonl'}", progress=False)


# ---------------------------------------------------------------------------------------------------
# token shards


def test_token_writer_captions_roundtrip(tmp_path):
    w = TokenWriter(tmp_path, "train", {"codec": {}, "vocab_size": 8})
    w.write(0, torch.zeros(2, 2, 2, dtype=torch.long), None, ["één", "two"])
    w.write(1, torch.ones(1, 2, 2, dtype=torch.long), None, ["three"])
    w.finish(3)
    toks = load_tokens(tmp_path, "train")
    assert toks.captions == ["één", "two", "three"] and toks.labels is None
    assert json.loads((tmp_path / "train" / "captions-00001.json").read_text()) == ["three"]
    with pytest.raises(DataError, match="captions"):
        w.write(2, torch.ones(2, 2, 2, dtype=torch.long), None, ["one"])
    plain = TokenWriter(tmp_path / "p", "train", {"codec": {}, "vocab_size": 8})
    plain.write(0, torch.zeros(2, 2, 2, dtype=torch.long), torch.tensor([0, 1]))
    plain.finish(2)
    assert load_tokens(tmp_path / "p").captions is None


def test_encode_shapes_carries_captions(tmp_path, monkeypatch):
    from vqgen.config import apply_overrides
    from vqgen.data import splits_of
    from vqgen.data.encode import encode_dataset
    from vqgen.prior.codec import TokenizerCodec
    from vqgen.tokenizer.vqgan import VQTokenizer
    from vqgen.train.tokenizer import TOKENIZER_PRESETS

    monkeypatch.setattr(sh, "SPLIT_SIZES", {"train": 10, "test": 6})
    cfg = apply_overrides(TOKENIZER_PRESETS["tiny"](), ["model.autoencoder.in_channels=3"])
    model = VQTokenizer(cfg.model).eval()
    path = model.save_pretrained(tmp_path / "tok")
    codec = TokenizerCodec(VQTokenizer.from_pretrained(path), str(path))
    assert splits_of("shapes:2") == ["train", "test"] and splits_of(f"pairs:{tmp_path}") == ["train"]
    out = tmp_path / "toks"
    assert encode_dataset(codec, "shapes:2", out, shard_size=4, progress=False) == {"train": 10, "test": 6}
    assert len(list((out / "train").glob("captions-*.json"))) == 3
    for split, n in (("train", 10), ("test", 6)):
        toks = load_tokens(out, split)
        data = load_images("shapes:2", split, 16, 3, progress=False)
        assert toks.captions == data.captions and len(toks) == n and toks.labels is None
        assert torch.equal(toks.tokens, codec.encode(data.images))
    assert json.loads((out / "meta.json").read_text())["captioned"] is True
    np.testing.assert_equal(load_tokens(out, "test").tokens.shape, (6, 4, 4))
