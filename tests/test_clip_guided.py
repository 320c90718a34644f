"""CLIP-guided generation ("VQGAN + CLIP") with tiny random models: a tokenizer imported from a tiny
taming-transformers checkpoint, this project's CLIP and a transformers CLIPModel, both saved by the test.
The CLIP score rises over the steps, the pictures are exactly their tokens decoded, and the command line
and the pipeline drive it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vqgen
from test_clip import _hf_clip_dir
from test_convert import build_taming, write_taming
from vqgen.cli import main
from vqgen.config import apply_overrides
from vqgen.convert.taming import import_taming
from vqgen.errors import ConfigError
from vqgen.images import load_picture, to_model_range, to_uint8
from vqgen.rerank.clip import ClipConfig, ClipModel, load_clip
from vqgen.rerank.clip_guided import ClipGuidedConfig, _cutouts, clip_guided
from vqgen.text.bpe import CaptionTokenizer
from vqgen.tokenizer.vqgan import VQTokenizer
from vqgen.train.tokenizer import TOKENIZER_PRESETS

CAPTIONS = ["a red circle in the top left", "a blue square"]
FAST = dict(steps=8, lr=0.2, cutouts=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """tok/: a tokenizer run imported from a tiny taming VQGAN (16×16 RGB ↔ 4×4 tokens of 48 codes);
    clip/: this project's CLIP, random; hf-clip/: a transformers CLIPModel, random; picture.png."""
    root = tmp_path_factory.mktemp("clip_guided")
    ckpt, config = write_taming(root, build_taming(8), 8, root / "marker")
    import_taming(ckpt, config, root / "tok")
    torch.manual_seed(0)
    cfg = ClipConfig(resolution=16, widths=(8, 16), blocks=(1, 1), norm_groups=4, vocab_size=300, max_len=16,
                     n_layer=1, n_head=2, n_embd=16, embed_dim=16)
    clip = ClipModel(cfg)
    clip.tokenizer = CaptionTokenizer.train(CAPTIONS * 4, vocab_size=300)
    clip.save_pretrained(root / "clip")
    _hf_clip_dir(root / "hf-clip")
    g = torch.Generator().manual_seed(1)
    Image.fromarray(torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()).save(
        root / "picture.png")
    return root


@pytest.fixture(scope="module")
def tok(world):
    return VQTokenizer.from_pretrained(world / "tok")


@pytest.fixture(scope="module", params=["own", "hf"])
def scorer(world, request):
    return load_clip(world / ("clip" if request.param == "own" else "hf-clip"))


@pytest.mark.parametrize("init", ["tokens", "noise"])
def test_clip_score_rises_and_the_pictures_are_their_tokens_decoded(tok, scorer, init):
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    out = clip_guided(tok, scorer, CAPTIONS, ClipGuidedConfig(**FAST, init=init))
    assert out.history.shape == (FAST["steps"] + 1, 2) and out.tokens.shape == (2, 4, 4)
    assert (out.history[-1] > out.history[0] + 1).all(), out.history  # each picture moved towards its caption
    if init == "noise":  # from noise it keeps rising; a random token grid's first step jumps, then wanders
        assert (out.history[-1] > out.history[:3].max(dim=0).values).all()
    # The output is exactly decodable from its tokens, and its scores are what the scorer gives it.
    assert torch.equal(out.images, to_uint8(tok.decode(out.tokens)))
    assert torch.allclose(out.scores, scorer.score(out.images, CAPTIONS), atol=1e-3)
    assert torch.equal(out.history[-1], out.scores)
    # Nothing in the networks moved or got gradients; the tokenizer is back in its mode.
    for k, v in tok.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in tok.parameters()) and not tok.training
    assert all(p.grad is None for p in scorer.model.parameters())


def test_similarity_keeps_gradients_and_agrees_with_score(scorer):
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    x = to_model_range(images).requires_grad_(True)
    sim = scorer.similarity(x, CAPTIONS)  # (2,)
    sim.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(sim.detach(), scorer.score(images, CAPTIONS), atol=1e-3)


def test_same_seed_same_pictures_and_inits(tok, world):
    scorer = load_clip(world / "clip")
    a = clip_guided(tok, scorer, CAPTIONS, ClipGuidedConfig(steps=2, cutouts=2, seed=3))
    b = clip_guided(tok, scorer, CAPTIONS, ClipGuidedConfig(steps=2, cutouts=2, seed=3))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    c = clip_guided(tok, scorer, CAPTIONS, ClipGuidedConfig(steps=0, init="noise", seed=4))
    assert c.history.shape == (1, 2) and not torch.equal(c.tokens, a.tokens)
    # Random token grids start where they are: each latent is a code, and snaps to itself.
    d = clip_guided(tok, scorer, CAPTIONS * 4, ClipGuidedConfig(steps=0, init="tokens"))
    assert d.tokens.unique().numel() > 16  # codes drawn uniformly from the 48
    # An init picture starts from its own tokens, in every picture of the batch.
    e = clip_guided(tok, scorer, CAPTIONS, ClipGuidedConfig(steps=0, init=str(world / "picture.png")))
    own = tok.encode(load_picture(world / "picture.png", 16, 3)[None])  # (1, 4, 4)
    assert torch.equal(e.tokens, own.expand(2, -1, -1))


def test_snapshots_are_the_pictures_of_shorter_runs(tok, world):
    scorer = load_clip(world / "clip")
    long = clip_guided(tok, scorer, CAPTIONS, ClipGuidedConfig(steps=4, cutouts=2, snapshot_every=2))
    assert [s.step for s in long.snapshots] == [2, 4]
    short = clip_guided(tok, scorer, CAPTIONS, ClipGuidedConfig(steps=2, cutouts=2))
    assert torch.equal(long.snapshots[0].tokens, short.tokens)
    assert torch.equal(long.snapshots[0].images, short.images)
    assert torch.equal(long.snapshots[0].scores, short.scores)
    assert torch.equal(long.snapshots[1].images, long.images) and long.snapshots[1].seconds >= long.snapshots[0].seconds


def test_crops_cover_between_crop_min_and_the_whole_picture():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    whole = _cutouts(x, 3, 1.0, g)  # (6, 3, 16, 16)
    assert torch.allclose(whole, x.repeat_interleave(3, dim=0), atol=1e-5)
    crops = _cutouts(x, 3, 0.5, g)
    assert crops.shape == (6, 3, 16, 16) and not torch.allclose(crops, x.repeat_interleave(3, dim=0), atol=1e-2)


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(steps=1.5), dict(cutouts=0), dict(lr=0), dict(lr=float("nan")),
                                 dict(crop_min=0), dict(crop_min=1.5), dict(snapshot_every=-1), dict(init="nope.png")])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="clip-guided: " + next(iter(bad))):
        ClipGuidedConfig(**bad)


def test_an_fsq_tokenizer_is_steered_on_its_grid(world):
    """FSQ's implicit codebook (its grid of levels) takes the place of the VQ codebook: the score rises and
    the pictures are their tokens decoded."""
    scorer = load_clip(world / "clip")
    cfg = apply_overrides(TOKENIZER_PRESETS["tiny"](), ["model.autoencoder.in_channels=3", "model.quantizer.kind=fsq",
                                                          "model.quantizer.fsq_levels=[5, 4, 3]"])
    torch.manual_seed(0)
    fsq = VQTokenizer(cfg.model).eval()
    out = clip_guided(fsq, scorer, CAPTIONS, ClipGuidedConfig(**FAST, init="noise"))
    assert out.tokens.min() >= 0 and out.tokens.max() < 60
    assert (out.history[-1] > out.history[0]).all(), out.history
    assert torch.equal(out.images, to_uint8(fsq.decode(out.tokens)))


def test_empty_captions_are_refused(world, tok):
    scorer = load_clip(world / "clip")
    for captions in ([], ["  "], "a red circle"):
        with pytest.raises(ConfigError, match="non-empty list of non-empty captions"):
            clip_guided(tok, scorer, captions, ClipGuidedConfig(steps=1))


# --- command line -------------------------------------------------------------------------------------


def test_generate_clip_guided_end_to_end(world, capsys):
    out = world / "guided.png"
    assert main(["generate", *CAPTIONS, "--method", "clip-guided", "--tokenizer", str(world / "tok"), "--clip",
                 str(world / "hf-clip"), "--steps", "4", "--lr", "0.2", "--cutouts", "2", "--n", "3", "--keep", "2",
                 "--snapshot-every", "2", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "best 2 of 3 by CLIP score; 4 steps of CLIP-guided optimisation (lr 0.2, 2 cutouts, init tokens)" in said
    assert "2 snapshots beside it" in said
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 2 * 16 * 4 and img.shape[1] > 2 * 16 * 4  # 2 rows × 2 kept, enlarged, captions below
    assert (world / "guided-step0002.png").is_file() and (world / "guided-step0004.png").is_file()
    assert main(["generate", "a red circle", "--method", "clip-guided", "--tokenizer", str(world / "tok"), "--clip",
                 str(world / "clip"), "--steps", "1", "--n", "1", "--init", str(world / "picture.png"),
                 "--out", str(world / "from-picture.png")]) == 0
    assert "init " + str(world / "picture.png") in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--clip", "CLIP"], "--method clip-guided needs --tokenizer TOK_DIR"),
    (["--tokenizer", "TOK"], "--method clip-guided needs --clip CLIP_DIR"),
    (["--tokenizer", "TOK", "--clip", "CLIP", "--model", "TOK"], "--model belong to --method text2img"),
    (["--tokenizer", "TOK", "--clip", "CLIP", "--guidance", "2"], "--guidance belong to --method text2img"),
    (["--tokenizer", "TOK", "--clip", "CLIP", "--cutouts", "0"], "clip-guided: cutouts must be an integer >= 1, got 0"),
    (["--tokenizer", "TOK", "--clip", "CLIP", "--lr", "-1"], "clip-guided: lr must be a finite number > 0"),
    (["--tokenizer", "TOK", "--clip", "CLIP", "--init", "nope.png"], "init must be 'noise', 'tokens' or an image"),
    (["--tokenizer", "TOK", "--clip", "CLIP", "--n", "2", "--keep", "3"], "--keep must be between 1 and --n"),
    (["--tokenizer", "CLIP", "--clip", "CLIP"], "holds a 'clip' model, not a 'tokenizer' model"),
    (["--tokenizer", "TOK", "--clip", "TOK"], "is not a CLIP directory"),
])
def test_generate_clip_guided_refuses_bad_arguments_in_one_line(world, capsys, argv, message):
    names = {"TOK": str(world / "tok"), "CLIP": str(world / "clip")}
    argv = ["generate", "a red circle", "--method", "clip-guided", "--steps", "1",
            "--out", str(world / "never.png")] + [names.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqgen: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (world / "never.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.png"], "--model RUN_DIR is required"),
    (["--model", "TOK", "--steps", "3", "--out", "x.png"], "--steps belong to --method clip-guided"),
])
def test_the_default_method_stays_the_text_to_image_model(world, capsys, argv, message):
    assert main(["generate", "a red circle"] + [str(world / "tok") if a == "TOK" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqgen: error:") and message in err and len(err.strip().splitlines()) == 1, err


# --- Python -------------------------------------------------------------------------------------------


def test_pipeline_clip_guided(world):
    pipe = vqgen.Pipeline.from_pretrained(world / "tok", clip=world / "clip")
    result = pipe("a red circle", method="clip-guided", n=3, keep=2, steps=3, cutouts=2, lr=0.2, seed=1)
    assert len(result) == 2 and result.scores == sorted(result.scores, reverse=True) and result.n == 3
    assert result.tokens.shape == (2, 4, 4) and result.prompt == "a red circle" and result.guidance is None
    assert torch.equal(result.pixels, to_uint8(pipe.run.decode(result.tokens)))
    again = pipe("a red circle", method="clip-guided", n=3, keep=2, steps=3, cutouts=2, lr=0.2, seed=1)
    assert torch.equal(again.pixels, result.pixels) and again.indices == result.indices
    start = pipe("a red circle", method="clip-guided", n=1, steps=0, init=world / "picture.png")
    assert torch.equal(start.tokens, pipe.run.encode(load_picture(world / "picture.png", 16, 3)[None]))


@pytest.mark.parametrize("call, message", [
    (lambda p, q: q("a red circle", method="clip-guided", steps=1), "loaded with clip=CLIP_DIR"),
    (lambda p, q: p("a red circle", method="guided"), "unknown method 'guided'"),
    (lambda p, q: p("a red circle", steps=3), "steps are options of method='clip-guided'"),
    (lambda p, q: p("a red circle", method="clip-guided", guidance=2), "guidance are options of sampling"),
    (lambda p, q: p(method="clip-guided"), "needs a caption"),
    (lambda p, q: p(" ", method="clip-guided"), "the caption is empty"),
    (lambda p, q: p("a red circle", method="clip-guided", cutouts=0), "cutouts must be an integer >= 1"),
    (lambda p, q: p("a red circle"), "or, with its CLIP, generates (method='clip-guided')"),
])
def test_pipeline_mistakes_are_one_line_errors(world, call, message):
    pipe = vqgen.Pipeline.from_pretrained(world / "tok", clip=world / "clip")
    plain = vqgen.Pipeline.from_pretrained(world / "tok")
    with pytest.raises(ConfigError) as err:
        call(pipe, plain)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny runs at the paths the README and docs name (runs/demo/tokenizer, runs/demo/clip, ...)."""
    from tiny_runs import make_runs
    return make_runs(tmp_path_factory.mktemp("runs"))


def test_a_text_to_image_pipeline_steers_its_own_tokenizer(runs):
    pipe = vqgen.Pipeline.from_pretrained(runs / "demo" / "text2img", clip=runs / "demo" / "clip")
    result = pipe("a red circle", method="clip-guided", n=2, steps=2, cutouts=2)
    tok = VQTokenizer.from_pretrained(runs / "demo" / "tokenizer")
    assert torch.equal(result.pixels, to_uint8(tok.decode(result.tokens)))
    assert len(pipe("a red circle", n=2).images) == 2  # sampling the model is still the default


def test_the_docs_python_examples_run(runs, monkeypatch):
    """docs/clip_guided.md's ```python blocks, one namespace, in a directory holding runs/demo/."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "clip_guided.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 2
    monkeypatch.chdir(runs.parent)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/clip_guided.md python block {i + 1}", "exec"), namespace)  # noqa: S102 - our docs
    result, out = namespace["result"], namespace["out"]
    assert len(result.images) == 2 and Path("best.png").is_file() and result.tokens.shape[0] == 2
    assert out.history.shape == (101, 2) and [s.step for s in out.snapshots] == [25, 50, 75, 100]
    assert torch.equal(out.images, to_uint8(namespace["tok"].decode(out.tokens)))
