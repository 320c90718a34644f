"""Two CPU processes under torchrun (gloo): the training loops run data-parallel and agree."""
import subprocess
import sys

import torch

from test_tokenizer import write_folder
from vqgen.tokenizer.vqgan import VQTokenizer


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vqgen.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_tokenizer_and_prior_train_under_torchrun(tmp_path):
    data = write_folder(tmp_path / "imgs", 48)
    res = _torchrun("train", "tokenizer", "--config", "tiny", "--data", f"folder:{data}", "--out", str(tmp_path / "tok"),
                    "--max-steps", "4", "--no-progress", "--set", "gan.weight=0.5", "--set", "gan.start=2",
                    "--set", "gan.n_layers=2", "--set", "gan.ndf=8")
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "tok" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["disc_optimizer"]["state"]
    VQTokenizer.from_pretrained(tmp_path / "tok")

    res = subprocess.run([sys.executable, "-m", "vqgen.cli", "encode", "--tokenizer", str(tmp_path / "tok"), "--data",
                          f"folder:{data}", "--out", str(tmp_path / "toks"), "--no-progress"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = _torchrun("train", "prior", "--config", "tiny", "--tokens", str(tmp_path / "toks"), "--out", str(tmp_path / "prior"),
                    "--max-steps", "3", "--no-progress", "--set", "model.vocab_size=32", "--set", "model.num_classes=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.load(tmp_path / "prior" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
