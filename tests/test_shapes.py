"""The procedural ``shapes`` dataset and caption records: small splits, fast, offline."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from vqgen.data import load_images, parse_spec
from vqgen.data import shapes as sh
from vqgen.data.records import category, read_records, validate_record, write_records
from vqgen.data.shapes import (
    BACKGROUND, COLORS, HELD_OUT, POSITIONS, RELATIONS, SHAPES, SIZES, ShapeObject, caption_scene, load_shapes,
    random_scene, render, scene_targets,
)
from vqgen.errors import DataError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def train() -> sh.ImageDataset:
    return load_shapes(0, "train", 32, n=400, progress=False)


@pytest.fixture(scope="module")
def test_split() -> sh.ImageDataset:
    return load_shapes(0, "test", 32, n=200, progress=False)


# ---------------------------------------------------------------------------------------------------
# vocabulary and rendering


def test_vocabulary():
    assert SHAPES == ("circle", "square", "triangle", "diamond", "cross")
    assert {"red", "green", "blue", "yellow"} <= set(COLORS) and len(COLORS) == 6
    assert len(POSITIONS) == 9 and POSITIONS[0] == "top left" and POSITIONS[4] == "center"
    assert RELATIONS == ("above", "below", "left of", "right of") and SIZES == ("small", "large")
    for c, s in HELD_OUT:
        assert c in COLORS and s in SHAPES
    colours = np.array(list(COLORS.values()) + [BACKGROUND], dtype=float)  # (7, 3)
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)  # (7, 7)
    assert dist[~np.eye(7, dtype=bool)].min() > 80  # well separated
    with pytest.raises(DataError, match="shape"):
        ShapeObject("hexagon", "red", "small", "top")


def test_render_antialiased_and_inside_cell():
    obj = ShapeObject("circle", "red", "large", "top left")
    img = render([obj], 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    red = np.array(COLORS["red"])
    bg = np.array(BACKGROUND)
    assert (np.abs(img.astype(int) - red).sum(-1) == 0).any()  # fully covered pixels
    # anti-aliased edge: a pixel strictly between background and colour in the red channel
    r = img[..., 0].astype(int)
    assert ((r > bg[0] + 10) & (r < red[0] - 10)).any()
    # max jitter keeps every object within its cell: nothing outside the top-left cell
    for shape in SHAPES:
        for size in SIZES:
            j = sh.MAX_JITTER[size] / sh.JITTER_STEPS
            for off in ((j, j), (-j, -j), (j, -j)):
                img = render([ShapeObject(shape, "white", size, "top left")], 96, [off])
                outside = img.copy()
                outside[:32, :32] = BACKGROUND
                assert (outside == np.array(BACKGROUND, np.uint8)).all(), (shape, size, off)
    # shapes differ from each other even when small
    small = [render([ShapeObject(s, "white", "small", "center")], 32)[..., 0].astype(int) for s in SHAPES]
    for i in range(len(SHAPES)):
        for k in range(i + 1, len(SHAPES)):
            assert np.abs(small[i] - small[k]).sum() > 300, (SHAPES[i], SHAPES[k])


def test_random_scene_and_targets():
    rng = np.random.default_rng(0)
    for _ in range(50):
        objs = random_scene(rng, 2, allow=lambda c, s: (c, s) not in HELD_OUT)
        assert len({o.position for o in objs}) == 2
        assert all((o.color, o.shape) not in HELD_OUT for o in objs)
    objs = [ShapeObject("cross", "blue", "large", "bottom right"), ShapeObject("circle", "red", "small", "top")]
    t = scene_targets(objs)
    assert t.shape == (9, 3) and t.dtype == np.int64
    assert t[8].tolist() == [SHAPES.index("cross") + 1, list(COLORS).index("blue"), 1]
    assert t[1].tolist() == [1, list(COLORS).index("red"), 0]
    empty = [i for i in range(9) if i not in (1, 8)]
    assert (t[empty, 0] == 0).all() and (t[empty, 1:] == -100).all()
    only = random_scene(np.random.default_rng(1), 1, allow=lambda c, s: (c, s) == ("green", "diamond"))
    assert (only[0].color, only[0].shape) == ("green", "diamond")


# ---------------------------------------------------------------------------------------------------
# captions and records


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z ]", " ", text) + " "


def _check_caption(caption: str, record: dict, objects: list[ShapeObject]) -> None:
    validate_record(record, "test")
    assert record["caption"] == caption and caption == caption.lower() and caption.strip() == caption
    text = _words(caption)
    assert len(record["objects"]) == len(objects)
    for rec, obj in zip(record["objects"], objects):
        assert rec["shape"] == obj.shape and rec["color"] == obj.color  # always stated, and true
        assert f" {obj.shape} " in text and f" {obj.color} " in text
        for key in ("size", "position"):
            if key in rec:
                assert rec[key] == getattr(obj, key)
                assert f" {rec[key]} " in text
    if len(objects) == 1:
        obj = record["objects"][0]
        assert "relation" not in record
        if "size" not in obj:
            assert not any(f" {s} " in text for s in SIZES)
        if "position" not in obj:
            assert not any(w in text.split() for w in ("top", "bottom", "left", "right", "center"))
    else:
        a, b = objects
        rel = record["relation"]
        assert rel in sh.relations_between(a, b)
        assert {"above": a.row < b.row, "below": a.row > b.row, "left of": a.col < b.col,
                "right of": a.col > b.col}[rel]
        assert f" {rel} " in text


def test_captions_match_records_and_vary():
    rng = np.random.default_rng(3)
    seen_one, seen_two = set(), set()
    for _ in range(300):
        objs = random_scene(rng, 1 + int(rng.integers(2)))
        caption, record = caption_scene(objs, rng)
        _check_caption(caption, record, objs)
        # the phrasing skeleton: caption with every attribute word blanked
        skeleton = caption
        for w in (*SHAPES, *COLORS, *SIZES, *sorted(POSITIONS, key=len, reverse=True), *RELATIONS):
            skeleton = re.sub(rf"\b{w}\b", "_", skeleton)
        (seen_one if len(objs) == 1 else seen_two).add(skeleton)
    assert len(seen_one) >= 8 and len(seen_two) >= 6  # several phrasings each
    with pytest.raises(ValueError):
        caption_scene([], rng)


def test_dataset_fields(test_split):
    ds = test_split
    assert ds.images.shape == (200, 3, 32, 32) and ds.images.dtype == torch.uint8 and ds.labels is None
    assert len(ds.captions) == len(ds.records) == 200 and ds.source == "shapes:0"
    assert ds.targets.shape == (200, 9, 3) and ds.targets.dtype == torch.int64
    for caption, rec, t in zip(ds.captions, ds.records, ds.targets):
        assert rec["caption"] == caption
        validate_record(rec, "shapes")
        occupied = int((t[:, 0] > 0).sum())
        assert occupied == len(rec["objects"])
        for o in rec["objects"]:  # every stated attribute is true of some occupied cell
            cells = [c for c in range(9) if t[c, 0] == SHAPES.index(o["shape"]) + 1
                     and t[c, 1] == list(COLORS).index(o["color"])]
            if "position" in o:
                cells = [c for c in cells if c == POSITIONS.index(o["position"])]
            assert cells, (caption, t)


def test_determinism_and_prefix():
    a = load_shapes(5, "test", 16, n=30, progress=False)
    b = load_shapes(5, "test", 16, n=30, progress=False)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.records == b.records
    c = load_shapes(6, "test", 16, n=30, progress=False)
    assert not torch.equal(a.images, c.images) and a.captions != c.captions
    prefix = load_shapes(5, "test", 16, n=10, progress=False)
    assert torch.equal(prefix.images, a.images[:10]) and prefix.captions == a.captions[:10]
    # Pinned digest of seed 0's first scenes and captions: the same on every machine (numpy PCG64 and
    # SHA-1 only). A deliberate change to the generator must update it.
    scenes, jitters, captions, _ = sh.generate_scenes(0, "train", 50)
    keys = [sh.scene_key(o, j) for o, j in zip(scenes, jitters)]
    digest = hashlib.sha1(json.dumps([captions, keys]).encode()).hexdigest()
    assert digest == "b0f8e35d22129e1cec0dea005c3c27f943bab9af"


def test_splits_disjoint_heldout_and_mix(train, test_split):
    tr = sh.generate_scenes(0, "train", 400)
    te = sh.generate_scenes(0, "test", 200)
    tr_keys = {sh.scene_key(o, j) for o, j in zip(tr[0], tr[1])}
    te_keys = {sh.scene_key(o, j) for o, j in zip(te[0], te[1])}
    assert not tr_keys & te_keys
    assert all(sh.split_of(k) == "train" for k in tr_keys) and all(sh.split_of(k) == "test" for k in te_keys)
    assert all((o.color, o.shape) not in HELD_OUT for scene in tr[0] for o in scene)
    assert all(category(r) != "heldout" for r in train.records)
    cats = [category(r) for r in test_split.records]
    counts = {c: cats.count(c) for c in ("single", "two", "heldout")}
    assert counts == {"single": 80, "two": 80, "heldout": 40}
    assert 0.3 < sum(len(r["objects"]) == 2 for r in train.records) / len(train) < 0.7
    # same-seed train images are the rendered train scenes
    assert train.captions == tr[2]


def test_spec_and_errors():
    assert parse_spec("shapes:3") == ("shapes", "3") and parse_spec("shapes") == ("shapes", None)
    ds = load_images("shapes:3", "test", 32, 3, progress=False)
    assert len(ds) == sh.SPLIT_SIZES["test"] and ds.source == "shapes:3" and ds.images.shape[1:] == (3, 32, 32)
    with pytest.raises(DataError, match="channels=3"):
        load_images("shapes", "test", 32, 1, progress=False)
    with pytest.raises(DataError, match="seed"):
        load_images("shapes:abc", "test", 32, 3, progress=False)
    with pytest.raises(DataError, match="all"):
        load_shapes(0, "all", n=2, progress=False)
    with pytest.raises(DataError, match="n must"):
        load_shapes(0, "test", n=0, progress=False)


# ---------------------------------------------------------------------------------------------------
# records files


def test_records_roundtrip_and_validation(tmp_path, test_split):
    path = tmp_path / "r.jsonl"
    write_records(path, test_split.records[:20])
    assert read_records(path) == test_split.records[:20]
    assert len(path.read_text().splitlines()) == 20

    good = {"caption": "a red circle above a blue square", "objects": [{"shape": "circle", "color": "red"},
                                                                     {"shape": "square", "color": "blue"}],
            "relation": "above"}
    assert validate_record(good, "x") is good and category(good) == "two"
    assert category({"caption": "c", "objects": [{"shape": "circle", "color": "blue"}]}) == "heldout"
    bad = [
        ({**good, "extra": 1}, "unknown record key"),
        ({**good, "caption": "  "}, "caption"),
        ({**good, "objects": []}, "1 or 2"),
        ({**good, "objects": good["objects"] * 2}, "1 or 2"),
        ({**good, "relation": "near"}, "relation"),
        ({"caption": "c", "objects": [{"shape": "circle", "color": "red"}], "relation": "above"}, "2 objects"),
        ({"caption": "c", "objects": [{"shape": "circle", "color": "pink"}]}, "color"),
        ({"caption": "c", "objects": [{"shape": "circle"}]}, "color"),
        ({"caption": "c", "objects": [{"shape": "circle", "color": "red", "size": "huge"}]}, "size"),
        ({"caption": "c", "objects": [{"shape": "circle", "color": "red", "angle": 3}]}, "unknown key"),
    ]
    for rec, msg in bad:
        with pytest.raises(DataError, match=msg):
            validate_record(rec, "here")
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "relation": "near"}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3")):
        read_records(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2")):
        read_records(path)
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")


def test_50k_render_speed_budget():
    """Rendering scales linearly; 2 000 images here must be far under the 50 000-in-a-minute budget."""
    import time
    t0 = time.perf_counter()
    load_shapes(1, "train", 32, n=2000, progress=False)
    per_image = (time.perf_counter() - t0) / 2000
    assert per_image * 50_000 < 60
