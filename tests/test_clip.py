"""The CLIP-style reranker: training makes the right caption win, saving/loading, scorers, rerank."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vqgen.data import ImageDataset
from vqgen.errors import ConfigError, DataError
from vqgen.images import to_model_range
from vqgen.rerank.clip import (OPENAI_CLIP_MEAN, ClipConfig, ClipModel, ClipScorer, HFClipScorer, OwnClipScorer,
                               load_clip, rerank)
from vqgen.text.bpe import CaptionTokenizer
from vqgen.train.clip import CLIP_PRESETS, ClipTrainConfig, train_clip

torch.set_num_threads(1)

COLORS = {"red": (230, 40, 40), "green": (40, 200, 70), "blue": (50, 100, 245), "yellow": (245, 220, 40)}
SHAPES = ("square", "bar")


def squares(n: int, size: int = 16, seed: int = 0) -> ImageDataset:
    """Coloured squares or bars at random places on black, captioned "a red square", "a blue bar", ..."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    captions = []
    names = list(COLORS)
    for i in range(n):
        color, shape = names[i % len(names)], SHAPES[(i // len(names)) % len(SHAPES)]
        h, w = (6, 6) if shape == "square" else (3, 12)
        y = int(torch.randint(0, size - h + 1, (1,), generator=g))
        x = int(torch.randint(0, size - w + 1, (1,), generator=g))
        images[i, :, y:y + h, x:x + w] = torch.tensor(COLORS[color], dtype=torch.uint8)[:, None, None]
        captions.append(f"a {color} {shape}")
    return ImageDataset(images, None, [], source="squares", captions=captions)


def tiny_cfg(steps: int = 20) -> ClipTrainConfig:
    cfg = CLIP_PRESETS["tiny"]()
    cfg.loop.max_steps = steps
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny preset trained on coloured squares (shared by several tests: trained once)."""
    out = tmp_path_factory.mktemp("clip_run")
    cfg = tiny_cfg(40)
    model, metrics = train_clip(cfg, out, train_data=squares(256), test_data=squares(64, seed=1), progress=False)
    return out, model, metrics


def test_training_makes_the_right_caption_win(trained):
    out, model, metrics = trained
    # 8 distinct captions, each twice in every test batch of 16: guessing scores 2/16
    assert metrics["test_retrieval_chance"] == pytest.approx(2 / 16)
    assert metrics["test_retrieval_top1"] > 0.7
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_retrieval_top1"] == metrics["test_retrieval_top1"] and saved["step"] == 40
    assert (out / "tokenizer.json").is_file() and (out / "logs").is_dir()
    # the scorer ranks the true caption first among the 8 for held-out images
    scorer = OwnClipScorer(model)
    test = squares(16, seed=2)
    names = [f"a {c} {s}" for s in SHAPES for c in COLORS]
    scores = torch.stack([scorer.score(test.images, [c] * 16) for c in names], dim=1)  # (16, 8)
    right = sum(names[int(j)] == test.captions[i] for i, j in enumerate(scores.argmax(1)))
    assert right >= 12


def test_save_load_round_trip_gives_identical_scores(trained, tmp_path):
    out, model, _ = trained
    test = squares(8, seed=3)
    before = OwnClipScorer(model).score(test.images, test.captions)
    scorer = load_clip(out)
    assert isinstance(scorer, OwnClipScorer) and isinstance(scorer, ClipScorer)
    after = scorer.score(test.images, test.captions)
    assert torch.equal(before, after)
    assert before.shape == (8,) and before.abs().max() <= 100.0
    # and from a fresh directory written by save_pretrained
    model.save_pretrained(tmp_path / "copy")
    assert torch.equal(load_clip(tmp_path / "copy").score(test.images, test.captions), before)


def test_strict_load_fails_on_a_tampered_file(trained, tmp_path):
    from safetensors.torch import load_file, save_file
    _, model, _ = trained
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    del state["logit_scale"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="logit_scale"):
        ClipModel.from_pretrained(tmp_path)


def test_saving_needs_the_tokenizer(tmp_path):
    model = ClipModel(CLIP_PRESETS["tiny"]().model)
    with pytest.raises(ConfigError, match="tokenizer"):
        model.save_pretrained(tmp_path)


@pytest.mark.parametrize("patch", [1, 2])
def test_model_shapes_normalisation_and_loss(patch):
    torch.manual_seed(0)
    cfg = CLIP_PRESETS["tiny"]().model
    cfg.patch = patch
    model = ClipModel(cfg)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    ids = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0], [1, 5, 6, 8, 9, 2], [1, 9, 2, 0, 0, 0]])
    img, txt = model.encode_image(x), model.encode_text(ids)
    assert img.shape == txt.shape == (4, cfg.embed_dim)
    assert torch.allclose(img.norm(dim=1), torch.ones(4)) and torch.allclose(txt.norm(dim=1), torch.ones(4))
    assert torch.isfinite(model.loss(x, ids))
    # padding is masked: more trailing <pad> leaves the embedding unchanged
    padded = F.pad(ids, (0, 3), value=cfg.pad_id)
    assert torch.allclose(model.encode_text(padded), txt, atol=1e-6)
    # the temperature is clamped at 100
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert float(model.scale().detach()) == 100.0
    with pytest.raises(ConfigError, match="right-padded"):
        model.encode_text(torch.tensor([[1, 0, 5, 2]]))
    with pytest.raises(ConfigError, match="ids must lie"):
        model.encode_text(torch.tensor([[1, cfg.vocab_size, 2]]))
    with pytest.raises(ConfigError, match="images"):
        model.encode_image(torch.zeros(1, 3, 8, 8))


def test_config_errors():
    with pytest.raises(ConfigError, match="norm_groups|GroupNorm"):
        ClipConfig(widths=(6,), blocks=(1,), norm_groups=4)
    with pytest.raises(ConfigError, match="n_head"):
        ClipConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="not divisible by 8"):
        ClipConfig(resolution=36, widths=(8, 8, 8), blocks=(1, 1, 1), patch=2)
    with pytest.raises(ConfigError, match="bpe_vocab_size"):
        ClipTrainConfig(model=ClipConfig(vocab_size=300), bpe_vocab_size=400)


def test_tokenizer_must_fit_the_model(tmp_path):
    cfg = CLIP_PRESETS["tiny"]().model
    cfg.pad_id = 3
    model = ClipModel(cfg)
    model.tokenizer = CaptionTokenizer.train(["a red square", "a blue bar"] * 4, 300)
    model.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="does not fit"):
        ClipModel.from_pretrained(tmp_path)


def test_own_scorer_resizes_and_checks_inputs(trained):
    _, model, _ = trained
    scorer = OwnClipScorer(model)
    test = squares(4, size=32, seed=4)
    small = F.interpolate(to_model_range(test.images), size=(16, 16), mode="bilinear", antialias=True)
    assert scorer.score(test.images, test.captions).shape == (4,)
    with pytest.raises(ConfigError, match="one caption per image"):
        scorer.score(test.images, test.captions[:3])
    with pytest.raises(ConfigError, match="uint8"):
        scorer.score(small, test.captions)
    with pytest.raises(ConfigError, match="3-channel"):
        scorer.score(test.images[:, :1], test.captions)


class FixedScorer:
    def __init__(self, scores):
        self.scores = torch.tensor(scores)

    def score(self, images, captions):
        assert len(captions) == images.shape[0] and len(set(captions)) == 1
        return self.scores


def test_rerank_orders_best_first_and_checks_keep():
    images = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    scorer = FixedScorer([1.0, 30.0, -2.0, 30.0, 7.0])
    kept, scores = rerank(images, "a red square", scorer, keep=3)
    assert kept.tolist() == [1, 3, 4] and kept.dtype == torch.long
    assert torch.equal(scores, scorer.scores)
    assert rerank(images, "x", scorer, keep=5)[0].tolist() == [1, 3, 4, 0, 2]
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ConfigError, match="keep"):
            rerank(images, "x", scorer, keep=bad)
    with pytest.raises(ConfigError, match="one caption"):
        rerank(images, ["x"], scorer, keep=1)


def test_load_clip_refuses_other_directories(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_clip(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "prior", "config": {}}))
    with pytest.raises(ConfigError, match=r"is not a CLIP directory: it holds a 'prior' model") as e:
        load_clip(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="'bert'"):
        load_clip(tmp_path)


def test_train_needs_captions(tmp_path):
    data = squares(32)
    data.captions = None
    with pytest.raises(DataError, match="no captions"):
        train_clip(tiny_cfg(), tmp_path, train_data=data, progress=False)


def test_exact_resume(tmp_path, monkeypatch):
    import vqgen.train.clip as mod
    data, test = squares(64), squares(32, seed=1)
    cfg = tiny_cfg(8)
    cfg.loop.save_every = 4
    full, _ = train_clip(cfg, tmp_path / "a", train_data=data, test_data=test, progress=False)

    class Crash(Exception):
        pass

    def crash_at_4(n, batch_size, step, *args, **kwargs):  # a run killed after its step-4 checkpoint
        if step >= 4:
            raise Crash
        return real(n, batch_size, step, *args, **kwargs)

    real = mod.batch_indices
    monkeypatch.setattr(mod, "batch_indices", crash_at_4)
    with pytest.raises(Crash):
        train_clip(cfg, tmp_path / "b", train_data=data, test_data=test, progress=False)
    monkeypatch.setattr(mod, "batch_indices", real)
    tok = (tmp_path / "b" / "tokenizer.json").read_bytes()
    # the fitted tokenizer is reloaded, not refitted: a different caption set would give another BPE
    resumed, _ = train_clip(cfg, tmp_path / "b", train_data=data, test_data=test, progress=False)
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == tok
    assert full.state_dict().keys() == resumed.state_dict().keys()
    for k, a in full.state_dict().items():
        assert torch.equal(a, resumed.state_dict()[k]), k
    other = tiny_cfg(8)
    other.bpe_vocab_size = 280
    with pytest.raises(ConfigError, match="different config"):
        train_clip(other, tmp_path / "b", train_data=data, test_data=test, progress=False)


# --- Hugging Face CLIP from a local directory -----------------------------------------------------------


def _hf_clip_dir(path):
    """A tiny randomly initialised transformers CLIP and a byte-level CLIP tokenizer, saved locally."""
    transformers = pytest.importorskip("transformers")
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + specials)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config).eval()
    model.save_pretrained(path)
    return model, tokenizer, transformers


def test_hf_clip_from_a_local_directory(tmp_path):
    model, tokenizer, _ = _hf_clip_dir(tmp_path)
    scorer = load_clip(tmp_path)
    assert isinstance(scorer, HFClipScorer)
    test = squares(3, size=16, seed=5)
    captions = ["a red square", "a blue bar on black", "green"]
    got = scorer.score(test.images, captions)
    assert got.shape == (3,) and got.dtype == torch.float32 and torch.isfinite(got).all()
    # the same by hand: resize to 32, OpenAI mean/std (no preprocessor_config.json was saved)
    x = F.interpolate(test.images.float() / 255, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    x = (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    text = tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=x)
    want = 100 * F.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    assert torch.allclose(got, want, atol=1e-4)
    # rerank works through the same interface
    kept, scores = rerank(test.images, "a red square", scorer, keep=2)
    assert kept.shape == (2,) and scores[kept[0]] == scores.max()


def test_hf_clip_reads_mean_and_std_from_the_preprocessor_config(tmp_path):
    _hf_clip_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5],
                                                                   "image_std": [0.25, 0.25, 0.25]}))
    scorer = load_clip(tmp_path)
    px = scorer.pixel_values(torch.full((1, 1, 32, 32), 255, dtype=torch.uint8))  # grey → RGB, no resize
    assert px.shape == (1, 3, 32, 32) and torch.allclose(px, torch.full_like(px, 2.0))
