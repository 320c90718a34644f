"""Caption records: what a caption of a ``shapes`` scene states, checked, and stored as JSONL.

A record is ::

    {"caption": str,                                    # non-empty
     "objects": [{"shape": str, "color": str,           # always stated
                  "size": str, "position": str}, ...],  # optional: absent = not stated, not judged
     "relation": str}                                   # optional, only with 2 objects

with 1 or 2 objects; values come from ``shapes.SHAPES``, ``COLORS``, ``SIZES``, ``POSITIONS`` and
``RELATIONS``; ``relation`` relates ``objects[0]`` to ``objects[1]`` ("above" = objects[0] is in a
higher row). A JSONL file holds one record per line; blank lines are ignored.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..errors import DataError
from ..hub import atomic_write_bytes
from .shapes import COLORS, HELD_OUT, POSITIONS, RELATIONS, SHAPES, SIZES

RECORD_KEYS = ("caption", "objects", "relation")
OBJECT_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": SIZES,
    "position": POSITIONS,
}
REQUIRED_OBJECT_KEYS = ("shape", "color")
CATEGORIES = ("single", "two", "heldout")


def validate_record(rec: dict, where: str) -> dict:
    """Check a record against the schema and return it; ``where`` (file:line, index) prefixes errors."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(RECORD_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown record key(s) {unknown}; allowed: {list(RECORD_KEYS)}")
    caption = rec.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: 'caption' must be a non-empty string, got {caption!r}")
    objects = rec.get("objects")
    if not isinstance(objects, list) or len(objects) not in (1, 2):
        n = len(objects) if isinstance(objects, list) else type(objects).__name__
        raise DataError(f"{where}: 'objects' must be a list of 1 or 2 objects, got {n}")
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: objects[{i}] must be an object, got {type(obj).__name__}")
        bad = sorted(set(obj) - set(OBJECT_VALUES))
        if bad:
            raise DataError(f"{where}: objects[{i}] has unknown key(s) {bad}; allowed: {list(OBJECT_VALUES)}")
        for key in REQUIRED_OBJECT_KEYS:
            if key not in obj:
                raise DataError(f"{where}: objects[{i}] needs a {key!r} (shape and colour are always stated)")
        for key, value in obj.items():
            if value not in OBJECT_VALUES[key]:
                raise DataError(f"{where}: objects[{i}] has unknown {key} {value!r}; "
                                f"expected one of {list(OBJECT_VALUES[key])}")
    if "relation" in rec:
        if len(objects) != 2:
            raise DataError(f"{where}: 'relation' needs exactly 2 objects, the record has {len(objects)}")
        if rec["relation"] not in RELATIONS:
            raise DataError(f"{where}: unknown relation {rec['relation']!r}; expected one of {list(RELATIONS)}")
    return rec


def category(rec: dict) -> str:
    """"heldout" if any object is a ``HELD_OUT`` (colour, shape) pair, else "single" or "two"."""
    if any((o.get("color"), o.get("shape")) in HELD_OUT for o in rec["objects"]):
        return "heldout"
    return "single" if len(rec["objects"]) == 1 else "two"


def read_records(path: str | Path) -> list[dict]:
    """Read and validate a JSONL file of records; an error names the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"records file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); records files are UTF-8 JSONL") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); write one record object per line") from None
        records.append(validate_record(rec, f"{path}:{lineno}"))
    return records


def write_records(path: str | Path, records: Iterable[dict]) -> None:
    """Validate ``records`` and write them as UTF-8 JSONL, atomically."""
    path = Path(path).expanduser()
    lines = [json.dumps(validate_record(r, f"{path} record {i}"), ensure_ascii=False) for i, r in enumerate(records)]
    payload = "".join(line + "\n" for line in lines)
    atomic_write_bytes(path, lambda p: Path(p).write_text(payload, encoding="utf-8"))
