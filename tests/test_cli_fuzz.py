"""The command line under random arguments, config overrides and damaged inputs (Hypothesis): whatever
the draw, ``vqgen`` never shows a traceback, and it either succeeds (0) or stops with one
``vqgen: error:`` line (2)."""
from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_faults import prior_argv, write_folder, write_tokens
from vqgen.cli import main
from vqgen.config import apply_overrides, to_dict
from vqgen.train.prior import PRIOR_PRESETS

# The files each kind of command reads, damaged one at a time (relative to the world directory).
TOKENIZER_FILES = ["tok/config.json", "tok/model.safetensors", "imgs/0.png"]
FILES = {
    "eval": TOKENIZER_FILES, "reconstruct": TOKENIZER_FILES, "encode": TOKENIZER_FILES,
    "sample": ["prior/config.json", "prior/model.safetensors", "prior/train_config.json", "tokens/meta.json",
               "tokens/palette.safetensors", "imgs/1.png"],
    "train-prior": ["prior/checkpoints/last.pt", "prior/checkpoints/previous.pt", "prior/train_config.json",
                    "tokens/meta.json", "tokens/train/shard-00000.npy", "tokens/train/labels-00000.npy",
                    "tokens/train/done.json", "config.yaml", "prior/config.json"],
    "train-tokenizer": ["tok/checkpoints/last.pt", "tok/train_config.json", "imgs/0.png", "prior/config.json"],
}
KEYS = ["optim.lr", "optim.betas", "optim.warmup_steps", "loop.batch_size", "loop.grad_accum", "loop.seed",
        "loop.max_steps", "loop.device", "loop.nope", "model", "model.dropout", "model.n_layer", "", "eval_every"]
VALUES = ["0", "-1", "3", "1e-3", "abc", "[1, 2]", "null", "true", "{a: 1}", "1e400", "nan", "", "[0.9"]
NUMBERS = ["-1", "0", "0.5", "1", "3", "1e9", "nan", "x"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``work/``: a tiny tokenizer run, its images, a token directory, a finished prior run and a YAML
    config; ``pristine/`` a copy, restored into ``work/`` before every example (the runs record
    absolute paths, so they are made where the commands use them)."""
    base = tmp_path_factory.mktemp("fuzz")
    work = base / "work"
    images = write_folder(work / "imgs")
    torch.manual_seed(0)
    assert main(["train", "tokenizer", "--config", "tiny", "--data", f"folder:{images}", "--out", str(work / "tok"),
                 "--max-steps", "2", "--no-progress"]) == 0
    write_tokens(work / "tokens")
    assert main(prior_argv(work / "tokens", work / "prior", 4)) == 0
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.num_classes=3", "loop.max_steps=2"])
    (work / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    shutil.copytree(work, base / "pristine")
    return base


def command(draw, w: Path, kind: str) -> list[str]:
    folder = f"folder:{w / 'imgs'}"
    n = draw(st.sampled_from(["1", "3", "2", "0"]))
    if kind == "eval":
        return ["eval", "tokenizer", str(w / "tok"), "--data", folder, "--json"]
    if kind == "reconstruct":
        return ["reconstruct", str(w / "tok"), "--data", folder, "--out", str(w / "r.png"), "--n", n]
    if kind == "encode":
        return ["encode", "--tokenizer", str(w / "tok"), "--data", folder, "--out", str(w / "enc"), "--no-progress"]
    if kind == "sample":
        argv = ["sample", "--prior", str(w / "prior"), "--out", str(w / "s.png"), "--n", n]
        for flag in draw(st.lists(st.sampled_from(["--class", "--temperature", "--top-k", "--top-p", "--guidance",
                                                   "--seed", "--grid", "--window", "--complete"]), max_size=3, unique=True)):
            if flag in ("--grid", "--window"):
                argv += [flag, *draw(st.sampled_from([["4", "4"], ["6", "5"], ["2", "2"], ["0", "4"], ["9", "-1"]]))]
            elif flag == "--complete":
                argv += [flag, draw(st.sampled_from([str(w / "imgs" / "1.png"), folder, str(w / "nothing.png")])),
                         "--keep-rows", draw(st.sampled_from(["1", "2", "0", "4"]))]
            else:
                argv += [flag, draw(st.sampled_from(NUMBERS + ["a", "2"]))]
        return argv
    overrides = []
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2]))):
        key, value = draw(st.sampled_from(KEYS)), draw(st.sampled_from(VALUES))
        overrides += ["--set", draw(st.sampled_from([f"{key}={value}"] * 3 + [key]))]
    steps = draw(st.sampled_from(["6", "4", "3", "1", "0", "-3"]))
    if kind == "train-prior":
        config = draw(st.sampled_from(["tiny", "tiny", "tiny", str(w / "config.yaml"), "nope"]))
        out = w / draw(st.sampled_from(["prior", "prior", "prior2", "tok"]))
        argv = prior_argv(w / "tokens", out, 1, *overrides)
        argv[argv.index("tiny")] = config
        argv[argv.index("--max-steps") + 1] = steps
        return argv
    out = w / draw(st.sampled_from(["tok", "tok2", "prior"]))
    return ["train", "tokenizer", "--config", "tiny", "--data", folder, "--out", str(out), "--max-steps",
            {"6": "3", "4": "2"}.get(steps, steps), "--no-progress", *overrides]


def damage(draw, w: Path, kind: str) -> str:
    how = draw(st.sampled_from(["none", "truncate", "flip", "flip", "garbage", "empty", "delete"]))
    if how == "none":
        return how
    name = draw(st.sampled_from(FILES[kind]))
    path = w / name
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    elif how == "flip":
        pos, bit = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 7))
        path.write_bytes(data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:])
    elif how == "garbage":
        path.write_bytes(draw(st.binary(min_size=1, max_size=64)))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    return f"{how} {name}"


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_traceback_ever_and_user_errors_exit_2(world, data):
    w = world / "work"
    shutil.rmtree(w)
    shutil.copytree(world / "pristine", w)
    kind = data.draw(st.sampled_from(sorted(FILES)))
    argv = command(data.draw, w, kind)
    what = damage(data.draw, w, kind)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse: a malformed command line
            rc = exc.code
    err = err.getvalue()
    note = f"{what}: vqgen {' '.join(argv)}\n{err}"
    assert "Traceback" not in err, note
    assert rc in (0, 2), note
    if rc == 2:  # one vqgen line, or argparse's usage and its "vqgen <command>: error:" line
        assert re.match(r"vqgen( [a-z-]+)*: error: ", err.strip().splitlines()[-1]), note
    else:
        assert "vqgen: error" not in err, note

