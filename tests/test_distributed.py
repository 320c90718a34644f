"""Several CPU processes (gloo): the training loops run data-parallel, agree, and resume after SIGKILL.

Each test starts ``torchrun`` (``python -m torch.distributed.run``) with two ranks: seconds of start-up
per run, so they are marked slow (``make test`` runs them; ``-m 'not slow'`` skips them).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_faults import prior_argv, write_tokens
from test_tokenizer import write_folder
from vqgen.train.common import read_checkpoint
from vqgen.tokenizer.vqgan import VQTokenizer

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

# One process on the global batch against two ranks on halves of it (gradients averaged by DDP): the
# same sums in another order, so the losses agree to float rounding. Measured: at most 2e-6 relative
# per step (tokenizer) and 1e-7 (prior) over 12 steps, weights within 2e-5 (the judges: see the test).
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-3
# The shapes judge's colour and size losses are means over the occupied cells of the batch, which two
# halves hold in unequal numbers: the mean of the two ranks' means weights cells slightly differently from
# one mean over all (measured: 0.5 % at most per step, weights within 0.008 after 12 steps).
TOLERANCES = {"shapes-judge": (2e-2, 5e-2)}


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def test_python_m_vqgen_is_the_command():
    res = subprocess.run([sys.executable, "-m", "vqgen", "train", "tokenizer", "--config", "no-such-preset", "--out",
                          "x"], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("vqgen: error:") and "no-such-preset" in res.stderr
    assert "Traceback" not in res.stderr


COMPARED = ["tokenizer", "prior", "classifier", "shapes-judge"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    """tests/ddp_jobs.py under torchrun (2 ranks) and in one process; what each rank saw, per job."""
    out = tmp_path_factory.mktemp("ddp")
    res = _torchrun(str(TESTS / "ddp_jobs.py"), str(out), "tokenizer-kmeans", "tokenizer-restarts", *COMPARED)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, str(TESTS / "ddp_jobs.py"), str(out), *COMPARED],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _load(out: Path, job: str, world: int, rank: int) -> dict:
    return torch.load(out / f"{job}.world{world}.rank{rank}.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("job", ["tokenizer-kmeans", "tokenizer-restarts"])
def test_both_ranks_hold_the_same_codebook_bit_for_bit(jobs, job):
    """k-means init (rank 0's shard, broadcast), dead-code restarts (which codes and onto which vectors:
    broadcast) and EMA statistics (all-reduced) leave every rank with the same quantizer state — and the
    same weights."""
    r0, r1 = _load(jobs, job, 2, 0)["state"], _load(jobs, job, 2, 1)["state"]
    assert bool(r0["quantizer.initialized"])  # k-means ran
    for key in ("quantizer.embed", "quantizer.ema_count", "quantizer.ema_sum", "quantizer.usage_count"):
        assert torch.equal(r0[key], r1[key]), key
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    assert not torch.equal(r0["quantizer.ema_count"], torch.ones_like(r0["quantizer.ema_count"]))  # EMA moved


@pytest.mark.slow
@pytest.mark.parametrize("job", COMPARED)
def test_two_ranks_follow_one_process_on_the_same_global_batch(jobs, job):
    """Tokenizer, prior, judge classifier (with augmentation) and shapes judge: the loss of every step
    and the final weights of two ranks match one process's."""
    one = _load(jobs, job, 1, 0)
    ranks = [_load(jobs, job, 2, r) for r in (0, 1)]
    single = [loss for _, loss in one["losses"]]
    # each rank's loss is the mean over its half of the batch: the global loss is their mean
    pairs = list(zip(ranks[0]["losses"], ranks[1]["losses"]))
    assert [a[0] for a, _ in pairs] == [s for s, _ in one["losses"]] == list(range(len(single)))
    together = [(a[1] + b[1]) / 2 for a, b in pairs]
    assert len(single) in (8, 12) and min(single[-3:]) < max(single[:3])  # it learned something
    rtol, atol = TOLERANCES.get(job, (LOSS_RTOL, WEIGHT_ATOL))
    assert together == pytest.approx(single, rel=rtol)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # the ranks did see different halves
    assert one["state"].keys() == ranks[0]["state"].keys()
    for key, value in one["state"].items():
        assert torch.allclose(ranks[0]["state"][key].float(), value.float(), atol=atol), key


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            kids.append(int(stat.parent.name))
    return kids


SLOW_PRIOR = """
import sys, time
import vqgen.train.prior as prior_train
from vqgen.cli import main
real = prior_train.optimizer_step
def slow_step(*args, **kwargs):  # 0.25 s a step: time to be killed in the middle
    time.sleep(0.25)
    return real(*args, **kwargs)
prior_train.optimizer_step = slow_step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_torchrun_job_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    tokens = write_tokens(tmp_path / "tokens")
    run, whole = tmp_path / "run", tmp_path / "whole"
    (tmp_path / "slow.py").write_text(SLOW_PRIOR)
    argv = prior_argv(tokens, run, 16, save_every=2)
    # the uninterrupted run, meanwhile (the documented form)
    reference = subprocess.Popen([*TORCHRUN, "-m", "vqgen", *prior_argv(tokens, whole, 16, save_every=2)], env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen([*TORCHRUN, str(tmp_path / "slow.py"), *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        step = 0
        while step < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            if (run / "checkpoints" / "last.pt").exists():
                step = read_checkpoint(run / "checkpoints" / "last.pt")["step"]
    finally:
        ranks = _children(proc.pid)  # torchrun starts each rank in a session of its own
        for pid in (proc.pid, *ranks):  # the agent, then both ranks: SIGKILL, as a node that goes away
            os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert len(ranks) == 2
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    killed_at = read_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 4 <= killed_at < 16

    res = _torchrun("-m", "vqgen", *argv)  # the same command again: resumes
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"from step {killed_at}" in res.stdout
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 16
    assert (run / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_tokenizer_with_gan_and_prior_train_under_torchrun(tmp_path):
    data = write_folder(tmp_path / "imgs", 48)
    res = _torchrun("-m", "vqgen", "train", "tokenizer", "--config", "tiny", "--data", f"folder:{data}", "--out",
                    str(tmp_path / "tok"), "--max-steps", "4", "--no-progress", "--set", "gan.weight=0.5", "--set",
                    "gan.start=2", "--set", "gan.n_layers=2", "--set", "gan.ndf=8")
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "tok" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["disc_optimizer"]["state"]
    VQTokenizer.from_pretrained(tmp_path / "tok")

    res = subprocess.run([sys.executable, "-m", "vqgen", "encode", "--tokenizer", str(tmp_path / "tok"), "--data",
                          f"folder:{data}", "--out", str(tmp_path / "toks"), "--no-progress"], capture_output=True,
                         text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    res = _torchrun("-m", "vqgen", "train", "prior", "--config", "tiny", "--tokens", str(tmp_path / "toks"), "--out",
                    str(tmp_path / "prior"), "--max-steps", "3", "--no-progress", "--set", "model.vocab_size=32",
                    "--set", "model.num_classes=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.load(tmp_path / "prior" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
