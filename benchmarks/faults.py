"""Faults and bad files: kill, signal and starve tiny training runs of every stage, and damage files of
every kind vqgen reads, then count how each scenario ends.

    python benchmarks/faults.py --json

Each scenario ends one of four ways:

* ``clear``: exit status 2 and one ``vqgen: error:`` line (a training fault: the first command's own
  error; a damaged file: the command that reads it);
* ``exact``: the run, resumed with the same command, ends with the same ``model.safetensors`` bytes as
  a run that was never interrupted — or the command on a damaged file gives what it gives on the
  intact one (a bit the reader never uses, a checkpoint that resumes from the one before);
* ``lost``: a run or a command silently ends differently (progress or data lost, or a damaged file
  used as if it were whole);
* ``traceback``: a Python traceback reached the user, or an exit status other than 0, 2 or the
  signal's.

The goal is zero ``lost`` and zero ``traceback``. Process faults run the training command as a child
process (``python -m vqgen.cli``) and resume in this process; damaged files are read through
``vqgen.cli.main`` here. Everything uses tiny presets on data made here, in a temporary directory.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_result  # noqa: E402

from vqgen.cli import main as vqgen  # noqa: E402
from vqgen.config import apply_overrides, to_dict  # noqa: E402
from vqgen.errors import CheckpointError  # noqa: E402
from vqgen.train.common import read_checkpoint  # noqa: E402
from vqgen.train.prior import PRIOR_PRESETS  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}

# A training command in a child process whose k-th checkpoint (torch.save) or model export
# (safetensors) writes half its bytes, then fails as a full disk does — or the process is killed there.
FAULTY_WRITE = """
import errno, os, signal, sys
import torch
import vqgen.hub as hub
from vqgen.cli import main
mode, k = sys.argv[1], int(sys.argv[2])
module, name = (torch, "save") if mode.endswith("ckpt") else (hub, "save_file")
real, calls = getattr(module, name), [0]
def faulty(obj, path, *args, **kwargs):
    real(obj, path, *args, **kwargs)
    calls[0] += 1
    if calls[0] == k:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        if mode.startswith("kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
setattr(module, name, faulty)
sys.exit(main(sys.argv[3:]))
"""


@dataclass
class Result:
    rc: int | str
    out: str
    err: str

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.err or self.rc == "exception"

    @property
    def clear(self) -> bool:
        lines = [ln for ln in self.err.strip().splitlines() if not ln.startswith("vqgen: warning:")]
        return self.rc == 2 and len(lines) == 1 and lines[0].startswith("vqgen: error:")


def run_here(argv: list[str]) -> Result:
    """``vqgen ARGV`` in this process: exit status, stdout, stderr (warnings included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            rc = vqgen(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException:  # noqa: BLE001 - what the user would have seen
            traceback.print_exc(file=err)
            rc = "exception"
    return Result(rc, out.getvalue(), err.getvalue())


def child(argv: list[str], prefix: list[str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, *(prefix or ["-m", "vqgen.cli"]), *argv]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def step_of(run: Path) -> int:
    try:
        return read_checkpoint(run / "checkpoints" / "last.pt")["step"]
    except (CheckpointError, FileNotFoundError):
        return -1


# --- the world: data, finished runs of every stage --------------------------------------------------

def blobs(n: int = 48, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey 16×16 images of three kinds (blob, vertical and horizontal stripes): uint8 (n, H, W), labels (n,)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], np.arange(n) % 3
    for k in labels:
        cx, cy = g.integers(3, size - 3, 2)
        img = [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0), (xx + cx) % 6 < 3, (yy + cy) % 6 < 3][k]
        images.append((255 * np.asarray(img, float)).round().astype(np.uint8))
    return np.stack(images), labels


class World:
    def __init__(self, root: Path):
        from PIL import Image

        from vqgen.data.shapes import load_shapes
        self.root = root
        images, labels = blobs()
        self.imgs = root / "imgs"
        for i, (img, k) in enumerate(zip(images, labels)):
            (self.imgs / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(self.imgs / f"c{k}" / f"{i}.png")
        shapes = load_shapes(0, "train", resolution=16, n=48, progress=False)
        manifest = root / "shapes" / "manifest.jsonl"
        manifest.parent.mkdir()
        lines = []
        for i, (img, cap) in enumerate(zip(shapes.images, shapes.captions)):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(manifest.parent / f"{i}.png")
            lines.append(f'{{"image": "{i}.png", "caption": "{cap}"}}')
        manifest.write_text("\n".join(lines) + "\n")
        self.folder, self.manifest = f"folder:{self.imgs}", f"manifest:{manifest}"
        self.tokens, self.captioned, self.pixels = root / "tokens", root / "captioned", root / "pixels"
        self.tok_rgb = root / "tok-rgb"
        torch.manual_seed(0)
        assert vqgen(["train", "tokenizer", "--config", "tiny", "--data", self.manifest, "--out", str(self.tok_rgb),
                      "--max-steps", "4", "--no-progress", "--set", "model.autoencoder.in_channels=3"]) == 0
        self.stages: dict[str, tuple[list[str], int]] = {}
        self.reference: dict[str, bytes] = {}

    def stage_argv(self, stage: str, out: Path) -> list[str]:
        o = str(out)
        return {
            "tokenizer": ["train", "tokenizer", "--config", "tiny", "--data", self.folder, "--out", o, "--max-steps",
                          "12", "--save-every", "2", "--no-progress"],
            "prior": ["train", "prior", "--config", "tiny", "--tokens", str(self.tokens), "--out", o, "--max-steps", "40",
                      "--save-every", "4", "--no-progress", "--set", "model.vocab_size=32", "--set", "model.num_classes=3"],
            "text2img": ["train", "text2img", "--config", "tiny", "--tokens", str(self.captioned), "--out", o,
                         "--max-steps", "16", "--save-every", "2", "--no-progress"],
            "clip": ["train", "clip", "--config", "tiny", "--data", self.manifest, "--out", o, "--max-steps", "16",
                     "--save-every", "2", "--no-progress"],
            "shapes-judge": ["train", "shapes-judge", "--config", "tiny", "--out", o, "--max-steps", "12", "--save-every",
                             "2", "--no-progress", "--set", "model.resolution=16", "--set", "model.patch=2"],
            "classifier": ["train", "classifier", "--config", "tiny", "--data", self.folder, "--out", o, "--no-progress",
                           "--set", "model.resolution=16", "--set", "model.num_classes=3", "--set", "epochs=30"],
        }[stage]

    STEPS = {"tokenizer": 12, "prior": 40, "text2img": 16, "clip": 16, "shapes-judge": 12, "classifier": 60}
    SAVES = {"tokenizer": 6, "prior": 10, "text2img": 8, "clip": 8, "shapes-judge": 6, "classifier": 30}

    def train_references(self) -> None:
        """Each stage trained once, never interrupted; the token directories its later stages read."""
        for stage in self.STEPS:
            out = self.root / "ref" / stage
            res = run_here(self.stage_argv(stage, out))
            assert res.rc == 0, res.err
            self.reference[stage] = (out / "model.safetensors").read_bytes()
            if stage == "tokenizer":
                for argv in (["encode", "--tokenizer", str(out), "--data", self.folder, "--out", str(self.tokens)],
                             ["encode", "--tokenizer", str(self.tok_rgb), "--data", self.manifest, "--out",
                              str(self.captioned)],
                             ["encode", "--pixels", "8", "--resolution", "4", "--data", self.folder, "--out",
                              str(self.pixels)]):
                    assert vqgen(argv + ["--no-progress"]) == 0
        res = run_here(["train", "prior", "--config", "tiny", "--tokens", str(self.pixels), "--out",
                        str(self.root / "ref" / "pixel-prior"), "--max-steps", "4", "--no-progress", "--set",
                        "model.vocab_size=8", "--set", "model.num_classes=3"])
        assert res.rc == 0, res.err

    def stop_halfway(self) -> None:
        """Each stage's run stopped by SIGTERM about halfway (``partial/STAGE``: a ``last.pt`` and the
        ``previous.pt`` before it), for the damaged-checkpoint scenarios."""
        for stage, steps in self.STEPS.items():
            run = self.root / "partial" / stage
            for _ in range(3):  # a busy machine may let a run finish before the signal lands: try again
                shutil.rmtree(run, ignore_errors=True)
                proc = child(self.stage_argv(stage, run))
                while proc.poll() is None and step_of(run) < steps // 2:
                    time.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=300)
                if proc.returncode == 128 + signal.SIGTERM:
                    break
            assert proc.returncode == 128 + signal.SIGTERM and (run / "checkpoints" / "previous.pt").exists(), stage


# --- the scenarios -----------------------------------------------------------------------------------

class Tally:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, category: str, what: str, outcome: str, note: str = "") -> None:
        self.rows.append({"category": category, "what": what, "outcome": outcome, "note": note[-400:]})
        mark = {"clear": ".", "exact": ".", "lost": "L", "traceback": "T"}[outcome]
        print(mark, end="" if mark == "." else f" [{category}: {what}: {note[-200:]}]\n", file=sys.stderr, flush=True)


def resumed_outcome(world: World, stage: str, run: Path) -> tuple[str, str]:
    """Resume ``run`` with its stage's command, here; exact when it ends with the reference model."""
    res = run_here(world.stage_argv(stage, run))
    if res.traceback:
        return "traceback", res.err
    if res.rc == 0:
        same = (run / "model.safetensors").read_bytes() == world.reference[stage]
        return ("exact", "") if same else ("lost", "resumed run ends with other weights")
    return ("clear", res.err) if res.clear else ("traceback", f"exit {res.rc}: {res.err}")


def signal_fault(world: World, tally: Tally, rng: random.Random, stage: str, sig: signal.Signals, i: int) -> None:
    """Start the stage's training, send ``sig`` once a random step is checkpointed, resume here."""
    run = world.root / "faults" / f"{stage}-{sig.name}-{i}"
    every = world.STEPS[stage] // world.SAVES[stage]
    target = rng.randint(1, world.STEPS[stage] - 2 * every)
    proc = child(world.stage_argv(stage, run))
    deadline = time.time() + 300
    while proc.poll() is None and step_of(run) < target and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    what = f"{stage}: {sig.name} after step ≥ {target}"
    if proc.returncode == 0:
        what += " (the run had finished before the signal)"
    if "Traceback" in err:
        return tally.add("signal" if sig != signal.SIGKILL else "kill", what, "traceback", err)
    if sig != signal.SIGKILL and proc.returncode not in (0, 128 + sig):  # 0: it had just finished
        return tally.add("signal", what, "traceback", f"exit {proc.returncode}: {err}")
    if sig != signal.SIGKILL and proc.returncode == 128 + sig:
        stopped = [ln for ln in err.strip().splitlines() if ln.startswith(("vqgen: stopped:", "vqgen: interrupted"))]
        line = stopped[0] if len(stopped) == 1 else ""
        if f"stopped after step {step_of(run)} of" not in line and "outside a training step" not in line \
                and line != "vqgen: interrupted":  # the last two: after the loop (a final evaluation, an export)
            return tally.add("signal", what, "lost", f"no one line, or no checkpoint at the step it names: {err}")
        if "stopped after step" not in line:
            what += " (after the loop)"
    outcome, note = resumed_outcome(world, stage, run)
    tally.add("kill" if sig == signal.SIGKILL else "signal", what, outcome, note)


def write_fault(world: World, tally: Tally, rng: random.Random, stage: str, mode: str, i: int) -> None:
    """The k-th checkpoint or export write fails half-way (disk full) or the process dies in it."""
    run = world.root / "faults" / f"{stage}-{mode}-{i}"
    k = rng.randint(1, world.SAVES[stage]) if mode.endswith("ckpt") else 1
    proc = child([mode, str(k), *world.stage_argv(stage, run)], prefix=["-c", FAULTY_WRITE])
    _, err = proc.communicate(timeout=300)
    what = f"{stage}: {mode} at write {k}"
    res = Result(proc.returncode, "", err)
    if res.traceback:
        return tally.add("failed write", what, "traceback", err)
    if mode.startswith("enospc"):
        if not res.clear and proc.returncode != 0:
            return tally.add("failed write", what, "traceback", f"exit {proc.returncode}: {err}")
    elif proc.returncode not in (-signal.SIGKILL, 0):
        return tally.add("failed write", what, "traceback", f"exit {proc.returncode}: {err}")
    outcome, note = resumed_outcome(world, stage, run)
    tally.add("failed write", what, outcome, note)


def lock_fault(world: World, tally: Tally, stage: str) -> None:
    """A second command into a run a first process is training: refused at once; then the first is
    killed and its lock must not block the resume."""
    run = world.root / "faults" / f"{stage}-lock"
    argv = world.stage_argv(stage, run)
    proc = child(argv)
    while proc.poll() is None and step_of(run) < 1:
        time.sleep(0.01)
    t = time.perf_counter()
    second = run_here(argv)
    waited = time.perf_counter() - t
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    what = f"{stage}: second process, then the holder killed"
    if second.traceback:
        return tally.add("lock", what, "traceback", second.err)
    if not (second.clear and "is in use" in second.err and waited < 10):
        return tally.add("lock", what, "lost", f"not refused at once ({waited:.1f} s): {second.err}")
    outcome, note = resumed_outcome(world, stage, run)
    tally.add("lock", what, outcome, note)


def extension_fault(world: World, tally: Tally, rng: random.Random, stage: str) -> None:
    """A finished run continued with a larger --max-steps, SIGTERM'd on the way, resumed: the same weights
    as the continuation done in one go."""
    base = world.root / "ref" / stage
    whole, cut = (world.root / "faults" / f"{stage}-extend-{k}" for k in ("whole", "cut"))
    shutil.copytree(base, whole)
    shutil.copytree(base, cut)
    argv = lambda run: world.stage_argv(stage, run) + ["--max-steps", str(2 * world.STEPS[stage])]  # noqa: E731
    ref = run_here(argv(whole))
    proc = child(argv(cut))
    target = rng.randint(world.STEPS[stage] + 1, 2 * world.STEPS[stage] - 2)
    while proc.poll() is None and step_of(cut) < target:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    res = run_here(argv(cut))
    what = f"{stage}: --max-steps {world.STEPS[stage]} → {2 * world.STEPS[stage]}, SIGTERM after step ≥ {target}"
    if ref.traceback or res.traceback or "Traceback" in err:
        return tally.add("larger --max-steps", what, "traceback", ref.err + err + res.err)
    ok = (ref.rc == 0 and "stretched" in ref.out and res.rc == 0
          and (cut / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes())
    tally.add("larger --max-steps", what, "exact" if ok else "lost", "" if ok else ref.out + err + res.err)


# --- damaged files --------------------------------------------------------------------------------------

def damaged(rng: random.Random, path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))])
    elif how == "flip":
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    elif how == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 256))))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()


def unchanged_weights(path: Path, state: dict[str, torch.Tensor]) -> bool:
    """Whether a damaged weights file still holds exactly ``state`` (read without any checks)."""
    try:
        if path.suffix == ".pth":
            given = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file
            given = load_file(str(path))
    except Exception:  # noqa: BLE001 - unreadable: it is damaged
        return False
    return given.keys() == state.keys() and all(torch.equal(given[k], v) for k, v in state.items())


def file_faults(world: World, tally: Tally, rng: random.Random, flips: int) -> None:
    """Damage one file, run a command that reads it, compare with the command on the intact file."""
    r, scratch = world.root / "ref", world.root / "damaged"
    eval_tok = ["eval", "tokenizer", str(r / "tokenizer"), "--data", world.folder, "--json"]
    sample = ["sample", "--prior", str(r / "prior"), "--out", str(scratch / "s.png"), "--n", "2"]
    sample_px = ["sample", "--prior", str(r / "pixel-prior"), "--out", str(scratch / "s.png"), "--n", "2"]
    generate = ["generate", "a red circle", "--model", str(r / "text2img"), "--clip", str(r / "clip"), "--n", "2",
                "--keep", "1", "--out", str(scratch / "g.png")]
    eval_cls = ["eval", "classifier", str(r / "classifier"), "--data", world.folder, "--json"]
    yaml_cfg = scratch / "prior.yaml"
    train_prior = lambda tokens, cfg="tiny": ["train", "prior", "--config", cfg, "--tokens", str(tokens), "--out",  # noqa: E731
                                              str(scratch / "run"), "--max-steps", "4", "--no-progress", "--set",
                                              "model.vocab_size=32", "--set", "model.num_classes=3"]
    train_t2i = ["train", "text2img", "--config", "tiny", "--tokens", str(world.captioned), "--out", str(scratch / "run"),
                 "--max-steps", "4", "--no-progress"]
    inception_pth, inception_st = scratch / "inception.pth", scratch / "inception.safetensors"
    # (kind, file, command, what the command writes that shows its result, how to damage)
    cases: list[tuple[str, Path, list[str], Path | None, list[str]]] = []
    every = ["truncate", "garbage", "empty", "delete"] + ["flip"] * flips
    for run, cmd, out in (("tokenizer", eval_tok, None), ("prior", sample, scratch / "s.png"),
                          ("text2img", generate, scratch / "g.png"), ("classifier", eval_cls, None)):
        cases += [(f"config.json ({run})", r / run / "config.json", cmd, out, every),
                  (f"model.safetensors ({run})", r / run / "model.safetensors", cmd, out, every)]
    cases += [("train_config.json (prior)", r / "prior" / "train_config.json", sample, scratch / "s.png", every),
              ("tokenizer.json: BPE (text2img)", r / "text2img" / "tokenizer.json", generate, scratch / "g.png", every),
              ("tokenizer.json: BPE (clip)", r / "clip" / "tokenizer.json", generate, scratch / "g.png", every),
              ("palette.safetensors", world.pixels / "palette.safetensors", sample_px, scratch / "s.png", every),
              ("token meta.json", world.tokens / "meta.json", train_prior(world.tokens), None, every),
              ("token shard", world.tokens / "train" / "shard-00000.npy", train_prior(world.tokens), None, every),
              ("token labels", world.tokens / "train" / "labels-00000.npy", train_prior(world.tokens), None, every),
              ("token done.json", world.tokens / "train" / "done.json", train_prior(world.tokens), None, every),
              ("token captions", world.captioned / "train" / "captions-00000.json", train_t2i, None, every),
              # a user's own files: a config (no flips: any valid YAML is a config) and Inception weights
              ("YAML config", yaml_cfg, train_prior(world.tokens, str(yaml_cfg)), None,
               ["truncate", "garbage", "empty", "delete"]),
              ("user weights .pth", inception_pth, ["eval", "prior", str(r / "prior"), "--judge", str(r / "classifier"),
                                                    "--inception-weights", str(inception_pth), "--n-per-class", "1"], None, every),
              ("user weights .safetensors", inception_st,
               ["eval", "prior", str(r / "prior"), "--judge", str(r / "classifier"), "--inception-weights",
                str(inception_st), "--n-per-class", "1"], None, ["truncate", "garbage", "empty", "delete"])]
    scratch.mkdir()
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.num_classes=3", "loop.max_steps=4"])
    import yaml
    yaml_cfg.write_text(yaml.safe_dump(to_dict(cfg)))
    from safetensors.torch import save_file

    from vqgen.eval.inception import InceptionFeatures
    state = {k: v for k, v in InceptionFeatures().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, inception_pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(inception_st))

    def result(cmd: list[str], out: Path | None) -> tuple[Result, bytes | None]:
        shutil.rmtree(scratch / "run", ignore_errors=True)
        res = run_here(cmd)
        shown = out.read_bytes() if out is not None and out.exists() else None
        if res.rc == 0 and "train" in cmd[:1]:
            shown = (scratch / "run" / "model.safetensors").read_bytes()
        if out is not None and out.exists():
            out.unlink()
        return res, shown

    for kind, path, cmd, out, hows in cases:
        intact = None if "user weights" in kind else result(cmd, out)
        for how in hows:
            backup = path.read_bytes()
            damaged(rng, path, how)
            what = f"{kind}: {how}"
            try:
                if "user weights" in kind and unchanged_weights(path, state):  # a bit torch never reads
                    tally.add("damaged file", what, "exact")
                    continue
                res, shown = result(cmd, out)
            finally:
                path.write_bytes(backup)
            if res.traceback:
                tally.add("damaged file", what, "traceback", res.err)
            elif res.clear:
                tally.add("damaged file", what, "clear")
            elif res.rc == 0 and intact is not None and intact[0].rc == 0 and shown == intact[1] \
                    and res.out.replace(str(scratch), "") == intact[0].out.replace(str(scratch), ""):
                tally.add("damaged file", what, "exact")
            elif res.rc == 0:
                tally.add("damaged file", what, "lost", f"used as if whole: {res.out[-200:]}")
            else:
                tally.add("damaged file", what, "traceback", f"exit {res.rc}: {res.err}")


def checkpoint_faults(world: World, tally: Tally, rng: random.Random, flips: int) -> None:
    """A run stopped halfway whose newest checkpoint (or train_config.json, or both checkpoints) is
    damaged, resumed with the same command: from the checkpoint before, ending with the same weights as
    a run never interrupted — or one clear line when no checkpoint is left."""
    last, previous = "checkpoints/last.pt", "checkpoints/previous.pt"
    for stage in world.STEPS:
        for names, hows in (([last], ["truncate", "garbage", "empty", "delete"] + ["flip"] * flips),
                            (["train_config.json"], ["truncate", "flip", "delete"]),
                            ([last, previous], ["truncate"])):
            for how in hows:
                run = world.root / "faults" / f"{stage}-{len(names)}-{how}-{rng.randrange(10**9)}"
                shutil.copytree(world.root / "partial" / stage, run)
                for name in names:
                    damaged(rng, run / name, how)
                outcome, note = resumed_outcome(world, stage, run)
                tally.add("damaged checkpoint", f"{stage}: {' and '.join(names)}: {how}", outcome, note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ap.add_argument("--out", help="result file (default benchmarks/results/faults.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs at random steps per stage")
    ap.add_argument("--flips", type=int, default=4, help="bit flips per damaged file kind")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="vqgen-faults-") as tmp:
        world = World(Path(tmp))
        world.train_references()
        world.stop_halfway()
        for stage in world.STEPS:
            for i in range(args.kills):
                signal_fault(world, tally, rng, stage, signal.SIGKILL, i)
            signal_fault(world, tally, rng, stage, signal.SIGTERM, 0)
            signal_fault(world, tally, rng, stage, signal.SIGINT, 0)
            for mode in ("enospc-ckpt", "kill-ckpt", "enospc-export"):
                write_fault(world, tally, rng, stage, mode, 0)
        for stage in ("prior", "tokenizer"):
            lock_fault(world, tally, stage)
        for stage in ("prior", "text2img"):
            extension_fault(world, tally, rng, stage)
        checkpoint_faults(world, tally, rng, args.flips)
        file_faults(world, tally, rng, args.flips)
    print(file=sys.stderr)
    rows = tally.rows
    count = lambda rs, *outs: sum(r["outcome"] in outs for r in rs)  # noqa: E731
    by_category = {}
    for r in rows:
        c = by_category.setdefault(r["category"], {"scenarios": 0, "clear": 0, "exact": 0, "lost": 0, "traceback": 0})
        c["scenarios"] += 1
        c[r["outcome"]] += 1
    result = {"scenarios": len(rows), "clear_or_exact": count(rows, "clear", "exact"), "lost": count(rows, "lost"),
              "tracebacks": count(rows, "traceback"), "clear": count(rows, "clear"), "exact": count(rows, "exact"),
              "by_category": by_category,
              "signals_after_the_end": sum("finished before the signal" in r["what"] for r in rows),
              "signals_after_the_loop": sum("(after the loop)" in r["what"] for r in rows),
              "failures": [r for r in rows if r["outcome"] in ("lost", "traceback")],
              "seconds": round(time.perf_counter() - started, 1), "seed": args.seed, "machine": machine(),
              "command": " ".join(["python"] + sys.argv)}
    write_result("faults", result, args.out)


if __name__ == "__main__":
    main()
