"""Text-to-image training: the caption encoder + image-token decoder over pre-encoded token shards.

Reads a captioned token directory (``vqgen encode`` of ``shapes``, ``pairs:`` or ``manifest:`` data);
the image tokenizer never runs here. At step 0 a byte-level BPE is fitted on the training captions
and saved in the run directory (``tokenizer.json``); a resumed run reloads it. With
``text_encoder_path`` the caption encoder is a pretrained transformers model (BART-style, with its
``tokenizer.json``) read from that local directory instead. The loop is the prior's: the batch of
step s is a pure function of (seed, s), checkpoints restore it exactly.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..data.tokens import TokenDataset, load_tokens
from ..errors import ConfigError, DataError
from ..hub import check_model_files
from ..text.bpe import TOKENIZER_FILE, CaptionTokenizer
from ..text.dalle import (TextToImage, TextToImageConfig, dalle_mini_config, hf_text_encoder_config,
                          load_hf_text_encoder)
from .cards import write_model_card
from .common import (Dist, LoopConfig, OptimConfig, RunDir, batch_indices, check_finite, checkpoint_parts, distribute,
                     gather_parts, is_sharded, make_optimizer, optimizer_step, progress_bar, reshard, setup_distributed,
                     shard, summary_writer)


@dataclass
class TextToImageTrainConfig:
    model: TextToImageConfig = field(default_factory=lambda: TextToImageConfig(vocab_size=32, grid=(4, 4)))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.01))
    loop: LoopConfig = field(default_factory=LoopConfig)
    bpe_vocab_size: int = 512          # the caption BPE fitted on the training captions
    text_encoder_path: str | None = None  # a local transformers BART/T5/CLIP directory: its encoder and tokenizer
    tokens: str = ""                   # captioned token directory; --tokens overrides

    def __post_init__(self) -> None:
        if self.model.freeze_text_encoder and not (self.text_encoder_path or self.model.hf_text_encoder):
            raise ValueError("model.freeze_text_encoder needs a pretrained text encoder (text_encoder_path)")


def caption_ids(tokenizer: CaptionTokenizer, captions: list[str], max_len: int, what: str) -> torch.Tensor:
    """All captions → ids (N, max_len); over-long captions are truncated, counted and warned about once."""
    ids, truncated = tokenizer.encode(captions, max_len)
    if truncated:
        warnings.warn(f"{what}: {truncated} of {len(captions)} captions are longer than {max_len} ids and were "
                      "truncated", stacklevel=2)
    return ids


@torch.inference_mode()
def bits_per_token(model: TextToImage, ids: torch.Tensor, tokens: torch.Tensor, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> float:
    """Mean NLL in bits per image token of ``tokens`` (N, H, W) given captions ``ids`` (N, L)."""
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(tokens), batch_size):
        t = tokens[i:i + batch_size].flatten(1).to(device)  # (b, HW)
        total += float(model.loss(ids[i:i + batch_size].to(device), t)) * t.shape[0]
    model.train(was)
    return total / len(tokens) / math.log(2)


def _check_data(cfg: TextToImageConfig, data: TokenDataset) -> None:
    if tuple(cfg.grid) != data.grid or cfg.vocab_size != data.vocab_size:
        raise ConfigError(f"the model expects grid {tuple(cfg.grid)} / vocabulary {cfg.vocab_size}, but the tokens "
                          f"are grid {data.grid} / vocabulary {data.vocab_size}; set model.grid / model.vocab_size")
    if data.captions is None:
        raise DataError("the token directory has no captions: encode a captioned dataset (shapes, pairs:DIR, "
                        "manifest:FILE)")


def _caption_tokenizer(cfg: TextToImageTrainConfig, run: RunDir, captions: list[str], is_main: bool) -> CaptionTokenizer:
    """The run's caption tokenizer: reloaded when the run has one, else fitted (or taken from the
    pretrained text encoder's directory) and saved."""
    saved = run.path / TOKENIZER_FILE
    if saved.exists():
        check_model_files(run.path)  # against the checksum the exported model recorded, if any
        return CaptionTokenizer.load(saved)
    if cfg.text_encoder_path:
        tok = CaptionTokenizer.load(cfg.text_encoder_path)
    else:
        tok = CaptionTokenizer.train(captions, cfg.bpe_vocab_size)
    if is_main:
        tok.save(run.path)
    return tok


def prepare_config(cfg: TextToImageTrainConfig) -> TextToImageTrainConfig:
    """Fill in what a pretrained text encoder fixes: its transformers config (so the architecture is
    saved with the run and rebuilt without the original directory)."""
    if cfg.text_encoder_path and cfg.model.hf_text_encoder is None:
        cfg.model.hf_text_encoder = hf_text_encoder_config(cfg.text_encoder_path)
    return cfg


def train_text2img(cfg: TextToImageTrainConfig, out_dir: str | Path, tokens: str | None = None,
                   progress: bool = True) -> tuple[TextToImage, CaptionTokenizer, dict]:
    """Train (or resume) a text-to-image model into ``out_dir``; returns (model on CPU, tokenizer, metrics).
    With ``loop.fsdp`` among several ranks, rank 0 returns the whole model and the other ranks their shards."""
    if tokens:
        cfg.tokens = tokens
    if not cfg.tokens:
        raise ConfigError("no token directory: pass --tokens TOKENS_DIR (made by `vqgen encode` of captioned data)")
    cfg = prepare_config(cfg)
    train_data = load_tokens(cfg.tokens, "train")
    test_data = load_tokens(cfg.tokens, "test") if (Path(cfg.tokens) / "test" / "done.json").exists() else None
    _check_data(cfg.model, train_data)
    run = RunDir(out_dir, cfg, kind="text2img")
    d = setup_distributed(cfg.loop.device)
    ckpt = run.prepare(d.is_main)
    tokenizer = _caption_tokenizer(cfg, run, train_data.captions, d.is_main)
    specials = {"pad_id": tokenizer.pad_id, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}
    if cfg.text_encoder_path is None and tokenizer.vocab_size > cfg.model.text_vocab_size:
        raise ConfigError(f"the caption BPE has {tokenizer.vocab_size} entries but model.text_vocab_size is "
                          f"{cfg.model.text_vocab_size}; make them agree (bpe_vocab_size ≤ model.text_vocab_size)")
    if any(getattr(cfg.model, k) != v for k, v in specials.items()):
        raise ConfigError(f"model special ids {[getattr(cfg.model, k) for k in specials]} do not match the caption "
                          f"tokenizer's {list(specials.values())}; set model.pad_id / bos_id / eos_id")
    loop = cfg.loop
    if loop.batch_size % (d.world * loop.grad_accum):
        raise ConfigError(f"batch_size {loop.batch_size} must split over {d.world} ranks × {loop.grad_accum} micro-batches")
    max_len = cfg.model.max_text_len
    train_ids = caption_ids(tokenizer, train_data.captions, max_len, f"{cfg.tokens} train")  # (N, L)
    test_ids = caption_ids(tokenizer, test_data.captions, max_len, f"{cfg.tokens} test") if test_data else None

    torch.manual_seed(loop.seed)
    model = TextToImage(cfg.model)
    if cfg.text_encoder_path and ckpt is None:
        load_hf_text_encoder(model, cfg.text_encoder_path)
    model.to(d.device)
    if loop.fsdp and d.world > 1:  # before the optimiser, which must hold the shards
        shard_text2img(model, d)
    opt, sched = make_optimizer(model.parameters(), cfg.optim, loop.max_steps)
    parts = checkpoint_parts(model, opt, sched)  # FSDP: full state dicts in and out, as DDP's
    start, clock = run.restore(ckpt, parts, announce=d.is_main)
    loss_fn = distribute(_Loss(model), d, loop.compile)

    def evaluate() -> dict:
        if test_data is None:
            return {}
        bits = bits_per_token(model, test_ids, test_data.tokens, device=d.device)
        reshard(model)
        return {"test_bits_per_token": bits}

    writer = summary_writer(run.path, start if ckpt is not None else None, d.is_main)
    bar = progress_bar(loop.max_steps, start, progress and d.is_main, "text2img")
    metrics: dict = {}
    for step in run.steps(start, loop.max_steps):  # ends after the step on SIGTERM / SIGINT
        model.train()
        idx = batch_indices(len(train_data), loop.batch_size, step, loop.seed, d.rank, d.world)
        toks = train_data.tokens[idx].flatten(1).to(d.device)  # (b, HW)
        ids = train_ids[idx].to(d.device)  # (b, L)
        # zero_grad; per micro-batch autocast loss, finite check, backward; clip; optimiser and schedule step
        loss_sum = optimizer_step(loss_fn, (ids, toks), loop.grad_accum, model, opt, sched, cfg.optim.grad_clip,
                                  d.device, check=lambda loss: check_finite(loss, step, run.path))
        done = step + 1
        bar.update(1)
        bar.set_postfix(bits=f"{loss_sum / math.log(2):.3f}")
        if writer is not None and (done % loop.log_every == 0 or done == loop.max_steps):
            writer.add_scalar("train/bits_per_token", loss_sum / math.log(2), done)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
        if done == loop.max_steps:
            with clock.paused():
                metrics = evaluate()
            if writer is not None and metrics:
                writer.add_scalar("test/bits_per_token", metrics["test_bits_per_token"], done)
        if run.checkpoint_due(done):  # every save_every steps, after the last, or on a stop signal
            saved = gather_parts(parts, partial(TextToImage, cfg.model))  # every rank: FSDP gathers to rank 0
            if d.is_main:
                run.save(done, clock, saved, export=lambda path: saved["model"].save_pretrained(path, tokenizer),
                         metrics=metrics)
            del saved  # under FSDP, rank 0 keeps no whole copy between checkpoints
    bar.close()
    if writer is not None:
        writer.close()
    full = gather_parts(parts, partial(TextToImage, cfg.model))  # the parts themselves; FSDP: gathered again
    trained = full["model"]  # the model itself; under FSDP, on rank 0, a whole copy
    if start >= loop.max_steps and d.is_main:  # exported again when only the sampling defaults changed
        metrics = run.finished_metrics(start, clock=clock, parts=full,
                                       export=lambda path: trained.save_pretrained(path, tokenizer))
    if d.is_main:  # README.md: what the run is, its data, figures and command (kept when found finished)
        write_model_card(run.path, trained, overwrite=start < loop.max_steps or bool(run.sampling_changed))
    return (trained if is_sharded(trained) else trained.cpu()).eval(), tokenizer, metrics


def shard_text2img(model: TextToImage, d: Dist) -> None:
    """``loop.fsdp``: every decoder and caption-encoder block a unit of FSDP (a pretrained transformers
    encoder one unit), the rest in the root. The caption's cross-attention keys and values are computed
    for every layer before decoding (``memories``), outside the blocks' forward: each block's ``cross.kv``
    is a unit of its own. ``loss`` runs ``forward``, which gathers the root."""
    encoder = model.text_encoder
    shard(model, [*(b.cross.kv for b in model.blocks), *model.blocks, *getattr(encoder, "blocks", [encoder])], d)


class _Loss(torch.nn.Module):
    """The loss (with caption dropout) inside one forward, so DDP all-reduces its gradients."""

    def __init__(self, model: TextToImage):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.loss(ids, tokens)


# --- named presets --------------------------------------------------------------------------------

def _tiny() -> TextToImageTrainConfig:
    """Seconds on a CPU: for tests (a 32-code tiny tokenizer's 4×4 grids)."""
    return TextToImageTrainConfig(
        model=TextToImageConfig(vocab_size=32, grid=(4, 4), text_vocab_size=300, max_text_len=32, n_embd=32,
                                n_head=2, n_enc_layer=1, n_dec_layer=2, caption_drop_prob=0.2, guidance_scale=2.0,
                                text_modulation=True),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        loop=LoopConfig(batch_size=16, max_steps=20, save_every=10, log_every=5),
        bpe_vocab_size=300)


def _shapes() -> TextToImageTrainConfig:
    """Captions of the ``shapes`` dataset → 8×8 tokens of the ``shapes`` tokenizer (512 codes), sized for
    ``make demo``'s budget: 192 wide, 2 encoder + 4 decoder layers, 1000 steps × 32 (0.22 s/step on 2
    CPU threads). At 1000 steps lr 2e-3 reached 2.32 test bits/token against 2.43 for lr 1e-3.
    Sampling defaults, scale 2 and temperature 0.5, from ``python benchmarks/text2img.py --preset shapes
    --work runs/demo --n-captions 200`` on a fresh ``make demo`` run (first 200 test captions, one sample
    each, fully correct, mean of single / two / held out): at temperature 1, scales 1 / 1.5 / 2 / 3 gave
    4.2 / 4.6 / 2.9 / 0.8 %; at 0.7, 2.9 / 5.0 / 5.0 / 2.1 %; at 0.5, 2.1 / 5.4 / 6.3 / 1.7 % (single-object
    captions 11 % at scale 1, temperature 1 → 16 %). Stronger guidance draws truer colours and shapes but
    more stray objects; a lower temperature cuts unlikely tokens that start a shape in the wrong cell.
    Those figures are from the earlier VQ tokens without text modulation; the same sweep on a fresh ``make
    demo`` run of these presets (``--work runs/demo``, benchmarks/results/text2img_demo.json) again puts
    scale 2, temperature 0.5 first: mean 12.5 %, single-object captions 27.5 %.

    Text modulation (adaLN-Zero, ``TextToImageConfig.text_modulation``), ``python
    benchmarks/shapes_tokenizers.py --json`` (one run each on the FSQ tokens of the ``shapes`` tokenizer,
    first 200 test captions): test bits/token 1.58 → 1.51; single-object captions fully right with one
    sample 13.8 % → 28.7 % (guided 21.2 → 31.2 %), CLIP's best of 8, guided, 36 → 51 %. The fresh ``make
    demo`` run of these presets: 20 % / 30 % / 36 % (one sample / guided / best of 8, guided).

    With the ``shapes`` tokenizer's per-position encoder norm, the same sweep on a fresh ``make demo`` run
    (benchmarks/results/text2img_demo.json) puts scale 1.5, temperature 0.5 first (mean 13.8 %; scale 2:
    9.6 %), hence scale 1.5: single-object captions 21 % / 32.5 % / 55 % (one sample / guided / best of 8,
    guided).

    Token noise 0.3 (``TextToImageConfig.token_noise_prob``), from ``python benchmarks/token_noise.py --json``
    (one run each, first 200 test captions, sampled at this preset's defaults). Without it the model's
    likelihood, used as a classifier of the stated position, picks the right cell of 9 for 18.5 % of the test
    captions and the right column for 34 % (chance 33 %): the codes above an object already show it, so
    teacher forcing never asks the caption. With noise 0.15 or more it picks the right cell for 99 %.
    Single-object captions fully right (one sample / CLIP's best of 8 / guided / best of 8, guided): noise 0:
    22.5 / 47.5 / 16 / 46 % (at the earlier defaults that its own sweep had put first, scale 1.5 and
    temperature 0.5: 21 / 42.5 / 32.5 / 55 %); 0.15: 44 / 70 / 65 / 70 %; 0.3: 52.5 / 75 / 70 / 76 %; 0.5:
    29 / 54 / 41 / 60 %; held-out compositions, best of 8, guided: 7.5 / 30 / 22.5 / 12.5 %. The sampling
    sweep on a fresh ``make demo`` run with noise 0.3 (benchmarks/results/text2img_demo.json) puts scale 2,
    temperature 0.7 first (mean 29.2 %; scale 1.5, temperature 0.5: 25.0 %), hence those defaults."""
    return TextToImageTrainConfig(
        model=TextToImageConfig(vocab_size=512, grid=(8, 8), text_vocab_size=512, max_text_len=24, n_embd=192,
                                n_head=6, n_enc_layer=2, n_dec_layer=4, caption_drop_prob=0.1, guidance_scale=2.0,
                                temperature=0.7, text_modulation=True, token_noise_prob=0.3),
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.95), weight_decay=0.01, warmup_steps=100, min_lr_ratio=0.1),
        loop=LoopConfig(batch_size=32, max_steps=1000, save_every=500, log_every=25),
        bpe_vocab_size=512)


def _shapes_long() -> TextToImageTrainConfig:
    """The benchmark's budget (benchmarks/text2img.py): ``shapes`` trained 4000 steps instead of 1000 (0.35
    s/step on 2 threads here, 24 min), sampled at temperature 0.5.

    ``python benchmarks/text2img.py --json --work runs/bench-text2img-192``, everything trained from an empty
    work directory, took 39 min end to end. On all 1000 test captions, single-object captions come out fully
    right 91 % from one sample, 94 % guided, 93 % / 96 % as CLIP's best of 8; held-out compositions 27.5 % guided,
    35 % as CLIP's best of 8, guided; two-object captions 11 % / 15 %. Its sweep (first 200 test captions, one
    sample each, mean of single / two / held out) puts scale 2, temperature 0.5 first (45.4 %), every pair
    between 34.6 % (scale 1, temperature 1) and 45.4 %: lower temperatures cut the unlikely tokens that start
    a shape in the wrong cell of the raster scan. Two-object captions fail because the model reads them
    as bags of words: its likelihood prefers the true caption to the same words with the objects' colours
    swapped 47 % of the time, shapes swapped 51 %, the relation reversed 52 % (chance 50 %; benchmarks/probes.py).

    Earlier the preset was 256 wide (8 heads, 7.8 M parameters against 4.5 M): on the same benchmark it
    trained 41 min for the same figures within a few points (single 90 / 90 / 94 / 93 %, held out 17 / 33 /
    26.5 / 31.5 %, two 8 / 14 / 11 / 15.5 %), so the benchmark took 58 min."""
    cfg = _shapes()
    cfg.model.temperature = 0.5
    cfg.loop = LoopConfig(batch_size=32, max_steps=4000, save_every=500, log_every=25)
    return cfg


def _dalle_mini() -> TextToImageTrainConfig:
    """DALL·E mini's size (``text.dalle.dalle_mini_config``, ~0.4 B parameters) on GPUs: global batch 256,
    AdamW lr 1e-4, 5000 warm-up steps, bf16 autocast, a 50 264-entry caption BPE fitted on the training
    captions. Not trained here: docs/gpu.md has its size and estimated memory;
    benchmarks/gpu.py measures its speed on a GPU."""
    return TextToImageTrainConfig(
        model=dalle_mini_config(),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, warmup_steps=5000, min_lr_ratio=0.1),
        loop=LoopConfig(batch_size=256, max_steps=300_000, save_every=5000, log_every=50),
        bpe_vocab_size=50264)


TEXT2IMG_PRESETS = {
    "tiny": _tiny,
    "shapes": _shapes,
    "shapes-long": _shapes_long,
    "dalle-mini": _dalle_mini,
}
