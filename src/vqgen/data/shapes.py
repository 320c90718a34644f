"""The procedural ``shapes`` dataset (spec ``shapes[:SEED]``): captioned scenes with known truth.

Each RGB image shows one or two coloured shapes on a plain dark background. The image is a 3×3 grid
of cells (``cell = row * 3 + col``, named by ``POSITIONS``); every object sits in its own cell,
large (≈ 0.8 of a cell) or small (≈ 0.5), jittered a little but never out of its cell. Images are
drawn with Pillow at 4× and box-downsampled, so edges are anti-aliased.

Every image has a lower-case caption in one of several phrasings ("a large red circle in the top
left", "red circle, top left", "the circle at the top left is red", "a red circle above a small blue
square", ...) and a **record** of exactly what the caption states::

    {"caption": str,
     "objects": [{"shape": str, "color": str, "size": str, "position": str}, ...],   # 1 or 2
     "relation": str}                                                                 # optional

Shape and colour are always stated; ``size`` and ``position`` are absent from an object when the
caption does not state them (and are then not judged). ``relation`` (one of ``RELATIONS``) only
appears with two objects and relates ``objects[0]`` to ``objects[1]`` ("above" = a higher row, "left
of" = a smaller column). ``vqgen.data.records`` validates, reads and writes records as JSONL.

Splits: ``train`` (default 50 000 images) and ``test`` (default 1 000). A scene's full truth (objects
and jitter) is hashed with SHA-1; bucket 0 of 10 belongs to test, the others to train, so the two
splits never share a scene. The ``HELD_OUT`` (colour, shape) pairs never appear in train; the test
split is 40 % single-object, 40 % two-object and 20 % scenes containing a held-out pair. The same
seed gives the same images and captions on any machine (numpy ``default_rng``, no global state).
``scene_targets`` gives per-cell (shape, colour, size) classes for probes and judges.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import DataError
from .base import ImageDataset, check_image_args

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 245),
    "yellow": (245, 220, 40),
    "purple": (165, 60, 215),
    "white": (240, 240, 240),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
RELATIONS = ("above", "below", "left of", "right of")
HELD_OUT: tuple[tuple[str, str], ...] = (("red", "triangle"), ("blue", "circle"), ("green", "square"))
BACKGROUND: tuple[int, int, int] = (24, 24, 32)

SPLIT_SIZES = {"train": 50_000, "test": 1_000}
TEST_BUCKET, N_BUCKETS = 0, 10  # sha1(scene) % N_BUCKETS == TEST_BUCKET -> test split
SIZE_FRACTION = {"small": 0.5, "large": 0.8}  # object extent in cell widths
JITTER_STEPS = 100  # jitter is an integer number of 1/JITTER_STEPS cell widths (exact, hashable)
MAX_JITTER = {"small": 4, "large": 4}  # in 1/JITTER_STEPS cells (±0.4 px at 32 px): objects stay inside their cells
# and render almost alike wherever they stand in it. A larger jitter (±0.18 cell for small objects) made the 8×8
# tokens of one object vary so much that the text-to-image model learned far slower (docs/benchmarks.md).
SUPERSAMPLE = 4
PROGRESS_MIN = 5_000

_COLOR_NAMES = tuple(COLORS)
_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}
_COLOR_INDEX = {c: i for i, c in enumerate(_COLOR_NAMES)}
_SIZE_INDEX = {s: i for i, s in enumerate(SIZES)}
_POSITION_INDEX = {p: i for i, p in enumerate(POSITIONS)}
IGNORE_INDEX = -100  # cross-entropy ignore_index for empty cells in scene_targets

# Unit outlines centred on 0 with extent 1 (x right, y down); a circle is drawn as an ellipse.
_ARM = 0.13  # half the width of a cross arm: thin enough that a small cross is no blob
_DIA = 0.55  # a diamond reaches a little past the box: it has half the area of a square
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)],
    "triangle": [(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)],
    "diamond": [(0.0, -_DIA), (_DIA, 0.0), (0.0, _DIA), (-_DIA, 0.0)],
    "cross": [(-_ARM, -0.5), (_ARM, -0.5), (_ARM, -_ARM), (0.5, -_ARM), (0.5, _ARM), (_ARM, _ARM), (_ARM, 0.5),
              (-_ARM, 0.5), (-_ARM, _ARM), (-0.5, _ARM), (-0.5, -_ARM), (-_ARM, -_ARM)],
}


@dataclass(frozen=True)
class ShapeObject:
    """The full truth about one object: all four attributes are always set."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for name, value, allowed in (("shape", self.shape, SHAPES), ("color", self.color, _COLOR_NAMES),
                                     ("size", self.size, SIZES), ("position", self.position, POSITIONS)):
            if value not in allowed:
                raise DataError(f"unknown {name} {value!r} for a shapes object; expected one of {list(allowed)}")

    @property
    def cell(self) -> int:
        return _POSITION_INDEX[self.position]

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3


def render(
    objects: Sequence[ShapeObject],
    resolution: int = 32,
    offsets: Sequence[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Draw a scene as uint8 (H, W, 3), anti-aliased (drawn at 4× then box-downsampled).

    ``offsets`` are per-object (dx, dy) shifts of the object's centre in cell widths; keep them within
    ``MAX_JITTER`` (±0.04 of a cell) so objects stay inside their cells.
    """
    if offsets is not None and len(offsets) != len(objects):
        raise ValueError(f"{len(offsets)} offsets for {len(objects)} objects")
    big = resolution * SUPERSAMPLE
    cell = big / 3.0
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, obj in enumerate(objects):
        dx, dy = offsets[i] if offsets is not None else (0.0, 0.0)
        cx, cy = (obj.col + 0.5 + dx) * cell, (obj.row + 0.5 + dy) * cell  # centre, big-image pixels
        ext = SIZE_FRACTION[obj.size] * cell
        color = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - ext / 2, cy - ext / 2, cx + ext / 2, cy + ext / 2), fill=color)
        else:
            draw.polygon([(cx + u * ext, cy + v * ext) for u, v in _OUTLINES[obj.shape]], fill=color)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.uint8)  # (R, R, 3), box filter


def _allowed_pairs(allow: Callable[[str, str], bool] | None) -> list[tuple[str, str]]:
    if allow is None:
        return _ALL_PAIRS
    if allow is _not_held_out:
        return _TRAIN_PAIRS
    pairs = [(c, s) for c in _COLOR_NAMES for s in SHAPES if allow(c, s)]
    if not pairs:
        raise ValueError("allow(color, shape) rejects every (color, shape) pair")
    return pairs


def random_scene(
    rng: np.random.Generator,
    n_objects: int,
    *,
    allow: Callable[[str, str], bool] | None = None,
) -> list[ShapeObject]:
    """``n_objects`` (1–9) random objects in distinct cells; ``allow(color, shape)`` filters the pairs."""
    if not 1 <= n_objects <= 9:
        raise ValueError(f"n_objects must be in 1..9, got {n_objects}")
    pairs = _allowed_pairs(allow)
    cells = np.argsort(rng.random(9), kind="stable")[:n_objects]  # (n,) distinct cells
    picks = rng.integers(0, len(pairs) * len(SIZES), size=n_objects)  # (n,) pair index * 2 + size index
    return [ShapeObject(pairs[k // len(SIZES)][1], pairs[k // len(SIZES)][0], SIZES[k % len(SIZES)], POSITIONS[c])
            for c, k in zip(cells.tolist(), picks.tolist())]


def scene_targets(objects: Sequence[ShapeObject]) -> np.ndarray:
    """int64 (9, 3): per cell (shape index + 1 or 0 = empty, colour index, size index); -100 where empty."""
    t = np.full((9, 3), IGNORE_INDEX, dtype=np.int64)  # (9, 3)
    t[:, 0] = 0
    for obj in objects:
        t[obj.cell] = (_SHAPE_INDEX[obj.shape] + 1, _COLOR_INDEX[obj.color], _SIZE_INDEX[obj.size])
    return t


def relations_between(a: ShapeObject, b: ShapeObject) -> list[str]:
    """Every relation in ``RELATIONS`` that holds from ``a`` to ``b`` (by their cells)."""
    rels = []
    if a.row < b.row:
        rels.append("above")
    if a.row > b.row:
        rels.append("below")
    if a.col < b.col:
        rels.append("left of")
    if a.col > b.col:
        rels.append("right of")
    return rels


# ---------------------------------------------------------------------------------------------------
# captions


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(rng: np.random.Generator, next_word: str, bare_ok: bool = True) -> str:
    """"a"/"an" (most often), "the", or (when ``bare_ok``) no article."""
    indefinite = "an" if next_word[0] in "aeiou" else "a"
    return _pick(rng, (indefinite, indefinite, "the", "") if bare_ok else (indefinite, indefinite, "the"))


def _where(rng: np.random.Generator, position: str) -> str:
    """A prepositional phrase that contains the position name verbatim."""
    if position in ("left", "right"):
        return f"on the {position}"
    if position in ("top", "bottom"):
        return f"at the {position}"
    return _pick(rng, (f"in the {position}", f"at the {position}"))


def _noun_phrase(rng: np.random.Generator, obj: ShapeObject, size: bool, article: bool = True,
                 bare_ok: bool = True) -> str:
    """"[a|the] [size] colour shape"; the size only when ``size``."""
    words = ([obj.size] if size else []) + [obj.color, obj.shape]
    art = _article(rng, words[0], bare_ok) if article else ""
    return " ".join(w for w in (art, *words) if w)


def _caption_one(rng: np.random.Generator, obj: ShapeObject) -> tuple[str, dict]:
    size, pos = bool(rng.random() < 0.6), bool(rng.random() < 0.7)
    template = int(rng.integers(5))
    if not pos and template in (1, 2):
        template = 0
    if template == 0:  # "a large red circle in the top left" / "a red circle"
        text = _noun_phrase(rng, obj, size) + (" " + _where(rng, obj.position) if pos else "")
    elif template == 1:  # "red circle, top left" / "large red circle, top left"
        text = f"{_noun_phrase(rng, obj, size, article=False)}, {obj.position}"
    elif template == 2:  # "the circle at the top left is red" / "... is large and red"
        attrs = f"{obj.size} and {obj.color}" if size else obj.color
        text = f"the {obj.shape} {_where(rng, obj.position)} is {attrs}"
    elif template == 3:  # "there is a small blue square in the center"
        words = ([obj.size] if size else []) + [obj.color, obj.shape]
        art = "an" if words[0][0] in "aeiou" else "a"
        text = f"there is {art} {' '.join(words)}" + (" " + _where(rng, obj.position) if pos else "")
    else:  # "a red circle that is large, in the top left"
        text = _noun_phrase(rng, obj, False) + (f" that is {obj.size}" if size else "")
        text += (", " if size else " ") + _where(rng, obj.position) if pos else ""
    rec_obj = {"shape": obj.shape, "color": obj.color}
    if size:
        rec_obj["size"] = obj.size
    if pos:
        rec_obj["position"] = obj.position
    return text, {"caption": text, "objects": [rec_obj]}


_RELATION_WORDS = {
    "above": ("above",),
    "below": ("below",),
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
}


def _caption_two(rng: np.random.Generator, a: ShapeObject, b: ShapeObject) -> tuple[str, dict]:
    rels = relations_between(a, b)
    if not rels:
        raise ValueError(f"two objects in the same cell ({a.position}) have no relation")
    relation = _pick(rng, rels)
    pos = bool(rng.random() < 0.25)  # positions of both objects, or of neither
    # after a position ("... in the center left of ...") only the long form reads unambiguously
    rel_words = _pick(rng, _RELATION_WORDS[relation][-1:] if pos else _RELATION_WORDS[relation])
    sizes = [bool(rng.random() < 0.5), bool(rng.random() < 0.5)]
    nps = [_noun_phrase(rng, a, sizes[0]), _noun_phrase(rng, b, sizes[1], bare_ok=False)]
    if pos:
        nps = [f"{np_} {_where(rng, o.position)}" for np_, o in zip(nps, (a, b))]
    template = int(rng.integers(3))
    if template == 0:  # "a red circle above a small blue square"
        text = f"{nps[0]} {rel_words} {nps[1]}"
    elif template == 1:  # "a red circle is above a small blue square"
        text = f"{nps[0]} is {rel_words} {nps[1]}"
    else:  # "there is a red circle above a small blue square"
        first = _noun_phrase(rng, a, sizes[0], article=False)
        first = f"{'an' if first[0] in 'aeiou' else 'a'} {first}"
        if pos:
            first += " " + _where(rng, a.position)
        text = f"there is {first} {rel_words} {nps[1]}"
    objs = []
    for o, s in zip((a, b), sizes):
        rec_obj = {"shape": o.shape, "color": o.color}
        if s:
            rec_obj["size"] = o.size
        if pos:
            rec_obj["position"] = o.position
        objs.append(rec_obj)
    return text, {"caption": text, "objects": objs, "relation": relation}


def caption_scene(objects: Sequence[ShapeObject], rng: np.random.Generator) -> tuple[str, dict]:
    """A random phrasing of a one- or two-object scene, and the record of what it states."""
    if len(objects) == 1:
        return _caption_one(rng, objects[0])
    if len(objects) == 2:
        return _caption_two(rng, objects[0], objects[1])
    raise ValueError(f"captions describe 1 or 2 objects, got {len(objects)}")


# ---------------------------------------------------------------------------------------------------
# splits


def is_held_out(obj: ShapeObject) -> bool:
    return (obj.color, obj.shape) in HELD_OUT


def _not_held_out(color: str, shape: str) -> bool:
    return (color, shape) not in HELD_OUT


_ALL_PAIRS = [(c, s) for c in _COLOR_NAMES for s in SHAPES]
_TRAIN_PAIRS = [p for p in _ALL_PAIRS if _not_held_out(*p)]


def scene_key(objects: Sequence[ShapeObject], jitter: Sequence[tuple[int, int]]) -> str:
    """A canonical text of a scene's full truth (objects in order, integer jitter)."""
    return ";".join(f"{o.shape},{o.color},{o.size},{o.cell},{jx},{jy}" for o, (jx, jy) in zip(objects, jitter))


def scene_bucket(key: str) -> int:
    """Stable bucket in [0, N_BUCKETS) of a scene key (SHA-1, the same on every machine)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % N_BUCKETS


def split_of(key: str) -> str:
    return "test" if scene_bucket(key) == TEST_BUCKET else "train"


def _random_jitter(rng: np.random.Generator, objects: Sequence[ShapeObject]) -> list[tuple[int, int]]:
    """Integer (jx, jy) per object, uniform in [-MAX_JITTER, MAX_JITTER] of its size."""
    u = rng.random(2 * len(objects)).tolist()  # (2n,)
    out = []
    for i, o in enumerate(objects):
        lim = MAX_JITTER[o.size]
        out.append((int(u[2 * i] * (2 * lim + 1)) - lim, int(u[2 * i + 1] * (2 * lim + 1)) - lim))
    return out


def _scene_for(rng: np.random.Generator, split: str, index: int) -> list[ShapeObject]:
    """Draw the index-th candidate scene of a split (train: 50/50 one/two objects, no held-out pair)."""
    if split == "train":
        return random_scene(rng, 1 + int(rng.integers(2)), allow=_not_held_out)
    kind = index % 5  # test: 0, 1 single; 2, 3 two objects; 4 contains a held-out pair
    if kind < 4:
        return random_scene(rng, 1 if kind < 2 else 2, allow=_not_held_out)
    objects = random_scene(rng, 1 + int(rng.integers(2)))
    j = int(rng.integers(len(objects)))
    color, shape = HELD_OUT[int(rng.integers(len(HELD_OUT)))]
    objects[j] = replace(objects[j], color=color, shape=shape)
    return objects


def generate_scenes(
    seed: int, split: str, n: int
) -> tuple[list[list[ShapeObject]], list[list[tuple[int, int]]], list[str], list[dict]]:
    """The first ``n`` scenes of a split: (objects, integer jitter, captions, records), no pixels."""
    rng = np.random.default_rng([int(seed), 0 if split == "train" else 1])
    scenes, jitters, captions, records = [], [], [], []
    while len(scenes) < n:
        objects = _scene_for(rng, split, len(scenes))
        jitter = _random_jitter(rng, objects)
        if split_of(scene_key(objects, jitter)) != split:
            continue  # belongs to the other split
        caption, record = caption_scene(objects, rng)
        scenes.append(objects)
        jitters.append(jitter)
        captions.append(caption)
        records.append(record)
    return scenes, jitters, captions, records


def load_shapes(
    seed: int = 0,
    split: str = "train",
    resolution: int = 32,
    n: int | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Generate a split of ``shapes:SEED`` as uint8 (N, 3, R, R) images with captions, records, targets.

    ``split`` is "train" (default 50 000 images) or "test" (1 000); ``n`` overrides the size and the
    first ``n`` images of a split do not depend on ``n``.
    """
    source = f"shapes:{seed}"
    if split not in SPLIT_SIZES:
        raise DataError(f"{source}: unknown split {split!r}; shapes has {list(SPLIT_SIZES)} ('all' is not offered: "
                        "load train and test separately)")
    check_image_args(resolution, 3)
    if resolution < 6:
        raise DataError(f"{source}: resolution {resolution} is too small for a 3×3 grid of shapes; use 6 or more")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"{source}: the seed must be a non-negative integer, e.g. shapes:0")
    n = SPLIT_SIZES[split] if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"{source}: n must be a positive integer, got {n!r}")
    scenes, jitters, captions, records = generate_scenes(int(seed), split, int(n))
    arr = np.empty((n, resolution, resolution, 3), dtype=np.uint8)  # (N, R, R, 3)
    targets = np.empty((n, 9, 3), dtype=np.int64)  # (N, 9, 3)
    it = zip(scenes, jitters)
    if progress and n >= PROGRESS_MIN:
        from tqdm import tqdm

        it = tqdm(it, total=n, desc=f"rendering {source} {split}", unit="img")
    for i, (objects, jitter) in enumerate(it):
        offsets = [(jx / JITTER_STEPS, jy / JITTER_STEPS) for jx, jy in jitter]
        arr[i] = render(objects, resolution, offsets)
        targets[i] = scene_targets(objects)
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R)
    return ImageDataset(images, None, [], skipped=0, source=source, captions=captions, records=records,
                        targets=torch.from_numpy(targets), caption_stats={"empty": 0, "undecodable": 0, "truncated": 0})
