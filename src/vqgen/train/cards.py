"""Model cards: every trainer writes ``RUN/README.md`` when it finishes.

A card says what the run is (one sentence), what data it learned from, its parameter count, its
training steps and time, the evaluation figures of ``metrics.json``, the exact command that made it,
how to use it and its training config. The command is what the ``vqgen`` CLI records
(:func:`recording_command`, around every command it runs); a run trained from Python is described as
the trainer's call together with the process's own command line. A run found already trained gets a
card only when it has none (``overwrite=False``), so the card keeps the command that trained it.

Nothing here imports the CLI; the run directory is read from its files (a prior's config class only
to name its guidance default).
"""
from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

CARD_NAME = "README.md"

_COMMAND: ContextVar[str | None] = ContextVar("vqgen_command", default=None)


@contextmanager
def recording_command(argv: list[str]) -> Iterator[None]:
    """Inside the block, model cards record ``vqgen ARGV`` (and the working directory) as the command
    that made a run."""
    token = _COMMAND.set(shlex.join(["vqgen", *argv]))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def recorded_command() -> str | None:
    """The ``vqgen ...`` command being run, or None outside the CLI."""
    return _COMMAND.get()


# kind (config.json) → (one sentence, the trainer's Python name, how to use it)
_KINDS: dict[str, tuple[str, str, str]] = {
    "tokenizer": ("A VQ tokenizer (VQ-GAN): it encodes images into grids of codebook tokens and decodes tokens "
                  "back to pixels.", "vqgen.train.tokenizer.train_tokenizer",
                  'vqgen reconstruct {path} --data SPEC --out recon.png\n'
                  'vqgen encode --tokenizer {path} --data SPEC --out TOKENS_DIR\n'
                  '# Python: vqgen.Pipeline.from_pretrained("{path}").reconstruct("picture.png")'),
    "prior": ("A GPT prior over image token grids: it samples pictures token by token{cond}, decoded by the "
              "codec its tokens were made with.", "vqgen.train.prior.train_prior",
              'vqgen sample --prior {path} --n 8 --out samples.png\n'
              '# Python: vqgen.Pipeline.from_pretrained("{path}")({call}n=8, seed=0).images'),
    "text2img": ("A text-to-image model, DALL·E-mini style: a caption encoder and a decoder that predicts image "
                 "tokens, decoded by the tokenizer its tokens were made with.", "vqgen.train.text2img.train_text2img",
                 'vqgen generate "a red circle" --model {path} [--clip CLIP_DIR --n 16 --keep 4] --out out.png\n'
                 '# Python: vqgen.Pipeline.from_pretrained("{path}", clip=CLIP_DIR)("a red circle", n=16, keep=4)'),
    "clip": ("A CLIP-style image–text model: it scores how well a picture matches a caption, to rerank "
             "text-to-image samples.", "vqgen.train.clip.train_clip",
             'vqgen generate "a red circle" --model TEXT2IMG_RUN --clip {path} --n 16 --keep 4 --out out.png'),
    "shapes-judge": ("The shapes judge: a per-cell classifier of shape, colour and size in `shapes` scenes, trained "
                     "on renders only, that checks every attribute a caption states.",
                     "vqgen.train.shapes_judge.train_shapes_judge",
                     'vqgen eval text2img TEXT2IMG_RUN --clip CLIP_DIR --judge {path}'),
    "judge": ("A judge classifier: it puts images into the dataset's classes, to evaluate class-conditional "
              "samples.", "vqgen.train.classifier.train_classifier",
              'vqgen eval prior PRIOR_RUN --judge {path}\nvqgen eval classifier {path} --data SPEC'),
}


def _read_json(path: Path) -> dict:
    """A JSON object the card reports from, or {} when the file is missing or damaged (a card is
    written whatever state the run's side files are in)."""
    from ..errors import VqgenError
    from ..hub import read_json
    try:
        data = read_json(path, VqgenError, "")
    except VqgenError:
        return {}
    return data if isinstance(data, dict) else {}


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M ({n:,})" if n >= 1e5 else f"{n:,}"


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else (f"{minutes} min {s} s" if minutes else f"{seconds:.1f} s")


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _parameters(run_dir: Path, model: Any) -> str:
    if model is not None:
        return _count(sum(p.numel() for p in model.parameters()))
    try:  # without the model: every tensor of the weight file (buffers included)
        from safetensors import safe_open
        with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
            n = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
        return f"{_count(n)} (all tensors of model.safetensors)"
    except Exception:  # noqa: BLE001 - a card is written even when the weights are unreadable
        return "unknown"


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _data(kind: str, train_cfg: dict, metrics: dict, given: str | None) -> str:
    if given is not None:
        return f"`{given}`" if given else "images given in Python (no dataset spec)"
    if kind == "shapes-judge":
        return "renders of random `shapes` scenes, drawn afresh every step (no dataset files)"
    if kind == "judge":
        return f"`{metrics['data']}`" if metrics.get("data") else "images given in Python"
    tokens = train_cfg.get("tokens")
    if tokens is not None:
        if not tokens:
            return "token grids given in Python (no token directory)"
        meta = _read_json(Path(tokens) / "meta.json")
        codec = meta.get("codec", {})
        made = (f"the tokenizer at `{codec.get('path')}`" if codec.get("kind") == "tokenizer"
                else f"a {meta.get('vocab_size', '?')}-colour pixel palette" if codec.get("kind") == "palette" else "?")
        return f"`{meta.get('source', '?')}`, as token grids in `{tokens}` made by {made}"
    return f"`{train_cfg['data']}`" if train_cfg.get("data") else "unknown"


def _training(run_dir: Path, kind: str, train_cfg: dict, metrics: dict) -> str:
    if kind == "judge":
        steps = f"{train_cfg.get('epochs', '?')} epochs of {metrics.get('n_train', '?')} images"
    else:
        steps = metrics.get("step", metrics.get("steps", train_cfg.get("loop", {}).get("max_steps")))
        steps = f"{steps} steps" if steps is not None else "unknown steps"
        batch = train_cfg.get("loop", {}).get("batch_size")
        steps += f" × batch {batch}" if batch else ""
    seconds = metrics.get("train_seconds")
    if seconds is None:
        try:
            from .common import train_seconds
            seconds = train_seconds(run_dir)
        except Exception:  # noqa: BLE001 - no (readable) checkpoint: the time is not known
            seconds = None
    return steps + (f", {_duration(seconds)} of training" if seconds is not None else ", training time not recorded")


def _sampling(kind: str, model_cfg: dict) -> str | None:
    if kind == "text2img":
        g, t = model_cfg.get("guidance_scale", 1.0), model_cfg.get("temperature", 1.0)
        return (f"guidance scale {g:g} and temperature {t:g} unless told otherwise (the config's recorded best; "
                f"caption dropout {model_cfg.get('caption_drop_prob', 0):g})")
    if kind == "prior" and model_cfg.get("num_classes"):
        from ..prior.gpt import GUIDANCE_WITH_COND_DROPOUT
        g = model_cfg.get("guidance_scale")
        drop = model_cfg.get("cond_drop_prob", 0.0)
        if g is None:
            g = GUIDANCE_WITH_COND_DROPOUT if drop > 0 else 1.0
            why = ("recommended for a prior trained with condition dropout: the judge put 78 % of samples in the class "
                   "asked for at scale 1, 92 % at 2, benchmarks/results/prior_guidance.json"
                   if drop > 0 else "no condition dropout, so no guidance")
        else:
            why = "set in the config"
        return f"class-conditional samples use guidance scale {g:g} unless told otherwise ({why})"
    return None


def _metric_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = []
    skip = {"step", "steps", "train_seconds", "seconds", "data", "class_names", "history"}
    for k, v in metrics.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            rows += [(f"{k}.{k2}", _num(v2)) for k2, v2 in v.items() if isinstance(v2, (int, float, str)) or v2 is None]
        elif isinstance(v, (int, float, str)) or v is None:
            rows.append((k, _num(v)))
    return rows


def model_card(run_dir: str | Path, model: Any = None, *, data: str | None = None) -> str:
    """The text of ``run_dir``'s card (see the module docstring); ``model`` (the trained module) gives the
    parameter count, ``data`` the dataset spec trained on when the training config does not hold it."""
    import yaml

    from ..hub import read_payload
    run_dir = Path(run_dir)
    payload = read_payload(run_dir)
    kind = str(payload.get("kind"))
    model_cfg = payload.get("config", {})
    train_cfg = _read_json(run_dir / "train_config.json")
    metrics = _read_json(run_dir / "metrics.json")
    what, trainer, use = _KINDS.get(kind, (f"A {kind!r} model.", "", ""))
    classes = model_cfg.get("num_classes", 0) if kind == "prior" else 0
    names = _read_json(Path(train_cfg["tokens"]) / "meta.json").get("class_names") if train_cfg.get("tokens") else None
    names = names or []
    what = what.format(cond=(f", conditioned on one of {classes} classes" + (f" ({', '.join(names)})" if names else "")
                             if classes else ", unconditionally"))
    use = use.format(path=run_dir, call="class_label=0, " if classes else "")

    lines = [f"# Model card: {run_dir.name}", "", what, "", "| | |", "|---|---|",
             f"| Kind | `{kind}` (`config.json` + `model.safetensors`) |",
             f"| Data | {_data(kind, train_cfg, metrics, data)} |",
             f"| Parameters | {_parameters(run_dir, model)} |",
             f"| Training | {_training(run_dir, kind, train_cfg, metrics)} |"]
    sampling = _sampling(kind, model_cfg)
    if sampling:
        lines.append(f"| Sampling | {sampling} |")
    lines += ["", "## Evaluation", ""]
    rows = _metric_rows(metrics)
    if rows:
        lines += ["Measured at the end of training (`metrics.json`):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
    else:
        absent = "" if (run_dir / "metrics.json").exists() else " (no `metrics.json`)"
        lines.append(f"No evaluation figures were recorded at training time{absent}; see the `vqgen eval` commands.")
    lines += ["", "## How it was made", ""]
    command = recorded_command()
    if command is not None:
        lines += [f"In `{os.getcwd()}`:", "", "```bash", command, "```"]
    else:
        lines += [f"From Python, not the `vqgen` command: `{trainer or 'a trainer'}(cfg, {str(run_dir)!r}, ...)` with "
                  "the config below, in the process", "", "```bash", shlex.join(["python", *sys.argv]), "```"]
    if use:
        lines += ["", "## Use", "", "```bash", use, "```"]
    lines += ["", "## Training config", "", "`train_config.json` (the architecture alone: `config.json`):", "",
              "```yaml", yaml.safe_dump(train_cfg or model_cfg, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, model: Any = None, *, data: str | None = None,
                     overwrite: bool = True) -> Path:
    """Write ``run_dir/README.md`` (:func:`model_card`); with ``overwrite=False`` an existing card is kept."""
    from ..hub import atomic_write_bytes
    path = Path(run_dir) / CARD_NAME
    if overwrite or not path.exists():
        text = model_card(run_dir, model, data=data)
        atomic_write_bytes(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return path
