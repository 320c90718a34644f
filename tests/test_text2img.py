"""Text to image: caption BPE, the encoder–decoder, its sampler, training and the CLI (tiny, offline)."""
from __future__ import annotations

import json

import pytest
import torch

from vqgen.config import apply_overrides
from vqgen.data.tokens import TokenWriter, load_tokens
from vqgen.errors import ConfigError
from vqgen.layers import CrossAttention, TransformerBlock
from vqgen.text.bpe import CaptionTokenizer, normalize_caption
from vqgen.text.dalle import TextToImage, TextToImageConfig
from vqgen.text.sampling import sample_tokens
from vqgen.train.text2img import TEXT2IMG_PRESETS, train_text2img

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square"]


def small_config(**kw) -> TextToImageConfig:
    base = dict(vocab_size=16, grid=(3, 3), text_vocab_size=300, max_text_len=10, n_embd=32, n_head=2,
                n_enc_layer=1, n_dec_layer=2, caption_drop_prob=0.2)
    return TextToImageConfig(**{**base, **kw})


def caption_ids(n: int = 4, length: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (n, length), generator=g)
    ids[:, 0] = 1
    for i in range(n):  # captions of different lengths, then padding
        ids[i, 4 + i % 3] = 2
        ids[i, 5 + i % 3:] = 0
    return ids


def write_captioned_tokens(root, n_train: int = 64, n_test: int = 16, vocab: int = 32, grid=(4, 4)):
    """A captioned token directory whose grids are a function of the caption: learnable in seconds."""
    meta = {"codec": {"kind": "test"}, "vocab_size": vocab, "source": "synthetic", "class_names": [],
            "resolution": 16, "channels": 3, "captioned": True}
    g = torch.Generator().manual_seed(1)
    for split, n in (("train", n_train), ("test", n_test)):
        caps, grids = [], []
        for i in range(n):
            c, s = i % len(COLOURS), (i // len(COLOURS)) % len(SHAPES)
            caps.append(f"a {COLOURS[c]} {SHAPES[s]}")
            base = torch.full(grid, c * 4 + s, dtype=torch.long)
            base[0, 0] = torch.randint(0, vocab, (1,), generator=g)  # a little noise
            grids.append(base)
        w = TokenWriter(root, split, meta)
        w.write(0, torch.stack(grids), None, caps)
        w.finish(n)
    return root


# --- captions ---------------------------------------------------------------------------------------

def test_normalize_caption_folds_unicode_case_and_spaces():
    assert normalize_caption("  A\u00a0Red\tCIRCLE\n ") == "a red circle"
    assert normalize_caption("ﬁne") == "fine"  # NFKC ligature
    with pytest.raises(ConfigError):
        normalize_caption(3)


def test_bpe_encodes_unseen_words_truncates_and_round_trips(tmp_path):
    tok = CaptionTokenizer.train(["a red circle", "a small blue square at the top"] * 20, vocab_size=300)
    ids, truncated = tok.encode(["a red circle", "zebra über", "a " * 40], max_len=16)
    assert ids.shape == (3, 16) and truncated == 1
    assert ids[0, 0] == tok.bos_id and tok.eos_id in ids[0].tolist() and ids[2, -1] == tok.eos_id
    assert tok.decode(ids[0]) == "a red circle" and tok.decode(ids[1]) == "zebra über"  # bytes: nothing is unknown
    empty, _ = tok.encode([""], 4)
    assert empty[0].tolist() == [tok.bos_id, tok.eos_id, tok.pad_id, tok.pad_id]
    tok.save(tmp_path)
    again = CaptionTokenizer.load(tmp_path)
    assert torch.equal(again.encode(["a red circle"], 16)[0], ids[:1])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="tokenizer.json"):
        CaptionTokenizer.load(tmp_path / "bad")


# --- layers -----------------------------------------------------------------------------------------

def test_encoder_block_ignores_padding_and_cross_attention_reads_the_context():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, causal=False).eval()
    x = torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, True, False, False]])
    y = block(x, key_mask=mask)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(1, 2, 16)  # different padding content
    assert torch.allclose(block(x2, key_mask=mask)[:, :3], y[:, :3], atol=1e-6)
    x3 = x.clone()
    x3[:, 4] = torch.randn(16)  # bidirectional: a later real token changes earlier outputs
    assert not torch.allclose(block(x3)[:, 0], block(x)[:, 0])
    cross = CrossAttention(16, 2).eval()
    ctx = torch.randn(1, 4, 16)
    q = torch.randn(1, 3, 16)
    out = cross(q, cross.memory(ctx), torch.tensor([[True, True, False, False]]))
    ctx2 = ctx.clone()
    ctx2[:, 2:] = 0.0
    assert torch.allclose(out, cross(q, cross.memory(ctx2), torch.tensor([[True, True, False, False]])), atol=1e-6)
    assert not torch.allclose(out, cross(q, cross.memory(ctx2)), atol=1e-4)


# --- model and sampler ------------------------------------------------------------------------------

def test_forward_shapes_and_input_checks():
    torch.manual_seed(0)
    model = TextToImage(small_config())
    ids, toks = caption_ids(), torch.randint(0, 16, (4, 9))
    assert model(ids, toks).shape == (4, 9, 16)
    with pytest.raises(ValueError, match="ids in"):
        model(ids, torch.full((4, 9), 16))
    with pytest.raises(ValueError, match="whole grids"):
        model(ids, toks[:, :5])
    with pytest.raises(ValueError, match="length"):
        model(torch.ones(4, 11, dtype=torch.long), toks)


def test_decoder_is_causal_and_conditioned_on_the_caption():
    torch.manual_seed(0)
    model = TextToImage(small_config()).eval()
    ids, toks = caption_ids(2), torch.randint(0, 16, (2, 9))
    logits = model(ids, toks)
    changed = toks.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 16
    other = model(ids, changed)
    assert torch.allclose(logits[:, :6], other[:, :6], atol=1e-5)  # outputs ≤ 5 do not see token 5
    assert not torch.allclose(logits[:, 6:], other[:, 6:])
    assert not torch.allclose(model(ids.flip(0), toks)[0], logits[0])


@pytest.mark.parametrize("scale,modulated", [(1.0, False), (3.0, False), (3.0, True)])
def test_kv_cache_and_naive_sampling_draw_the_same_tokens(scale, modulated):
    torch.manual_seed(0)
    model = TextToImage(small_config(text_modulation=modulated))
    if modulated:
        _randomise_modulation(model)
    ids = caption_ids()
    a = sample_tokens(model, ids, guidance_scale=scale, top_k=8, generator=torch.Generator().manual_seed(3))
    b = sample_tokens(model, ids, guidance_scale=scale, top_k=8, generator=torch.Generator().manual_seed(3),
                      use_cache=False)
    assert a.shape == (4, 3, 3) and torch.equal(a, b)
    assert model.training  # the sampler restores the mode it found


def _randomise_modulation(model: TextToImage) -> None:
    """Move the zero-initialised modulation to what training would leave: nonzero shifts and scales."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.modulation:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.2)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.2)


def test_text_modulation_starts_as_the_plain_model_and_then_conditions_every_position():
    torch.manual_seed(0)
    plain = TextToImage(small_config()).eval()
    torch.manual_seed(0)
    modulated = TextToImage(small_config(text_modulation=True)).eval()
    ids, toks = caption_ids(), torch.randint(0, 16, (4, 9))
    # adaLN-Zero: the same weights elsewhere, zero shifts and scales, so the same logits
    missing, unexpected = modulated.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("modulation.") for k in missing)
    assert torch.allclose(modulated(ids, toks), plain(ids, toks), atol=1e-6)
    _randomise_modulation(modulated)
    out = modulated(ids, toks)
    assert not torch.allclose(out, plain(ids, toks), atol=1e-3)
    # with cross-attention silenced the plain decoder ignores the caption; the modulated one still reads it
    with torch.no_grad():
        for model in (plain, modulated):
            for block in model.blocks:
                block.cross.proj.weight.zero_()
                block.cross.proj.bias.zero_()
    other = ids.flip(0)
    assert torch.allclose(plain(other, toks), plain(ids, toks), atol=1e-6)
    assert not torch.allclose(modulated(other, toks), modulated(ids, toks), atol=1e-3)
    # the pool is a mean over the real tokens: less padding changes nothing
    assert torch.allclose(modulated(ids[:, :8], toks), modulated(ids, toks), atol=1e-5)
    states, mask = modulated.encode_text(ids)
    with pytest.raises(ValueError, match="modulations"):
        modulated.decode(modulated.memories(states), mask, toks, 0)
    with pytest.raises(ValueError, match="modulations"):
        plain.decode(plain.memories(states), mask, toks, 0, modulations=modulated.modulations(states, mask))


def test_super_conditioning_mixes_caption_and_empty_caption_logits():
    """With top_k=1 the guided draw is the argmax of uncond + s·(cond − uncond) at every step."""
    torch.manual_seed(0)
    model = TextToImage(small_config()).eval()
    ids = caption_ids(2)
    s = 4.0
    grid = sample_tokens(model, ids, guidance_scale=s, top_k=1).flatten(1)  # (2, 9)
    cond = model(ids, grid)
    uncond = model(model.null_caption(2, ids.shape[1]), grid)
    assert torch.equal((uncond + s * (cond - uncond)).argmax(-1), grid)
    assert not torch.equal(cond.argmax(-1), grid) or not torch.equal(uncond.argmax(-1), grid)


def test_caption_dropout_uses_the_empty_caption():
    torch.manual_seed(0)
    model = TextToImage(small_config(caption_drop_prob=1.0)).train()
    ids, toks = caption_ids(), torch.randint(0, 16, (4, 9))
    dropped = model.loss(ids, toks)
    model.eval()
    assert torch.allclose(dropped, torch.nn.functional.cross_entropy(
        model(model.null_caption(4, 10), toks).reshape(-1, 16), toks.reshape(-1)))
    with pytest.raises(ValueError, match="caption_drop_prob"):
        small_config(caption_drop_prob=0.0, guidance_scale=2.0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            small_config(temperature=bad)


def test_token_noise_corrupts_what_the_decoder_reads_not_what_it_predicts():
    torch.manual_seed(0)
    model = TextToImage(small_config(caption_drop_prob=0.0, token_noise_prob=0.5)).train()
    ids, toks = caption_ids(), torch.randint(0, 16, (4, 9))
    torch.manual_seed(1)
    noisy = model.loss(ids, toks)
    torch.manual_seed(1)
    read = torch.where(torch.rand(toks.shape) < 0.5, torch.randint_like(toks, 16), toks)  # the same draws
    assert not torch.equal(read, toks)
    want = torch.nn.functional.cross_entropy(model(ids, toks, read).reshape(-1, 16), toks.reshape(-1))
    assert torch.allclose(noisy, want)
    clean = torch.nn.functional.cross_entropy(model(ids, toks).reshape(-1, 16), toks.reshape(-1))
    assert not torch.allclose(noisy, clean)
    assert torch.allclose(model.eval().loss(ids, toks), clean)  # evaluation reads the true tokens
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="token_noise_prob"):
            small_config(token_noise_prob=bad)


@pytest.mark.parametrize("modulated", [False, True])
def test_save_and_load_are_strict_and_carry_the_tokenizer(tmp_path, modulated):
    torch.manual_seed(0)
    model = TextToImage(small_config(text_modulation=modulated))
    if modulated:
        _randomise_modulation(model)
    tok = CaptionTokenizer.train(["a red circle"] * 5, vocab_size=300)
    model.save_pretrained(tmp_path / "m", tok)
    again = TextToImage.from_pretrained(tmp_path / "m")
    ids, toks = caption_ids(), torch.randint(0, 16, (4, 9))
    assert torch.equal(again(ids, toks), model.eval()(ids, toks))
    assert (tmp_path / "m" / "tokenizer.json").exists()
    from safetensors.torch import load_file, save_file
    state = load_file(tmp_path / "m" / "model.safetensors")
    state.pop("head.weight")
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(RuntimeError, match="head.weight"):
        TextToImage.from_pretrained(tmp_path / "m")


# --- training ---------------------------------------------------------------------------------------

def tiny_cfg(tokens, **loop):
    cfg = TEXT2IMG_PRESETS["tiny"]()
    return apply_overrides(cfg, [f"tokens={tokens}"] + [f"loop.{k}={v}" for k, v in loop.items()])


def test_training_learns_captions_and_resumes_exactly(tmp_path):
    tokens = write_captioned_tokens(tmp_path / "toks")
    model, tok, metrics = train_text2img(tiny_cfg(tokens, max_steps=100), tmp_path / "run", progress=False)
    assert metrics["test_bits_per_token"] < 2.0  # 5 bits/token for uniform guessing over 32 ids
    assert (tmp_path / "run" / "tokenizer.json").exists()
    ids, _ = tok.encode(["a blue square", "a red circle"], model.config.max_text_len)
    grids = sample_tokens(model, ids, top_k=1)  # (2, 4, 4)
    assert int(grids[0, 1, 1]) == 2 * 4 + 1 and int(grids[1, 1, 1]) == 0

    full, _, _ = train_text2img(tiny_cfg(tokens, max_steps=20, save_every=10), tmp_path / "a", progress=False)
    import vqgen.train.text2img as t2i

    def crash_at_step_13(loss, step, run_dir):  # after the checkpoint of step 10
        if step == 13:
            raise KeyboardInterrupt
    real = t2i.check_finite
    t2i.check_finite = crash_at_step_13
    try:
        with pytest.raises(KeyboardInterrupt):
            train_text2img(tiny_cfg(tokens, max_steps=20, save_every=10), tmp_path / "b", progress=False)
    finally:
        t2i.check_finite = real
    resumed, _, _ = train_text2img(tiny_cfg(tokens, max_steps=20, save_every=10), tmp_path / "b", progress=False)
    for (k, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_training_refuses_uncaptioned_or_mismatched_tokens(tmp_path):
    tokens = write_captioned_tokens(tmp_path / "toks")
    with pytest.raises(ConfigError, match="grid"):
        train_text2img(apply_overrides(tiny_cfg(tokens), ["model.grid=[3, 3]"]), tmp_path / "r1", progress=False)
    meta = json.loads((tokens / "meta.json").read_text())
    plain = tmp_path / "plain"
    w = TokenWriter(plain, "train", meta)
    w.write(0, torch.zeros(20, 4, 4, dtype=torch.long), None)
    w.finish(20)
    assert load_tokens(plain, "train").captions is None
    with pytest.raises(Exception, match="no captions"):
        train_text2img(tiny_cfg(plain), tmp_path / "r2", progress=False)


def test_pretrained_bart_encoder_from_a_local_directory(tmp_path):
    """A tiny random BART saved by the test stands in for facebook/bart-base: its encoder weights and
    tokenizer are used, frozen, and the trained run reloads without the original directory."""
    transformers = pytest.importorskip("transformers")
    tokens = write_captioned_tokens(tmp_path / "toks")
    caps = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    tok = CaptionTokenizer.train(caps * 4, vocab_size=300)
    bart_dir = tmp_path / "bart"
    cfg = transformers.BartConfig(vocab_size=tok.vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                  decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=tok.pad_id,
                                  bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(1)
    bart = transformers.BartModel(cfg)
    bart.save_pretrained(bart_dir)
    tok.save(bart_dir)
    run_cfg = apply_overrides(tiny_cfg(tokens, max_steps=4), ["model.freeze_text_encoder=true",
                                                              f"text_encoder_path={bart_dir}"])
    model, _, _ = train_text2img(run_cfg, tmp_path / "run", progress=False)
    ref = bart.get_encoder().state_dict()
    for k, v in model.text_encoder.state_dict().items():
        assert torch.equal(v, ref[k]), k  # loaded, and frozen through training
    again = TextToImage.from_pretrained(tmp_path / "run")
    ids, _ = tok.encode(["a red circle"], 16)
    assert torch.equal(sample_tokens(again, ids, top_k=1), sample_tokens(model, ids, top_k=1))
