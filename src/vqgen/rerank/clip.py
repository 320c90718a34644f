"""A small CLIP-style image–text model, used only to rerank text-to-image samples.

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) embeds images and captions into one
space where a matching pair has a high cosine similarity; it is trained with a symmetric InfoNCE
loss over the in-batch pairs (van den Oord et al. 2018, https://arxiv.org/abs/1807.03748).

- Image side: a small convolutional tower (``vqgen.layers.ConvTower``, as in ``vqgen.eval.judge``: a
  ``pixel_unshuffle`` stem, then ``vqgen.layers.ResnetBlock`` stages, stride-2 ``Downsample`` between
  them, GroupNorm, swish), global average pooling, linear projection.
- Text side: a bidirectional Transformer (``TransformerBlock(causal=False)``) over the caption ids
  of ``vqgen.text.bpe.CaptionTokenizer`` (``<s> ids </s> <pad>…``), with the padding masked out
  of attention, pooled at the ``</s>`` token (the last real token), linear projection.

Generation code sees only a :class:`ClipScorer`: ``score(uint8 images, captions) -> (B,)`` CLIP
scores, 100 × cosine (Hessel et al. 2021, https://arxiv.org/abs/2104.08718), without gradients. Both
scorers here also keep gradients where asked: ``embed_images(float images in [-1, 1])`` and
``embed_text(captions)`` (L2-normalised embeddings) and ``similarity`` (the score of float images), which
CLIP-guided generation (``vqgen.rerank.clip_guided``) differentiates. :func:`load_clip`
returns one for a directory holding either this project's model (kind ``"clip"``, with its
``tokenizer.json``) or a Hugging Face ``transformers`` CLIP saved locally (nothing is downloaded).
:func:`rerank` keeps the best samples for a caption, as DALL·E does with CLIP
(Ramesh et al. 2021, https://arxiv.org/abs/2102.12092).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..hub import first_line, load_pretrained, read_json, read_payload, save_pretrained
from ..images import to_model_range
from ..layers import ConvTower, TransformerBlock, check_tower_config
from ..text.bpe import TOKENIZER_FILE, CaptionTokenizer

KIND = "clip"
# OpenAI CLIP's image normalisation, used when a Hugging Face directory has no preprocessor_config.json.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipConfig:
    # image side
    channels: int = 3
    resolution: int = 32
    widths: tuple[int, ...] = (32, 64, 128)  # one entry per stage; stages after the first halve H, W
    blocks: tuple[int, ...] = (1, 1, 1)  # ResnetBlocks per stage
    norm_groups: int = 8
    patch: int = 1  # the stem folds patch×patch pixel blocks into channels (pixel_unshuffle; cheap on a CPU)
    # text side
    vocab_size: int = 512  # ≥ the caption tokenizer's vocabulary
    max_len: int = 32  # caption length in ids, <s> and </s> included
    pad_id: int = 0  # the caption tokenizer's <pad> id
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    # shared space
    embed_dim: int = 128
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        self.blocks = tuple(self.blocks)
        if self.channels not in (1, 3):
            raise ConfigError(f"clip: channels must be 1 or 3, got {self.channels}")
        check_tower_config("clip", self.resolution, self.widths, self.blocks, self.patch, self.norm_groups)
        if self.vocab_size < 1 or self.max_len < 3:
            raise ConfigError(f"clip: vocab_size must be >= 1 and max_len >= 3, got {self.vocab_size}, {self.max_len}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"clip: pad_id {self.pad_id} is outside the vocabulary [0, {self.vocab_size})")
        if min(self.n_layer, self.n_head, self.n_embd, self.embed_dim) < 1:
            raise ConfigError("clip: n_layer, n_head, n_embd and embed_dim must be >= 1")
        if self.n_embd % self.n_head:
            raise ConfigError(f"clip: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0 < self.init_logit_scale <= math.log(100):
            raise ConfigError(f"clip: init_logit_scale must be in (0, log 100], got {self.init_logit_scale}")


class ClipModel(nn.Module):
    """Image and text encoders into one L2-normalised ``embed_dim`` space, with a learnable temperature.

    ``tokenizer`` (a :class:`CaptionTokenizer`) is not a module: the trainer sets it, and
    ``save_pretrained`` / ``from_pretrained`` write and read it as ``tokenizer.json`` beside the weights.
    """

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.tokenizer: CaptionTokenizer | None = None
        self.image_tower = ConvTower(config.channels, config.widths, config.blocks, config.patch, config.norm_groups)
        self.image_proj = nn.Linear(self.image_tower.out_channels, config.embed_dim, bias=False)
        # text encoder
        c = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, c)
        self.pos_emb = nn.Parameter(torch.zeros(config.max_len, c))
        self.blocks = nn.ModuleList(TransformerBlock(c, config.n_head, causal=False) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(c)
        self.text_proj = nn.Linear(c, config.embed_dim, bias=False)
        # learnable temperature, stored as a log (CLIP §2.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.01)

    # --- encoders ---------------------------------------------------------------------------------

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [-1, 1] (B, C, H, W) → L2-normalised embeddings (B, embed_dim)."""
        c, r = self.config.channels, self.config.resolution
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, r, r):
            raise ConfigError(f"clip expects (B, {c}, {r}, {r}) images, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ConfigError(f"clip expects float images in [-1, 1] (see to_model_range), got {x.dtype}")
        h = self.image_tower(x).mean(dim=(2, 3))  # (B, widths[-1])
        return F.normalize(self.image_proj(h), dim=-1)  # (B, D)

    def text_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded caption ids → bool (B, L), True at real tokens; bad ids → ConfigError."""
        cfg = self.config
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ConfigError(f"caption ids must be a LongTensor (B, L), got {tuple(ids.shape)} {ids.dtype}")
        if not 1 <= ids.shape[1] <= cfg.max_len:
            raise ConfigError(f"caption ids have length {ids.shape[1]}; this model takes 1..{cfg.max_len}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size):
            raise ConfigError(f"caption ids must lie in [0, {cfg.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
        mask = ids != cfg.pad_id  # (B, L)
        if not bool(mask[:, 0].all()) or bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ConfigError("caption ids must be right-padded, each with at least one non-<pad> token")
        return mask

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Caption ids (B, L), ``<s> … </s>`` right-padded with ``pad_id`` → L2-normalised (B, embed_dim)."""
        mask = self.text_mask(ids)  # (B, L)
        b, t = ids.shape
        h = self.tok_emb(ids) + self.pos_emb[:t]  # (B, L, C)
        for block in self.blocks:
            h = block(h, key_mask=mask)  # (B, L, C); padding is never attended to
        last = mask.sum(dim=1) - 1  # (B,) position of </s>, the last real token
        pooled = self.ln_f(h[torch.arange(b, device=ids.device), last])  # (B, C)
        return F.normalize(self.text_proj(pooled), dim=-1)  # (B, D)

    # --- training ---------------------------------------------------------------------------------

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 so training stays stable (CLIP §2.5)."""
        return self.logit_scale.exp().clamp(max=100.0)

    def logits(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, B) image→text logits: scale · cosine of image i with caption j."""
        img = self.encode_image(x)  # (B, D)
        txt = self.encode_text(ids)  # (B, D)
        if img.shape[0] != txt.shape[0]:
            raise ConfigError(f"{img.shape[0]} images but {txt.shape[0]} captions")
        return self.scale() * img @ txt.t()  # (B, B)

    def loss(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the in-batch pairs: image i's caption is caption i (CLIP, Fig. 3)."""
        return contrastive_loss(self.logits(x, ids))

    # --- saving -----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json + model.safetensors + tokenizer.json (the tokenizer must be set; the weights record
        its checksum)."""
        if self.tokenizer is None:
            raise ConfigError("set ClipModel.tokenizer before saving: a CLIP directory carries its caption tokenizer")
        return save_pretrained(self, self.config, directory, KIND, files={TOKENIZER_FILE: self.tokenizer.to_str()})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "ClipModel":
        """Load weights (strict keys) and the caption tokenizer; the model is returned in eval mode."""
        model = load_pretrained(cls, ClipConfig, directory, KIND, map_location=map_location)
        model.tokenizer = CaptionTokenizer.load(Path(directory) / TOKENIZER_FILE)
        check_tokenizer(model.config, model.tokenizer, Path(directory))
        return model.eval()


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of (B, B) image→text logits whose diagonal holds the true pairs (CLIP, Fig. 3)."""
    target = torch.arange(logits.shape[0], device=logits.device)  # (B,)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def check_tokenizer(config: ClipConfig, tokenizer: CaptionTokenizer, where: str | Path) -> None:
    """ConfigError unless the tokenizer's ids fit the model (vocabulary and <pad> id)."""
    if tokenizer.vocab_size > config.vocab_size or tokenizer.pad_id != config.pad_id:
        raise ConfigError(f"{where}: the caption tokenizer (vocabulary {tokenizer.vocab_size}, <pad> {tokenizer.pad_id}) "
                          f"does not fit the model (vocab_size {config.vocab_size}, pad_id {config.pad_id})")


# --- scoring ----------------------------------------------------------------------------------------


@runtime_checkable
class ClipScorer(Protocol):
    """What generation code uses: CLIP scores of images against captions."""

    def score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """uint8 images (B, C, H, W) and B captions → float (B,) = 100 × cosine of image i and caption i."""
        ...


def _check_score_args(images: torch.Tensor, captions: list[str]) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"CLIP scoring takes uint8 images (B, C, H, W), got {got}")
    if isinstance(captions, str) or len(captions) != images.shape[0]:
        n = "a string" if isinstance(captions, str) else len(captions)
        raise ConfigError(f"CLIP scoring takes one caption per image: {images.shape[0]} images, {n} captions")


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """L2-normalised (B, D) image and text embeddings → (B,) CLIP scores, 100 × the cosine of row i with
    row i (Hessel et al. 2021, https://arxiv.org/abs/2104.08718)."""
    return 100.0 * (image_embeds * text_embeds).sum(-1)  # (B,)


def similarity(scorer, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Float images in [-1, 1] (B, C, H, W) and B captions → (B,) CLIP scores, with gradients: the
    ``similarity`` method of both scorers (anything with ``embed_images`` and ``embed_text``)."""
    return clip_score(scorer.embed_images(images), scorer.embed_text(captions))  # (B,)


class OwnClipScorer:
    """CLIP scores from this project's :class:`ClipModel` and its BPE caption tokenizer."""

    def __init__(self, model: ClipModel):
        if model.tokenizer is None:
            raise ConfigError("OwnClipScorer needs a ClipModel with its tokenizer set")
        self.model = model

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [-1, 1] (B, C, H, W), any size (resized to the model's) → L2-normalised (B, D),
        differentiable with respect to the images."""
        cfg = self.model.config
        if images.dim() != 4 or not images.is_floating_point() or images.shape[1] != cfg.channels:
            raise ConfigError(f"this CLIP embeds float (B, {cfg.channels}, H, W) images in [-1, 1], got "
                              f"{tuple(images.shape)} {images.dtype}")
        x = images.to(next(self.model.parameters()).device)
        if tuple(x.shape[2:]) != (cfg.resolution, cfg.resolution):
            x = F.interpolate(x, size=(cfg.resolution, cfg.resolution), mode="bilinear", antialias=True,
                              align_corners=False)  # (B, C, r, r)
        with _eval(self.model):
            return self.model.encode_image(x)  # (B, D)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        """B captions → L2-normalised (B, D); long captions are truncated."""
        cfg = self.model.config
        ids, _ = self.model.tokenizer.encode(list(captions), cfg.max_len)  # (B, L)
        with _eval(self.model):
            return self.model.encode_text(ids.to(next(self.model.parameters()).device))  # (B, D)

    similarity = similarity  # the module function above, as a method (one definition for both scorers)

    @torch.inference_mode()
    def score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        _check_score_args(images, captions)
        cfg = self.model.config
        if images.shape[1] != cfg.channels:
            raise ConfigError(f"this CLIP takes {cfg.channels}-channel images, got {images.shape[1]} channels")
        return self.similarity(to_model_range(images), captions).float().cpu()  # (B,)


@contextmanager
def _eval(model: nn.Module):
    """The model in eval mode for the block, its previous mode restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class HFClipScorer:
    """CLIP scores from a Hugging Face ``transformers.CLIPModel`` and its tokenizer.

    Preprocessing (no torchvision, no ``CLIPProcessor``): grey → RGB, resize the shorter side to the
    model's ``image_size`` (bicubic, antialiased), centre crop, scale to [0, 1], normalise by ``mean``
    and ``std`` — what CLIP's own preprocessing does.
    """

    def __init__(self, model, tokenizer, mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
                 std: tuple[float, ...] = OPENAI_CLIP_STD):
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)
        self.max_len = int(model.config.text_config.max_position_embeddings)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) → normalised float (B, 3, image_size, image_size)."""
        return self._normalise(images.float().div(255.0))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float (B, C, H, W) in [0, 1] → normalised float (B, 3, image_size, image_size), differentiable."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        elif x.shape[1] != 3:
            raise ConfigError(f"CLIP takes grey or RGB images, got {x.shape[1]} channels")
        s = self.image_size
        h, w = x.shape[2:]
        nh, nw = (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (nh - s) // 2, (nw - s) // 2
        x = x[:, :, top:top + s, left:left + s]  # (B, 3, s, s)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)  # (B, 3, s, s)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, s, s) → L2-normalised image embeddings (B, D)."""
        device = next(self.model.parameters()).device
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels.to(device))).float(), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [-1, 1] (B, C, H, W), any size → L2-normalised (B, D), differentiable with
        respect to the images."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ConfigError(f"CLIP embeds float (B, C, H, W) images in [-1, 1], got {tuple(images.shape)} "
                              f"{images.dtype}")
        return self._embed_pixels(self._normalise(images.add(1.0).div(2.0)))  # (B, D)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        """B captions → L2-normalised (B, D); long captions are truncated."""
        device = next(self.model.parameters()).device
        text = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_len,
                              return_tensors="pt")
        out = self.model.get_text_features(input_ids=text["input_ids"].to(device),
                                           attention_mask=text["attention_mask"].to(device))
        return F.normalize(_features(out).float(), dim=-1)  # (B, D)

    similarity = similarity  # the module function above, as a method (one definition for both scorers)

    @torch.inference_mode()
    def score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        _check_score_args(images, captions)
        img = self._embed_pixels(self.pixel_values(images))  # (B, D)
        return clip_score(img, self.embed_text(captions)).cpu()  # (B,)


def _features(out) -> torch.Tensor:
    """transformers 4.x returns the projected features; 5.x an output whose ``pooler_output`` holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_clip(directory: str | Path, map_location: str | torch.device = "cpu") -> ClipScorer:
    """A scorer for a local CLIP directory: this project's (kind "clip") or a transformers CLIP."""
    directory = Path(directory)
    payload = read_payload(directory)
    if payload.get("kind") == KIND:
        return OwnClipScorer(ClipModel.from_pretrained(directory, map_location=map_location))
    if payload.get("model_type") == "clip":
        return _load_hf(directory, map_location)
    kind = payload.get("kind", payload.get("model_type"))
    raise ConfigError(f"{directory} is not a CLIP directory: it holds a {kind!r} model; give a vqgen CLIP run "
                      "(`train_clip`) or a local Hugging Face CLIP (model_type 'clip')")


def _load_hf(directory: Path, map_location: str | torch.device) -> HFClipScorer:
    from transformers import AutoTokenizer, CLIPModel
    try:
        model = CLIPModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - missing, truncated or damaged files are bad input
        raise ConfigError(f"{directory} is not a loadable transformers CLIP ({first_line(exc)}); give an intact "
                          "model directory") from exc
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        cfg = read_json(pre, ConfigError, "give an intact model directory")
        cfg = cfg if isinstance(cfg, dict) else {}
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    return HFClipScorer(model.to(map_location).eval(), tokenizer, mean, std)


def rerank(images: torch.Tensor, caption: str, scorer: ClipScorer, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Score N samples of one caption; return (indices of the ``keep`` best, best first, (keep,); scores (N,))."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        raise ConfigError("rerank takes uint8 images (N, C, H, W)")
    if not isinstance(caption, str):
        raise ConfigError(f"rerank takes one caption string, got {type(caption).__name__}")
    n = images.shape[0]
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise ConfigError(f"keep must be an integer in [1, {n}] (the number of samples), got {keep!r}")
    scores = scorer.score(images, [caption] * n)  # (N,)
    order = torch.argsort(scores, descending=True, stable=True)  # (N,)
    return order[:keep], scores
