"""Two ways of "VQGAN + CLIP" on the `shapes` test captions: CLIP-guided optimisation of the tokenizer's
latents (no text-to-image model) against the DALL·E-mini-style text-to-image model, without and with
CLIP reranking of 8 samples, all judged by the same independent judge.

    python benchmarks/clip_guided.py --json [--work runs/bench-text2img] [--n-captions N] [--steps 50,100]
                                     [--lr X] [--cutouts K] [--crop-min F] [--init noise|tokens]
                                     [--batch 16] [--out FILE] [--figure PNG]
    python benchmarks/clip_guided.py --sweep --json [--sweep-captions 16] [--steps 25,50,100]
                                     [--lrs 0.05,0.1,0.2] [--cutouts-list 4,8,16] [--crop-mins 0.5,1]
                                     [--inits noise,tokens]

Reads the runs ``benchmarks/text2img.py`` made under ``--work`` (``tokenizer/``, ``text2img/``,
``clip/``, ``judge/``); it trains nothing. The captions are the `shapes:0` test split, as in
``benchmarks/text2img.py``, or its first ``--n-captions`` (the first N keep the split's 2 : 2 : 1 mix of
single, two-object and held-out captions); every method sees the same captions. All 1000 take about an
hour on one CPU thread, nearly all of it CLIP-guided optimisation (about 3 s a picture at 100 steps).

* ``clip_guided_<steps>``: one picture per caption, ``--batch`` captions optimised together. Every step
  count comes from one run of the largest: the pictures after s steps of a longer run are those of an
  s-step run (same seed, same crops), and its seconds are those spent up to step s.
* ``text2img_no_rerank`` / ``text2img_rerank8``: 8 samples per caption at the run's recorded guidance
  and temperature; the first sample, and the one CLIP scores best. Seconds per image: the sampling time
  per sample, and per caption (8 samples + scoring) for the reranked one.
* ``renders``: the test split's own pictures of those captions (the judge's accuracy, the CLIP score a
  true picture gets).

Each entry: fully-correct fractions by the judge (``single``, ``two``, ``heldout``; None for a group with
no caption), mean CLIP score (100 × cosine, the CLIP that steers and reranks), seconds per image.
``high_clip_wrong_<steps>``: the fraction of captions whose CLIP-guided picture scores above the true
render yet the judge finds wrong — CLIP fooled by its own optimisation. ``--figure`` (default
docs/images/clip_guided.png): rows of render, text2img rerank-8 and CLIP-guided pictures, with score and
verdict, such fooled cases first.

``--sweep``: one factor at a time around the base settings (``--lr``, ``--cutouts``, ``--init``): each
learning rate of ``--lrs``, then each count of ``--cutouts-list``, each smallest crop of ``--crop-mins``,
each init of ``--inits``, on the
first ``--sweep-captions`` captions, judged at every step count of ``--steps``; writes
``clip_guided_sweep.json``. It is how ``ClipGuidedConfig``'s defaults were chosen.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RUNS, machine, write_result  # noqa: E402

from vqgen.data.records import category  # noqa: E402
from vqgen.data.shapes import load_shapes  # noqa: E402
from vqgen.errors import ConfigError  # noqa: E402
from vqgen.eval.shapes_judge import ShapesJudge, predict_scenes  # noqa: E402
from vqgen.eval.text2img import GROUPS, judge_record  # noqa: E402
from vqgen.images import save_captioned_grid  # noqa: E402
from vqgen.rerank.clip import load_clip  # noqa: E402
from vqgen.rerank.clip_guided import ClipGuidedConfig, clip_guided  # noqa: E402
from vqgen.text.generate import check_caption, generate_candidates, load_text2img_run  # noqa: E402
from vqgen.tokenizer.vqgan import VQTokenizer  # noqa: E402

CANDIDATES = 8
FIGURE_ROWS = 6


def load_runs(work: Path, text2img: bool) -> dict:
    """The runs under ``work`` (the text-to-image one only when asked: the sweep needs none)."""
    names = ("tokenizer", "text2img", "clip", "judge") if text2img else ("tokenizer", "clip", "judge")
    missing = [p for p in names if not (work / p / "config.json").is_file()]
    if missing:
        raise SystemExit(f"{work} lacks {', '.join(missing)}: run `python benchmarks/text2img.py --work {work}` first")
    runs = {"tokenizer": VQTokenizer.from_pretrained(work / "tokenizer"), "clip": load_clip(work / "clip"),
            "judge": ShapesJudge.from_pretrained(work / "judge")}
    if text2img:
        runs["text2img"] = load_text2img_run(work / "text2img")
    return runs


def judged(judge: ShapesJudge, records: list[dict], images: torch.Tensor) -> list[bool]:
    """Whether the judge finds each picture (uint8 (N, 3, H, W)) fully right for its record."""
    return [judge_record(rec, scene)[0] for rec, scene in zip(records, predict_scenes(judge, images))]


def summary(records: list[dict], ok: list[bool], scores: torch.Tensor, seconds_per_image: float | None) -> dict:
    groups = [category(rec) for rec in records]
    out = {}
    for g in GROUPS:
        members = [right for right, group in zip(ok, groups) if group == g]
        out[g] = sum(members) / len(members) if members else None
    out["clip_score"] = round(float(scores.float().mean()), 2)
    out["seconds_per_image"] = None if seconds_per_image is None else round(seconds_per_image, 4)
    return out


def run_clip_guided(runs: dict, captions: list[str], cfg: ClipGuidedConfig, steps: list[int], batch: int,
                    progress: bool) -> dict[int, dict]:
    """{steps: {"images", "scores", "seconds"}} for every step count, from one run of the largest."""
    every = math.gcd(*steps)
    out = {s: {"images": [], "scores": [], "seconds": 0.0} for s in steps}
    for start in range(0, len(captions), batch):
        chunk = captions[start:start + batch]
        c = ClipGuidedConfig(**{**vars(cfg), "steps": max(steps), "snapshot_every": every, "seed": cfg.seed + start})
        result = clip_guided(runs["tokenizer"], runs["clip"], chunk, c, progress=progress)
        for snap in result.snapshots:
            if snap.step in out:
                out[snap.step]["images"].append(snap.images)
                out[snap.step]["scores"].append(snap.scores)
                out[snap.step]["seconds"] += snap.seconds
    return {s: {"images": torch.cat(v["images"]), "scores": torch.cat(v["scores"]), "seconds": v["seconds"]}
            for s, v in out.items()}


def run_text2img(runs: dict, captions: list[str], batch: int) -> dict:
    """8 samples per caption at the run's defaults: the first, and CLIP's best."""
    run, scorer = runs["text2img"], runs["clip"]
    first, best, first_scores, best_scores = [], [], [], []
    sample_s = score_s = 0.0
    for start in range(0, len(captions), batch):
        chunk = captions[start:start + batch]
        t = time.perf_counter()
        cands = generate_candidates(run, chunk, CANDIDATES, seed=start)  # uint8 (b, 8, C, H, W)
        sample_s += time.perf_counter() - t
        t = time.perf_counter()
        scores = scorer.score(cands.flatten(0, 1), [c for c in chunk for _ in range(CANDIDATES)]).view(len(chunk), -1)
        score_s += time.perf_counter() - t
        pick = scores.argmax(dim=1)  # (b,)
        rows = torch.arange(len(chunk))
        first.append(cands[:, 0])
        best.append(cands[rows, pick])
        first_scores.append(scores[:, 0])
        best_scores.append(scores[rows, pick])
    n = len(captions)
    return {"no_rerank": {"images": torch.cat(first), "scores": torch.cat(first_scores),
                          "seconds_per_image": sample_s / (n * CANDIDATES)},
            "rerank8": {"images": torch.cat(best), "scores": torch.cat(best_scores),
                        "seconds_per_image": (sample_s + score_s) / n}}


def figure(path: Path, records: list[dict], captions: list[str], columns: dict[str, dict], ok: dict[str, list[bool]],
           fooled: list[bool]) -> None:
    """Rows of captions (fooled cases first), one column per method, score and verdict under each picture."""
    order = [i for i, f in enumerate(fooled) if f][:FIGURE_ROWS // 2]
    order += [i for i in range(len(captions)) if i not in order][:FIGURE_ROWS - len(order)]
    images, labels = [], []
    for i in order:
        for name, col in columns.items():
            images.append(col["images"][i])
            mark = "right" if ok[name][i] else "wrong"
            labels.append(f"{name}: {captions[i]} ({float(col['scores'][i]):.1f}, {mark})")
    save_captioned_grid(torch.stack(images), labels, path, nrow=len(columns), scale=4)


def compare(args, runs: dict, records: list[dict], renders: torch.Tensor, base: ClipGuidedConfig,
            steps: list[int]) -> dict:
    captions = [check_caption(r["caption"]) for r in records]
    judge, scorer = runs["judge"], runs["clip"]
    t2i = run_text2img(runs, captions, args.batch)
    cg = run_clip_guided(runs, captions, base, steps, args.batch, progress=not args.json)
    render_scores = scorer.score(renders, captions)
    columns = {"render": {"images": renders, "scores": render_scores},
               "text2img rerank8": t2i["rerank8"], **{f"clip-guided {s}": cg[s] for s in steps}}
    ok = {name: judged(judge, records, col["images"]) for name, col in columns.items()}
    ok["text2img no rerank"] = judged(judge, records, t2i["no_rerank"]["images"])
    n = len(captions)
    result = {"renders": summary(records, ok["render"], render_scores, None)}
    for v in ("no_rerank", "rerank8"):
        result[f"text2img_{v}"] = summary(records, ok[f"text2img {v.replace('_', ' ')}"], t2i[v]["scores"],
                                          t2i[v]["seconds_per_image"])
    fooled = {}
    for s in steps:
        result[f"clip_guided_{s}"] = summary(records, ok[f"clip-guided {s}"], cg[s]["scores"], cg[s]["seconds"] / n)
        fooled[s] = [bool(a > b) and not right
                     for a, b, right in zip(cg[s]["scores"], render_scores, ok[f"clip-guided {s}"])]
        result[f"high_clip_wrong_{s}"] = round(sum(fooled[s]) / n, 4)
    if args.figure:
        figure(Path(args.figure), records, captions, columns, ok, fooled[max(steps)])
    t = runs["text2img"].model.config
    settings = {k: getattr(base, k) for k in ("lr", "cutouts", "crop_min", "init", "seed")}
    result.update(n_captions=n, steps=steps, text2img_candidates=CANDIDATES, text2img_guidance_scale=t.guidance_scale,
                  text2img_temperature=t.temperature, clip_guided=settings, batch=args.batch)
    return result


def sweep(args, runs: dict, records: list[dict], base: ClipGuidedConfig, steps: list[int]) -> dict:
    records = records[: args.sweep_captions]
    captions = [check_caption(r["caption"]) for r in records]
    settings = [("lr", float(x)) for x in args.lrs.split(",")] + \
               [("cutouts", int(x)) for x in args.cutouts_list.split(",")] + \
               [("crop_min", float(x)) for x in args.crop_mins.split(",")] + \
               [("init", x) for x in args.inits.split(",")]
    rows, seen = [], set()
    for name, value in settings:
        cfg = ClipGuidedConfig(**{**vars(base), name: value})
        key = (cfg.lr, cfg.cutouts, cfg.crop_min, cfg.init)
        if key in seen:  # the base setting comes up in every factor: measured once
            continue
        seen.add(key)
        out = run_clip_guided(runs, captions, cfg, steps, args.batch, progress=not args.json)
        for s in steps:
            row = {"lr": cfg.lr, "cutouts": cfg.cutouts, "crop_min": cfg.crop_min, "init": cfg.init, "steps": s,
                   **summary(records, judged(runs["judge"], records, out[s]["images"]), out[s]["scores"],
                             out[s]["seconds"] / len(captions))}
            fully = [row[g] for g in GROUPS if row[g] is not None]
            row["mean"] = round(sum(fully) / len(fully), 4)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    best = max(rows, key=lambda r: (r["mean"], r["clip_score"]))  # the judge first; CLIP score breaks its ties
    return {"rows": rows, "best": best, "sweep_captions": len(captions), "steps": steps,
            "base": {"lr": base.lr, "cutouts": base.cutouts, "crop_min": base.crop_min, "init": base.init}}


def main() -> None:
    defaults = ClipGuidedConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--work", default=str(RUNS / "bench-text2img"), help="runs made by benchmarks/text2img.py")
    ap.add_argument("--n-captions", type=int, help="the first N test captions (default: all 1000)")
    ap.add_argument("--steps", help="step counts, comma-separated (default: half the default steps, and the default)")
    ap.add_argument("--lr", type=float, default=defaults.lr)
    ap.add_argument("--cutouts", type=int, default=defaults.cutouts)
    ap.add_argument("--crop-min", type=float, default=defaults.crop_min)
    ap.add_argument("--init", default=defaults.init)
    ap.add_argument("--batch", type=int, default=16, help="captions optimised / sampled together")
    ap.add_argument("--figure", default=str(REPO / "docs" / "images" / "clip_guided.png"),
                    help="comparison figure ('' for none)")
    ap.add_argument("--sweep", action="store_true", help="the study that chose the defaults, instead of the comparison")
    ap.add_argument("--sweep-captions", type=int, default=16)
    ap.add_argument("--lrs", default="0.05,0.1,0.2")
    ap.add_argument("--cutouts-list", default="4,8,16")
    ap.add_argument("--crop-mins", default="0.5,1")
    ap.add_argument("--inits", default="noise,tokens")
    ap.add_argument("--out")
    args = ap.parse_args()
    steps = sorted({int(s) for s in args.steps.split(",")}) if args.steps else \
        sorted({max(1, defaults.steps // 2), defaults.steps})
    try:
        base = ClipGuidedConfig(lr=args.lr, cutouts=args.cutouts, crop_min=args.crop_min, init=args.init)
    except ConfigError as exc:
        raise SystemExit(f"clip_guided.py: {exc}") from None
    if min(steps) < 1 or args.batch < 1 or (args.n_captions is not None and args.n_captions < 1):
        raise SystemExit("clip_guided.py: --steps, --batch and --n-captions must be positive")
    work = Path(args.work)
    runs = load_runs(work, text2img=not args.sweep)
    resolution = runs["tokenizer"].cfg.autoencoder.resolution
    test = load_shapes(0, "test", resolution=resolution, n=args.n_captions, progress=False)
    t = time.perf_counter()
    if args.sweep:
        result, name = sweep(args, runs, test.records, base, steps), "clip_guided_sweep"
    else:
        result, name = compare(args, runs, test.records, test.images, base, steps), "clip_guided"
    result.update(work=str(work), seconds=round(time.perf_counter() - t, 1), machine=machine(),
                  note="shapes:0 test split, first captions (procedural; held-out colour-shape pairs never in train)",
                  command=" ".join(["python"] + sys.argv))
    write_result(name, result, args.out)


if __name__ == "__main__":
    main()
