"""The shapes judge: model, save/load, reading scenes, fully-correct accuracy, training and exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqgen.config import apply_overrides
from vqgen.data.shapes import COLORS, HELD_OUT, POSITIONS, SHAPES, SIZES, ShapeObject, render, scene_targets
from vqgen.errors import ConfigError
from vqgen.eval.shapes_judge import (ShapesJudge, ShapesJudgeConfig, cell_correct, predict_cells, predict_scenes,
                                     render_accuracy)
from vqgen.images import to_model_range
from vqgen.train import shapes_judge as train_mod
from vqgen.train.shapes_judge import (SHAPES_JUDGE_PRESETS, judge_loss, render_scenes, train_shapes_judge,
                                      training_batch)


SMALL = ShapesJudgeConfig(widths=(8, 16), blocks=(1, 1), feature_dim=16, norm_groups=4, patch=4)
COLOR_NAMES = tuple(COLORS)


def rigged_judge(cells: dict[int, tuple[int, int, int]]) -> ShapesJudge:
    """A judge that, whatever the image, sees (shape class, colour, size) in the given cells, empty elsewhere."""
    judge = ShapesJudge(SMALL)
    n_shape, n_color, _ = SMALL.head_sizes
    bias = torch.zeros(9, sum(SMALL.head_sizes))  # (9, K)
    bias[:, 0] = 10.0  # empty
    for cell, (s, c, z) in cells.items():
        bias[cell, 0] = 0.0
        bias[cell, s] = 10.0
        bias[cell, n_shape + c] = 10.0
        bias[cell, n_shape + n_color + z] = 10.0
    with torch.no_grad():
        judge.head_weight.zero_()
        judge.head_bias.copy_(bias)
    return judge


def tiny_cfg(*overrides: str):
    return apply_overrides(SHAPES_JUDGE_PRESETS["tiny"](), list(overrides))


# --- model --------------------------------------------------------------------------------------------

def test_forward_shapes_and_input_checks():
    torch.manual_seed(0)
    judge = ShapesJudge(SMALL)
    shape, color, size = judge(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert shape.shape == (2, 9, 1 + len(SHAPES))
    assert color.shape == (2, 9, len(COLORS))
    assert size.shape == (2, 9, len(SIZES))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        judge(torch.zeros(2, 3, 16, 16))
    with pytest.raises(TypeError, match="float"):
        judge(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="divisible"):
        ShapesJudgeConfig(resolution=30)
    assert ShapesJudgeConfig().shapes == tuple(SHAPES)  # the names travel with the judge


def test_save_load_roundtrip_is_exact_and_strict(tmp_path):
    torch.manual_seed(0)
    judge = ShapesJudge(SMALL).eval()
    judge.save_pretrained(tmp_path / "j")
    loaded = ShapesJudge.from_pretrained(tmp_path / "j")
    assert not loaded.training and loaded.config == judge.config
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for a, b in zip(judge(x), loaded(x)):
        assert torch.equal(a, b)
    cfg = json.loads((tmp_path / "j" / "config.json").read_text())
    assert cfg["kind"] == "shapes-judge"
    cfg["config"]["feature_dim"] = 32  # weights no longer match the architecture
    (tmp_path / "j" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="does not match"):
        ShapesJudge.from_pretrained(tmp_path / "j")


def test_predict_scenes_maps_cells_to_position_names():
    judge = rigged_judge({2: (SHAPES.index("cross") + 1, 1, 0), 7: (1, 0, 1)})
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    scenes = predict_scenes(judge, images, batch_size=2)
    assert len(scenes) == 3
    assert scenes[0] == [
        {"shape": "cross", "color": COLOR_NAMES[1], "size": SIZES[0], "position": POSITIONS[2]},
        {"shape": SHAPES[0], "color": COLOR_NAMES[0], "size": SIZES[1], "position": POSITIONS[7]},
    ]
    cells = predict_cells(judge, images)  # (3, 9, 3)
    assert cells[0, 0].tolist() == [0, -100, -100]  # empty cells carry no colour or size


def test_render_accuracy_is_fully_correct_share():
    cross = ShapeObject("cross", COLOR_NAMES[1], SIZES[0], POSITIONS[2])
    judge = rigged_judge({2: (SHAPES.index("cross") + 1, 1, 0)})
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    right = scene_targets([cross])
    wrong_color = scene_targets([ShapeObject("cross", COLOR_NAMES[2], SIZES[0], POSITIONS[2])])
    wrong_size = scene_targets([ShapeObject("cross", COLOR_NAMES[1], SIZES[1], POSITIONS[2])])
    extra = scene_targets([cross, ShapeObject(SHAPES[0], COLOR_NAMES[0], SIZES[0], POSITIONS[4])])
    targets = np.stack([right, wrong_color, wrong_size, extra])  # (4, 9, 3)
    assert render_accuracy(judge, images, targets) == pytest.approx(0.25)
    # colour / size of an empty cell are not judged
    pred = torch.as_tensor(right)[None].clone()
    pred[0, 0, 1:] = torch.tensor([3, 1])
    assert cell_correct(pred, torch.as_tensor(right)[None]).all()
    with pytest.raises(ValueError, match="targets"):
        render_accuracy(judge, images, targets[:2])


# --- training -----------------------------------------------------------------------------------------

def test_batches_are_a_pure_function_of_seed_and_step_and_include_held_out_pairs():
    cfg = tiny_cfg()
    a, ta = training_batch(cfg, 3)
    b, tb = training_batch(cfg, 3)
    c, _ = training_batch(cfg, 4)
    assert a.dtype == torch.uint8 and a.shape == (16, 3, 32, 32) and ta.shape == (16, 9, 3)
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    _, targets = render_scenes(np.random.default_rng(0), 300, 32)
    objects = targets[targets[:, :, 0] > 0]  # (M, 3)
    pairs = {(COLOR_NAMES[c], SHAPES[s - 1]) for s, c, _ in objects.tolist()}
    assert set(HELD_OUT) <= pairs
    assert set(targets[:, :, 0].gt(0).sum(1).tolist()) == {1, 2}
    # the renders are the dataset's renders of those targets: an unjittered scene renders alike
    obj = ShapeObject(SHAPES[0], COLOR_NAMES[0], SIZES[1], POSITIONS[4])
    assert render([obj], 32).shape == (32, 32, 3)


def test_tiny_training_lowers_the_loss_and_writes_a_judge(tmp_path):
    cfg = tiny_cfg("loop.max_steps=30", "loop.save_every=30", "optim.lr=0.01")
    images, targets = training_batch(cfg, 10_000)  # a batch training never sees
    torch.manual_seed(cfg.loop.seed)
    with torch.no_grad():
        before = float(judge_loss(ShapesJudge(cfg.model)(to_model_range(images)), targets))
    metrics = train_shapes_judge(cfg, tmp_path / "j", progress=False)
    judge = ShapesJudge.from_pretrained(tmp_path / "j")
    with torch.no_grad():
        after = float(judge_loss(judge(to_model_range(images)), targets))
    assert after < before - 0.5
    saved = json.loads((tmp_path / "j" / "metrics.json").read_text())
    assert saved == metrics
    for key in ("accuracy_on_renders", "accuracy_on_heldout_pair_renders", "accuracy_on_test_split"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["steps"] == 30 and metrics["train_seconds"] > 0


def test_resume_is_exact(tmp_path, monkeypatch):
    cfg = tiny_cfg("loop.max_steps=6", "loop.save_every=3")
    train_shapes_judge(cfg, tmp_path / "a", progress=False)
    real = train_mod.check_finite

    def crash_at_step_4(loss, step, run_dir):
        if step == 4:
            raise KeyboardInterrupt  # dies after the step-3 checkpoint
        real(loss, step, run_dir)

    monkeypatch.setattr(train_mod, "check_finite", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_shapes_judge(cfg, tmp_path / "b", progress=False)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(train_mod, "check_finite", real)
    train_shapes_judge(cfg, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="max_steps"):
        train_shapes_judge(tiny_cfg("loop.max_steps=7"), tmp_path / "b", progress=False)


def test_presets_build():
    for name, make in SHAPES_JUDGE_PRESETS.items():
        cfg = make()
        assert cfg.model.resolution == 32, name
    with pytest.raises(ConfigError):
        tiny_cfg("loop.batch_size=0")
