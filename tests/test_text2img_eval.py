"""Judging text-to-image samples against caption records (fake samplers and scorers, no training)."""
from __future__ import annotations

import pytest
import torch

from vqgen.data.records import category
from vqgen.data.shapes import COLORS, HELD_OUT, SHAPES, SIZES
from vqgen.errors import DataError
from vqgen.eval import text2img
from vqgen.eval.shapes_judge import ShapesJudge, ShapesJudgeConfig
from vqgen.eval.text2img import evaluate_text2img, format_report, judge_record


C = tuple(COLORS)
HELD_COLOR, HELD_SHAPE = HELD_OUT[0]
# a (colour, shape) pair that is not held out, and a different one
FREE = [(c, s) for c in C for s in SHAPES if (c, s) not in HELD_OUT]
(C0, S0), (C1, S1) = FREE[0], next(p for p in FREE if p[0] != FREE[0][0] and p[1] != FREE[0][1])


def obj(shape=S0, color=C0, size=SIZES[0], position="center") -> dict:
    return {"shape": shape, "color": color, "size": size, "position": position}


# --- judge_record ------------------------------------------------------------------------------------

def test_single_object_attributes():
    rec = {"caption": "c", "objects": [{"shape": S0, "color": C0, "size": SIZES[1], "position": "top left"}]}
    right = obj(size=SIZES[1], position="top left")
    assert judge_record(rec, [right]) == (True, {"shape": True, "color": True, "size": True, "position": True,
                                                 "count": True})
    for key, wrong in (("shape", S1), ("color", C1), ("size", SIZES[0]), ("position", "bottom right")):
        ok, verdicts = judge_record(rec, [{**right, key: wrong}])
        assert not ok and not verdicts[key], key
        assert all(v for k, v in verdicts.items() if k != key), key


def test_unstated_attributes_are_not_judged():
    rec = {"caption": "c", "objects": [{"shape": S0, "color": C0}]}
    ok, verdicts = judge_record(rec, [obj(size=SIZES[1], position="bottom")])
    assert ok and set(verdicts) == {"shape", "color", "count"}


def test_count_must_match_exactly():
    rec = {"caption": "c", "objects": [{"shape": S0, "color": C0}]}
    ok, verdicts = judge_record(rec, [obj(), obj(S1, C1, position="top")])  # an extra object
    assert not ok and verdicts == {"shape": True, "color": True, "count": False}
    ok, verdicts = judge_record(rec, [])  # nothing drawn
    assert not ok and verdicts == {"shape": False, "color": False, "count": False}
    two = {"caption": "c", "objects": [{"shape": S0, "color": C0}, {"shape": S1, "color": C1}], "relation": "above"}
    ok, verdicts = judge_record(two, [obj(position="top")])  # a missing object
    assert not ok and not verdicts["count"] and not verdicts["relation"]


@pytest.mark.parametrize("relation, first, second, holds", [
    ("above", "top left", "bottom", True), ("above", "left", "right", False), ("below", "bottom", "center", True),
    ("left of", "bottom left", "top", True), ("left of", "top", "bottom", False), ("right of", "right", "left", True),
])
def test_relation_between_matched_objects(relation, first, second, holds):
    rec = {"caption": "c", "objects": [{"shape": S0, "color": C0}, {"shape": S1, "color": C1}], "relation": relation}
    seen = [obj(S0, C0, position=first), obj(S1, C1, position=second)]
    for scene in (seen, seen[::-1]):  # the judge lists objects in cell order: either order must match
        ok, verdicts = judge_record(rec, scene)
        assert ok == holds and verdicts["relation"] == holds
        assert verdicts["shape"] and verdicts["color"] and verdicts["count"]


def test_two_objects_matched_in_either_order_with_positions():
    rec = {"caption": "c", "objects": [{"shape": S0, "color": C0, "position": "bottom"},
                                       {"shape": S1, "color": C1, "position": "top"}]}
    assert judge_record(rec, [obj(S1, C1, position="top"), obj(S0, C0, position="bottom")])[0]
    # attributes swapped between the objects: no assignment matches both
    ok, verdicts = judge_record(rec, [obj(S0, C1, position="top"), obj(S1, C0, position="bottom")])
    assert not ok and verdicts["count"]
    with pytest.raises(DataError, match="relation"):
        judge_record({**rec, "relation": "beside"}, [])


# --- evaluate_text2img ----------------------------------------------------------------------------

def make_records() -> list[dict]:
    return [
        {"caption": "one", "objects": [{"shape": S0, "color": C0, "position": "center"}]},
        {"caption": "two", "objects": [{"shape": S0, "color": C0}, {"shape": S1, "color": C1}], "relation": "above"},
        {"caption": "held", "objects": [{"shape": HELD_SHAPE, "color": HELD_COLOR, "size": SIZES[0]}]},
        {"caption": "one again", "objects": [{"shape": S1, "color": C1}]},
    ]


def truth(rec: dict) -> list[dict]:
    """A scene that satisfies ``rec``."""
    cells = ["top", "bottom"]
    return [{"size": SIZES[0], "position": cells[i], **o} for i, o in enumerate(rec["objects"])]


def fake_setup(records, good):
    """Images whose pixels encode (caption index, candidate, guided); ``good(i, cand, guided)`` says whether
    the judge sees the right scene (else an empty image). Returns (sample_fn, score_fn, calls)."""
    index = {r["caption"]: i for i, r in enumerate(records)}
    calls = []

    def sample_fn(captions, n, scale, seed):
        calls.append((tuple(captions), n, scale, seed))
        out = torch.zeros(len(captions), n, 3, 32, 32, dtype=torch.uint8)
        for b, cap in enumerate(captions):
            for k in range(n):
                out[b, k, 0, 0, 0], out[b, k, 1, 0, 0], out[b, k, 2, 0, 0] = index[cap], k, int(scale != 1.0)
        return out

    def score_fn(images, captions):
        assert images.shape[0] == len(captions)
        return -(images[:, 1, 0, 0].float() - 5) ** 2  # prefers candidate 5

    def fake_predict_scenes(judge, images, batch_size=256):
        scenes = []
        for img in images:
            i, k, guided = (int(v) for v in img[:, 0, 0])
            scenes.append(truth(records[i]) if good(i, k, bool(guided)) else [])
        return scenes

    return sample_fn, score_fn, fake_predict_scenes, calls


def test_evaluate_fractions_paired_rerank_and_groups(monkeypatch):
    records = make_records()
    assert [category(r) for r in records] == ["single", "two", "heldout", "single"]
    # candidate 5 is always right; candidate 0 only for caption 0 unguided, and captions 0, 1 guided
    good = lambda i, k, guided: k == 5 or (k == 0 and (i == 0 or (guided and i in (0, 1))))  # noqa: E731
    sample_fn, score_fn, fake, calls = fake_setup(records, good)
    monkeypatch.setattr(text2img, "predict_scenes", fake)
    judge = ShapesJudge(ShapesJudgeConfig(widths=(8,), blocks=(1,), feature_dim=8, norm_groups=4, patch=8))
    report = evaluate_text2img(records, sample_fn, score_fn, judge, guidance_scale=3.0, n_candidates=8, seed=7,
                               progress=False)
    assert set(report) == {"judge_accuracy_on_renders", "single", "two", "heldout", "per_attribute",
                           "guidance_scale", "n_captions", "n_candidates"}
    assert report["judge_accuracy_on_renders"] is None
    assert report["single"] == {"no_rerank": 0.5, "rerank8": 1.0, "no_rerank_guided": 0.5, "rerank8_guided": 1.0}
    assert report["two"] == {"no_rerank": 0.0, "rerank8": 1.0, "no_rerank_guided": 1.0, "rerank8_guided": 1.0}
    assert report["heldout"] == {"no_rerank": 0.0, "rerank8": 1.0, "no_rerank_guided": 0.0, "rerank8_guided": 1.0}
    # per attribute on no_rerank_guided: captions 0, 1 right, 2, 3 empty images
    assert report["per_attribute"] == {"shape": 0.5, "color": 0.5, "size": 0.0, "position": 1.0,
                                       "relation": 1.0, "count": 0.5}
    assert report["guidance_scale"] == 3.0 and report["n_captions"] == 4 and report["n_candidates"] == 8
    assert calls == [(tuple(r["caption"] for r in records), 8, 1.0, 7),
                     (tuple(r["caption"] for r in records), 8, 3.0, 7)]
    text = format_report(report)
    assert "heldout" in text and "100.0" in text and "rerank8_guided" in text


def test_empty_groups_are_null_and_by_objects_only(monkeypatch):
    records = [r for r in make_records() if len(r["objects"]) == 1]
    sample_fn, score_fn, fake, _ = fake_setup(records, lambda i, k, guided: True)
    monkeypatch.setattr(text2img, "predict_scenes", fake)
    judge = ShapesJudge(ShapesJudgeConfig(widths=(8,), blocks=(1,), feature_dim=8, norm_groups=4, patch=8))
    report = evaluate_text2img(records, sample_fn, score_fn, judge, guidance_scale=2.0, n_candidates=2,
                               by_objects_only=True, progress=False)
    assert report["single"] == dict.fromkeys(("no_rerank", "rerank8", "no_rerank_guided", "rerank8_guided"), 1.0)
    assert report["two"] == dict.fromkeys(("no_rerank", "rerank8", "no_rerank_guided", "rerank8_guided"))
    assert report["heldout"]["no_rerank"] is None  # the held-out caption counts as single here
    assert report["per_attribute"]["relation"] is None
    assert "-" in format_report(report)


def test_renders_accuracy_and_bad_sampler(monkeypatch):
    records = make_records()[:1]
    judge = ShapesJudge(ShapesJudgeConfig(widths=(8,), blocks=(1,), feature_dim=8, norm_groups=4, patch=8))
    with torch.no_grad():  # a judge that sees every cell empty
        judge.head_weight.zero_()
        judge.head_bias.zero_()
        judge.head_bias[:, 0] = 10.0
    targets = torch.zeros(2, 9, 3, dtype=torch.long)
    targets[:, :, 1:] = -100
    targets[1, 4] = torch.tensor([1, 0, 0])
    renders = (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), targets)
    sample_fn = lambda caps, n, scale, seed: torch.zeros(len(caps), n, 3, 32, 32, dtype=torch.uint8)  # noqa: E731
    score_fn = lambda images, caps: torch.zeros(len(caps))  # noqa: E731
    report = evaluate_text2img(records, sample_fn, score_fn, judge, guidance_scale=1.0, n_candidates=2,
                               renders=renders, progress=False)
    assert report["judge_accuracy_on_renders"] == 0.5  # the empty target is read right, the circle is not
    assert report["single"]["no_rerank"] == 0.0  # the real judge sees nothing in a blank image
    bad = lambda caps, n, scale, seed: torch.zeros(len(caps), 3, 32, 32, dtype=torch.uint8)  # noqa: E731
    with pytest.raises(ValueError, match="sample_fn"):
        evaluate_text2img(records, bad, score_fn, judge, guidance_scale=2.0, progress=False)
    with pytest.raises(DataError):
        evaluate_text2img([{"caption": "x", "objects": []}], sample_fn, score_fn, judge, guidance_scale=2.0,
                          progress=False)
