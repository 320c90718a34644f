import json
import os
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
from vqgen.config import apply_overrides
from vqgen.errors import ConfigError, TrainingDiverged
from vqgen.eval.tokenizer import evaluate_tokenizer
from vqgen.layers import ChannelNorm
from vqgen.tokenizer.autoencoder import AutoencoderConfig, Encoder
from vqgen.tokenizer.vqgan import VQTokenizer
from vqgen.train import tokenizer as train_mod
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer


def tiny_cfg(*overrides):
    return apply_overrides(TOKENIZER_PRESETS["tiny"](), list(overrides))


def write_folder(root: Path, n: int = 48) -> Path:
    data = synthetic_images(n)
    for i, img in enumerate(data.images):
        sub = root / data.class_names[int(data.labels[i])]
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(sub / f"{i}.png")
    return root


def test_encode_decode_shapes_and_token_range():
    model = VQTokenizer(TOKENIZER_PRESETS["tiny"]().model).eval()
    x = synthetic_images(4).images  # (4, 1, 16, 16) uint8
    tokens = model.encode(x)
    assert tokens.shape == (4, 4, 4) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < model.codebook_size
    out = model.decode(tokens)
    assert out.shape == (4, 1, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(model.reconstruct(x), out)


def test_bad_inputs_raise_clear_errors():
    model = VQTokenizer(TOKENIZER_PRESETS["tiny"]().model).eval()
    with pytest.raises(ValueError, match="expected images"):
        model.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(2, 1, 15, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.encode(torch.full((2, 1, 16, 16), 3.0))
    with pytest.raises(ValueError, match="token ids"):
        model.decode(torch.full((1, 4, 4), 999))


def test_channel_norm_is_layernorm_over_each_positions_channels():
    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 3)  # (B, C, H, W)
    want = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-6)
    assert torch.allclose(norm(x), want.permute(0, 3, 1, 2), atol=1e-6)
    with pytest.raises(ValueError, match="encoder_norm must be one of"):
        apply_overrides(TOKENIZER_PRESETS["tiny"](), ["model.autoencoder.encoder_norm=batch"])


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_channel_norm_makes_a_code_independent_of_far_pixels(norm):
    """With GroupNorm every latent depends on the whole picture; with the per-position norm a latent sees
    only its receptive field (here ≈ 20 px), so a change in the far corner leaves it exactly as it was."""
    cfg = AutoencoderConfig(in_channels=1, resolution=64, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(), mid_attention=False, z_channels=4, norm_groups=4, encoder_norm=norm)
    torch.manual_seed(0)
    enc = Encoder(cfg).eval()
    x = torch.rand(1, 1, 64, 64) * 2 - 1  # (1, 1, 64, 64)
    far = x.clone()
    far[..., 48:, 48:] = 1.0  # the bottom-right corner, > 40 px from latent (0, 0)
    with torch.no_grad():
        z, z_far = enc(x), enc(far)  # (1, 4, 32, 32)
    corner = (z[..., :4, :4] - z_far[..., :4, :4]).abs().max().item()
    assert (corner < 1e-6) if norm == "channel" else (corner > 1e-3)
    assert (z[..., 24:, 24:] - z_far[..., 24:, 24:]).abs().max() > 1e-3  # near the change, both respond


def test_save_load_roundtrip_is_exact_and_strict(tmp_path):
    model = VQTokenizer(TOKENIZER_PRESETS["tiny"]().model).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = VQTokenizer.from_pretrained(tmp_path / "m")
    x = synthetic_images(4).images
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    # A config that does not match the weights fails with the keys named.
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["config"]["autoencoder"]["num_res_blocks"] = 2
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="does not match.*(missing|shape)"):
        VQTokenizer.from_pretrained(tmp_path / "m")


def test_fsq_and_plain_tokenizers_build_and_train(tmp_path):
    data = synthetic_images(32)
    for name, over in [("fsq", ["model.quantizer.kind=fsq", "model.quantizer.fsq_levels=[4, 4]"]),
                       ("plain", ["model.quantizer.ema_decay=null", "model.quantizer.kmeans_init=false",
                                  "model.quantizer.dead_code_threshold=0.0", "model.quantizer.l2_normalize=false",
                                  "model.quantizer.code_dim=null"])]:
        cfg = tiny_cfg("loop.max_steps=3", *over)
        model = train_tokenizer(cfg, tmp_path / name, train_data=data, progress=False)
        assert model.encode(data.images[:2]).max() < model.codebook_size


def test_training_improves_reconstruction(tmp_path):
    data = synthetic_images(64)
    before = evaluate_tokenizer(VQTokenizer(tiny_cfg().model), data)
    model = train_tokenizer(tiny_cfg("loop.max_steps=60"), tmp_path / "run", train_data=data, progress=False)
    after = evaluate_tokenizer(model, data)
    assert after["psnr"] > before["psnr"] + 3
    assert set(after) >= {"psnr", "ssim", "codebook_usage", "perplexity", "n_images"}
    assert 0 < after["codebook_usage"] <= 1 and after["n_images"] == 64


def test_gradient_accumulation_matches_one_big_batch(tmp_path, monkeypatch):
    """The gradient of one step equals the mean over its micro-batches (compared before AdamW, whose
    first step ~ lr·sign(g) would blow rounding differences of near-zero gradients up)."""
    real_clip = torch.nn.utils.clip_grad_norm_
    grads = []

    def capture(params, max_norm):
        params = list(params)
        grads.append([p.grad.clone() for p in params])
        return real_clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", capture)
    data = synthetic_images(32)
    plain = ["model.quantizer.ema_decay=null", "model.quantizer.kmeans_init=false",
             "model.quantizer.dead_code_threshold=0.0", "loop.max_steps=1"]
    train_tokenizer(tiny_cfg(*plain), tmp_path / "a", train_data=data, progress=False)
    train_tokenizer(tiny_cfg(*plain, "loop.grad_accum=2"), tmp_path / "b", train_data=data, progress=False)
    assert len(grads) == 2
    for ga, gb in zip(*grads):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


def test_gan_and_lpips_terms_train_the_discriminator(tmp_path):
    from safetensors.torch import save_file

    from vqgen.tokenizer.lpips import LPIPS
    lp = LPIPS()
    vgg = {k: v for k, v in lp.state_dict().items() if k.startswith("features.")}
    lin = {k: v.abs() for k, v in lp.state_dict().items() if k.startswith("lin")}
    save_file(vgg, tmp_path / "vgg.safetensors")
    save_file(lin, tmp_path / "lin.safetensors")
    cfg = tiny_cfg("loop.max_steps=4", "gan.weight=0.5", "gan.start=2", "gan.n_layers=2", "gan.ndf=8",
                   "loss.perceptual_weight=1.0", f"loss.lpips_vgg={tmp_path / 'vgg.safetensors'}",
                   f"loss.lpips_lin={tmp_path / 'lin.safetensors'}")
    train_tokenizer(cfg, tmp_path / "run", train_data=synthetic_images(32), progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert ckpt["disc_optimizer"]["state"], "the discriminator took optimiser steps after gan.start"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = train_mod.reconstruction_loss
    calls = {"n": 0}

    def flaky(x, y, kind):
        calls["n"] += 1
        out = real(x, y, kind)
        return out * float("nan") if calls["n"] > 12 else out

    monkeypatch.setattr(train_mod, "reconstruction_loss", flaky)
    with pytest.raises(TrainingDiverged, match="step 12.*last good checkpoint"):
        train_tokenizer(tiny_cfg("loop.save_every=5"), tmp_path / "run", train_data=synthetic_images(32), progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 10


def test_resume_refuses_a_different_config(tmp_path):
    data = synthetic_images(32)
    train_tokenizer(tiny_cfg("loop.max_steps=2"), tmp_path / "run", train_data=data, progress=False)
    with pytest.raises(ConfigError, match="optim.lr"):
        train_tokenizer(tiny_cfg("loop.max_steps=2", "optim.lr=0.1"), tmp_path / "run", train_data=data, progress=False)


def _train_cmd(data_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vqgen.cli", "train", "tokenizer", "--config", "tiny", "--data", f"folder:{data_dir}",
            "--out", str(out), "--max-steps", "40", "--save-every", "5", "--no-progress"]


def test_sigkill_then_resume_gives_bitwise_identical_weights(tmp_path):
    data_dir = write_folder(tmp_path / "imgs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(data_dir, tmp_path / "full"), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_train_cmd(data_dir, tmp_path / "killed"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert step_at_kill < 40, "the run finished before it could be killed"

    res = subprocess.run(_train_cmd(data_dir, tmp_path / "killed"), check=True, env=env, capture_output=True, text=True)
    assert f"from step {step_at_kill}" in res.stdout
    full = (tmp_path / "full" / "model.safetensors").read_bytes()
    resumed = (tmp_path / "killed" / "model.safetensors").read_bytes()
    assert full == resumed


def test_cli_train_eval_reconstruct(tmp_path, capsys):
    data_dir = write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(["train", "tokenizer", "--config", "tiny", "--data", f"folder:{data_dir}", "--out", str(run),
                 "--max-steps", "3", "--no-progress", "--set", "optim.lr=1e-3"]) == 0
    assert (run / "config.json").exists() and (run / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["eval", "tokenizer", str(run), "--data", f"folder:{data_dir}", "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_images"] == 48 and {"psnr", "ssim", "codebook_usage", "perplexity"} <= set(metrics)
    assert main(["reconstruct", str(run), "--data", f"folder:{data_dir}", "--out", str(tmp_path / "g.png"), "--n", "8"]) == 0
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape[0] > 2 * 16 and grid.shape[1] > 8 * 16


@pytest.mark.parametrize("argv, msg", [
    (["train", "tokenizer", "--config", "nope", "--out", "X"], "unknown preset"),
    (["train", "tokenizer", "--config", "tiny", "--data", "folder:/does/not/exist", "--out", "X"], "does not exist"),
    (["train", "tokenizer", "--config", "tiny", "--data", "mnist", "--out", "X"], "unknown dataset kind"),
    (["train", "tokenizer", "--config", "tiny", "--set", "loop.nope=1", "--out", "X"], "unknown key"),
    (["eval", "tokenizer", "/does/not/exist", "--data", "folder:/x"], "config.json"),
])
def test_cli_user_errors_are_one_line(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqgen: error:") and msg in err.lower() and "\n" not in err


def test_empty_folder_is_a_clear_cli_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "tokenizer", "--config", "tiny", "--data", f"folder:{tmp_path / 'empty'}",
                 "--out", str(tmp_path / "run")]) == 2
    assert "no readable images" in capsys.readouterr().err
