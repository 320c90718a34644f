"""Stage-2 prior: model, KV cache, samplers, filters, pixel palette. Offline, CPU, a few seconds."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from vqgen.config import ConfigError, from_dict, resolve_config, to_dict
from vqgen.layers import MLP, KVCache, SelfAttention, TransformerBlock
from vqgen.prior import (PRESETS, GPTPrior, PriorConfig, fit_palette, from_indices, guide, load_palette, sample,
                         sample_sliding, save_palette, to_indices, top_k_filter, top_p_filter)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread avoids OpenMP overhead (and stalls on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**changes) -> PriorConfig:
    return dataclasses.replace(PRESETS["tiny"](), **changes)


def build(seed: int = 0, **changes) -> GPTPrior:
    torch.manual_seed(seed)
    return GPTPrior(tiny(**changes)).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_tokens(b: int, length: int = 16, vocab: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (b, length), generator=gen(seed))


# ---- config & presets ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes", [
    dict(n_embd=30, n_head=4), dict(vocab_size=0), dict(grid=(0, 4)), dict(dropout=1.0),
    dict(num_classes=-1), dict(cond_drop_prob=1.5), dict(num_classes=0, cond_drop_prob=0.1),
])
def test_config_rejects_bad_values(changes):
    with pytest.raises(ValueError):
        tiny(**changes)


def test_config_dict_roundtrip_and_presets_build():
    cfg = tiny()
    assert from_dict(PriorConfig, to_dict(cfg)) == cfg
    assert resolve_config(PriorConfig, "tiny", PRESETS, ["n_layer=3"]).n_layer == 3
    with pytest.raises(ConfigError):
        from_dict(PriorConfig, {**to_dict(cfg), "n_embd": 30, "n_head": 4})
    for name, make in PRESETS.items():
        cfg = make()
        assert cfg.seq_len == cfg.grid[0] * cfg.grid[1], name
    fm = PRESETS["fashion-mnist-class"]()
    assert (fm.grid, fm.vocab_size, fm.num_classes) == ((8, 8), 512, 10) and fm.cond_drop_prob > 0
    px = PRESETS["fashion-mnist-pixels"]()
    assert (px.grid, px.vocab_size, px.n_layer, px.n_embd) == ((28, 28), 16, fm.n_layer, fm.n_embd)


# ---- layers -------------------------------------------------------------------------------------

def test_transformer_layers_shapes_and_errors():
    x = torch.randn(2, 5, 16)
    assert MLP(16, 64)(x).shape == (2, 5, 16)
    assert TransformerBlock(16, 4)(x).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(16, 3)
    cache = KVCache(2, 4, 4, max_len=3)
    cache.append(torch.zeros(2, 4, 2, 4), torch.zeros(2, 4, 2, 4))
    with pytest.raises(ValueError, match="max_len"):
        cache.append(torch.zeros(2, 4, 2, 4), torch.zeros(2, 4, 2, 4))
    with pytest.raises(ValueError):
        cache.append(torch.zeros(3, 4, 1, 4), torch.zeros(3, 4, 1, 4))


def test_attention_cache_matches_full_pass_in_chunks():
    torch.manual_seed(0)
    attn = SelfAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    full = attn(x)
    cache = attn.new_cache(2, 9)
    parts = [attn(x[:, :4], cache), attn(x[:, 4:5], cache), attn(x[:, 5:9], cache)]  # prefill, 1 step, chunk
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-6)


# ---- model --------------------------------------------------------------------------------------

def test_forward_and_loss_shapes():
    m = build()
    tokens = rand_tokens(3)
    cond = torch.tensor([0, 1, 3])
    assert m(tokens, cond).shape == (3, 16, 16)
    assert m(tokens[:, :5]).shape == (3, 5, 16)
    assert m(tokens[:, :1], cond).shape == (3, 1, 16)
    loss = m.loss(tokens, cond)
    assert loss.dim() == 0 and abs(loss.item() - math.log(16)) < 0.5  # near-uniform at init
    assert m.num_params() == sum(p.numel() for p in m.parameters()) > 0


def test_gpt2_init_scales_residual_projections():
    m = GPTPrior(tiny(n_embd=64, n_head=4, n_layer=8))
    std = torch.cat([b.attn.proj.weight.flatten() for b in m.blocks]).std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(m.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002


def test_causality():
    m = build()
    tokens = rand_tokens(2)
    cond = torch.tensor([1, 2])
    base = m(tokens, cond)
    for j in (0, 7, 14):
        changed = tokens.clone()
        changed[:, j] = (changed[:, j] + 1) % 16
        out = m(changed, cond)
        torch.testing.assert_close(out[:, :j + 1], base[:, :j + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, j + 1:], base[:, j + 1:])
    other = m(tokens, torch.tensor([3, 0]))
    assert not torch.allclose(other[:, 0], base[:, 0])  # the condition token predicts token 0


def test_cached_decode_matches_forward():
    m = build()
    tokens = rand_tokens(2)
    cond = torch.tensor([0, 3])
    full = m(tokens, cond)  # (2, 16, V): outputs of inputs [cond, t0..t14]
    caches = m.new_caches(2)
    a = m.decode(cond, tokens[:, :6], slice(0, 6), caches)  # cond + t0..t5 -> 7 outputs
    b = m.decode(None, tokens[:, 6:7], slice(6, 7), caches)
    c = m.decode(None, tokens[:, 7:15], slice(7, 15), caches)
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, rtol=1e-5, atol=1e-5)


def test_condition_dropout_only_in_train_mode():
    m = build(cond_drop_prob=1.0)
    tokens, cond = rand_tokens(4), torch.tensor([0, 1, 2, 3])
    uncond = m.loss(tokens)
    state = torch.get_rng_state()
    assert not torch.allclose(m.loss(tokens, cond), uncond)  # eval: the class is used ...
    assert torch.equal(torch.get_rng_state(), state)  # ... and no randomness is drawn
    m.train()
    torch.testing.assert_close(m.loss(tokens, cond), uncond)  # train, p=1: always the null condition
    # p=0.5 draws from torch's global RNG: reproducible under manual_seed
    half = build(cond_drop_prob=0.5).train()
    torch.manual_seed(5)
    l1 = half.loss(tokens, cond)
    torch.manual_seed(5)
    assert torch.equal(half.loss(tokens, cond), l1)


def test_bad_inputs_raise():
    m = build()
    t = rand_tokens(2)
    cond = torch.tensor([0, 1])
    bad = [
        lambda: m(t.float(), cond),  # dtype
        lambda: m(t[0], cond),  # 1-D
        lambda: m(torch.cat([t, t], 1), cond),  # too long
        lambda: m(t.clamp(max=15) + 1, cond),  # id 16 = vocab_size
        lambda: m(t - 20, cond),  # negative ids
        lambda: m(t[:, :0], cond),  # empty
        lambda: m(t, torch.tensor([0, 4])),  # class id out of range
        lambda: m(t, torch.tensor([0, 1, 2])),  # wrong batch
        lambda: m.loss(t[:, :8], cond),  # partial grid
        lambda: build(num_classes=0, cond_drop_prob=0.0)(t, cond),  # unconditional model given classes
        lambda: sample(m, 2, temperature=0.0),
        lambda: sample(m, 2, top_k=0),
        lambda: sample(m, 2, top_k=17),
        lambda: sample(m, 2, top_p=0.0),
        lambda: sample(m, 2, guidance_scale=3.0),  # guidance without classes
        lambda: sample(m, 2, guidance_scale=-1.0, cond=cond),
        lambda: sample(m, 0),
        lambda: sample(m, 2, prefix=t[:1, :4]),  # prefix rows != n
        lambda: sample(m, 2, prefix=t[:, :4] + 16),
        lambda: sample_sliding(m, 2, (8, 8), window=(5, 4)),  # window larger than trained grid
        lambda: sample_sliding(m, 2, (3, 8), window=4),  # grid smaller than window
    ]
    for i, call in enumerate(bad):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"case {i} did not raise")


def test_save_load_roundtrip_and_mismatch(tmp_path):
    m = build(seed=3)
    tokens, cond = rand_tokens(2), torch.tensor([1, 2])
    m.save_pretrained(tmp_path / "p")
    loaded = GPTPrior.from_pretrained(tmp_path / "p").eval()
    assert loaded.config == m.config
    assert torch.equal(loaded(tokens, cond), m(tokens, cond))
    cfg_path = tmp_path / "p" / "config.json"
    payload = json.loads(cfg_path.read_text())
    payload["config"]["n_layer"] = 3
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(RuntimeError, match="does not match"):
        GPTPrior.from_pretrained(tmp_path / "p")
    payload["kind"] = "tokenizer"
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="not a 'prior'"):
        GPTPrior.from_pretrained(tmp_path / "p")


# ---- filters --------------------------------------------------------------------------------------

def test_top_k_keeps_exactly_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, 0.0, 9.0, 0.0, 0.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False], [True, False, True, False, False]]
    assert torch.equal(top_k_filter(logits, 5), logits)
    assert torch.equal(top_k_filter(logits, 2)[0, 1], logits[0, 1])
    with pytest.raises(ValueError):
        top_k_filter(logits, 6)


@pytest.mark.parametrize("p,expected", [
    (0.3, {0}), (0.5, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (0.97, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_smallest_nucleus(p, expected):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    order = torch.tensor([2, 0, 3, 1])  # shuffle so that vocabulary order ≠ rank order
    logits = torch.empty(4)
    logits[order] = probs.log()
    out = top_p_filter(logits[None], p)[0]
    kept = {int(order[i]) for i in range(4) if torch.isfinite(out[order[i]])}
    assert kept == {int(order[i]) for i in expected}
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


def test_guide_mix():
    c, u = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(guide(c, u, 1.0), c)
    assert torch.equal(guide(c, u, 0.0), u)
    assert torch.equal(guide(c, u, 3.0), torch.tensor([4.0, -2.0]))


# ---- sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(), dict(cond=torch.tensor([0, 1, 2, 3, 0, 1])), dict(top_k=5, temperature=0.7),
    dict(top_p=0.9, cond=torch.tensor([3, 2, 1, 0, 3, 2]), guidance_scale=2.5),
    dict(prefix=rand_tokens(6, 5)),
])
def test_kv_cache_and_naive_sampling_agree(kwargs):
    m = build()
    fast = sample(m, 6, generator=gen(7), use_cache=True, **kwargs)
    slow = sample(m, 6, generator=gen(7), use_cache=False, **kwargs)
    assert fast.shape == (6, 4, 4) and fast.dtype == torch.long
    assert torch.equal(fast, slow)
    assert fast.min() >= 0 and fast.max() < 16


def test_sampling_is_seeded_and_keeps_mode():
    m = build().train()
    a = sample(m, 4, generator=gen(1))
    assert m.training  # restored
    assert torch.equal(a, sample(m, 4, generator=gen(1)))
    assert not torch.equal(a, sample(m, 4, generator=gen(2)))


def test_guidance():
    m = build()
    cond = torch.tensor([0, 1, 2, 3] * 4)
    plain = sample(m, 16, cond=cond, generator=gen(3))
    assert torch.equal(sample(m, 16, cond=cond, guidance_scale=1.0, generator=gen(3)), plain)
    # scale 0 runs the doubled batch and keeps only the null half: unconditional sampling
    assert torch.equal(sample(m, 16, cond=cond, guidance_scale=0.0, generator=gen(3)),
                       sample(m, 16, generator=gen(3)))
    assert not torch.equal(sample(m, 16, cond=cond, guidance_scale=4.0, generator=gen(3)), plain)


def test_prefix_completion():
    m = build()
    prefix = rand_tokens(3, 8, seed=4)  # the first two rows
    out = sample(m, 3, prefix=prefix, cond=torch.tensor([0, 1, 2]), generator=gen(0))
    assert torch.equal(out.view(3, 16)[:, :8], prefix)
    full = rand_tokens(3, 16, seed=5)
    assert torch.equal(sample(m, 3, prefix=full).view(3, 16), full)


def test_sliding_window_equals_plain_sampling_on_trained_grid():
    m = build()
    cond = torch.tensor([0, 1, 2, 3])
    plain = sample(m, 4, cond=cond, generator=gen(11), top_k=8)
    slide = sample_sliding(m, 4, (4, 4), window=(4, 4), cond=cond, generator=gen(11), top_k=8)
    assert torch.equal(slide, plain)
    guided = sample(m, 4, cond=cond, guidance_scale=2.0, generator=gen(12))
    assert torch.equal(sample_sliding(m, 4, (4, 4), cond=cond, guidance_scale=2.0, generator=gen(12)), guided)


def test_sliding_window_larger_grid_and_smaller_window():
    m = build()
    big = sample_sliding(m, 2, (6, 9), cond=torch.tensor([1, 2]), generator=gen(0))
    assert big.shape == (2, 6, 9) and big.min() >= 0 and big.max() < 16
    small = sample_sliding(m, 2, (5, 7), window=3, generator=gen(0))
    assert small.shape == (2, 5, 7)
    assert torch.equal(small, sample_sliding(m, 2, (5, 7), window=(3, 3), generator=gen(0)))


# ---- pixel palette --------------------------------------------------------------------------------

def test_palette_recovers_separated_colours(tmp_path):
    true = torch.tensor([[10, 200, 30], [250, 240, 230], [128, 0, 128], [0, 0, 0]], dtype=torch.float32)
    g = gen(0)
    which = torch.randint(4, (20, 6, 6), generator=g)  # (N, H, W)
    noise = torch.randint(-3, 4, (20, 6, 6, 3), generator=g)
    images = (true[which] + noise).clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2)  # (N, C, H, W)
    palette = fit_palette(images, 4, seed=0, max_pixels=500, iters=10)
    assert palette.shape == (4, 3) and palette.dtype == torch.float32
    dist = (palette[:, None] - true[None]).abs().amax(-1)  # (4, 4)
    assert dist.min(dim=1).values.max() < 3 and len(set(dist.argmin(dim=1).tolist())) == 4
    assert torch.equal(fit_palette(images, 4, seed=0, max_pixels=500), palette)  # deterministic
    idx = to_indices(images, palette)
    assert idx.shape == (20, 6, 6) and idx.dtype == torch.long
    back = from_indices(idx, palette)
    assert back.shape == images.shape and back.dtype == torch.uint8
    assert (back.int() - images.int()).abs().max() <= 6
    assert torch.equal(to_indices(back, palette), idx)
    save_palette(palette, tmp_path / "palette.safetensors")
    assert torch.equal(load_palette(tmp_path / "palette.safetensors"), palette)
    with pytest.raises(ValueError, match="distinct"):
        fit_palette(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError):
        to_indices(images.float(), palette)
    with pytest.raises(ValueError):
        from_indices(idx + 4, palette)


# ---- learning -------------------------------------------------------------------------------------

def test_overfits_a_pattern_per_class():
    torch.manual_seed(0)
    m = GPTPrior(tiny(cond_drop_prob=0.0)).train()
    patterns = torch.randint(16, (4, 16), generator=gen(9))  # one fixed 4×4 grid per class
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    cond = torch.arange(4).repeat(8)  # (32,)
    for _ in range(100):
        loss = m.loss(patterns[cond], cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * math.log(16)
    m.eval()
    out = sample(m, 4, cond=torch.arange(4), top_k=1, generator=gen(0))
    assert torch.equal(out.view(4, 16), patterns)
