"""CLIP-guided generation, "VQGAN + CLIP": no text-to-image model, only a tokenizer and a CLIP.

The tokenizer's latent grid is optimised by gradient steps so that a CLIP model scores the decoded
picture close to the caption (Crowson et al. 2022, "VQGAN-CLIP", https://arxiv.org/abs/2204.08583).
The variables are one vector per token cell in the quantizer's lookup space, ``c`` (B, h, w, D). Each step:

1. snaps every vector to its nearest codebook entry (l2-normalised first for an l2 codebook; for FSQ,
   Mentzer et al. 2023, the nearest point of its grid of levels), with a straight-through gradient to
   ``c`` (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937);
2. decodes the snapped grid (``proj_out`` → ``post_quant_conv`` → decoder), clamped to [-1, 1] with the
   gradient passed through the clamp (VQGAN-CLIP's ``ClampWithGrad``);
3. takes ``cutouts`` random square crops of each picture, side a random fraction in [``crop_min``, 1]
   of the picture's, at a random place, resampled to the picture's size (VQGAN-CLIP's ``MakeCutouts``;
   the scorer resizes to its input size);
4. minimises minus the mean CLIP cosine of the crops with the caption, by an Adam step on ``c``
   (Kingma & Ba 2014, https://arxiv.org/abs/1412.6980), then clamps ``c`` to the codebook's
   per-dimension range (as VQGAN-CLIP clamps its latents).

The result's pictures are ``tokenizer.decode(tokens)`` of the last snap, so they are exactly what their
tokens decode to. ``history`` holds the CLIP score of the snapped picture before every step and, last,
of the result. Anything the scorer can embed with gradients works: this project's CLIP or a
``transformers`` CLIPModel (``vqgen.rerank.clip``), with any tokenizer of this project, VQ or FSQ, one
imported from a taming-transformers checkpoint included.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..images import load_picture, to_model_range, to_uint8
from ..tokenizer.quantizer import FSQuantizer, VectorQuantizer
from ..tokenizer.vqgan import VQTokenizer
from .clip import HFClipScorer, OwnClipScorer, clip_score

Quantizer = VectorQuantizer | FSQuantizer  # both offer codebook(), lookup(), _project() and proj_out

INITS = ("noise", "tokens")  # or the path of an image file


@dataclass
class ClipGuidedConfig:
    # Defaults measured on the `shapes` tokenizer and CLIP of benchmarks/text2img.py
    # (`python benchmarks/clip_guided.py --sweep`, docs/clip_guided.md).
    steps: int = 100
    lr: float = 0.1  # Adam's step size, in units of the codebook's lookup space
    cutouts: int = 8  # random crops scored per picture and step
    crop_min: float = 0.75  # smallest crop side, as a fraction of the picture's side
    init: str = "tokens"  # "noise" (Gaussian with the codebook's per-dimension statistics), "tokens" (uniformly
    #                      random codes) or the path of an image file (its encoder latents)
    snapshot_every: int = 0  # keep the pictures every this many steps (0: none)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("steps", 0), ("cutouts", 1), ("snapshot_every", 0), ("seed", -2 ** 63)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                at_least = f" >= {low}" if low > -2 ** 63 else ""
                raise ConfigError(f"clip-guided: {name} must be an integer{at_least}, got {value!r}")
        for name in ("lr", "crop_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"clip-guided: {name} must be a number, got {value!r}")
        if not 0 < self.lr < float("inf"):
            raise ConfigError(f"clip-guided: lr must be a finite number > 0, got {self.lr}")
        if not 0 < self.crop_min <= 1:
            raise ConfigError(f"clip-guided: crop_min must be in (0, 1], got {self.crop_min}")
        if not isinstance(self.init, (str, Path)) or (str(self.init) not in INITS and not Path(self.init).is_file()):
            raise ConfigError(f"clip-guided: init must be 'noise', 'tokens' or an image file, got {str(self.init)!r} "
                              "(no such file)")


@dataclass
class Snapshot:
    step: int  # Adam steps taken
    tokens: torch.Tensor  # int64 (B, h, w)
    images: torch.Tensor  # uint8 (B, C, H, W) = decode(tokens)
    scores: torch.Tensor  # (B,) CLIP scores of the images
    seconds: float  # since the optimisation began


@dataclass
class ClipGuidedResult:
    tokens: torch.Tensor  # int64 (B, h, w)
    images: torch.Tensor  # uint8 (B, C, H, W) = to_uint8(tokenizer.decode(tokens))
    scores: torch.Tensor  # (B,) CLIP score of each image with its caption
    history: torch.Tensor  # (steps + 1, B): the score before each step, then ``scores``
    seconds: float
    snapshots: list[Snapshot] = field(default_factory=list)


def clip_guided(tokenizer: VQTokenizer, scorer: OwnClipScorer | HFClipScorer, captions: list[str],
                config: ClipGuidedConfig | None = None, progress: bool = False) -> ClipGuidedResult:
    """One picture per caption (``captions[i]`` steers picture i), optimised together; see the module
    docstring. The tokenizer's and scorer's weights are not changed; their modes are restored after."""
    cfg = config or ClipGuidedConfig()
    if isinstance(captions, str) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ConfigError("clip-guided generation takes a non-empty list of non-empty captions, one per picture")
    quantizer = tokenizer.quantizer
    was = tokenizer.training
    tokenizer.eval()  # the quantizer's EMA and restarts must not move the codebook
    try:
        return _optimise(tokenizer, quantizer, scorer, list(captions), cfg, progress)
    finally:
        tokenizer.train(was)


def _optimise(tokenizer: VQTokenizer, quantizer: Quantizer, scorer, captions: list[str],
              cfg: ClipGuidedConfig, progress: bool) -> ClipGuidedResult:
    device = next(tokenizer.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)  # init and crops: the same on every device
    codebook = quantizer.codebook().detach()  # (K, D)
    lo, hi = codebook.min(dim=0).values, codebook.max(dim=0).values  # (D,)
    latent = _init(tokenizer, quantizer, codebook, cfg.init, len(captions), gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=cfg.lr)
    with torch.no_grad():
        text = scorer.embed_text(captions).to(device)  # (B, E)
    text_k = text.repeat_interleave(cfg.cutouts, dim=0)  # (B·K, E): crops of picture i are rows i·K … i·K+K-1

    def exact(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            images = to_uint8(tokenizer.decode(tokens))  # (B, C, H, W)
            return images, _score(scorer, images, text)

    history, snapshots = [], []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="clip-guided", disable=not progress, dynamic_ncols=True)
    for step in bar:
        x, tokens = _decode(tokenizer, quantizer, codebook, latent)  # (B, C, H, W) with gradients, (B, h, w)
        with torch.no_grad():
            history.append(_score(scorer, to_uint8(x), text))  # (B,)
        if cfg.snapshot_every and step and step % cfg.snapshot_every == 0:
            snapshots.append(Snapshot(step, tokens, *exact(tokens), time.perf_counter() - start))
        crops = _cutouts(x, cfg.cutouts, cfg.crop_min, gen)  # (B·K, C, H, W)
        cos = (scorer.embed_images(crops) * text_k).sum(-1)  # (B·K,)
        loss = -cos.view(len(captions), cfg.cutouts).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[latent])  # the networks' weights get no gradients
        opt.step()
        with torch.no_grad():
            latent.copy_(torch.maximum(torch.minimum(latent, hi), lo))  # stay in the codebook's box (VQGAN-CLIP)
        bar.set_postfix(score=f"{float(history[-1].mean()):.1f}")
    bar.close()
    with torch.no_grad():
        tokens = _snap(quantizer, codebook, latent)[1]  # (B, h, w)
    images, scores = exact(tokens)
    seconds = time.perf_counter() - start
    if cfg.snapshot_every and cfg.steps and cfg.steps % cfg.snapshot_every == 0:
        snapshots.append(Snapshot(cfg.steps, tokens, images, scores, seconds))
    return ClipGuidedResult(tokens.cpu(), images.cpu(), scores.cpu(), torch.stack(history + [scores]).cpu(), seconds,
                            snapshots)


def _score(scorer, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP scores (B,) of uint8 pictures against precomputed text embeddings: what ``scorer.score`` gives."""
    return clip_score(scorer.embed_images(to_model_range(images)), text)  # (B,)


def _init(tokenizer: VQTokenizer, quantizer: Quantizer, codebook: torch.Tensor, init: str, b: int,
          gen: torch.Generator) -> torch.Tensor:
    """Starting latents (B, h, w, D) in the lookup space, on the CPU."""
    h, w = tokenizer.cfg.grid
    cb = codebook.cpu()
    init = str(init)
    if init == "noise":
        noise = torch.randn(b, h, w, cb.shape[1], generator=gen)  # (B, h, w, D)
        return cb.mean(0) + cb.std(0) * noise
    if init == "tokens":
        return cb[torch.randint(0, cb.shape[0], (b, h, w), generator=gen)]  # (B, h, w, D)
    ae = tokenizer.cfg.autoencoder
    picture = load_picture(init, ae.resolution, ae.in_channels)[None]  # uint8 (1, C, H, W)
    device = next(tokenizer.parameters()).device
    with torch.no_grad():
        z = tokenizer.quant_conv(tokenizer.encoder(to_model_range(picture.to(device))))  # (1, z, h, w)
        c = quantizer._project(rearrange(z, "b c h w -> (b h w) c"))  # (h·w, D)
    return c.view(1, z.shape[2], z.shape[3], -1).expand(b, -1, -1, -1).cpu()  # (B, h, w, D)


def _snap(quantizer: Quantizer, codebook: torch.Tensor,
          latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest codes with a straight-through gradient (B, h, w, D), their ids (B, h, w))."""
    l2 = isinstance(quantizer, VectorQuantizer) and quantizer.cfg.l2_normalize  # FSQ ignores the VQ options
    z = F.normalize(latent, dim=-1) if l2 else latent  # (B, h, w, D)
    idx = quantizer.lookup(z.detach().flatten(0, 2)).view(latent.shape[:3])  # (B, h, w)
    return codebook[idx] + (z - z.detach()), idx  # exactly the codes forward, identity backward


def _decode(tokenizer: VQTokenizer, quantizer: Quantizer, codebook: torch.Tensor,
            latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures in [-1, 1] (B, C, H, W), differentiable in ``latent``, and the token ids they show."""
    q, idx = _snap(quantizer, codebook, latent)  # (B, h, w, D), (B, h, w)
    z = rearrange(quantizer.proj_out(q), "b h w c -> b c h w")  # (B, z, h, w), as codes_to_latents lays it out
    x = tokenizer.decoder(tokenizer.post_quant_conv(z))  # (B, C, H, W)
    return x.clamp(-1, 1) + (x - x.detach()), idx  # clamped forward, gradient through the clamp


def _cutouts(x: torch.Tensor, k: int, crop_min: float, gen: torch.Generator) -> torch.Tensor:
    """K random square crops of each picture (B, C, H, W) → (B·K, C, H, W), resampled bilinearly."""
    n = x.shape[0] * k
    side = crop_min + (1 - crop_min) * torch.rand(n, generator=gen)  # (B·K,) fraction of the picture's side
    shift = (1 - side)[:, None] * (2 * torch.rand(n, 2, generator=gen) - 1)  # (B·K, 2) centre, in [-1, 1] units
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, *x.shape[1:]], align_corners=False)  # (B·K, H, W, 2)
    return F.grid_sample(x.repeat_interleave(k, dim=0), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)  # (B·K, C, H, W)
