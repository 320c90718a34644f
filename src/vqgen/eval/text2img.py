"""Judging text-to-image samples of ``shapes`` scenes against the records their captions came from.

A record (``vqgen.data.records``) states, for each object of a caption, some of its shape, colour, size
and position, and for two objects possibly a relation of ``objects[0]`` to ``objects[1]``. The shapes
judge (``vqgen.eval.shapes_judge``) reads the objects a sample shows; ``judge_record`` says whether they
match the record: the sample must show exactly as many objects as the record has, and some one-to-one
assignment of seen objects to record objects must match every stated attribute and the relation.
Attributes a caption does not state are not judged.

``evaluate_text2img`` draws, per caption, ``n_candidates`` samples without guidance (scale 1) and
``n_candidates`` with classifier-free guidance, and judges four variants: ``no_rerank`` (candidate 0),
``rerank8`` (the candidate the CLIP score likes best, among the same draws: a paired comparison), and
both again with guidance (``*_guided``).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.records import CATEGORIES, category, validate_record
from ..data.shapes import POSITIONS
from ..errors import DataError
from .shapes_judge import GRID, ShapesJudge, predict_scenes, render_accuracy

ATTRIBUTES = ("shape", "color", "size", "position")
KINDS = (*ATTRIBUTES, "relation", "count")  # the keys of judge_record's per-attribute verdicts
VARIANTS = ("no_rerank", "rerank8", "no_rerank_guided", "rerank8_guided")
GROUPS = CATEGORIES  # single, two, heldout
PER_ATTRIBUTE_VARIANT = "no_rerank_guided"
CHUNK = 32  # captions per sample_fn call

# relation of object A to object B -> test on ((row_a, col_a), (row_b, col_b))
RELATION_TESTS: dict[str, Callable[[tuple[int, int], tuple[int, int]], bool]] = {
    "above": lambda a, b: a[0] < b[0],
    "below": lambda a, b: a[0] > b[0],
    "left of": lambda a, b: a[1] < b[1],
    "right of": lambda a, b: a[1] > b[1],
}


def _cell(position: str) -> tuple[int, int]:
    """Position name -> (row, col) of its grid cell."""
    if position not in POSITIONS:
        raise DataError(f"unknown position {position!r}; known: {list(POSITIONS)}")
    return divmod(POSITIONS.index(position), GRID)


def judge_record(record: dict, objects: list[dict]) -> tuple[bool, dict[str, bool]]:
    """Does the scene ``objects`` (what the judge saw: dicts with shape, colour, size, position) match
    ``record``? Returns (all right, per-attribute verdicts).

    The verdict is True when the scene holds exactly ``len(record["objects"])`` objects and an assignment
    of seen objects to record objects matches every stated attribute and, for a record with a
    ``relation``, the relation between the cells of the objects matched to ``objects[0]`` and
    ``objects[1]`` ("above": strictly higher row, "left of": strictly smaller column, ...).

    The per-attribute dict has ``count`` and each attribute kind the record states (``shape``,
    ``color``, ``size``, ``position``, ``relation``): whether every check of that kind holds under the
    best assignment, the one that passes the most checks (a record object left without a seen object
    fails all of its checks).
    """
    validate_record(record, f"record {record.get('caption')!r}" if isinstance(record, dict) else "record")
    wanted, relation = record["objects"], record.get("relation")
    stated = [k for k in ATTRIBUTES if any(k in obj for obj in wanted)]

    best: dict[str, list[bool]] | None = None
    best_score = -1
    # Every injective map of record objects to seen objects (None: none left for it).
    slots = list(range(len(objects))) + [None] * len(wanted)
    assignments = sorted(set(itertools.permutations(slots, len(wanted))), key=lambda a: [(x is None, x) for x in a])
    for assignment in assignments:
        checks: dict[str, list[bool]] = {k: [] for k in stated}
        for want, seen_index in zip(wanted, assignment):
            seen = objects[seen_index] if seen_index is not None else None
            for k in stated:
                if k in want:
                    checks[k].append(seen is not None and seen.get(k) == want[k])
        if relation is not None:
            a, b = assignment
            holds = RELATION_TESTS[relation]
            checks["relation"] = [a is not None and b is not None and
                                  holds(_cell(objects[a]["position"]), _cell(objects[b]["position"]))]
        score = sum(sum(v) for v in checks.values())
        if score > best_score:
            best, best_score = checks, score
    assert best is not None
    verdicts = {k: all(v) for k, v in best.items()}
    verdicts["count"] = len(objects) == len(wanted)
    return all(verdicts.values()), verdicts


def _group(record: dict, by_objects_only: bool) -> str:
    """The report group of a valid record (1 or 2 objects)."""
    if by_objects_only:
        return "single" if len(record["objects"]) == 1 else "two"
    return category(record)


def _mean(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_text2img(records: list[dict], sample_fn: Callable[[list[str], int, float, int], torch.Tensor],
                      score_fn: Callable[[torch.Tensor, list[str]], torch.Tensor], judge: ShapesJudge, *,
                      guidance_scale: float, n_candidates: int = 8,
                      renders: tuple[torch.Tensor, torch.Tensor | np.ndarray] | None = None, seed: int = 0,
                      by_objects_only: bool = False, progress: bool = True) -> dict:
    """Judge samples of every record's caption; returns the report ``format_report`` prints.

    - ``sample_fn(captions, n, guidance_scale, seed)`` -> uint8 (len(captions), n, 3, H, W): n candidates
      per caption. Captions go in chunks of ``CHUNK``; the chunk starting at caption ``i`` gets seed
      ``seed + i``, and the unguided and guided draws of a chunk share it.
    - ``score_fn(images uint8 (M, 3, H, W), captions)`` -> (M,): the CLIP score of each image with its
      caption; the re-ranked variants keep each caption's best-scored candidate.
    - ``renders``: (uint8 images (N, 3, R, R), targets (N, 9, 3)) real renders on which the judge's own
      fully-correct accuracy is reported (``judge_accuracy_on_renders``; None without them).
    - ``by_objects_only``: group records by their number of objects ("single" / "two", for a user's
      caption file) instead of ``records.category``; "heldout" is then empty.

    Groups and attributes with no caption report None. ``per_attribute`` is measured on the
    ``no_rerank_guided`` variant, over the records stating each attribute (count: all records).
    """
    if not records:
        raise DataError("evaluate_text2img: no records to evaluate")
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
    for i, rec in enumerate(records):
        validate_record(rec, f"record {i}")
    groups = [_group(rec, by_objects_only) for rec in records]
    captions = [rec["caption"] for rec in records]
    scales = {"": 1.0, "_guided": float(guidance_scale)}
    verdicts: dict[str, list[bool]] = {v: [] for v in VARIANTS}
    per_attribute: dict[str, list[bool]] = {k: [] for k in KINDS}

    bar = tqdm(total=len(records), desc="text2img eval", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(records), CHUNK):
        chunk = captions[start:start + CHUNK]
        drawn: dict[float, torch.Tensor] = {}
        for suffix, scale in scales.items():
            if scale not in drawn:  # guidance 1 is the unguided draw itself
                drawn[scale] = _sample(sample_fn, chunk, n_candidates, scale, seed + start)
            images = drawn[scale]  # uint8 (b, n, 3, H, W)
            b, n = images.shape[:2]
            scores = torch.as_tensor(score_fn(images.flatten(0, 1), [c for c in chunk for _ in range(n)]))
            if scores.shape != (b * n,):
                raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected ({b * n},)")
            best = scores.view(b, n).argmax(dim=1)  # (b,)
            picked = torch.cat([images[:, 0], images[torch.arange(b), best]])  # (2b, 3, H, W)
            scenes = predict_scenes(judge, picked)
            for i, rec in enumerate(records[start:start + CHUNK]):
                ok, attrs = judge_record(rec, scenes[i])
                verdicts["no_rerank" + suffix].append(ok)
                verdicts["rerank8" + suffix].append(judge_record(rec, scenes[b + i])[0])
                if "no_rerank" + suffix == PER_ATTRIBUTE_VARIANT:
                    for k, right in attrs.items():
                        per_attribute[k].append(right)
        bar.update(len(chunk))
    bar.close()

    report: dict = {"judge_accuracy_on_renders": render_accuracy(judge, *renders) if renders is not None else None}
    for group in GROUPS:
        members = [i for i, g in enumerate(groups) if g == group]
        report[group] = {v: _mean([verdicts[v][i] for i in members]) for v in VARIANTS}
    report["per_attribute"] = {k: _mean(per_attribute[k]) for k in KINDS}
    report.update(guidance_scale=float(guidance_scale), n_captions=len(records), n_candidates=n_candidates)
    return report


def _sample(sample_fn, captions: list[str], n: int, scale: float, seed: int) -> torch.Tensor:
    images = torch.as_tensor(sample_fn(captions, n, scale, seed))
    if images.dtype != torch.uint8 or images.dim() != 5 or tuple(images.shape[:2]) != (len(captions), n):
        raise ValueError(f"sample_fn must return uint8 ({len(captions)}, {n}, C, H, W) images, got "
                         f"{images.dtype} {tuple(images.shape)}")
    return images


def format_report(report: dict) -> str:
    """A short table: rows single / two / heldout, columns the four variants, fully-correct percentages."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    width = max(len(v) for v in VARIANTS) + 2
    lines = [f"{'':10}" + "".join(f"{v:>{width}}" for v in VARIANTS)]
    for group in GROUPS:
        lines.append(f"{group:10}" + "".join(f"{pct(report[group][v]):>{width}}" for v in VARIANTS))
    attrs = ", ".join(f"{k} {pct(v)}" for k, v in report["per_attribute"].items())
    lines.append(f"per attribute ({PER_ATTRIBUTE_VARIANT}, %): {attrs}")
    judge = report["judge_accuracy_on_renders"]
    lines.append(f"{report['n_captions']} captions, {report['n_candidates']} candidates each, guidance scale "
                 f"{report['guidance_scale']:g}; judge fully correct on renders: {pct(judge)} %")
    return "\n".join(lines)
