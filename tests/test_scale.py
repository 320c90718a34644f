"""The GPU-side pieces, on the CPU: activation checkpointing, ``loop.compile``, the optimiser and TF32
switches, the full-size presets' sizes (docs/gpu.md) and benchmarks/gpu.py's refusal and smoke run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqgen.config import apply_overrides
from vqgen.prior.gpt import GPTPrior
from vqgen.prior.presets import PRESETS as PRIOR_MODELS
from vqgen.text.dalle import TextToImage, TextToImageConfig, dalle_mini_config
from vqgen.tokenizer.discriminator import PatchDiscriminator
from vqgen.tokenizer.vqgan import VQTokenizer
from vqgen.train import common
from vqgen.train.prior import PRIOR_PRESETS, train_prior
from vqgen.train.tokenizer import TOKENIZER_PRESETS

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _loss_and_grads(model: torch.nn.Module, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks and condition / caption drops in both runs
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_tensors(loss_fn) -> int:
    count = [0]

    def pack(t):
        count[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn()
    return count[0]


@pytest.mark.parametrize("kind", ["prior", "text2img"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(kind):
    """With dropout on (its masks must replay in the recomputation) and fewer tensors kept for backward."""
    g = torch.Generator().manual_seed(0)
    if kind == "prior":
        cfg = PRIOR_MODELS["tiny"]()
        cfg.dropout, cfg.n_layer = 0.1, 3
        tokens = torch.randint(0, cfg.vocab_size, (6, cfg.seq_len), generator=g)  # (B, HW)
        cond = torch.randint(0, cfg.num_classes, (6,), generator=g)  # (B,)
        build, inputs = GPTPrior, (tokens, cond)
    else:
        cfg = TextToImageConfig(vocab_size=32, grid=(4, 4), text_vocab_size=40, max_text_len=8, n_embd=32, n_head=2,
                                n_enc_layer=2, n_dec_layer=2, dropout=0.1, caption_drop_prob=0.3)
        ids = torch.randint(3, 40, (6, 8), generator=g)  # (B, L)
        ids[:, 0], ids[:, 5:] = cfg.bos_id, cfg.pad_id
        tokens = torch.randint(0, 32, (6, 16), generator=g)  # (B, HW)
        build, inputs = TextToImage, (ids, tokens)
    torch.manual_seed(0)
    plain = build(cfg).train()
    cfg_ckpt = type(cfg)(**{**vars(cfg), "activation_checkpointing": True})
    ckpt = build(cfg_ckpt).train()
    ckpt.load_state_dict(plain.state_dict())
    loss_a, grads_a = _loss_and_grads(plain, lambda: plain.loss(*inputs))
    loss_b, grads_b = _loss_and_grads(ckpt, lambda: ckpt.loss(*inputs))
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7), name
    assert _saved_tensors(lambda: ckpt.loss(*inputs)) < _saved_tensors(lambda: plain.loss(*inputs)) / 2
    with torch.no_grad():  # sampling-time paths (no gradients, eval) are unaffected
        assert torch.equal(plain.eval()(*inputs), ckpt.eval()(*inputs))


def _token_data(n: int = 48):
    from vqgen.data.tokens import TokenDataset
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3  # (n,)
    grids = (labels[:, None, None] * 8 + torch.randint(0, 8, (n, 4, 4), generator=g)).long()  # (n, 4, 4)
    return TokenDataset(grids, labels, {"vocab_size": 32, "class_names": ["a", "b", "c"], "source": "synthetic"})


def test_loop_compile_runs_the_loss_through_torch_compile(tmp_path, monkeypatch):
    """``loop.compile=true`` compiles what the loop calls (here with dynamo's eager backend: inductor
    would need minutes of C++ compilation on a CPU); training gives the same weights as without."""
    real, compiled = torch.compile, []

    def eager_compile(module, **kwargs):
        compiled.append(module)
        return real(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    base = apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.num_classes=3", "loop.max_steps=4",
                                                     "loop.save_every=4"])
    plain, _ = train_prior(base, tmp_path / "plain", train_data=_token_data(), progress=False)
    assert not compiled
    fast, _ = train_prior(apply_overrides(base, ["loop.compile=true"]), tmp_path / "compiled", train_data=_token_data(),
                          progress=False)
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_adamw_is_fused_only_on_cuda_and_tf32_is_switched_on():
    params = [torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(3))]
    opt = common.adamw(common.decay_groups(params, 0.1), lr=1e-3)
    assert not opt.defaults["fused"]  # CPU parameters: the default (foreach) implementation
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # matrices decayed, vectors not
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        common.enable_tf32()
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)


def _count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def test_gpu_presets_and_their_documented_sizes():
    """Each full-size preset exists with the size docs/gpu.md gives (counted here, on the meta device)."""
    doc = (REPO / "docs" / "gpu.md").read_text()
    counts = {}
    for name in ("imagenet-f16", "imagenet-f16-16384"):
        cfg = TOKENIZER_PRESETS[name]()
        ae = cfg.model.autoencoder
        counts[name] = _count(lambda: VQTokenizer(cfg.model)) + _count(
            lambda: PatchDiscriminator(ae.in_channels, cfg.gan.ndf, cfg.gan.n_layers))
        assert cfg.model.grid == (16, 16) and ae.resolution == 256
    assert TOKENIZER_PRESETS["imagenet-f16"]().model.quantizer.codebook_size == 1024
    assert TOKENIZER_PRESETS["imagenet-f16-16384"]().model.quantizer.codebook_size == 16384
    cin = PRIOR_PRESETS["imagenet-cin-300m"]().model
    counts["imagenet-cin-300m"] = _count(lambda: GPTPrior(cin))
    assert cin.num_classes == 1000 and (cin.vocab_size, cin.grid) == (16384, (16, 16))
    assert 0.28e9 < counts["imagenet-cin-300m"] < 0.36e9
    counts["dalle-mini"] = _count(lambda: TextToImage(dalle_mini_config()))
    assert 0.38e9 < counts["dalle-mini"] < 0.46e9
    for name, n in counts.items():
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{name}` |")]
        assert rows and all(f"| {n:,} |" in row for row in rows), (name, n, rows)


def test_gpu_benchmark_refuses_without_cuda_and_runs_its_smoke_test(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the refusal cannot be seen")
    script = str(REPO / "benchmarks" / "gpu.py")
    res = subprocess.run([sys.executable, script, "--json"], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("gpu.py: error:")
    assert "CUDA" in res.stderr and "Traceback" not in res.stderr
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, script, "--smoke", "--json", "--out", str(out)], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["kind"] for r in result["results"]] == ["tokenizer", "prior", "text2img"]
    for r in result["results"]:
        assert r["tflop_per_step"] > 0 and r["step_s"] > 0 and r["estimated_memory_gib"] > 0
        assert (r.get("images_per_s") or r.get("tokens_per_s")) > 0
    assert re.match(r"cpu", result["device"])
