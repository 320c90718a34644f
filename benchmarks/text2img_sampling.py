"""Sampling speed of the text-to-image model: KV-cached vs naive sampler vs Hugging Face BART ``generate``
vs min-dalle's decoder loop, all with super-conditioning (classifier-free guidance).

    python benchmarks/text2img_sampling.py --json [--batch 16] [--repeats 3] [--guidance 3] [--out FILE]

Every contender has the same width/depth/heads, caption length, image grid and codebook, random
weights (speed does not depend on them; nothing is downloaded) and ``torch.set_num_threads(2)``.
Each runs once as a warm-up, then the best of ``--repeats`` timed runs (interleaved across
contenders) is kept. Throughput is generated image tokens per second (batch · H·W per run); a run
includes encoding the captions. Dimensions are those of the ``shapes`` text-to-image preset when
``TEXT2IMG_PRESETS`` has one, else n_embd=256, n_head=8, 2 encoder + 4 decoder layers, an 8×8 grid,
a 512-code codebook, 24-token captions.

* ``kv``: ``vqgen.text.sample_tokens(use_cache=True)``: caption encoded once, cross-attention
  keys/values projected once, self-attention KV cache; guidance runs [cond; uncond] = 2·batch rows
  per step and mixes the logits.
* ``naive``: the same with ``use_cache=False`` (the whole decoder prefix recomputed every step).
* ``hf``: ``BartForConditionalGeneration.generate`` (its own KV cache, ``do_sample=True``,
  ``top_k=0``, no top-p/temperature), a randomly initialised ``BartConfig`` of the same d_model,
  encoder/decoder layers, heads and ffn = 4·d_model, one shared vocabulary of
  max(text vocab, codebook + 1) ids (the decoder start id is the codebook size, like ours),
  ``max_new_tokens = min_new_tokens = H·W``. transformers' classifier-free guidance
  (``guidance_scale=`` → ``UnbatchedClassifierFreeGuidanceLogitsProcessor``) is written for
  decoder-only models (it feeds the decoder ids to ``model(input_ids)``, i.e. BART's encoder), so it
  does not work for BART; instead HF runs on 2·batch rows (the captions and the empty captions)
  without mixing, which is the same per-step compute as super-conditioning.
* ``min_dalle``: PyPI ``min-dalle``'s ``DalleBartEncoder`` / ``DalleBartDecoder`` with random weights
  of our dimensions, driven exactly like ``MinDalle.generate_raw_image_stream``: one caption and the
  empty caption encoded as 2 rows and expanded to 2·batch, a zeroed attention state
  (layers, 4·batch, H·W, d), and ``decoder.sample_tokens`` once per image token (its fused
  super-conditioning + top-k sampling; top-k = the whole vocabulary, i.e. no filtering). Adapted to
  our sizes: min-dalle fixes ``IMAGE_TOKEN_COUNT = 256`` (the attention state's length) as a module
  constant, so it is set to H·W before the decoder is built; its feed-forward is a GLU with three
  matrices, so its hidden width is 8·d/3 (DALL·E mini's own ratio, 2730 for d = 1024), which has
  the parameters and FLOPs of our 4·d two-matrix MLP; its caption padding id is 1. Only
  ``min_dalle.models`` is imported: the package's ``__init__`` imports the pretrained-weight
  downloader (``requests``) and the BPE tokenizer (``emoji``), neither installed nor needed, and
  sets torch's global thread count and grad mode. min-dalle is a benchmark-only install
  (``pip install --no-deps min-dalle``), not a vqgen dependency; without it ``min_dalle_tokens_per_s``
  is null.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402
from sampling import best_times  # noqa: E402

from vqgen.text.dalle import TextToImage, TextToImageConfig  # noqa: E402
from vqgen.text.sampling import sample_tokens  # noqa: E402
from vqgen.train.text2img import TEXT2IMG_PRESETS  # noqa: E402

THREADS = 2


def default_config() -> tuple[TextToImageConfig, str]:
    """The ``shapes`` preset's model when it exists, else the fallback dimensions of the docstring."""
    if "shapes" in TEXT2IMG_PRESETS:
        return TEXT2IMG_PRESETS["shapes"]().model, "shapes"
    return TextToImageConfig(vocab_size=512, grid=(8, 8), text_vocab_size=512, max_text_len=24, n_embd=256,
                             n_head=8, n_enc_layer=2, n_dec_layer=4, caption_drop_prob=0.1), "default"


def random_captions(cfg: TextToImageConfig, batch: int, pad_id: int) -> torch.Tensor:
    """(batch, L) caption ids: <s>, 3.. random ids, </s> at varied lengths, then ``pad_id``."""
    g = torch.Generator().manual_seed(0)
    length = cfg.max_text_len
    ids = torch.randint(3, cfg.text_vocab_size, (batch, length), generator=g)
    ids[:, 0] = cfg.bos_id
    for i in range(batch):
        end = max(2, length - 1 - (i * 5) % (length // 2))  # the </s> position
        ids[i, end] = cfg.eos_id
        ids[i, end + 1:] = pad_id
    return ids


def hf_sampler(cfg: TextToImageConfig, captions: torch.Tensor, null: torch.Tensor) -> tuple[Callable, int]:
    from transformers import BartConfig, BartForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    c, seq = cfg.n_embd, cfg.seq_len
    hf_cfg = BartConfig(vocab_size=max(cfg.text_vocab_size, cfg.vocab_size + 1), d_model=c,
                        encoder_layers=cfg.n_enc_layer, decoder_layers=cfg.n_dec_layer,
                        encoder_attention_heads=cfg.n_head, decoder_attention_heads=cfg.n_head,
                        encoder_ffn_dim=4 * c, decoder_ffn_dim=4 * c,
                        max_position_embeddings=max(cfg.max_text_len, seq + 1),
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        pad_token_id=cfg.pad_id, bos_token_id=cfg.bos_id, eos_token_id=None,
                        decoder_start_token_id=cfg.vocab_size, forced_bos_token_id=None, forced_eos_token_id=None)
    model = BartForConditionalGeneration(hf_cfg).eval()
    ids = torch.cat([captions, null])  # (2B, L): the captions and the empty captions
    mask = (ids != cfg.pad_id).long()
    rows = ids.shape[0]

    def run() -> torch.Tensor:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=seq,
                                 min_new_tokens=seq, use_cache=True, top_k=0, top_p=None, temperature=None,
                                 num_beams=1)
        if out.shape != (rows, 1 + seq):
            raise RuntimeError(f"HF generate returned {tuple(out.shape)}, expected {(rows, 1 + seq)}")
        return out

    return run, sum(p.numel() for p in model.parameters())


def import_min_dalle_models() -> types.ModuleType | None:
    """``min_dalle.models`` without running ``min_dalle/__init__.py`` (see the docstring); None if absent."""
    spec = importlib.util.find_spec("min_dalle")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "min_dalle" not in sys.modules:
        pkg = types.ModuleType("min_dalle")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["min_dalle"] = pkg
    import min_dalle.models
    return min_dalle.models


def min_dalle_sampler(cfg: TextToImageConfig, caption: torch.Tensor, batch: int,
                      guidance: float) -> tuple[Callable, int, int] | None:
    models = import_min_dalle_models()
    if models is None:
        return None
    from min_dalle.models import DalleBartDecoder, DalleBartEncoder, dalle_bart_decoder

    c, seq, text_len = cfg.n_embd, cfg.seq_len, cfg.max_text_len
    dalle_bart_decoder.IMAGE_TOKEN_COUNT = seq  # min-dalle's fixed 256 image tokens → our H·W
    glu = round(8 * c / 3)
    torch.manual_seed(0)
    encoder = DalleBartEncoder(layer_count=cfg.n_enc_layer, embed_count=c, attention_head_count=cfg.n_head,
                               text_vocab_count=cfg.text_vocab_size, text_token_count=text_len,
                               glu_embed_count=glu, device="cpu").eval()
    decoder = DalleBartDecoder(image_vocab_count=cfg.vocab_size, embed_count=c, attention_head_count=cfg.n_head,
                               glu_embed_count=glu, layer_count=cfg.n_dec_layer, device="cpu").eval()
    # min-dalle's text layout: row 0 the empty caption [<s>, </s>], row 1 the caption, padding id 1
    real = caption[caption != cfg.pad_id]
    text_tokens = torch.ones(2, text_len, dtype=torch.long)
    text_tokens[0, :2] = torch.stack([real[0], real[-1]])
    text_tokens[1, :len(real)] = real
    start_id = cfg.vocab_size  # min-dalle: 2**14 - 1, the last id of its 2**14 + 1 token embeddings
    top_k = cfg.vocab_size + 1  # keep every logit: no filtering
    params = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in decoder.parameters())

    def run() -> torch.Tensor:  # MinDalle.generate_raw_image_stream, without the detokenizer
        with torch.inference_mode():
            encoder_state = encoder.forward(text_tokens)  # (2, L, C)
            expanded_indices = [0] * batch + [1] * batch
            tokens = text_tokens[expanded_indices]  # (2B, L)
            encoder_state = encoder_state[expanded_indices]  # (2B, L, C)
            attention_mask = tokens.not_equal(1)[:, None, None, :]
            attention_state = torch.zeros(size=(cfg.n_dec_layer, batch * 4, seq, c))
            image_tokens = torch.full((batch, seq + 1), start_id, dtype=torch.long)
            token_indices = torch.arange(seq)
            settings = torch.tensor([1.0, top_k, guidance], dtype=torch.float32)
            for i in range(seq):
                image_tokens[:, i + 1], attention_state = decoder.sample_tokens(
                    settings=settings, attention_mask=attention_mask, encoder_state=encoder_state,
                    attention_state=attention_state, prev_tokens=image_tokens[:, [i]], token_index=token_indices[[i]])
        return image_tokens[:, 1:]

    return run, params, glu


def main(argv: list[str] | None = None) -> int:
    cfg, source = default_config()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (always done; kept for the CLI)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=3.0, help="super-conditioning scale (≠ 1: 2·batch rows)")
    ap.add_argument("--skip-naive", action="store_true", help="leave out the slow naive sampler (null)")
    ap.add_argument("--out", help="write the JSON here (default benchmarks/results/text2img_sampling.json)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be ≥ 1")
    if args.guidance == 1.0:
        ap.error("--guidance must be ≠ 1: this benchmark measures super-conditioned sampling")
    torch.set_num_threads(THREADS)

    torch.manual_seed(0)
    model = TextToImage(cfg).eval()
    captions = random_captions(cfg, args.batch, cfg.pad_id)  # (B, L)
    gen = torch.Generator().manual_seed(0)
    fns: dict[str, Callable[[], object]] = {
        "kv": lambda: sample_tokens(model, captions, guidance_scale=args.guidance, generator=gen, use_cache=True),
    }
    if not args.skip_naive:
        fns["naive"] = lambda: sample_tokens(model, captions, guidance_scale=args.guidance, generator=gen,
                                             use_cache=False)
    fns["hf"], hf_params = hf_sampler(cfg, captions, model.null_caption(*captions.shape))
    md = min_dalle_sampler(cfg, captions[0], args.batch, args.guidance)
    md_params = md_glu = None
    if md is not None:
        fns["min_dalle"], md_params, md_glu = md
    secs = best_times(fns, args.repeats)

    tokens = args.batch * cfg.seq_len

    def rate(name: str) -> float | None:
        return round(tokens / secs[name], 1) if name in secs else None

    def ratio(name: str) -> float | None:
        return round(secs[name] / secs["kv"], 2) if name in secs else None

    result = {
        "config_source": source,
        "n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_enc_layer": cfg.n_enc_layer, "n_dec_layer": cfg.n_dec_layer,
        "grid": list(cfg.grid), "codebook": cfg.vocab_size, "text_vocab": cfg.text_vocab_size,
        "caption_len": cfg.max_text_len, "batch": args.batch, "guidance_scale": args.guidance,
        "rows_per_step": 2 * args.batch, "tokens_per_run": tokens, "repeats": args.repeats,
        "params": {"vqgen": model.num_params(), "hf_bart": hf_params, "min_dalle": md_params},
        "min_dalle_glu_hidden": md_glu,
        "kv_tokens_per_s": rate("kv"),
        "naive_tokens_per_s": rate("naive"),
        "hf_tokens_per_s": rate("hf"),
        "min_dalle_tokens_per_s": rate("min_dalle"),
        "kv_over_naive": ratio("naive"),
        "kv_over_hf": ratio("hf"),
        "kv_over_min_dalle": ratio("min_dalle"),
        "hf_guidance": "2·batch rows (captions + empty captions), no logit mixing: HF's CFG does not support BART",
        "torch_set_num_threads": THREADS,
        "machine": machine(),
        "command": " ".join(["python"] + sys.argv),
    }
    write_result("text2img_sampling", result, args.out)  # prints the JSON object too
    return 0


if __name__ == "__main__":
    sys.exit(main())
