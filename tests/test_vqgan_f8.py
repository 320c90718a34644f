"""Stage 1 as a VQ-GAN at f=8 (issue 9): the f8 presets, what a GAN run logs and shows, the instability
warnings, and LPIPS staying optional. Offline: every weight here is random, every image synthetic."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import synthetic_images
from vqgen.config import apply_overrides
from vqgen.errors import ConfigError
from vqgen.tokenizer.discriminator import PatchDiscriminator
from vqgen.train import tokenizer as train_mod
from vqgen.train.common import read_checkpoint
from vqgen.train.tokenizer import TOKENIZER_PRESETS, GANHealth, train_tokenizer

F8 = ("fashion-mnist-f8", "fashion-mnist-f8-nogan")
# A few steps of the real f8 architecture: a smaller codebook so that k-means has enough vectors.
QUICK = ["loop.batch_size=8", "model.quantizer.codebook_size=64", "loop.save_every=100", "loop.image_every=100"]


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("name", F8)
def test_f8_presets_give_4x4_tokens_and_inherit_the_fashion_mnist_settings(name):
    cfg, base = TOKENIZER_PRESETS[name](), TOKENIZER_PRESETS["fashion-mnist"]()
    assert cfg.model.grid == (4, 4) and cfg.model.autoencoder.downsample_factor == 8
    assert base.model.grid == (8, 8)
    assert cfg.model.quantizer == base.model.quantizer
    assert cfg.loss == base.loss and cfg.optim == base.optim and cfg.data == base.data
    assert cfg.loss.perceptual_weight == 0  # no LPIPS weights exist here: the presets work without them


def test_f8_presets_follow_changes_of_the_fashion_mnist_preset(monkeypatch):
    real = train_mod._fashion_mnist

    def changed():
        cfg = real()
        cfg.model.quantizer.dead_code_threshold = 0.123
        return cfg

    monkeypatch.setattr(train_mod, "_fashion_mnist", changed)
    for name in F8:
        assert TOKENIZER_PRESETS[name]().model.quantizer.dead_code_threshold == 0.123


def test_only_the_gan_preset_has_a_discriminator_and_it_fits_the_images():
    gan, nogan = TOKENIZER_PRESETS["fashion-mnist-f8"](), TOKENIZER_PRESETS["fashion-mnist-f8-nogan"]()
    assert nogan.gan.weight == 0 and gan.gan.weight > 0
    assert gan.model == nogan.model
    assert 0 < gan.gan.start < gan.loop.max_steps
    ae = gan.model.autoencoder
    h, w = PatchDiscriminator(ae.in_channels, gan.gan.ndf, gan.gan.n_layers).output_size(ae.resolution, ae.resolution)
    assert h > 1 and w > 1  # several patches judged per image


# ---------------------------------------------------------------- a short GAN run: logs and progress bar


class RecordingBar:
    def __init__(self, *args, **kwargs):
        self.postfixes: list[dict] = []

    def update(self, n):
        pass

    def set_postfix(self, post):
        self.postfixes.append(dict(post))

    def close(self):
        pass


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("f8") / "run"
    bars: list[RecordingBar] = []

    def bar(*args, **kwargs):
        bars.append(RecordingBar())
        return bars[-1]

    cfg = apply_overrides(TOKENIZER_PRESETS["fashion-mnist-f8"](),
                          QUICK + ["loop.max_steps=4", "gan.start=2", "loop.log_every=1"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "progress_bar", bar)
        train_tokenizer(cfg, out, train_data=synthetic_images(16, size=32), progress=False)
    return out, cfg, bars[0]


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "logs")).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_gan_run_logs_discriminator_logits_adaptive_weight_and_adversarial_term(gan_run):
    run, cfg, _ = gan_run
    logged = scalars(run)
    gan_tags = ["d_loss", "d_logits_real", "d_logits_fake", "adaptive_weight", "g_adv"]
    for tag in gan_tags:  # logged from the step the discriminator starts (done = step + 1 = 3), not before
        assert [s for s, _ in logged[f"train/{tag}"]] == [3, 4], tag
    assert [s for s, _ in logged["train/recon"]] == [1, 2, 3, 4]
    lam = dict(logged["train/adaptive_weight"])
    assert all(v > 0 for v in lam.values())
    gan_w = dict(logged["train/gan_w"])
    for step, v in lam.items():
        assert gan_w[step] == pytest.approx(v * cfg.gan.weight, rel=1e-5)
    # The hinge loss is what the logged logits give when each patch sits on the same side of the margin.
    for (_, d), (_, r), (_, f) in zip(logged["train/d_loss"], logged["train/d_logits_real"], logged["train/d_logits_fake"]):
        assert d >= 0 and d >= 0.5 * (max(0.0, 1 - r) + max(0.0, 1 + f)) - 1e-6  # Jensen: mean relu >= relu mean


def test_the_discriminator_trains_at_its_own_lr_when_the_preset_sets_one(gan_run, tmp_path):
    run, cfg, _ = gan_run
    assert cfg.gan.lr is not None and cfg.gan.lr != cfg.optim.lr
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["disc_optimizer"]["param_groups"][0]["initial_lr"] == cfg.gan.lr
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == cfg.optim.lr
    # Without gan.lr the discriminator takes the autoencoder's.
    same = apply_overrides(TOKENIZER_PRESETS["fashion-mnist-f8"](), QUICK + ["loop.max_steps=1", "gan.start=0", "gan.lr=null"])
    train_tokenizer(same, tmp_path / "run", train_data=synthetic_images(8, size=32), progress=False)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["disc_optimizer"]["param_groups"][0]["initial_lr"] == same.optim.lr


def test_progress_bar_shows_when_the_discriminator_starts(gan_run):
    _, _, bar = gan_run
    discs = [p["disc"] for p in bar.postfixes]
    assert discs[:2] == ["from 2", "from 2"]
    assert all(float(d) >= 0 for d in discs[2:]) and len(discs) == 4
    assert {"loss", "psnr", "usage"} <= set(bar.postfixes[0])


def test_a_run_without_discriminator_shows_no_disc_field(tmp_path, monkeypatch):
    bars: list[RecordingBar] = []
    monkeypatch.setattr(train_mod, "progress_bar", lambda *a, **k: bars.append(RecordingBar()) or bars[-1])
    cfg = apply_overrides(TOKENIZER_PRESETS["tiny"](), ["loop.max_steps=2"])
    train_tokenizer(cfg, tmp_path / "run", train_data=synthetic_images(16), progress=False)
    assert len(bars[0].postfixes) == 2 and all("disc" not in p for p in bars[0].postfixes)


# ---------------------------------------------------------------- instability warnings


def test_a_discriminator_that_wins_outright_warns_once_in_one_line(tmp_path, monkeypatch, capsys):
    # A hinge loss pinned at 0 (with a graph, so the discriminator still steps) for 3+ steps after start.
    monkeypatch.setattr(train_mod, "hinge_d_loss", lambda real, fake: 0.0 * (real.mean() + fake.mean()))
    monkeypatch.setattr(train_mod, "HEALTH_WINDOW", 3)
    cfg = apply_overrides(TOKENIZER_PRESETS["tiny"](), ["loop.max_steps=10", "gan.weight=0.5", "gan.start=2",
                                                        "gan.n_layers=2", "gan.ndf=8"])
    train_tokenizer(cfg, tmp_path / "run", train_data=synthetic_images(32), progress=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "wins outright" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("vqgen: warning: the discriminator wins outright at step 4:")
    assert "collapsed" not in err


def test_a_healthy_short_gan_run_does_not_warn(gan_run, capsys):
    # gan_run's 2 GAN steps are far below the window; re-run the monitor on what it logged.
    run, cfg, _ = gan_run
    logged = scalars(run)
    health = GANHealth(cfg.gan.start, window=2, say=lambda m: None)
    said = []
    for (step, usage) in logged["train/usage"]:
        d = dict(logged["train/d_loss"]).get(step)
        said += health.update(step - 1, usage, d)
    assert said == []


def test_gan_health_catches_a_sustained_win_but_not_a_brief_one():
    said: list[str] = []
    h = GANHealth(gan_start=0, window=3, win_loss=0.01, say=said.append)
    for step, d in enumerate([0.0, 0.0, 0.5, 0.0, 0.0]):  # interrupted: never 3 in a row
        assert h.update(step, 0.5, d) == []
    assert h.update(5, 0.5, 0.005) != [] and len(said) == 1  # the third in a row
    assert "below 0.01 for 3 steps" in said[0] and "\n" not in said[0]
    for step in range(6, 12):
        h.update(step, 0.5, 0.0)
    assert len(said) == 1  # once


def test_gan_health_catches_usage_collapse_only_after_the_gan_starts():
    said: list[str] = []
    h = GANHealth(gan_start=4, window=3, collapse=0.5, say=said.append)
    for step in range(4):  # before the GAN: 60 % of the codes per batch
        h.update(step, 0.6)
    h.update(4, 0.1, 0.4)  # GAN on; the mean over the window is (0.6 + 0.6 + 0.1) / 3, above 0.3
    h.update(5, 0.1, 0.4)  # (0.6 + 0.1 + 0.1) / 3 = 0.27 < 0.3, but only 2 GAN steps so far
    assert said == []
    msgs = h.update(6, 0.1, 0.4)  # 3 GAN steps, mean 0.1 < 0.5 × 0.6
    assert len(msgs) == 1 and msgs[0].startswith("vqgen: warning: codebook usage collapsed after the discriminator "
                                                 "started (step 4): 10.0% of the codes per batch")
    assert "down from 60.0%" in msgs[0]
    h.update(7, 0.05, 0.4)
    assert said == msgs  # once

    quiet: list[str] = []
    g = GANHealth(gan_start=100, window=3, say=quiet.append)
    for step, u in enumerate([0.6, 0.6, 0.6, 0.1, 0.1, 0.1, 0.1]):  # a drop before the GAN is not its doing
        g.update(step, u)
    assert quiet == []


@pytest.mark.parametrize("bad", [{"window": 0}, {"win_loss": 0.0}, {"collapse": 1.0}, {"collapse": 0.0}])
def test_gan_health_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="GANHealth"):
        GANHealth(0, **bad)


# ---------------------------------------------------------------- LPIPS stays optional


def test_lpips_needs_user_weights_and_then_trains_with_the_f8_preset(tmp_path):
    with pytest.raises(ConfigError, match="lpips_vgg and loss.lpips_lin"):
        apply_overrides(TOKENIZER_PRESETS["fashion-mnist-f8"](), ["loss.perceptual_weight=1"])
    from vqgen.tokenizer.lpips import LPIPS
    lp = LPIPS()  # random weights, saved as the user's files would be
    save_file({k: v for k, v in lp.state_dict().items() if k.startswith("features.")}, tmp_path / "vgg.safetensors")
    save_file({k: v.abs() for k, v in lp.state_dict().items() if k.startswith("lin")}, tmp_path / "lin.safetensors")
    cfg = apply_overrides(TOKENIZER_PRESETS["fashion-mnist-f8"](),
                          QUICK + ["loop.max_steps=2", "gan.start=1", "loss.perceptual_weight=1.0",
                                   f"loss.lpips_vgg={tmp_path / 'vgg.safetensors'}",
                                   f"loss.lpips_lin={tmp_path / 'lin.safetensors'}"])
    train_tokenizer(cfg, tmp_path / "run", train_data=synthetic_images(16, size=32), progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["disc_optimizer"]["state"]
