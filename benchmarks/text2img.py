"""Text to image on `shapes`, end to end: tokenizer → token shards → text-to-image model, CLIP and the
judge → every test caption sampled, reranked and judged.

    python benchmarks/text2img.py --json [--preset shapes] [--scales 1,1.5,2,3] [--temperatures 1,0.7,0.5]
                                         [--sweep-captions 200]
                                         [--n-captions N] [--work DIR] [--out FILE]

Trains each part with its preset (reusing finished runs under ``--work``), sweeps the super-conditioning
scale on the first ``--sweep-captions`` test captions (fully-correct fraction without reranking, the
number a user sees from one sample) and the sampling temperature, then evaluates all test captions at the
best pair (every variant at the best temperature): the object
``vqgen eval text2img`` prints, plus training times, the sweep, the run's own sampling defaults and the
probes of ``probes.py`` (what the model's likelihood and CLIP's score read from a caption: the stated
position of one object; which colour and shape go with which of two objects, and their relation).
The judge and CLIP are separate networks trained separately, and the judge never sees generated
images. Writes docs/images/text2img.png (best 4 of 16 by CLIP for a few captions, one held out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RUNS, machine, write_result  # noqa: E402
from probes import binding_probe, clip_binding_probe, position_probe  # noqa: E402

from vqgen.data.shapes import load_shapes  # noqa: E402
from vqgen.eval.shapes_judge import ShapesJudge  # noqa: E402
from vqgen.eval.text2img import evaluate_text2img  # noqa: E402
from vqgen.images import save_captioned_grid  # noqa: E402
from vqgen.data.encode import encode_dataset  # noqa: E402
from vqgen.prior.codec import TokenizerCodec  # noqa: E402
from vqgen.rerank.clip import load_clip, rerank  # noqa: E402
from vqgen.text.generate import generate_candidates, load_text2img_run  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402
from vqgen.train.clip import CLIP_PRESETS, train_clip  # noqa: E402
from vqgen.train.common import train_seconds  # noqa: E402
from vqgen.train.shapes_judge import SHAPES_JUDGE_PRESETS, train_shapes_judge  # noqa: E402
from vqgen.train.text2img import TEXT2IMG_PRESETS, train_text2img  # noqa: E402
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer  # noqa: E402

FIGURE_CAPTIONS = ["a red circle in the top left", "a large blue square in the center",
                   "a small yellow triangle at the bottom", "a red triangle",  # red triangle: held out
                   "a green circle above a white cross"]


def build(work: Path, preset: str, progress: bool) -> dict:
    """Train (or find) the four runs; returns their directories, training seconds and which were found."""
    found = [name for name in ("tokenizer", "tokens", "text2img", "clip", "judge") if (work / name).exists()]
    tok_dir = work / "tokenizer"
    train_tokenizer(TOKENIZER_PRESETS["shapes"](), tok_dir, data="shapes", progress=progress)
    tokens = work / "tokens"
    t = time.perf_counter()
    encode_dataset(TokenizerCodec(VQTokenizer.from_pretrained(tok_dir), str(tok_dir)), "shapes", tokens,
                   progress=progress)  # finished shards are skipped: near 0 s when the tokens exist
    encode_s = time.perf_counter() - t
    t2i_dir = work / "text2img"
    train_text2img(TEXT2IMG_PRESETS[preset](), t2i_dir, tokens=str(tokens), progress=progress)
    clip_dir = work / "clip"
    train_clip(CLIP_PRESETS["shapes"](), clip_dir, data="shapes", progress=progress)
    judge_dir = work / "judge"
    judge_metrics = train_shapes_judge(SHAPES_JUDGE_PRESETS["shapes"](), judge_dir, progress=progress)
    seconds = {"tokenizer": train_seconds(tok_dir), "encode": round(encode_s, 1),
               "text2img": train_seconds(t2i_dir), "clip": train_seconds(clip_dir),
               "judge": judge_metrics.get("train_seconds")}
    return {"tokenizer": tok_dir, "tokens": tokens, "text2img": t2i_dir, "clip": clip_dir, "judge": judge_dir,
            "seconds": seconds, "found": found}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--preset", default="shapes-long")
    ap.add_argument("--scales", default="1,1.5,2,3", help="super-conditioning scales of the sweep")
    ap.add_argument("--temperatures", default="1,0.7,0.5", help="sampling temperatures of the sweep")
    ap.add_argument("--sweep-captions", type=int, default=200)
    ap.add_argument("--n-captions", type=int, help="evaluate only the first N test captions (default: all)")
    ap.add_argument("--work", default=str(RUNS / "bench-text2img"))
    ap.add_argument("--out")
    args = ap.parse_args()
    progress = not args.json
    start = time.perf_counter()
    runs = build(Path(args.work), args.preset, progress)
    run = load_text2img_run(runs["text2img"])
    scorer = load_clip(runs["clip"])
    judge = ShapesJudge.from_pretrained(runs["judge"])
    test = load_shapes(0, "test", progress=False)
    records = test.records[: args.n_captions] if args.n_captions else test.records

    temperature = 1.0  # set by the sweep below, read by sample_fn

    def sample_fn(captions: list[str], n: int, scale: float, seed: int) -> torch.Tensor:
        return generate_candidates(run, captions, n, guidance_scale=scale, temperature=temperature, seed=seed)

    sweep = []
    for temperature in map(float, args.temperatures.split(",")):
        for s in map(float, args.scales.split(",")):
            t = time.perf_counter()
            r = evaluate_text2img(records[: args.sweep_captions], sample_fn, scorer.score, judge, guidance_scale=s,
                                  n_candidates=1, progress=False)
            fully = [r[g]["no_rerank_guided"] for g in ("single", "two", "heldout")
                     if r[g]["no_rerank_guided"] is not None]
            sweep.append({"guidance_scale": s, "temperature": temperature, "single": r["single"]["no_rerank_guided"],
                          "two": r["two"]["no_rerank_guided"], "heldout": r["heldout"]["no_rerank_guided"],
                          "mean": sum(fully) / len(fully), "seconds": round(time.perf_counter() - t, 1)})
            print(json.dumps(sweep[-1]), file=sys.stderr, flush=True)
    best_row = max(sweep, key=lambda row: row["mean"])
    best, temperature = best_row["guidance_scale"], best_row["temperature"]
    t = time.perf_counter()
    report = evaluate_text2img(records, sample_fn, scorer.score, judge, guidance_scale=best,
                               renders=(test.images, test.targets), progress=progress)
    report["temperature"] = temperature
    eval_seconds = time.perf_counter() - t
    probes = {"position": position_probe(run.model, run.tokenizer, runs["tokens"]),
              "binding": binding_probe(run.model, run.tokenizer, runs["tokens"]),
              "clip_binding": clip_binding_probe(scorer, test.images, test.records)}

    grid, labels = [], []
    candidates = generate_candidates(run, FIGURE_CAPTIONS, 16, guidance_scale=best, temperature=temperature,
                                     seed=0)  # (N, 16, C, H, W)
    for caption, cands in zip(FIGURE_CAPTIONS, candidates):
        kept, scores = rerank(cands, caption, scorer, 4)
        grid.append(cands[kept])
        labels += [f"{caption} ({float(scores[i]):.1f})" for i in kept.tolist()]
    save_captioned_grid(torch.cat(grid), labels, REPO / "docs" / "images" / "text2img.png", nrow=4, scale=4)

    write_result("text2img", {**report, "preset": args.preset, "run_guidance_scale": run.model.config.guidance_scale,
                              "run_temperature": run.model.config.temperature,
                              "guidance_sweep": sweep, "sweep_captions": args.sweep_captions, "probes": probes,
                              "train_seconds": runs["seconds"],
                              "eval_seconds": round(eval_seconds, 1),
                              "total_seconds": round(time.perf_counter() - start, 1), "found_in_work": runs["found"],
                              "params_text2img": run.model.num_params(), "machine": machine(),
                              "note": "shapes:0 test split (procedural; held-out colour-shape pairs never in train)",
                              "command": " ".join(["python"] + sys.argv)}, args.out)


if __name__ == "__main__":
    main()
