"""Tiny trained runs laid out as the README names them, made in a few seconds (for the pipeline and
README tests):

    runs/tok              grey 16×16 tokenizer (2 steps), Python-trained
    runs/tokens           its tokens of 10-class synthetic images named like Fashion-MNIST's classes
    runs/prior            class-conditional prior over them (condition dropout 0.1), Python-trained
    runs/demo/tokenizer   RGB 16×16 tokenizer (untrained: only its codec is needed)
    runs/demo/tokens      its tokens of 48 captioned `shapes` pictures
    runs/demo/text2img    text-to-image model (guidance 2), trained through the `vqgen` command
    runs/demo/clip        CLIP reranker, Python-trained
"""
from __future__ import annotations

from pathlib import Path

import torch

from conftest import synthetic_images
from vqgen.cli import main
from vqgen.config import apply_overrides
from vqgen.data.fashion_mnist import CLASS_NAMES
from vqgen.data.shapes import load_shapes
from vqgen.data.tokens import TokenWriter
from vqgen.prior.codec import TokenizerCodec
from vqgen.tokenizer.vqgan import VQTokenizer
from vqgen.train.clip import CLIP_PRESETS, train_clip
from vqgen.train.prior import PRIOR_PRESETS, train_prior
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer


def write_tokens(codec: TokenizerCodec, out: Path, splits: dict, source: str, class_names: list[str]) -> Path:
    """Token shards of in-memory ``splits`` ({name: ImageDataset}), as ``vqgen encode`` writes them."""
    for split, data in splits.items():
        meta = {"codec": codec.meta(), "vocab_size": codec.vocab_size, "source": source, "class_names": class_names,
                "resolution": codec.resolution, "channels": codec.channels, "captioned": data.captions is not None}
        w = TokenWriter(out, split, meta)
        w.write(0, codec.encode(data.images), data.labels, data.captions)
        w.finish(len(data))
    return out


def make_runs(root: Path) -> Path:
    runs = root / "runs"
    torch.manual_seed(0)
    grey = synthetic_images(60, classes=10)
    grey.class_names = list(CLASS_NAMES)
    cfg = apply_overrides(TOKENIZER_PRESETS["tiny"](), ["loop.max_steps=2"])
    tok = train_tokenizer(cfg, runs / "tok", train_data=grey, progress=False)
    write_tokens(TokenizerCodec(tok, str(runs / "tok")), runs / "tokens", {"train": grey, "test": grey},
                 "synthetic", list(CLASS_NAMES))
    cfg = apply_overrides(PRIOR_PRESETS["tiny"](), ["model.vocab_size=32", "model.num_classes=10", "loop.max_steps=4"])
    train_prior(cfg, runs / "prior", tokens=str(runs / "tokens"), progress=False)

    shapes = load_shapes(0, "train", resolution=16, n=48, progress=False)
    rgb = VQTokenizer(apply_overrides(TOKENIZER_PRESETS["tiny"](), ["model.autoencoder.in_channels=3"]).model).eval()
    rgb.save_pretrained(runs / "demo" / "tokenizer")
    write_tokens(TokenizerCodec(rgb, str(runs / "demo" / "tokenizer")), runs / "demo" / "tokens",
                 {"train": shapes}, "shapes:0", [])
    assert main(["train", "text2img", "--config", "tiny", "--tokens", str(runs / "demo" / "tokens"), "--out",
                 str(runs / "demo" / "text2img"), "--max-steps", "4", "--no-progress"]) == 0
    clip = apply_overrides(CLIP_PRESETS["tiny"](), ["loop.max_steps=4"])
    train_clip(clip, runs / "demo" / "clip", train_data=shapes, progress=False)
    return runs
