"""Which tokenizer gives the text-to-image model the easiest tokens on `shapes`: VQ against FSQ, and a
GroupNorm encoder against one whose codes see only their receptive field.

    python benchmarks/shapes_tokenizers.py --json [--variants vq512,fsq888,...] [--text2img vq512,fsq888,...]
                                          [--n-captions 200] [--work DIR] [--out FILE]

Each variant is the ``shapes`` tokenizer preset with some overrides (``VARIANTS``), trained at the
preset's budget. For each: the codes in use, the entropy of the code histogram, the mean over the 64
token cells of each cell's code entropy (most cells of a ``shapes`` picture show the plain background,
so every bit there is spent by the prior on codes that decode to the same flat colour), the top-left
cell alone, how many of the top-left 3×3 codes change when an object is drawn far away in the
bottom-right cell, and the fraction of the 1000 test pictures the judge reads fully right after a round trip
through the tokenizer. For the ``--text2img`` variants it then trains the ``shapes`` text-to-image
preset on their tokens (``NAME`` without, ``NAME+mod`` with ``text_modulation``) and judges it as
``vqgen eval text2img --n-captions N`` does (same seeds, the work directory's CLIP and judge).

A run already in ``--work`` is used as found (its own config, recorded in the JSON), so a partial rerun
only trains what is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, machine, write_result  # noqa: E402
from token_entropy import entropy_bits, far_object_changes  # noqa: E402

from vqgen.config import apply_overrides  # noqa: E402
from vqgen.data.encode import encode_dataset  # noqa: E402
from vqgen.data.shapes import load_shapes  # noqa: E402
from vqgen.data.tokens import load_tokens  # noqa: E402
from vqgen.eval.shapes_judge import ShapesJudge, render_accuracy  # noqa: E402
from vqgen.eval.text2img import evaluate_text2img  # noqa: E402
from vqgen.images import to_model_range, to_uint8  # noqa: E402
from vqgen.prior.codec import TokenizerCodec  # noqa: E402
from vqgen.rerank.clip import load_clip  # noqa: E402
from vqgen.text.generate import generate_candidates, load_text2img_run  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.clip import CLIP_PRESETS, train_clip  # noqa: E402
from vqgen.train.shapes_judge import SHAPES_JUDGE_PRESETS, train_shapes_judge  # noqa: E402
from vqgen.train.text2img import TEXT2IMG_PRESETS, train_text2img  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402

GROUP = ["model.autoencoder.encoder_norm=group"]  # the encoder before: GroupNorm, every code sees the whole picture
VQ = GROUP + ["model.quantizer.kind=vq", "model.quantizer.codebook_size=512", "model.quantizer.code_dim=16",
              "model.quantizer.ema_decay=0.99", "model.quantizer.l2_normalize=true"]
VARIANTS = {  # overrides of the `shapes` tokenizer preset
    "vq512": VQ + ["model.quantizer.kmeans_init=true", "model.quantizer.dead_code_threshold=0.03"],  # the first preset
    "vq512-plain": VQ,  # no k-means init, no dead-code restarts
    "fsq888": GROUP,  # FSQ with the GroupNorm encoder (the preset before)
    "fsq555": GROUP + ["model.quantizer.fsq_levels=[5, 5, 5]"],
    "fsq444": GROUP + ["model.quantizer.fsq_levels=[4, 4, 4]"],
    "fsq888-local": [],  # the preset: FSQ, per-position norm in the encoder (a code sees only its receptive field)
}


def tokenizer_stats(tok: VQTokenizer, judge: ShapesJudge, n_train: int = 5000) -> dict:
    train = load_shapes(0, "train", n=n_train, progress=False)
    test = load_shapes(0, "test", progress=False)
    vocab = tok.quantizer.codebook_size
    with torch.inference_mode():
        codes = torch.cat([tok.encode(to_model_range(train.images[i:i + 500])) for i in range(0, n_train, 500)])
        recon = torch.cat([to_uint8(tok.reconstruct(to_model_range(test.images[i:i + 500])))
                           for i in range(0, len(test.images), 500)])  # (N, C, H, W)
    h, w = codes.shape[1:]
    per_cell = [entropy_bits(codes[:, r, c], vocab) for r in range(h) for c in range(w)]
    return {"vocab_size": vocab, "codes_used": int(codes.unique().numel()),
            "entropy_bits": round(entropy_bits(codes, vocab), 3),
            "mean_cell_entropy_bits": round(sum(per_cell) / len(per_cell), 3),
            "top_left_cell": {"distinct_codes": int(codes[:, 0, 0].unique().numel()),
                              "entropy_bits": round(per_cell[0], 3)},
            "far_object_changes_top_left_cells": round(far_object_changes(tok, test.images.shape[-1]), 2),
            "judge_fully_correct_reconstructions": round(render_accuracy(judge, recon, test.targets), 4),
            "quantizer": json.loads(json.dumps(vars(tok.cfg.quantizer), default=list)),
            "encoder_norm": tok.cfg.autoencoder.encoder_norm}


def judged(run_dir: Path, clip_dir: Path, judge: ShapesJudge, n_captions: int, guidance_scale: float | None = None,
           temperature: float | None = None) -> dict:
    """What ``vqgen eval text2img RUN --n-captions N`` prints, at the run's own sampling defaults or at the
    ``guidance_scale`` and ``temperature`` given."""
    run = load_text2img_run(run_dir)
    scale = run.model.config.guidance_scale if guidance_scale is None else guidance_scale
    temperature = run.model.config.temperature if temperature is None else temperature
    scorer = load_clip(clip_dir)
    test = load_shapes(0, "test", progress=False)

    def sample_fn(captions: list[str], n: int, scale_now: float, seed: int) -> torch.Tensor:  # 1 or ``scale``
        return generate_candidates(run, captions, n, guidance_scale=scale_now, temperature=temperature, seed=seed)

    report = evaluate_text2img(test.records[:n_captions], sample_fn, scorer.score, judge, guidance_scale=scale,
                               renders=(test.images, test.targets), progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**report, "temperature": temperature, "text_modulation": run.model.config.text_modulation,
            "test_bits_per_token": round(metrics["test_bits_per_token"], 4)}


def judge_and_clip(work: Path, progress: bool) -> tuple[ShapesJudge, Path]:
    """The work directory's shapes judge and the directory of its CLIP, each trained when missing."""
    judge_dir, clip_dir = work / "judge", work / "clip"
    if not (judge_dir / "model.safetensors").exists():
        train_shapes_judge(SHAPES_JUDGE_PRESETS["shapes"](), judge_dir, progress=progress)
    if not (clip_dir / "model.safetensors").exists():
        train_clip(CLIP_PRESETS["shapes"](), clip_dir, data="shapes", progress=progress)
    return ShapesJudge.from_pretrained(judge_dir), clip_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--text2img", default="vq512,fsq888,fsq555,fsq888+mod,fsq888-local+mod",
                    help="variants whose tokens train the shapes text2img preset; +mod: with text_modulation")
    ap.add_argument("--n-captions", type=int, default=200)
    ap.add_argument("--work", default=str(RUNS / "bench-shapes-tokenizers"))
    ap.add_argument("--out")
    args = ap.parse_args()
    progress = not args.json
    work = Path(args.work)
    judge, clip_dir = judge_and_clip(work, progress)

    result: dict = {"tokenizers": {}, "text2img": {}}
    for name in args.variants.split(","):
        tok_dir = work / name / "tokenizer"
        if not (tok_dir / "model.safetensors").exists():
            cfg = apply_overrides(TOKENIZER_PRESETS["shapes"](), VARIANTS[name])
            train_tokenizer(cfg, tok_dir, data="shapes", progress=progress)
        result["tokenizers"][name] = tokenizer_stats(VQTokenizer.from_pretrained(tok_dir).eval(), judge)
        print(name, json.dumps(result["tokenizers"][name]), file=sys.stderr, flush=True)

    for spec in filter(None, args.text2img.split(",")):
        name, mod = spec.removesuffix("+mod"), spec.endswith("+mod")
        tok_dir, tokens = work / name / "tokenizer", work / name / "tokens"
        if not all((tokens / split / "done.json").exists() for split in ("train", "test")):
            encode_dataset(TokenizerCodec(VQTokenizer.from_pretrained(tok_dir), str(tok_dir)), "shapes", tokens,
                           progress=progress)  # finished shards are skipped
        run_dir = work / name / ("text2img-mod" if mod else "text2img")
        if not (run_dir / "model.safetensors").exists():
            cfg = apply_overrides(TEXT2IMG_PRESETS["shapes"](), [f"model.vocab_size={load_tokens(tokens).vocab_size}",
                                                                 f"model.text_modulation={str(mod).lower()}"])
            train_text2img(cfg, run_dir, tokens=str(tokens), progress=progress)
        result["text2img"][spec] = judged(run_dir, clip_dir, judge, args.n_captions)
        print(spec, json.dumps(result["text2img"][spec]), file=sys.stderr, flush=True)

    write_result("shapes_tokenizers", {**result, "n_captions": args.n_captions, "machine": machine(),
                                       "note": "shapes:0 (procedural); tokenizer statistics over the first 5000 "
                                               "training pictures, judge on the 1000 test pictures",
                                       "command": " ".join(["python"] + sys.argv)}, args.out)


if __name__ == "__main__":
    main()
