"""benchmarks/probes.py: the false captions its binding probe compares against must say something else
with the same words, and only that."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from probes import binding_variants  # noqa: E402

from vqgen.data.shapes import generate_scenes  # noqa: E402


def record(caption, a, b, relation):
    return {"caption": caption, "objects": [a, b], "relation": relation}


def test_swaps_colours_shapes_and_reverses_the_relation():
    r = record("a red circle at the top left is to the left of a small blue square at the top right",
               {"shape": "circle", "color": "red", "position": "top left"},
               {"shape": "square", "color": "blue", "size": "small", "position": "top right"}, "left of")
    assert binding_variants(r) == {
        "color": "a blue circle at the top left is to the left of a small red square at the top right",
        "shape": "a red square at the top left is to the left of a small blue circle at the top right",
        "relation": "a red circle at the top left is to the right of a small blue square at the top right",
    }


@pytest.mark.parametrize("relation, caption, reversed_", [
    ("above", "a red circle above a blue square", "a red circle below a blue square"),
    ("below", "there is a red circle below the blue square", "there is a red circle above the blue square"),
    ("right of", "a red circle is right of a blue square", "a red circle is left of a blue square"),
])
def test_relation_reversal(relation, caption, reversed_):
    r = record(caption, {"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}, relation)
    assert binding_variants(r)["relation"] == reversed_


def test_equal_attributes_give_no_variant_of_their_kind():
    r = record("a red circle above a red square", {"shape": "circle", "color": "red"},
               {"shape": "square", "color": "red"}, "above")
    assert set(binding_variants(r)) == {"shape", "relation"}


def test_every_variant_of_real_captions_keeps_the_words_and_changes_the_caption():
    _, _, _, records = generate_scenes(0, "test", 200)
    kinds = set()
    for r in records:
        if len(r["objects"]) != 2:
            continue
        for kind, caption in binding_variants(r).items():
            kinds.add(kind)
            assert caption != r["caption"]
            words = sorted(caption.split())
            if kind != "relation":
                assert words == sorted(r["caption"].split())
    assert kinds == {"color", "shape", "relation"}
