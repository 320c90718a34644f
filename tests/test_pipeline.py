"""Stage 2 end to end on tiny data: encode → token shards → train prior → sample / complete / evaluate."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_images
from test_tokenizer import write_folder
from vqgen.cli import main
from vqgen.data.encode import encode_dataset
from vqgen.data.tokens import TokenWriter, load_tokens, token_dtype
from vqgen.errors import ConfigError, DataError
from vqgen.prior.codec import PaletteCodec, TokenizerCodec, load_codec
from vqgen.prior.pixels import fit_palette
from vqgen.tokenizer.vqgan import VQTokenizer
from vqgen.train.prior import PRIOR_PRESETS, PriorTrainConfig, train_prior
from vqgen.train.tokenizer import TOKENIZER_PRESETS
from vqgen.config import apply_overrides


def test_token_dtype_is_the_smallest_that_fits():
    assert token_dtype(256) == np.uint8 and token_dtype(257) == np.uint16 and token_dtype(70000) == np.uint32


@pytest.fixture
def tokenizer_dir(tmp_path):
    model = VQTokenizer(TOKENIZER_PRESETS["tiny"]().model).eval()
    return model.save_pretrained(tmp_path / "tok")


def test_encode_writes_shards_resumes_and_refuses_another_codec(tmp_path, tokenizer_dir):
    data_dir = write_folder(tmp_path / "imgs", 30)
    codec = TokenizerCodec(VQTokenizer.from_pretrained(tokenizer_dir), str(tokenizer_dir))
    out = tmp_path / "toks"
    assert encode_dataset(codec, f"folder:{data_dir}", out, shard_size=8, progress=False) == {"train": 30}
    shards = sorted((out / "train").glob("shard-*.npy"))
    assert len(shards) == 4 and np.load(shards[0]).dtype == np.uint8
    toks = load_tokens(out, "train")
    assert toks.tokens.shape == (30, 4, 4) and toks.labels.shape == (30,)
    from vqgen.data import load_images
    direct = codec.encode(load_images(f"folder:{data_dir}", resolution=16, progress=False).images)
    assert torch.equal(toks.tokens, direct)
    # Resume: a shard already written is kept, not recomputed.
    before = shards[1].stat().st_mtime_ns
    (out / "train" / "done.json").unlink()
    encode_dataset(codec, f"folder:{data_dir}", out, shard_size=8, progress=False)
    assert shards[1].stat().st_mtime_ns == before
    assert isinstance(load_codec(out), TokenizerCodec)
    pal = PaletteCodec(fit_palette(synthetic_images(8).images, 4), 16)
    with pytest.raises(DataError, match="made differently"):
        encode_dataset(pal, f"folder:{data_dir}", out, progress=False)


def test_unfinished_split_is_not_read(tmp_path):
    w = TokenWriter(tmp_path, "train", {"codec": {}, "vocab_size": 8})
    w.write(0, torch.zeros(2, 2, 2, dtype=torch.long), None)
    with pytest.raises(DataError, match="no finished split"):
        load_tokens(tmp_path, "train")
    w.finish(2)
    assert len(load_tokens(tmp_path, "train")) == 2


def _prior_cfg(*over):
    return apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.num_classes=3", *over])


def test_prior_trains_on_tokens_and_reports_test_bits(tmp_path, tokenizer_dir):
    data_dir = write_folder(tmp_path / "imgs", 48)
    codec = TokenizerCodec(VQTokenizer.from_pretrained(tokenizer_dir), str(tokenizer_dir))
    encode_dataset(codec, f"folder:{data_dir}", tmp_path / "toks", progress=False)
    train = load_tokens(tmp_path / "toks")
    model, metrics = train_prior(_prior_cfg("loop.max_steps=40"), tmp_path / "run", train_data=train,
                                 test_data=train, progress=False)
    assert metrics["test_bits_per_token"] < np.log2(32)  # better than uniform over the codebook
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 40


def test_prior_refuses_tokens_of_another_shape(tmp_path):
    w = TokenWriter(tmp_path / "t", "train", {"codec": {}, "vocab_size": 8})
    w.write(0, torch.zeros(20, 3, 3, dtype=torch.long), torch.zeros(20, dtype=torch.long))
    w.finish(20)
    with pytest.raises(ConfigError, match="grid"):
        train_prior(_prior_cfg(), tmp_path / "run", train_data=load_tokens(tmp_path / "t"), progress=False)


def test_prior_resume_is_exact(tmp_path, monkeypatch, capsys):
    from vqgen.train import prior as prior_mod
    g = torch.Generator().manual_seed(0)
    w = TokenWriter(tmp_path / "t", "train", {"codec": {}, "vocab_size": 32})
    w.write(0, torch.randint(0, 32, (64, 4, 4), generator=g), torch.randint(0, 3, (64,), generator=g))
    w.finish(64)
    data = load_tokens(tmp_path / "t")
    cfg = _prior_cfg("loop.max_steps=12", "loop.save_every=6")
    full, _ = train_prior(cfg, tmp_path / "a", train_data=data, progress=False)

    real = prior_mod.check_finite

    def crash_at_step_8(loss, step, run_dir):
        if step == 8:
            raise KeyboardInterrupt  # the process dies after the step-6 checkpoint
        real(loss, step, run_dir)

    monkeypatch.setattr(prior_mod, "check_finite", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_prior(_prior_cfg("loop.max_steps=12", "loop.save_every=6"), tmp_path / "b", train_data=data, progress=False)
    monkeypatch.setattr(prior_mod, "check_finite", real)
    resumed, _ = train_prior(_prior_cfg("loop.max_steps=12", "loop.save_every=6"), tmp_path / "b", train_data=data,
                             progress=False)
    assert "from step 6" in capsys.readouterr().out
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="max_steps"):
        train_prior(_prior_cfg("loop.max_steps=20"), tmp_path / "b", train_data=data, progress=False)


def test_cli_stage2_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = write_folder(tmp_path / "imgs", 48)
    assert main(["train", "tokenizer", "--config", "tiny", "--data", f"folder:{data_dir}", "--out", "tok",
                 "--max-steps", "5", "--no-progress"]) == 0
    assert main(["encode", "--tokenizer", "tok", "--data", f"folder:{data_dir}", "--out", "toks", "--no-progress"]) == 0
    assert main(["train", "prior", "--config", "tiny", "--tokens", "toks", "--out", "prior", "--max-steps", "5",
                 "--set", "model.vocab_size=32", "--set", "model.num_classes=3", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--prior", "prior", "--n", "2", "--out", "grid.png", "--scale", "1"]) == 0
    assert "one row per class: c0, c1, c2" in capsys.readouterr().out
    assert np.asarray(Image.open("grid.png")).shape == (3 * 18 + 2, 2 * 18 + 2)
    assert main(["sample", "--prior", "prior", "--class", "1", "--guidance", "3", "--top-k", "5", "--n", "3",
                 "--out", "c.png"]) == 0
    assert main(["sample", "--prior", "prior", "--complete", f"folder:{data_dir}", "--n", "2", "--out", "k.png"]) == 0
    assert main(["sample", "--prior", "prior", "--grid", "6", "8", "--window", "4", "4", "--class", "0", "--n", "1",
                 "--out", "big.png", "--scale", "1"]) == 0
    assert np.asarray(Image.open("big.png")).shape == (24 + 4, 32 + 4)
    assert main(["sample", "--prior", "prior", "--class", "7", "--out", "x.png"]) == 2


def test_pixel_codec_roundtrip_and_encode(tmp_path):
    data_dir = write_folder(tmp_path / "imgs", 12)
    assert main(["encode", "--pixels", "4", "--resolution", "16", "--data", f"folder:{data_dir}", "--out",
                 str(tmp_path / "px"), "--no-progress"]) == 0
    toks = load_tokens(tmp_path / "px")
    assert toks.tokens.shape == (12, 16, 16) and toks.vocab_size == 4
    codec = load_codec(tmp_path / "px")
    imgs = codec.decode(toks.tokens[:2])
    assert imgs.shape == (2, 1, 16, 16) and imgs.dtype == torch.uint8



def test_models_import_no_encoder_of_datasets_no_training_and_no_cli():
    """Arrows point one way (DESIGN.md): the codecs and the models are imported without
    ``vqgen.data.encode`` (the CLI calls it), the training loops or the CLI."""
    import subprocess
    import sys
    code = ("import sys, vqgen.prior.codec, vqgen.prior.gpt, vqgen.text.dalle, vqgen.rerank.clip, "
            "vqgen.rerank.clip_guided, vqgen.tokenizer.vqgan; "
            "print(sorted(m for m in sys.modules if m == 'vqgen.data.encode' or m.startswith(('vqgen.train', "
            "'vqgen.cli', 'vqgen.eval'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_encode_needs_exactly_one_codec(tmp_path, capsys):
    assert main(["encode", "--data", "folder:x", "--out", str(tmp_path / "o")]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_evaluate_prior_reports_judge_metrics(tmp_path):
    """eval prior on a Fashion-MNIST-format dataset (tiny IDX files) with an untrained tiny judge."""
    from test_data import make_fmnist
    from vqgen.eval.judge import JudgeClassifier, JudgeConfig
    from vqgen.eval.prior import evaluate_prior
    from vqgen.prior.generate import load_prior_run
    make_fmnist(tmp_path / "fm", n_train=40, n_test=12)
    spec = f"fashion-mnist:{tmp_path / 'fm'}"
    tok = VQTokenizer(apply_overrides(TOKENIZER_PRESETS["tiny"](), ["model.autoencoder.resolution=32"]).model)
    tok.save_pretrained(tmp_path / "tok")
    encode_dataset(TokenizerCodec(tok.eval(), str(tmp_path / "tok")), spec, tmp_path / "toks", progress=False)
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.grid=[8, 8]", "model.num_classes=10",
                                                    "loop.max_steps=2"])
    train_prior(cfg, tmp_path / "prior", tokens=str(tmp_path / "toks"), progress=False)
    judge = JudgeClassifier(JudgeConfig(widths=(8, 16), blocks=(1, 1), feature_dim=8, norm_groups=4)).eval()
    m = evaluate_prior(load_prior_run(tmp_path / "prior"), judge, n_per_class=2, guidance_scale=2.0)
    assert {"test_bits_per_token", "judge_accuracy", "fd", "samples_per_s", "fd_reconstructions"} <= set(m)
    assert m["n_samples"] == 20 and 0 <= m["judge_accuracy"] <= 1 and m["fd"] >= 0 and m["samples_per_s"] > 0
    assert "not Inception" in m["fd_note"]
