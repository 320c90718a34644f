"""vqgen.Pipeline on tiny runs (text to image with CLIP, class-conditional prior, tokenizer), the
prior's recorded default guidance in the CLI, and the model cards trainers write."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vqgen
from conftest import synthetic_images
from tiny_runs import make_runs
from vqgen.cli import main
from vqgen.errors import ConfigError, DataError, VqgenError
from vqgen.prior.gpt import GUIDANCE_WITH_COND_DROPOUT, GPTPrior, PriorConfig
from vqgen.train.cards import model_card, recorded_command, write_model_card

CAPTION = "a red circle"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def t2i(runs):
    return vqgen.Pipeline.from_pretrained(runs / "demo" / "text2img", clip=runs / "demo" / "clip")


@pytest.fixture(scope="module")
def prior(runs):
    return vqgen.Pipeline.from_pretrained(runs / "prior")


def _same(a, b) -> bool:
    return torch.equal(a.pixels, b.pixels)


@pytest.fixture
def scales(monkeypatch):
    """The guidance scales the samplers are called with (tiny runs barely use their condition, so
    pictures alone cannot tell the scales apart)."""
    from vqgen.prior import generate as prior_generate
    from vqgen.text import generate as text_generate
    seen = []
    for module, name in ((text_generate, "sample_tokens"), (prior_generate, "sample")):
        real = getattr(module, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs["guidance_scale"])
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    return seen


# --- text to image ----------------------------------------------------------------------------------

def test_caption_gives_kept_pil_images_best_clip_score_first(t2i):
    r = t2i(CAPTION, n=6, keep=3, seed=0)
    assert len(r) == 3 and r.n == 6 and r.prompt == CAPTION and r.seed == 0
    assert all(isinstance(im, Image.Image) and im.size == (16, 16) and im.mode == "RGB" for im in r.images)
    assert r.pixels.shape == (3, 3, 16, 16) and r.pixels.dtype == torch.uint8
    assert np.array_equal(np.asarray(r.images[0]), r.pixels[0].permute(1, 2, 0).numpy())
    assert r.scores == sorted(r.scores, reverse=True) and len(set(r.indices)) == 3
    # the kept are the best of all n: the top 3 of the same draw kept whole
    whole = t2i(CAPTION, n=6, seed=0)
    assert whole.scores == sorted(whole.scores, reverse=True) and whole.scores[:3] == pytest.approx(r.scores)
    assert torch.equal(whole.pixels[:3], r.pixels)
    assert t2i.scorer.score(r.pixels, [CAPTION] * 3).tolist() == pytest.approx(r.scores, abs=1e-4)


def test_same_seed_same_images_and_defaults_come_from_the_run(t2i, scales):
    a, b, c = t2i(CAPTION, n=3, seed=1), t2i(CAPTION, n=3, seed=1), t2i(CAPTION, n=3, seed=2)
    assert _same(a, b) and not _same(a, c)
    cfg = t2i.run.model.config
    assert t2i.default_guidance == cfg.guidance_scale == 2.0 and a.guidance == 2.0  # the tiny preset records 2
    assert scales == [2.0, 2.0, 2.0]
    assert _same(a, t2i(CAPTION, n=3, seed=1, guidance=2.0, temperature=cfg.temperature))
    assert t2i(CAPTION, n=3, seed=1, guidance=1.5).guidance == 1.5 and scales[-1] == 1.5
    saved = cfg.guidance_scale
    try:  # a run recording another scale samples at that one
        cfg.guidance_scale = 3.0
        assert t2i.default_guidance == 3.0 and t2i(CAPTION, n=1).guidance == 3.0 and scales[-1] == 3.0
    finally:
        cfg.guidance_scale = saved


def test_without_clip_all_candidates_are_kept_unscored(runs):
    pipe = vqgen.Pipeline.from_pretrained(runs / "demo" / "text2img")
    r = pipe(CAPTION, n=3, seed=0)
    assert len(r) == 3 and r.scores is None and r.indices == [0, 1, 2] and not pipe.can_rank
    with pytest.raises(ConfigError, match="clip=CLIP_DIR"):
        pipe(CAPTION, n=3, keep=2)


def test_info_describes_the_run_for_a_ui(t2i, prior, runs, tmp_path):
    info = json.loads(json.dumps(t2i.info()))
    assert info["kind"] == "text2img" and info["conditioning"] == "caption" and info["can_rank"]
    assert info["default_guidance"] == 2.0 and info["resolution"] == 16 and info["channels"] == 3
    info = json.loads(json.dumps(prior.info()))
    assert info["conditioning"] == "class" and info["can_complete"] and info["class_names"][7] == "Sneaker"
    assert info["default_guidance"] == GUIDANCE_WITH_COND_DROPOUT and info["channels"] == 1
    assert vqgen.Pipeline.from_pretrained(runs / "tok").info()["conditioning"] == "none"
    grid = t2i(CAPTION, n=2, keep=2).save(tmp_path / "g.png", scale=2)
    assert Image.open(grid).size[0] > 2 * 32


# --- class-conditional prior --------------------------------------------------------------------------

def test_class_by_name_or_id_guided_by_the_runs_recommended_scale(prior, scales):
    r = prior(class_label="Sneaker", n=4, seed=0)
    assert len(r) == 4 and r.prompt == "Sneaker" and r.scores is None and r.guidance == 2.0 and scales == [2.0]
    assert all(im.size == (16, 16) and im.mode == "L" for im in r.images)
    assert _same(r, prior(class_label=7, n=4, seed=0)) and _same(r, prior(class_label="7", n=4, seed=0))
    assert _same(r, prior(class_label=7, n=4, seed=0, guidance=2.0))
    assert prior(class_label=7, n=4, seed=0, guidance=1.0).guidance == 1.0 and scales[-1] == 1.0
    assert not _same(r, prior(class_label=7, n=4, seed=1))


def test_completion_of_a_picture_in_any_form(prior, tmp_path, scales):
    source = prior(class_label=0, n=1, seed=3).images[0]
    r = prior.complete(source, n=3, seed=0)
    assert len(r) == 3 and r.guidance == 1.0 and scales[-1] == 1.0 and r.prompt is None and r.source.size == (16, 16)
    source.save(tmp_path / "s.png")
    tensor = torch.from_numpy(np.asarray(source).copy())[None]  # (1, H, W)
    for same in (tmp_path / "s.png", str(tmp_path / "s.png"), np.asarray(source), tensor):
        assert _same(r, prior.complete(same, n=3, seed=0))
    # a bigger picture is resized to the codec's resolution
    assert prior.complete(source.resize((40, 40)), n=1).pixels.shape == (1, 1, 16, 16)
    assert not _same(r, prior.complete(source, n=3, seed=0, keep_rows=1))
    guided = prior.complete(source, n=3, seed=0, class_label="Bag")
    assert guided.guidance == 2.0 and scales[-1] == 2.0 and guided.prompt == "Bag"


def test_tokenizer_run_reconstructs(runs):
    from vqgen.images import to_uint8
    from vqgen.tokenizer.vqgan import VQTokenizer
    pipe = vqgen.Pipeline.from_pretrained(runs / "tok")
    x = synthetic_images(3).images  # uint8 (3, 1, 16, 16)
    r = pipe.reconstruct(x)
    assert len(r) == 3 and r.images[0].size == (16, 16)
    assert torch.equal(r.pixels, to_uint8(VQTokenizer.from_pretrained(runs / "tok").reconstruct(x)))
    assert torch.equal(r.tokens, VQTokenizer.from_pretrained(runs / "tok").encode(x))  # the grids decoded
    assert torch.equal(pipe.reconstruct(x[0]).pixels, r.pixels[:1])


# --- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda t, p: t(CAPTION, n=2, keep=3), ConfigError, "keep must be between 1 and n (2), got 3"),
    (lambda t, p: t(CAPTION, n=0), ConfigError, "n must be at least 1"),
    (lambda t, p: t(CAPTION, n=True), ConfigError, "n must be at least 1"),
    (lambda t, p: t("   ", n=2), ConfigError, "caption is empty"),
    (lambda t, p: t(n=2), ConfigError, "needs a caption"),
    (lambda t, p: t(CAPTION, class_label=1), ConfigError, "not class_label"),
    (lambda t, p: t(CAPTION, guidance=-1.0), ConfigError, "guidance must be a finite number"),
    (lambda t, p: t(CAPTION, top_k=0), ConfigError, "top_k"),
    (lambda t, p: t(CAPTION, temperature=0.0), ConfigError, "temperature"),
    (lambda t, p: t.complete(np.zeros((16, 16), np.uint8)), ConfigError, "completion needs a prior run"),
    (lambda t, p: t.reconstruct(np.zeros((16, 16), np.uint8)), ConfigError, "reconstruction needs a tokenizer"),
    (lambda t, p: p(class_label="Unicorn"), ConfigError, "not one of this prior's 10 classes: 0 'T-shirt/top'"),
    (lambda t, p: p(class_label=10), ConfigError, "class 10 is not one of"),
    (lambda t, p: p(n=2), ConfigError, "class-conditional: pass class_label="),
    (lambda t, p: p(CAPTION), ConfigError, "prior run: it takes class_label="),
    (lambda t, p: p(class_label=1, n=4, keep=2), ConfigError, "only a text-to-image run's candidates are ranked"),
    (lambda t, p: p.complete(np.zeros((16, 16), np.uint8), guidance=2.0), ConfigError, "needs a class"),
    (lambda t, p: p.complete(np.zeros((16, 16), np.uint8), keep_rows=4), ConfigError, "between 1 and 3"),
    (lambda t, p: p.complete(42), DataError, "got int"),
    (lambda t, p: p.complete("no-such-picture.png"), FileNotFoundError, "no image file"),
])
def test_mistakes_raise_one_line_vqgen_errors(t2i, prior, call, error, message):
    with pytest.raises(error) as info:
        call(t2i, prior)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert isinstance(info.value, (VqgenError, FileNotFoundError))


def test_wrong_directories_are_named(runs, tmp_path):
    with pytest.raises(ConfigError, match="holds a 'clip' model; a Pipeline loads"):
        vqgen.Pipeline.from_pretrained(runs / "demo" / "clip")
    with pytest.raises(ConfigError, match="no config.json"):
        vqgen.Pipeline.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="clip= ranks the candidates of a caption"):
        vqgen.Pipeline.from_pretrained(runs / "prior", clip=runs / "demo" / "clip")
    with pytest.raises(ConfigError, match="not a CLIP directory"):
        vqgen.Pipeline.from_pretrained(runs / "demo" / "text2img", clip=runs / "prior")
    with pytest.raises(ConfigError, match="does not sample"):
        vqgen.Pipeline.from_pretrained(runs / "tok")(n=1)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            vqgen.Pipeline.from_pretrained(runs / "prior", device="cuda")


def test_import_vqgen_stays_light():
    import subprocess
    import sys
    code = "import sys, vqgen; assert 'torch' not in sys.modules; vqgen.Pipeline; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the prior's recorded guidance -------------------------------------------------------------------

def test_prior_config_records_a_default_guidance():
    base = dict(vocab_size=8, grid=(2, 2), n_layer=1, n_head=1, n_embd=8, num_classes=3)
    assert PriorConfig(**base, cond_drop_prob=0.1).default_guidance == GUIDANCE_WITH_COND_DROPOUT == 2.0
    assert PriorConfig(**base).default_guidance == 1.0  # no condition dropout: no null condition to guide with
    assert PriorConfig(**base, cond_drop_prob=0.1, guidance_scale=3.0).default_guidance == 3.0
    with pytest.raises(ValueError, match="cond_drop_prob"):
        PriorConfig(**base, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        PriorConfig(**base, cond_drop_prob=0.1, guidance_scale=-1.0)


def test_a_prior_saved_before_the_field_loads_resumes_and_gets_the_recommended_scale(runs, tmp_path):
    import shutil

    from vqgen.train.common import load_train_config
    from vqgen.train.prior import PriorTrainConfig, train_prior
    old = tmp_path / "old"
    shutil.copytree(runs / "prior", old)
    for name, section in (("config.json", "config"), ("train_config.json", "model")):  # as written before the field
        data = json.loads((old / name).read_text())
        del data[section]["guidance_scale"]
        (old / name).write_text(json.dumps(data))
    from safetensors.torch import load_file, save_file
    save_file(load_file(old / "model.safetensors"), old / "model.safetensors")  # weights of then: no metadata
    model = GPTPrior.from_pretrained(old)
    assert model.config.guidance_scale is None and model.config.default_guidance == 2.0
    cfg = load_train_config(PriorTrainConfig, old / "train_config.json")
    _, metrics = train_prior(cfg, old, progress=False)  # found finished, not "a different config"
    assert "test_bits_per_token" in metrics


def test_vqgen_sample_uses_the_recorded_guidance_when_given_none(runs, tmp_path, capsys, scales):
    def sample(*extra):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.png"
        assert main(["sample", "--prior", str(runs / "prior"), "--n", "2", "--out", str(out), *extra]) == 0
        return np.asarray(Image.open(out)), capsys.readouterr().out

    default, said = sample("--class", "Sneaker")
    assert "guidance 2)" in said and scales == [2.0]
    assert np.array_equal(default, sample("--class", "7", "--guidance", "2")[0])
    assert "guidance 1)" in sample("--class", "7", "--guidance", "1")[1] and scales[-1] == 1.0
    rows, said = sample()  # one row per class, guided too
    assert "one row per class: T-shirt/top" in said and "guidance 2)" in said and scales[-1] == 2.0
    assert "guidance 1)" in sample("--complete", str(tmp_path / "s0.png"))[1]  # completion: no class, no guidance
    assert scales[-1] == 1.0
    assert main(["sample", "--prior", str(runs / "prior"), "--class", "Unicorn", "--out", str(tmp_path / "x.png")]) == 2
    assert "not one of this prior's 10 classes" in capsys.readouterr().err


def test_eval_prior_uses_the_recorded_guidance_when_given_none(tmp_path, monkeypatch, capsys):
    from test_data import make_fmnist
    from vqgen.eval import prior as eval_prior
    from vqgen.eval.judge import JudgeClassifier, JudgeConfig
    from vqgen.data.encode import encode_dataset
    from vqgen.prior.codec import TokenizerCodec
    from vqgen.prior.generate import load_prior_run
    from vqgen.tokenizer.vqgan import VQTokenizer
    from vqgen.config import apply_overrides
    from vqgen.train.prior import PRIOR_PRESETS, train_prior
    from vqgen.train.tokenizer import TOKENIZER_PRESETS
    make_fmnist(tmp_path / "fm", n_train=20, n_test=10)
    tok = VQTokenizer(apply_overrides(TOKENIZER_PRESETS["tiny"](), ["model.autoencoder.resolution=32"]).model).eval()
    tok.save_pretrained(tmp_path / "tok")
    encode_dataset(TokenizerCodec(tok, str(tmp_path / "tok")), f"fashion-mnist:{tmp_path / 'fm'}", tmp_path / "toks",
                   progress=False)
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.grid=[8, 8]", "model.num_classes=10",
                                                    "loop.max_steps=2"])
    train_prior(cfg, tmp_path / "prior", tokens=str(tmp_path / "toks"), progress=False)
    judge = JudgeClassifier(JudgeConfig(widths=(8, 16), blocks=(1, 1), feature_dim=8, norm_groups=4)).eval()
    judge.save_pretrained(tmp_path / "judge")
    run = load_prior_run(tmp_path / "prior")
    m = eval_prior.evaluate_prior(run, judge, n_per_class=1, n_reference=10)
    assert m["guidance_scale"] == 2.0 and m["n_samples"] == 10
    unguided = eval_prior.evaluate_prior(run, judge, n_per_class=1, n_reference=10, guidance_scale=1.0)
    assert unguided["guidance_scale"] == 1.0
    seen = []
    real = eval_prior.evaluate_prior
    monkeypatch.setattr(eval_prior, "evaluate_prior", lambda *a, **k: seen.append(k["guidance_scale"]) or real(*a, **k))
    assert main(["eval", "prior", str(tmp_path / "prior"), "--judge", str(tmp_path / "judge"), "--n-per-class", "1",
                 "--json"]) == 0
    assert seen == [None] and json.loads(capsys.readouterr().out)["guidance_scale"] == 2.0


# --- model cards ------------------------------------------------------------------------------------

def test_cards_of_python_trained_runs_say_what_how_and_how_well(runs):
    card = (runs / "prior" / "README.md").read_text()
    n = GPTPrior.from_pretrained(runs / "prior").num_params()
    metrics = json.loads((runs / "prior" / "metrics.json").read_text())
    for part in ("# Model card: prior", "GPT prior", "conditioned on one of 10 classes (T-shirt/top", "`synthetic`",
                 f"token grids in `{runs / 'tokens'}`", f"tokenizer at `{runs / 'tok'}`", f"| Parameters | {n:,} |",
                 "| Training | 4 steps × batch 16, ", "s of training |", "guidance scale 2 unless told otherwise",
                 "prior_guidance.json", f"| test_bits_per_token | {metrics['test_bits_per_token']:.4g} |",
                 "vqgen.train.prior.train_prior(cfg,", "```yaml\nmodel:\n  vocab_size: 32", "cond_drop_prob: 0.1",
                 f"vqgen sample --prior {runs / 'prior'}"):
        assert part in card, part
    tok = (runs / "tok" / "README.md").read_text()
    assert "VQ tokenizer" in tok and "| Data | `synthetic` |" in tok and "2 steps × batch 16" in tok
    clip = (runs / "demo" / "clip" / "README.md").read_text()
    assert "CLIP-style" in clip and "| Data | `shapes:0` |" in clip and "train_seconds" not in clip.split("## How")[0]


def test_card_of_a_cli_run_records_the_exact_command(runs):
    card = (runs / "demo" / "text2img" / "README.md").read_text()
    command = (f"vqgen train text2img --config tiny --tokens {runs / 'demo' / 'tokens'} --out "
               f"{runs / 'demo' / 'text2img'} --max-steps 4 --no-progress")
    assert f"```bash\n{command}\n```" in card and "text-to-image" in card
    assert "guidance scale 2 and temperature 1" in card and "`shapes:0`" in card
    assert recorded_command() is None  # only while the CLI runs a command


def test_a_finished_run_keeps_its_card_or_gets_one(runs, tmp_path, capsys):
    import shutil
    run = tmp_path / "t2i"
    shutil.copytree(runs / "demo" / "text2img", run)
    before = (run / "README.md").read_text()
    argv = ["train", "text2img", "--config", "tiny", "--tokens", str(runs / "demo" / "tokens"), "--out", str(run),
            "--max-steps", "4", "--no-progress"]
    assert main(argv + ["--save-every", "10"]) == 0 and "already trained" in capsys.readouterr().out
    assert (run / "README.md").read_text() == before  # the command that trained it, not the re-run
    (run / "README.md").unlink()
    assert main(argv) == 0
    assert "--max-steps 4 --no-progress\n```" in (run / "README.md").read_text()


def test_judges_get_cards_too(tmp_path):
    from vqgen.train.classifier import CLASSIFIER_PRESETS, train_classifier
    from vqgen.train.shapes_judge import SHAPES_JUDGE_PRESETS, train_shapes_judge
    from vqgen.config import apply_overrides
    data = synthetic_images(32, size=32, classes=10)
    train_classifier(CLASSIFIER_PRESETS["tiny"](), None, tmp_path / "judge", progress=False, train_data=data,
                     test_data=data)
    card = (tmp_path / "judge" / "README.md").read_text()
    assert "judge classifier" in card and "3 epochs of 32 images" in card and "| accuracy |" in card
    cfg = apply_overrides(SHAPES_JUDGE_PRESETS["tiny"](), ["model.resolution=16", "model.patch=2", "loop.max_steps=2"])
    train_shapes_judge(cfg, tmp_path / "sj", progress=False)
    card = (tmp_path / "sj" / "README.md").read_text()
    assert "shapes judge" in card and "renders of random `shapes` scenes" in card and "| accuracy_on_renders |" in card
    (tmp_path / "sj" / "README.md").unlink()
    train_shapes_judge(cfg, tmp_path / "sj", progress=False)  # found finished: the card is made again
    assert (tmp_path / "sj" / "README.md").is_file()


def test_model_card_without_the_model_counts_the_weight_file(runs, tmp_path):
    card = model_card(runs / "prior")
    assert "(all tensors of model.safetensors)" in card
    path = write_model_card(runs / "prior", overwrite=False)
    assert path.read_text() != card  # kept: the one training wrote, with the parameter count of the model
