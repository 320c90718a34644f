"""Sharded training (``loop.fsdp``: FSDP2 ``fully_shard`` of every transformer block and the root) on two
CPU ranks (gloo): prior and text2img follow one process, the checkpoints are DDP's, a sharded run resumes
exactly (and without sharding), ``loop.compile`` composes with it, the stages that do not shard refuse
it, and ``benchmarks/gpu.py --fsdp`` runs.

The torchrun tests start ``python -m torch.distributed.run`` (tests/ddp_jobs.py): seconds of start-up
per run, so they are marked slow like tests/test_distributed.py.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import ENV, TESTS, _torchrun
from test_text2img import COLOURS, SHAPES, write_captioned_tokens
from vqgen.config import apply_overrides
from vqgen.errors import ConfigError
from vqgen.prior.gpt import GPTPrior
from vqgen.text.bpe import CaptionTokenizer
from vqgen.text.dalle import TextToImage
from vqgen.train.common import LAYOUT_KEYS, read_checkpoint

# Reduce-scatter of gradients over two ranks against one process on the whole batch: the same sums in
# another order. Measured over 12 steps: the tiny prior's losses within 1.2e-7 relative per step of one
# process's, its final weights within 5e-6 of one process's and 3e-6 of DDP's; the tiny text2img's
# losses within 1.2e-7, weights within 4e-6.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4


def _load(out: Path, job: str, world: int, rank: int) -> dict:
    return torch.load(out / f"{job}.world{world}.rank{rank}.pt", weights_only=True)


def _one_process(out: Path, *jobs: str) -> None:
    res = subprocess.run([sys.executable, str(TESTS / "ddp_jobs.py"), str(out), *jobs], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]


def write_bart(path: Path) -> Path:
    """A tiny random BART (encoder + caption BPE) standing in for a pretrained one, as in test_text2img."""
    import transformers
    caps = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    tok = CaptionTokenizer.train(caps * 4, vocab_size=300)
    cfg = transformers.BartConfig(vocab_size=tok.vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                  decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=tok.pad_id,
                                  bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(1)
    transformers.BartModel(cfg).save_pretrained(path)
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    """The tiny prior sharded, sharded and compiled, and under DDP (2 ranks), the tiny text2img sharded
    (2 ranks, also with a frozen pretrained encoder); prior and text2img in one process on the same
    global batch."""
    out = tmp_path_factory.mktemp("fsdp")
    write_captioned_tokens(out / "t2i-tokens")
    with_bart = importlib.util.find_spec("transformers") is not None  # the dev extra installs it
    if with_bart:
        write_bart(out / "bart")
    res = _torchrun(str(TESTS / "ddp_jobs.py"), str(out), "prior-fsdp", "prior", "text2img-fsdp",
                    *(["text2img-bart-fsdp"] if with_bart else []), "prior-fsdp-compile")
    assert res.returncode == 0, res.stderr[-3000:]
    _one_process(out, "prior", "text2img")
    return out


def _follows(out: Path, job: str, single_job: str) -> None:
    """Asserts that the 2-rank ``job``'s losses and final weights follow the one-process ``single_job``'s."""
    one = _load(out, single_job, 1, 0)
    ranks = [_load(out, job, 2, r) for r in (0, 1)]
    single = [loss for _, loss in one["losses"]]
    assert [s for s, _ in ranks[0]["losses"]] == [s for s, _ in one["losses"]] == list(range(12))
    together = [(a[1] + b[1]) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]  # each rank: its half
    assert min(single[-3:]) < max(single[:3])  # it learned something
    assert ranks[0]["losses"] != ranks[1]["losses"]  # the ranks saw different halves
    assert together == pytest.approx(single, rel=LOSS_RTOL)
    assert ranks[1]["state"] == {}  # rank 1 holds shards only
    for key, value in one["state"].items():
        assert torch.allclose(ranks[0]["state"][key], value, atol=WEIGHT_ATOL), key


@pytest.mark.slow
def test_sharded_prior_follows_one_process_and_exports_what_ddp_does(jobs):
    _follows(jobs, "prior-fsdp", "prior")
    fsdp, ddp = GPTPrior.from_pretrained(jobs / "prior-fsdp-2"), GPTPrior.from_pretrained(jobs / "prior-2")
    assert fsdp.state_dict().keys() == ddp.state_dict().keys()
    for (key, a), b in zip(fsdp.state_dict().items(), ddp.state_dict().values()):
        assert torch.allclose(a, b, atol=WEIGHT_ATOL), key
    assert not torch.equal(fsdp.head.weight, ddp.head.weight)  # two runs, not one file twice


@pytest.mark.slow
def test_sharded_and_compiled_prior_trains_as_without_compiling(jobs):
    """``loop.compile`` around the sharded modules (dynamo, eager backend): the same steps (measured:
    bit for bit)."""
    for rank in (0, 1):
        compiled, plain = _load(jobs, "prior-fsdp-compile", 2, rank), _load(jobs, "prior-fsdp", 2, rank)
        assert [loss for _, loss in compiled["losses"]] == pytest.approx([loss for _, loss in plain["losses"]],
                                                                         rel=LOSS_RTOL)
    compiled, plain = _load(jobs, "prior-fsdp-compile", 2, 0)["state"], _load(jobs, "prior-fsdp", 2, 0)["state"]
    for key, value in plain.items():
        assert torch.allclose(compiled[key], value, atol=WEIGHT_ATOL), key


@pytest.mark.slow
def test_sharded_checkpoint_is_a_ddp_checkpoint(jobs):
    """Full model and optimiser states, written by rank 0, in the format (and numbering) torch.optim gives."""
    fsdp = read_checkpoint(jobs / "prior-fsdp-2" / "checkpoints" / "last.pt")
    ddp = read_checkpoint(jobs / "prior-2" / "checkpoints" / "last.pt")
    assert fsdp.keys() == ddp.keys() and fsdp["step"] == ddp["step"] == 12
    assert fsdp["config"]["loop"]["fsdp"] is True and ddp["config"]["loop"]["fsdp"] is False
    assert fsdp["model"].keys() == ddp["model"].keys()
    for key, value in ddp["model"].items():
        assert type(fsdp["model"][key]) is torch.Tensor and fsdp["model"][key].shape == value.shape, key
    assert fsdp["optimizer"]["param_groups"] == ddp["optimizer"]["param_groups"]
    assert fsdp["optimizer"]["state"].keys() == ddp["optimizer"]["state"].keys()
    for i, state in ddp["optimizer"]["state"].items():
        for name, value in state.items():
            got = fsdp["optimizer"]["state"][i][name]
            assert type(got) is torch.Tensor and got.dtype == value.dtype and got.shape == value.shape, (i, name)
            assert torch.allclose(got, value, atol=WEIGHT_ATOL), (i, name)
    assert fsdp["scheduler"] == ddp["scheduler"]


@pytest.mark.slow
def test_sharded_text2img_follows_one_process(jobs):
    """The caption encoder's and decoder's blocks sharded, ``loss`` running through ``forward``."""
    _follows(jobs, "text2img-fsdp", "text2img")
    model = TextToImage.from_pretrained(jobs / "text2img-fsdp-2")
    one = _load(jobs, "text2img", 1, 0)["state"]
    for key, value in model.state_dict().items():
        assert torch.allclose(value, one[key], atol=WEIGHT_ATOL), key


@pytest.mark.slow
def test_sharded_text2img_with_a_frozen_pretrained_encoder(jobs):
    """A transformers encoder is one unit of FSDP; frozen, it leaves training as it came."""
    transformers = pytest.importorskip("transformers")
    model = TextToImage.from_pretrained(jobs / "text2img-bart-fsdp-2")
    ref = transformers.BartModel.from_pretrained(jobs / "bart").get_encoder().state_dict()
    for key, value in model.text_encoder.state_dict().items():
        assert torch.equal(value, ref[key]), key
    losses = [loss for _, loss in _load(jobs, "text2img-bart-fsdp", 2, 0)["losses"]]
    assert len(losses) == 12 and min(losses[-3:]) < max(losses[:3])


def _resume_from(src: Path, dst: Path) -> None:
    """``dst``: the run ``src`` as it was at its previous checkpoint (step 6 of 12)."""
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "train_config.json", dst / "train_config.json")
    shutil.copy(src / "checkpoints" / "previous.pt", dst / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_a_sharded_run_resumes_exactly_and_without_sharding(jobs, tmp_path):
    """From the sharded run's step-6 checkpoint: sharded again (2 ranks), the weights at step 12 are those
    of the uninterrupted run bit for bit; in one process without FSDP (a run may change ``loop.fsdp``),
    within the tolerance of one process against two ranks."""
    out = tmp_path
    shutil.copytree(jobs / "prior-fsdp-2", out / "prior-fsdp-2")
    assert read_checkpoint(out / "prior-fsdp-2" / "checkpoints" / "previous.pt")["step"] == 6
    _resume_from(out / "prior-fsdp-2", out / "prior-fsdp-resume-2")
    _resume_from(out / "prior-fsdp-2", out / "prior-resume-1")
    res = _torchrun(str(TESTS / "ddp_jobs.py"), str(out), "prior-fsdp-resume")
    assert res.returncode == 0, res.stderr[-3000:]
    _one_process(out, "prior-resume")

    whole = _load(jobs, "prior-fsdp", 2, 0)
    resumed = _load(out, "prior-fsdp-resume", 2, 0)
    assert resumed["losses"] == whole["losses"][6:]  # steps 6 .. 11, the same on rank 0
    assert _load(out, "prior-fsdp-resume", 2, 1)["losses"] == _load(jobs, "prior-fsdp", 2, 1)["losses"][6:]
    assert ((out / "prior-fsdp-resume-2" / "model.safetensors").read_bytes()
            == (jobs / "prior-fsdp-2" / "model.safetensors").read_bytes())
    for key, value in whole["state"].items():
        assert torch.equal(resumed["state"][key], value), key

    unsharded = _load(out, "prior-resume", 1, 0)
    assert [s for s, _ in unsharded["losses"]] == list(range(6, 12))
    together = [(a[1] + b[1]) / 2 for a, b in zip(whole["losses"][6:], _load(jobs, "prior-fsdp", 2, 1)["losses"][6:])]
    assert [loss for _, loss in unsharded["losses"]] == pytest.approx(together, rel=LOSS_RTOL)
    for key, value in whole["state"].items():
        assert torch.allclose(unsharded["state"][key], value, atol=WEIGHT_ATOL), key
    assert json.loads((out / "prior-resume-1" / "train_config.json").read_text())["loop"]["fsdp"] is False


# --- in one process -----------------------------------------------------------------------------------

def _prior_cfg(*overrides: str):
    from vqgen.train.prior import PRIOR_PRESETS
    return apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.num_classes=3",
                                                     "loop.max_steps=3", *overrides])


def test_fsdp_on_one_rank_trains_as_without_it(tmp_path):
    """One process has nothing to shard: ``loop.fsdp`` is a no-op there, and only a layout key."""
    from ddp_jobs import token_dataset
    from vqgen.train.prior import train_prior
    plain, _ = train_prior(_prior_cfg(), tmp_path / "plain", train_data=token_dataset(), progress=False)
    sharded, _ = train_prior(_prior_cfg("loop.fsdp=true"), tmp_path / "fsdp", train_data=token_dataset(),
                             progress=False)
    for (key, a), b in zip(plain.state_dict().items(), sharded.state_dict().values()):
        assert torch.equal(a, b), key
    assert "loop.fsdp" in LAYOUT_KEYS
    # continued to more steps with loop.fsdp switched off: accepted (a layout key), unlike other changes
    train_prior(_prior_cfg("loop.max_steps=4"), tmp_path / "fsdp", train_data=token_dataset(), progress=False)
    assert read_checkpoint(tmp_path / "fsdp" / "checkpoints" / "last.pt")["step"] == 4
    with pytest.raises(ConfigError, match="different config"):
        train_prior(_prior_cfg("loop.max_steps=4", "loop.seed=1"), tmp_path / "fsdp", train_data=token_dataset(),
                    progress=False)


def _stage(kind: str, out: Path) -> None:
    """Train ``kind`` (a stage without sharding) from its tiny preset with ``loop.fsdp=true``."""
    if kind == "clip":
        from vqgen.train.clip import CLIP_PRESETS, train_clip
        train_clip(apply_overrides(CLIP_PRESETS["tiny"](), ["loop.fsdp=true"]), out, data="shapes", progress=False)
    else:
        from vqgen.train.shapes_judge import SHAPES_JUDGE_PRESETS, train_shapes_judge
        train_shapes_judge(apply_overrides(SHAPES_JUDGE_PRESETS["tiny"](), ["loop.fsdp=true"]), out, progress=False)


@pytest.mark.parametrize("kind", ["clip", "shapes-judge"])
def test_fsdp_is_refused_for_stages_that_do_not_shard(kind, tmp_path):
    with pytest.raises(ConfigError, match=f"loop.fsdp shards the transformer stages .*not a {kind} run"):
        _stage(kind, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    from test_judge import tiny_config  # the judge classifier's config has no loop section at all
    with pytest.raises(ConfigError, match="'loop' is not a section"):
        tiny_config(**{"loop.fsdp": "true"})


def test_fsdp_refusal_is_one_line_from_the_command(tmp_path):
    res = subprocess.run([sys.executable, "-m", "vqgen", "train", "tokenizer", "--config", "tiny", "--data",
                          f"folder:{tmp_path / 'none'}", "--out", str(tmp_path / "run"), "--set", "loop.fsdp=true"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "vqgen: error: loop.fsdp shards the transformer stages (prior, text2img), not a tokenizer run: drop "
        "loop.fsdp=true (DDP trains it on several ranks)"]


# --- benchmarks/gpu.py --fsdp -------------------------------------------------------------------------

GPU_SCRIPT = str(TESTS.parent / "benchmarks" / "gpu.py")


def _gpu_smoke_fsdp(out: Path) -> dict:
    """``benchmarks/gpu.py --smoke --fsdp`` in one process (a process group of one rank)."""
    res = subprocess.run([sys.executable, GPU_SCRIPT, "--smoke", "--fsdp", "--out", str(out)], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


def test_gpu_benchmark_shards_the_transformer_presets(tmp_path):
    result = _gpu_smoke_fsdp(tmp_path / "one.json")
    assert result["fsdp"] is True and result["world_size"] == 1
    assert [r["kind"] for r in result["results"]] == ["prior", "text2img"]  # tokenizers do not shard
    for r in result["results"]:
        assert r["tokens_per_s"] > 0 and r["tflop_per_step"] > 0 and "estimated_memory_gib" not in r
        assert 0 < r["final_loss"] < 5  # ln 32 ≈ 3.5 at the start


@pytest.mark.slow
def test_gpu_benchmark_shards_over_the_ranks_of_torchrun(tmp_path):
    """Every rank takes the same random batch: two ranks' averaged gradients are one rank's, so the
    losses of the sharded steps are those of one process."""
    one = _gpu_smoke_fsdp(tmp_path / "one.json")
    res = _torchrun(GPU_SCRIPT, "--smoke", "--fsdp", "--out", str(tmp_path / "two.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["fsdp"] is True and two["world_size"] == 2
    assert [r["final_loss"] for r in two["results"]] == pytest.approx([r["final_loss"] for r in one["results"]],
                                                                      rel=1e-3)  # printed to 4 digits
