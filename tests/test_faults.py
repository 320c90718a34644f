"""Faults and bad files (issue 10): every failure is one clear line, and no run is ever lost.

Damaged files of each kind end in one ``vqgen: error:`` line naming the file (exit 2); a damaged or
half-written checkpoint costs at most ``save_every`` steps, and resuming after a fault, a failed write
or a signal ends with the same weights as a run that was never interrupted.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_images
from vqgen.cli import main
from vqgen.config import apply_overrides, to_dict
from vqgen.data.tokens import TokenWriter
from vqgen.errors import CheckpointError, ConfigError, DataError, TrainingInterrupted
from vqgen.hub import atomic_write_bytes, save_pretrained, state_digest
from vqgen.prior.pixels import load_palette, save_palette
from vqgen.text.bpe import CaptionTokenizer
from vqgen.train import prior as prior_train
from vqgen.train import classifier as classifier_train
from vqgen.train.common import RunDir, Stopwatch, _StopSignals, lr_factor, make_optimizer, read_checkpoint
from vqgen.train.prior import PRIOR_PRESETS
from vqgen.train.tokenizer import TOKENIZER_PRESETS

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --- what the tests train on ---------------------------------------------------------------------

def write_tokens(root: Path, n: int = 48) -> Path:
    """A labelled token directory of 4×4 grids over 32 ids, with a grey palette (so `vqgen sample` works)."""
    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True)
    save_palette(torch.linspace(0, 255, 32)[:, None], root / "palette.safetensors")  # (32, 1)
    meta = {"codec": {"kind": "palette", "path": "palette.safetensors", "resolution": 4}, "vocab_size": 32,
            "class_names": ["a", "b", "c"], "source": "synthetic"}
    labels = torch.arange(n) % 3  # (n,)
    grids = (labels[:, None, None] * 8 + torch.randint(0, 8, (n, 4, 4), generator=g)).long()  # (n, 4, 4)
    w = TokenWriter(root, "train", meta)
    w.write(0, grids, labels)
    w.finish(n)
    return root


def write_folder(root: Path, n: int = 32) -> Path:
    data = synthetic_images(n)
    root.mkdir(parents=True)
    for i, img in enumerate(data.images):
        Image.fromarray(img[0].numpy()).save(root / f"{i}.png")
    return root


def prior_argv(tokens: Path, out: Path, steps: int = 8, *extra: str, save_every: int = 2) -> list[str]:
    return ["train", "prior", "--config", "tiny", "--tokens", str(tokens), "--out", str(out), "--max-steps", str(steps),
            "--save-every", str(save_every), "--no-progress", "--set", "model.vocab_size=32", "--set",
            "model.num_classes=3", *extra]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("vqgen: warning:")]
    assert len(lines) == 1 and lines[0].startswith("vqgen: error:"), err
    assert "Traceback" not in err
    return lines[0]


def flip_bit(path: Path, offset: int, bit: int = 2) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny tokenizer run and its image folder, a token directory, a finished prior run (8 steps, a
    checkpoint every 2) and the bytes of its model."""
    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    images = write_folder(root / "imgs")
    assert main(["train", "tokenizer", "--config", "tiny", "--data", f"folder:{images}", "--out", str(root / "tok"),
                 "--max-steps", "2", "--no-progress"]) == 0
    tokens = write_tokens(root / "tokens")
    assert main(prior_argv(tokens, root / "prior")) == 0
    return {"root": root, "images": images, "tok": root / "tok", "tokens": tokens, "prior": root / "prior",
            "prior_model": (root / "prior" / "model.safetensors").read_bytes()}


# --- damaged files: one line naming the file ---------------------------------------------------------

@pytest.mark.parametrize("damage, file, words", [
    (lambda d: truncate(d / "config.json"), "config.json", "not valid JSON"),
    (lambda d: (d / "config.json").write_bytes(b"\xff\xfe{"), "config.json", "cannot be read"),
    (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"ema_decay": 0.9', '"ema_decay": 0.5')), "config.json",
     "differs from the config the weights were saved with at ['config.quantizer.ema_decay']"),
    (lambda d: truncate(d / "model.safetensors"), "model.safetensors", "truncated or damaged"),
    (lambda d: flip_bit(d / "model.safetensors", -1000), "model.safetensors", "checksum"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors", "has no model.safetensors"),
], ids=["config-truncated", "config-not-utf8", "config-edited", "weights-truncated", "weights-bit-flip",
        "weights-missing"])
def test_a_damaged_model_directory_is_one_line_naming_the_file(made, tmp_path, capsys, damage, file, words):
    run = tmp_path / "tok"
    shutil.copytree(made["tok"], run)
    damage(run)
    rc, _, err = run_cli(capsys, ["eval", "tokenizer", str(run), "--data", f"folder:{made['images']}", "--json"])
    line = one_line_error(err)
    assert rc == 2 and str(run) in line and file in line and words in line


def test_a_run_of_another_kind_says_what_it_is(made, tmp_path, capsys):
    for argv in (["sample", "--prior", str(made["tok"]), "--out", str(tmp_path / "x.png")],
                 ["eval", "prior", str(made["tok"]), "--judge", str(made["tok"])]):
        rc, _, err = run_cli(capsys, argv)
        assert rc == 2 and "holds a 'tokenizer' model, not a 'prior' model" in one_line_error(err)
    assert not (tmp_path / "x.png").exists()
    before = (made["prior"] / "train_config.json").read_bytes()
    rc, _, err = run_cli(capsys, ["train", "tokenizer", "--config", "tiny", "--data", f"folder:{made['images']}",
                                  "--out", str(made["prior"]), "--no-progress"])
    assert rc == 2 and "holds a 'prior' run, not a 'tokenizer' run" in one_line_error(err)
    assert (made["prior"] / "train_config.json").read_bytes() == before


@pytest.mark.parametrize("damage, file, words", [
    (lambda t: truncate(t / "train" / "shard-00000.npy"), "shard-00000.npy", "checksum"),
    (lambda t: flip_bit(t / "train" / "shard-00000.npy", -3, bit=6), "shard-00000.npy", "checksum"),
    (lambda t: flip_bit(t / "train" / "labels-00000.npy", -8, bit=1), "labels-00000.npy", "checksum"),
    (lambda t: (t / "train" / "labels-00000.npy").unlink(), "labels-00000.npy", "is missing"),
    (lambda t: truncate(t / "meta.json"), "meta.json", "not valid JSON"),
    (lambda t: (t / "train" / "done.json").write_text("[1, 2]"), "done.json", "how many grids"),
], ids=["shard-truncated", "shard-bit-flip", "labels-bit-flip", "labels-missing", "meta-truncated", "done-garbage"])
def test_a_damaged_token_directory_is_one_line_naming_the_file(made, tmp_path, capsys, damage, file, words):
    tokens = tmp_path / "tokens"
    shutil.copytree(made["tokens"], tokens)
    damage(tokens)
    rc, _, err = run_cli(capsys, prior_argv(tokens, tmp_path / "run"))
    line = one_line_error(err)
    assert rc == 2 and file in line and words in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained on the damaged data


def test_damaged_palette_bpe_weights_and_config_files_are_named(made, tmp_path, capsys):
    palette = tmp_path / "palette.safetensors"
    shutil.copy(made["tokens"] / "palette.safetensors", palette)
    flip_bit(palette, -2)
    with pytest.raises(DataError, match=re.escape(f"{palette} is damaged")):
        load_palette(palette)
    bpe = tmp_path / "tokenizer.json"
    CaptionTokenizer.train(["a red circle", "a blue square"] * 4, 300).save(tmp_path)
    truncate(bpe)
    with pytest.raises(ConfigError, match=re.escape(f"{bpe} is not a readable tokenizers JSON file")):
        CaptionTokenizer.load(tmp_path)
    state = {"w": torch.ones(3, 3)}
    torch.save(state, tmp_path / "w.pth")
    truncate(tmp_path / "w.pth")
    for weights in (tmp_path / "w.pth", made["prior"] / "model.safetensors"):  # a prior is not an Inception
        rc, _, err = run_cli(capsys, ["eval", "prior", str(made["prior"]), "--judge", str(made["tok"]),
                                      "--inception-weights", str(weights)])
        assert rc == 2 and str(weights) in one_line_error(err)
    (tmp_path / "bad.yaml").write_text("loop: {max_steps: [1\n")
    rc, _, err = run_cli(capsys, ["train", "tokenizer", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")])
    assert rc == 2 and "bad.yaml is not a readable YAML config" in one_line_error(err)


# --- checkpoints: checksum, fallback to the previous one, failed writes -------------------------------

def test_a_flipped_bit_in_a_checkpoint_is_never_read_as_something_else(made, tmp_path):
    last = made["prior"] / "checkpoints" / "last.pt"
    intact = state_digest(read_checkpoint(last))
    data = last.read_bytes()
    rng = np.random.default_rng(0)
    refused = 0
    for offset in rng.integers(0, len(data), 60):
        damaged = bytearray(data)
        damaged[offset] ^= 1 << int(rng.integers(0, 8))
        copy = tmp_path / "flipped.pt"
        copy.write_bytes(bytes(damaged))
        try:
            ckpt = read_checkpoint(copy)
        except CheckpointError as exc:
            assert str(copy) in str(exc)
            refused += 1
        else:  # a bit the zip reader never looks at (padding, a timestamp): the same checkpoint
            assert state_digest(ckpt) == intact
    assert refused >= 50  # almost every byte of a checkpoint is data, and all of it is checked


@pytest.mark.parametrize("fault", ["truncated", "missing"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one_exactly(made, tmp_path, capsys, fault):
    run = tmp_path / "run"
    shutil.copytree(made["prior"], run)
    last = run / "checkpoints" / "last.pt"
    truncate(last) if fault == "truncated" else last.unlink()  # missing: killed between the two renames
    with pytest.warns(UserWarning, match=r"resuming from the previous checkpoint .*previous\.pt \(step 6\)"):
        rc, out, err = run_cli(capsys, prior_argv(made["tokens"], run))
    assert rc == 0 and "from step 6" in out, err
    assert (run / "model.safetensors").read_bytes() == made["prior_model"]
    assert (run / "checkpoints" / "last.pt.damaged").exists() == (fault == "truncated")

    truncate(run / "checkpoints" / "last.pt")
    truncate(run / "checkpoints" / "previous.pt")
    rc, _, err = run_cli(capsys, prior_argv(made["tokens"], run))
    assert rc == 2 and "no checkpoint of" in one_line_error(err) and "delete" in err


def test_a_failed_checkpoint_write_leaves_the_older_one_intact(made, tmp_path, capsys, monkeypatch):
    real_save, calls = torch.save, {"n": 0}

    def disk_full_on_second_save(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:  # step 4: half the bytes reach the disk, then it is full
            real_save(obj, path)
            truncate(Path(path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, path)

    monkeypatch.setattr(torch, "save", disk_full_on_second_save)
    run = tmp_path / "run"
    rc, _, err = run_cli(capsys, prior_argv(made["tokens"], run))
    line = one_line_error(err)
    assert rc == 2 and "could not write the checkpoint of step 4" in line and "No space left on device" in line
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert not list(run.rglob("*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    assert run_cli(capsys, prior_argv(made["tokens"], run))[0] == 0
    assert (run / "model.safetensors").read_bytes() == made["prior_model"]


KILL_MID_WRITE = """
import os, signal, sys, torch
from vqgen.cli import main
real, calls = torch.save, [0]
def save(obj, path):
    calls[0] += 1
    real(obj, path)
    if calls[0] == 2:  # step 4: killed with half the checkpoint written
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
sys.exit(main(sys.argv[1:]))
"""


def test_a_process_killed_mid_write_leaves_the_older_checkpoint_intact(made, tmp_path, capsys):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, *prior_argv(made["tokens"], run)], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert list((run / "checkpoints").glob(".last.pt.*.tmp"))  # the half-written file of the killed process
    rc, out, _ = run_cli(capsys, prior_argv(made["tokens"], run))
    assert rc == 0 and "from step 2" in out
    assert not list(run.rglob("*.tmp"))
    assert (run / "model.safetensors").read_bytes() == made["prior_model"]


def test_a_damaged_train_config_is_restored_from_the_checkpoint(made, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(made["prior"], run)
    truncate(run / "train_config.json")
    with pytest.warns(UserWarning, match="train_config.json is not valid JSON.*the config saved in the checkpoint"):
        rc, out, err = run_cli(capsys, prior_argv(made["tokens"], run))
    assert rc == 0 and "already trained to step 8" in out, err
    assert json.loads((run / "train_config.json").read_text())["loop"]["max_steps"] == 8


# --- signals -----------------------------------------------------------------------------------------

def test_sigterm_to_a_training_process_checkpoints_and_resumes_exactly(made, tmp_path, capsys):
    run = tmp_path / "run"
    argv = prior_argv(made["tokens"], run, 150, save_every=10)
    proc = subprocess.Popen([sys.executable, "-m", "vqgen.cli", *argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    step = read_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 10 <= step < 150
    assert err.strip() == (f"vqgen: stopped: SIGTERM received: stopped after step {step} of 150 with a checkpoint "
                           f"in {run / 'checkpoints' / 'last.pt'}; run the same command again to resume")

    rc, out, _ = run_cli(capsys, argv)
    assert rc == 0 and f"from step {step}" in out
    assert run_cli(capsys, prior_argv(made["tokens"], tmp_path / "whole", 150, save_every=10))[0] == 0
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_sigint_finishes_the_step_and_resumes_exactly(made, tmp_path, capsys, monkeypatch):
    real, calls = prior_train._Loss.forward, {"n": 0}

    def interrupted_at_step_5(self, tokens, cond):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # the step still finishes
        return real(self, tokens, cond)

    monkeypatch.setattr(prior_train._Loss, "forward", interrupted_at_step_5)
    run = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc, _, err = run_cli(capsys, prior_argv(made["tokens"], run))
    assert rc == 130 and "SIGINT received: stopped after step 5 of 8" in err
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back
    monkeypatch.setattr(prior_train._Loss, "forward", real)
    assert run_cli(capsys, prior_argv(made["tokens"], run))[0] == 0
    assert (run / "model.safetensors").read_bytes() == made["prior_model"]


def test_a_second_ctrl_c_stops_at_once():
    signals = _StopSignals()
    signals.handle(signal.SIGTERM)
    signals.handle(signal.SIGTERM)  # a repeated SIGTERM still waits for the step
    with pytest.raises(KeyboardInterrupt):
        signals.handle(signal.SIGINT)


# --- the run lock --------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from vqgen.config import apply_overrides, to_dict
from vqgen.train.common import RunDir
from vqgen.train.tokenizer import TOKENIZER_PRESETS
run = RunDir(sys.argv[1], apply_overrides(TOKENIZER_PRESETS["tiny"](), ["loop.max_steps=1"]))
run.prepare()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_process_is_refused_and_a_killed_holder_does_not_block(made, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["train", "tokenizer", "--config", "tiny", "--data", f"folder:{made['images']}", "--out", str(run),
                "--max-steps", "1", "--no-progress"]
        t = time.perf_counter()
        rc, _, err = run_cli(capsys, argv)
        assert rc == 2 and f"{run} is in use: another process is training into it" in one_line_error(err)
        assert time.perf_counter() - t < 5  # at once, not after a wait
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    rc, out, err = run_cli(capsys, argv)  # the lock of a killed process is gone with it
    assert rc == 0, err


# --- a larger --max-steps continues a finished run ----------------------------------------------------

def test_a_larger_max_steps_continues_the_run_and_says_what_changes(made, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(made["prior"], run)
    rc, out, _ = run_cli(capsys, prior_argv(made["tokens"], run, 12))
    assert rc == 0
    o = PRIOR_PRESETS["tiny"]().optim
    now, was = (lr_factor(8, o.warmup_steps, m, o.min_lr_ratio) for m in (12, 8))
    assert (f"{run}: loop.max_steps 8 → 12, continuing from step 8; the cosine decay of the learning rate is "
            f"stretched to end at step 12 instead of 8: from step 8 on the rate is {now:.3g}× optim.lr (it was "
            f"{was:.3g}×) and decays to 0.1× at step 12") in out and now > was
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 12
    assert json.loads((run / "train_config.json").read_text())["loop"]["max_steps"] == 12

    # The same continuation, interrupted at step 10 and resumed, ends with the same weights.
    real, calls = prior_train._Loss.forward, {"n": 0}

    def interrupted(self, tokens, cond):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, tokens, cond)

    again = tmp_path / "again"
    shutil.copytree(made["prior"], again)
    monkeypatch.setattr(prior_train._Loss, "forward", interrupted)
    assert run_cli(capsys, prior_argv(made["tokens"], again, 12))[0] == 130
    monkeypatch.setattr(prior_train._Loss, "forward", real)
    assert run_cli(capsys, prior_argv(made["tokens"], again, 12))[0] == 0
    assert (again / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()


def test_restore_sets_the_learning_rate_of_the_stretched_schedule(tmp_path):
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), ["loop.max_steps=6"])
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, 6)
    for _ in range(6):
        opt.step()
        sched.step()
    RunDir(tmp_path, cfg).save(6, Stopwatch(), {"model": model, "optimizer": opt, "scheduler": sched})
    opt2, sched2 = make_optimizer(model.parameters(), cfg.optim, 10)
    RunDir(tmp_path, cfg).restore(read_checkpoint(tmp_path / "checkpoints" / "last.pt"),
                                  {"model": model, "optimizer": opt2, "scheduler": sched2}, announce=False)
    o = cfg.optim
    expected = o.lr * lr_factor(6, o.warmup_steps, 10, o.min_lr_ratio)
    assert expected != o.lr * lr_factor(6, o.warmup_steps, 6, o.min_lr_ratio)
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12) == sched2.get_last_lr()[0]


def test_a_smaller_max_steps_or_any_other_change_is_refused(made, capsys):
    rc, _, err = run_cli(capsys, prior_argv(made["tokens"], made["prior"], 6))
    assert rc == 2 and "can be continued with a larger --max-steps, not set to 6" in one_line_error(err)
    rc, _, err = run_cli(capsys, prior_argv(made["tokens"], made["prior"], 12, "--set", "optim.lr=0.01"))
    assert rc == 2 and "differs at ['loop.max_steps', 'optim.lr']" in one_line_error(err)
    assert read_checkpoint(made["prior"] / "checkpoints" / "last.pt")["step"] == 8


def test_sampling_defaults_and_fields_added_since_may_differ_on_resume(made, tmp_path, capsys):
    """A recorded sampling default (the measured guidance scale) takes no part in training: a finished
    run given another one resumes; a key an older run's config lacks counts as its default."""
    run = tmp_path / "prior"
    shutil.copytree(made["prior"], run)
    rc, out, err = run_cli(capsys, prior_argv(made["tokens"], run, 8, "--set", "model.guidance_scale=3.0"))
    assert rc == 0 and "already trained to step 8" in out and "exporting the model again" in out, err
    assert json.loads((run / "train_config.json").read_text())["model"]["guidance_scale"] == 3.0
    assert json.loads((run / "config.json").read_text())["config"]["guidance_scale"] == 3.0  # what sampling reads
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    rc, out, err = run_cli(capsys, prior_argv(made["tokens"], run, 8, "--set", "model.guidance_scale=3.0"))
    assert rc == 0 and "exporting" not in out and "differs" not in err, err  # nothing left to reconcile
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), ["loop.max_steps=8"])
    older = to_dict(cfg)
    del older["model"]["guidance_scale"], older["loop"]["seed"]  # fields of a config written before they existed
    assert RunDir(tmp_path / "r", cfg)._check_config(older, to_dict(cfg)) is None
    with pytest.raises(ConfigError, match=r"differs at \['optim.lr'\]"):
        RunDir(tmp_path / "r", cfg)._check_config(older, to_dict(apply_overrides(cfg, ["optim.lr=0.5"])))
    # How the computation is laid out may change too (e.g. checkpointing after an out-of-memory error).
    laid_out = apply_overrides(cfg, ["loop.compile=true", "model.activation_checkpointing=true", "loop.fsdp=true"])
    assert RunDir(tmp_path / "r", cfg)._check_config(to_dict(cfg), to_dict(laid_out)) is None


# --- what vqgen writes follows the umask --------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        from vqgen.tokenizer.vqgan import VQTokenizer
        cfg = TOKENIZER_PRESETS["tiny"]()
        save_pretrained(VQTokenizer(cfg.model), cfg.model, tmp_path / "m", "tokenizer")
        atomic_write_bytes(tmp_path / "f.json", lambda p: Path(p).write_text("{}"))
        run = RunDir(tmp_path / "run", cfg)
        run.prepare()
        run.save(1, Stopwatch(), {"model": torch.nn.Linear(1, 1)})
        run.release()
        files = [tmp_path / "m" / "config.json", tmp_path / "m" / "model.safetensors", tmp_path / "f.json",
                 tmp_path / "run" / "train_config.json", tmp_path / "run" / "checkpoints" / "last.pt"]
        for f in files:
            assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    finally:
        os.umask(old)


# --- the judge classifier: a checkpoint per epoch and on a signal, exact resume ------------------------

def test_an_interrupted_classifier_run_resumes_exactly(tmp_path, monkeypatch):
    from test_judge import synthetic_dataset, tiny_config
    train, test = synthetic_dataset(20, seed=0), synthetic_dataset(10, seed=1)
    cfg = tiny_config(batch_size=24)  # 60 images: 2 steps an epoch (each epoch drops 12)
    whole = classifier_train.train_classifier(cfg, None, tmp_path / "whole", progress=False, train_data=train,
                                              test_data=test)
    real, calls = classifier_train.to_model_range, {"n": 0}

    def interrupted_in_epoch_2(x):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(x)

    monkeypatch.setattr(classifier_train, "to_model_range", interrupted_in_epoch_2)
    with pytest.raises(TrainingInterrupted, match="SIGTERM received: stopped after step 3 of 6"):
        classifier_train.train_classifier(cfg, None, tmp_path / "cut", progress=False, train_data=train, test_data=test)
    assert read_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 3  # in the middle of epoch 2
    monkeypatch.setattr(classifier_train, "to_model_range", real)
    resumed = classifier_train.train_classifier(cfg, None, tmp_path / "cut", progress=False, train_data=train,
                                                test_data=test)
    assert resumed["history"] == whole["history"] and resumed["accuracy"] == whole["accuracy"]
    assert ((tmp_path / "cut" / "model.safetensors").read_bytes()
            == (tmp_path / "whole" / "model.safetensors").read_bytes())



def _as_earlier_judge_loop(last: Path, step: int | None = None) -> None:
    """Rewrite a judge checkpoint as the earlier loop saved it: its epoch state held the shuffling
    generator, the epoch's order and the running sums as a list (``_EpochProgress`` before b872396)."""
    state = read_checkpoint(last)
    state["epochs"] = {"generator": torch.Generator().manual_seed(0).get_state(), "order": torch.randperm(60),
                       "sums": [12.5, 30, 48], "history": state["epochs"]["history"]}
    if step is not None:
        state["step"] = step
    state["sha256"] = state_digest(state)
    torch.save(state, last)


def test_a_judge_run_of_the_earlier_loop_is_found_finished_or_refused_in_one_line(tmp_path, capsys):
    from test_judge import synthetic_dataset, tiny_config
    train, test = synthetic_dataset(20, seed=0), synthetic_dataset(10, seed=1)
    cfg = tiny_config(batch_size=24)  # 60 images: 2 steps an epoch, 6 in all
    run = tmp_path / "judge"
    first = classifier_train.train_classifier(cfg, None, run, progress=False, train_data=train, test_data=test)
    last = run / "checkpoints" / "last.pt"
    _as_earlier_judge_loop(last)
    # Finished (its metrics.json written): found finished, its state never read.
    again = classifier_train.train_classifier(cfg, None, run, progress=True, train_data=train, test_data=test)
    assert again == first and "already trained to step 6" in capsys.readouterr().out
    # Unfinished: the earlier loop's state cannot be resumed; one line saying what to do, not an AttributeError.
    _as_earlier_judge_loop(last, step=3)
    with pytest.raises(CheckpointError, match=r"made by the earlier judge loop .*; train into a new --out$"):
        classifier_train.train_classifier(cfg, None, run, progress=False, train_data=train, test_data=test)
    (run / "metrics.json").unlink()
    _as_earlier_judge_loop(last, step=6)  # trained to the end, killed before its metrics were written
    with pytest.raises(CheckpointError, match="made by the earlier judge loop"):
        classifier_train.train_classifier(cfg, None, run, progress=False, train_data=train, test_data=test)


def test_a_caption_tokenizer_beside_the_weights_is_checked_against_them(tmp_path):
    from vqgen.errors import WeightsError
    from vqgen.rerank.clip import ClipModel
    from vqgen.train.clip import CLIP_PRESETS
    model = ClipModel(CLIP_PRESETS["tiny"]().model)
    model.tokenizer = CaptionTokenizer.train(["a red circle", "a blue square on the left"] * 4, 300)
    model.save_pretrained(tmp_path / "clip")
    assert ClipModel.from_pretrained(tmp_path / "clip").tokenizer.to_str() == model.tokenizer.to_str()
    bpe = tmp_path / "clip" / "tokenizer.json"
    bpe.write_text(bpe.read_text().replace('"a"', '"b"', 1))  # still a valid tokenizer, a different one
    with pytest.raises(WeightsError, match=re.escape(f"{bpe} is damaged")):
        ClipModel.from_pretrained(tmp_path / "clip")
    bpe.unlink()
    with pytest.raises(WeightsError, match=re.escape(f"{bpe} is missing")):
        ClipModel.from_pretrained(tmp_path / "clip")


def test_sigterm_after_the_loop_stops_at_once_with_one_line_and_the_run_is_whole(made, tmp_path, capsys, monkeypatch):
    real = prior_train.write_model_card

    def terminated_while_writing_the_card(*args, **kwargs):  # after the last step, its checkpoint and export
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(prior_train, "write_model_card", terminated_while_writing_the_card)
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    rc, _, err = run_cli(capsys, prior_argv(made["tokens"], run))
    assert rc == 128 + signal.SIGTERM and one_line_error(err.replace("vqgen: stopped:", "vqgen: error:"))
    assert "SIGTERM received: stopped at once, outside a training step" in err
    assert signal.getsignal(signal.SIGTERM) == handler
    monkeypatch.setattr(prior_train, "write_model_card", real)
    rc, out, _ = run_cli(capsys, prior_argv(made["tokens"], run))
    assert rc == 0 and "already trained to step 8" in out
    assert (run / "model.safetensors").read_bytes() == made["prior_model"]
