"""Text-to-image commands: train the caption→image model, the CLIP reranker and the shapes judge;
generate from a caption (by the text-to-image model, or by CLIP-guided optimisation of a tokenizer's
latents); evaluate with the judge."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from .common import add_train_common, loop_overrides


def cmd_train_text2img(args: argparse.Namespace) -> None:
    from ..config import resolve_config
    from ..train.text2img import TEXT2IMG_PRESETS, TextToImageTrainConfig, train_text2img
    overrides = loop_overrides(args) + [f"tokens={Path(args.tokens).resolve()}"]  # runs load from any folder
    if args.text_encoder:
        overrides.append(f"text_encoder_path={args.text_encoder}")
    cfg = resolve_config(TextToImageTrainConfig, args.config, TEXT2IMG_PRESETS, overrides)
    _, _, metrics = train_text2img(cfg, args.out, progress=not args.no_progress)
    bits = f"; test bits/token {metrics['test_bits_per_token']:.4f}" if "test_bits_per_token" in metrics else ""
    print(f"text-to-image model saved to {args.out}{bits}")


def cmd_train_clip(args: argparse.Namespace) -> None:
    from ..config import resolve_config
    from ..train.clip import CLIP_PRESETS, ClipTrainConfig, train_clip
    cfg = resolve_config(ClipTrainConfig, args.config, CLIP_PRESETS, loop_overrides(args))
    _, metrics = train_clip(cfg, args.out, data=args.data, progress=not args.no_progress)
    print(f"CLIP saved to {args.out}; " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))


def cmd_train_shapes_judge(args: argparse.Namespace) -> None:
    from ..config import resolve_config
    from ..train.shapes_judge import SHAPES_JUDGE_PRESETS, ShapesJudgeTrainConfig, train_shapes_judge
    cfg = resolve_config(ShapesJudgeTrainConfig, args.config, SHAPES_JUDGE_PRESETS, loop_overrides(args))
    metrics = train_shapes_judge(cfg, args.out, progress=not args.no_progress)
    print(f"shapes judge saved to {args.out}; fully correct on held-out renders: {metrics['accuracy_on_renders']:.4f}")


GUIDED_FLAGS = ("tokenizer", "steps", "lr", "cutouts", "init", "snapshot_every")  # --method clip-guided only
SAMPLING_FLAGS = ("model", "guidance", "temperature", "top_k", "top_p")  # --method text2img only


def _flags(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + k.replace("_", "-") for k in names if getattr(args, k) is not None]


def cmd_generate(args: argparse.Namespace) -> None:
    from ..images import save_captioned_grid
    from ..text.generate import best_of, check_caption, check_counts, load_text2img_run
    if args.method == "clip-guided":
        return _generate_clip_guided(args)
    if _flags(args, GUIDED_FLAGS):
        raise ConfigError(f"{', '.join(_flags(args, GUIDED_FLAGS))} belong to --method clip-guided")
    if args.model is None:
        raise ConfigError("--model RUN_DIR is required: a text-to-image run (or --method clip-guided with "
                          "--tokenizer and --clip)")
    keep = check_counts(args.n, args.keep, can_rank=bool(args.clip), rank_hint="give --clip CLIP_DIR", flag="--")
    captions = [check_caption(c) for c in args.captions]
    scorer = None
    if args.clip:
        from ..rerank.clip import load_clip
        scorer = load_clip(args.clip)
    run = load_text2img_run(args.model)
    ranked = best_of(run, captions, args.n, keep, scorer, guidance_scale=args.guidance, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    labels = []
    for r in ranked:  # the CLIP score under each picture when there is one
        labels += [f"{r.caption} ({s:.1f})" for s in r.scores.tolist()] if r.scores is not None else [r.caption] * keep
    import torch
    path = save_captioned_grid(torch.cat([r.images for r in ranked]), labels, args.out, nrow=keep, scale=args.scale)
    how = f"best {keep} of {args.n} by CLIP score" if scorer is not None else f"{keep} samples, not reranked"
    scale = run.model.config.guidance_scale if args.guidance is None else args.guidance
    temperature = run.model.config.temperature if args.temperature is None else args.temperature
    print(f"wrote {path}: one row per caption, {how}; guidance {scale:g}, temperature {temperature:g}")


def _generate_clip_guided(args: argparse.Namespace) -> None:
    """``--method clip-guided``: ``--n`` pictures per caption optimised against the CLIP, best ``--keep`` kept."""
    import torch

    from ..images import save_captioned_grid
    from ..rerank.clip import load_clip
    from ..rerank.clip_guided import ClipGuidedConfig, clip_guided
    from ..text.generate import check_caption, check_counts
    from ..tokenizer.vqgan import VQTokenizer
    if _flags(args, SAMPLING_FLAGS):
        raise ConfigError(f"{', '.join(_flags(args, SAMPLING_FLAGS))} belong to --method text2img; --method "
                          "clip-guided takes --tokenizer, --clip, --steps, --lr, --cutouts, --init")
    missing = [f for f, v in (("--tokenizer TOK_DIR", args.tokenizer), ("--clip CLIP_DIR", args.clip)) if v is None]
    if missing:
        raise ConfigError(f"--method clip-guided needs {' and '.join(missing)}")
    keep = check_counts(args.n, args.keep, can_rank=True, rank_hint="", flag="--")
    captions = [check_caption(c) for c in args.captions]
    options = {k: getattr(args, k) for k in ("steps", "lr", "cutouts", "init", "snapshot_every")}
    cfg = ClipGuidedConfig(seed=args.seed, **{k: v for k, v in options.items() if v is not None})
    tokenizer = VQTokenizer.from_pretrained(args.tokenizer)
    scorer = load_clip(args.clip)
    out = clip_guided(tokenizer, scorer, [c for c in captions for _ in range(args.n)], cfg, progress=True)

    def grid(images: torch.Tensor, scores: torch.Tensor, path: Path) -> Path:
        """One row per caption, its ``keep`` best pictures by final score, the score under each."""
        rows, labels = [], []
        final = out.scores.view(len(captions), args.n)  # (captions, n)
        for i, caption in enumerate(captions):
            best = torch.argsort(final[i], descending=True, stable=True)[:keep]  # (keep,)
            rows.append(images.view(len(captions), args.n, *images.shape[1:])[i, best])
            labels += [f"{caption} ({float(s):.1f})" for s in scores.view(len(captions), args.n)[i, best]]
        return save_captioned_grid(torch.cat(rows), labels, path, nrow=keep, scale=args.scale)

    path = grid(out.images, out.scores, Path(args.out))
    for snap in out.snapshots:  # the same pictures (ranked as the result) after fewer steps
        grid(snap.images, snap.scores, path.with_name(f"{path.stem}-step{snap.step:04d}{path.suffix}"))
    how = f"best {keep} of {args.n} by CLIP score" if keep < args.n else f"{keep} pictures, best CLIP score first"
    start, end = out.history[0].mean(), out.history[-1].mean()
    print(f"wrote {path}: one row per caption, {how}; {cfg.steps} steps of CLIP-guided optimisation (lr {cfg.lr:g}, "
          f"{cfg.cutouts} cutouts, init {cfg.init}), mean CLIP score {float(start):.1f} → {float(end):.1f}"
          + (f"; {len(out.snapshots)} snapshots beside it" if out.snapshots else ""))


def _test_records(run_dir: str, captions_file: str | None):
    """(records, renders or None, by_objects_only): a user's JSONL file, or the test split of the run's
    shapes data with its renders (on which the judge's own accuracy is reported)."""
    from ..data import parse_spec, shapes_seed
    from ..data.records import read_records
    from ..data.tokens import read_meta
    if captions_file:
        return read_records(captions_file), None, True
    from ..hub import run_tokens_dir
    source = read_meta(run_tokens_dir(run_dir, "text2img")).get("source", "")
    if not isinstance(source, str) or parse_spec(source)[0] != "shapes":
        raise ConfigError(f"{run_dir} was trained on {source!r}, which has no attribute records: pass "
                          "--captions FILE.jsonl")
    from ..data.shapes import load_shapes
    test = load_shapes(shapes_seed(source), "test", progress=False)
    return test.records, (test.images, test.targets), False


def cmd_eval_text2img(args: argparse.Namespace) -> None:
    import torch

    from ..eval.shapes_judge import ShapesJudge
    from ..eval.text2img import evaluate_text2img, format_report
    from ..rerank.clip import load_clip
    from ..hub import check_kind
    from ..text.generate import generate_candidates, load_text2img_run
    check_kind(args.judge, "shapes-judge")
    scorer = load_clip(args.clip)
    run = load_text2img_run(args.run_dir)
    judge = ShapesJudge.from_pretrained(args.judge)
    records, renders, by_objects = _test_records(args.run_dir, args.captions)
    if args.n_captions:
        records = records[: args.n_captions]

    def sample_fn(captions: list[str], n: int, guidance_scale: float, seed: int) -> torch.Tensor:
        return generate_candidates(run, captions, n, guidance_scale=guidance_scale, seed=seed)

    scale = run.model.config.guidance_scale if args.guidance is None else args.guidance
    report = evaluate_text2img(records, sample_fn, scorer.score, judge, guidance_scale=scale, renders=renders,
                               n_candidates=args.candidates, seed=args.seed, progress=not args.json,
                               by_objects_only=by_objects)
    report["temperature"] = run.model.config.temperature  # every variant samples at the model's temperature
    if args.report:
        from ..hub import atomic_write_bytes
        text = json.dumps(report, indent=2)
        atomic_write_bytes(Path(args.report), lambda p: Path(p).write_text(text))
    print(json.dumps(report) if args.json else format_report(report))


def register(sub, train, evaluate) -> None:
    """``train text2img``, ``train clip``, ``train shapes-judge``, ``generate``, ``eval text2img``."""
    p = train.add_parser("text2img", help="train the caption encoder + image-token decoder")
    add_train_common(p)
    p.add_argument("--tokens", required=True, help="captioned token directory made by `vqgen encode`")
    p.add_argument("--text-encoder", metavar="DIR", help="a local transformers BART/T5/CLIP directory: its pretrained "
                   "encoder and tokenizer.json replace the project's own")
    p.set_defaults(func=cmd_train_text2img)

    p = train.add_parser("clip", help="train the CLIP-style image–text model used for reranking")
    add_train_common(p)
    p.add_argument("--data", help="captioned dataset spec (default: the config's)")
    p.set_defaults(func=cmd_train_clip)

    p = train.add_parser("shapes-judge", help="train the per-cell judge of shapes images (on renders)")
    add_train_common(p)
    p.set_defaults(func=cmd_train_shapes_judge)

    p = sub.add_parser("generate", help="images from captions: sampled by a text-to-image model and reranked by "
                       "CLIP, or optimised against CLIP (--method clip-guided)")
    p.add_argument("captions", nargs="+", metavar="CAPTION")
    p.add_argument("--method", choices=("text2img", "clip-guided"), default="text2img",
                   help="text2img: sample --model; clip-guided: optimise --tokenizer's latents against --clip")
    p.add_argument("--model", help="text-to-image run directory (--method text2img)")
    p.add_argument("--clip", help="CLIP directory (vqgen's own or a transformers CLIPModel) to rank candidates, "
                   "or to steer --method clip-guided")
    p.add_argument("--tokenizer", metavar="TOK_DIR", help="tokenizer run (--method clip-guided)")
    p.add_argument("--steps", type=int, help="optimisation steps (clip-guided; default: measured, see docs)")
    p.add_argument("--lr", type=float, help="Adam step size in the codebook's space (clip-guided)")
    p.add_argument("--cutouts", type=int, help="random crops scored per picture and step (clip-guided)")
    p.add_argument("--init", metavar="noise|tokens|IMAGE", help="start from noise, random tokens or a picture's "
                   "latents (clip-guided; default tokens)")
    p.add_argument("--snapshot-every", type=int, metavar="M", help="also save the pictures every M steps as "
                   "OUT-stepNNNN.png (clip-guided)")
    p.add_argument("--n", type=int, default=16, help="candidates to sample, or pictures to optimise")
    p.add_argument("--keep", type=int, help="best candidates to keep (default: all)")
    p.add_argument("--out", required=True)
    p.add_argument("--guidance", type=float, help="super-conditioning scale (default: the model's)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the model's)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=4, help="enlarge each picture this many times")
    p.set_defaults(func=cmd_generate)

    p = evaluate.add_parser("text2img", help="judge generated images: fully-correct fractions with/without "
                            "reranking and guidance")
    p.add_argument("run_dir")
    p.add_argument("--clip", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--captions", help="JSONL of attribute records (default: the shapes test split)")
    p.add_argument("--n-captions", type=int, help="evaluate only the first N captions")
    p.add_argument("--candidates", type=int, default=8, help="candidates per caption for reranking")
    p.add_argument("--guidance", type=float, help="guided variant's scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="FILE", help="also write the JSON object to FILE")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    p.set_defaults(func=cmd_eval_text2img)
