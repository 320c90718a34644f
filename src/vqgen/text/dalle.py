"""Text to image, DALL·E-mini style: a caption encoder and an image-token decoder.

A bidirectional transformer encodes the caption's BPE ids; a causal transformer decoder predicts the
image tokens of a frozen tokenizer one by one in raster order, cross-attending to the encoded
caption (the BART layout of DALL·E mini, Dayma et al. 2021,
https://wandb.ai/dalle-mini/dalle-mini/reports/DALL-E-Mini-Explained--Vmlldzo4NjIxODA). The decoder
input is ``[start, t_0, ..., t_{HW-2}]`` with the start token's id equal to the codebook size, and
output ``s`` predicts ``t_s``. Image tokens get learned row + column embeddings of their grid cell.

With ``text_modulation`` the caption also reaches every decoder position directly: its states' mean over
the real tokens sets, per decoder block, a shift and scale of the three LayerNorms' outputs (adaLN-Zero,
Peebles & Xie 2022, https://arxiv.org/abs/2212.09748; the projections start at zero, so the model starts
as the one without). Cross-attention alone has to learn where in the caption to look before a word can
change a position's output; a scale multiplies the caption into each position's features at once.

Caption dropout (training) replaces a caption by the empty one (``<s></s>``) with probability
``caption_drop_prob``, which teaches the unconditional model used by super-conditioning at sampling
time (``logits = uncond + s·(cond − uncond)``, classifier-free guidance, Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598).

Token noise (training, ``token_noise_prob``) replaces each image token the decoder *reads* by a random
code with that probability; the targets stay the true tokens. A convolutional tokenizer's codes above
an object already show it (its receptive field spans several cells), so under teacher forcing the
model can read where the object stands from the codes it is given and never learn it from the caption;
when sampling, nobody gives it those codes. With noisy inputs it cannot trust them alone. This is a
cheap cousin of scheduled sampling (Bengio et al. 2015, https://arxiv.org/abs/1506.03099), which
attacks the same gap between teacher forcing and sampling by feeding the model its own predictions.

The caption encoder is the project's own, or the encoder of a Hugging Face model (BART, T5 or the
CLIP text tower): ``hf_text_encoder`` then holds that model's config, the constructor builds it with
random weights (no loading, no download), and :func:`load_hf_text_encoder` copies pretrained weights
in from a local directory when training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..hub import first_line, load_pretrained, save_pretrained
from ..layers import DecoderBlock, KVCache, TransformerBlock, check_token_ids, init_gpt_weights, run_block
from .bpe import TOKENIZER_FILE, CaptionTokenizer

KIND = "text2img"


@dataclass
class TextToImageConfig:
    vocab_size: int                   # image codebook size; the start token's id is vocab_size
    grid: tuple[int, int]             # image token grid (H, W)
    text_vocab_size: int = 512        # caption BPE vocabulary (ignored with hf_text_encoder)
    max_text_len: int = 32            # caption ids incl. <s> and </s>; longer captions are truncated
    n_embd: int = 256
    n_head: int = 8
    n_enc_layer: int = 2
    n_dec_layer: int = 4
    dropout: float = 0.0
    caption_drop_prob: float = 0.1    # training-time probability of the empty caption (guidance)
    guidance_scale: float = 1.0       # default super-conditioning scale at sampling (the best measured)
    temperature: float = 1.0          # default sampling temperature (the best measured with guidance_scale)
    pad_id: int = 0                   # special ids of the caption tokenizer, set when it is trained
    bos_id: int = 1
    eos_id: int = 2
    hf_text_encoder: dict[str, Any] | None = None  # a transformers config dict: its encoder replaces ours
    freeze_text_encoder: bool = False  # with hf_text_encoder: train only the decoder and projection
    activation_checkpointing: bool = False  # recompute block activations in backward (layers.run_block)
    text_modulation: bool = False     # the pooled caption shifts and scales each decoder block's LayerNorms
    token_noise_prob: float = 0.0     # training: each input image token replaced by a random code with this probability

    def __post_init__(self) -> None:
        self.grid = tuple(self.grid)
        if self.vocab_size < 1 or len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"need vocab_size ≥ 1 and a grid of two positive sizes, got {self.vocab_size}, {self.grid}")
        if min(self.n_embd, self.n_head, self.n_enc_layer, self.n_dec_layer, self.text_vocab_size) < 1:
            raise ValueError("n_embd, n_head, n_enc_layer, n_dec_layer and text_vocab_size must be ≥ 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.max_text_len < 3:
            raise ValueError(f"max_text_len must be ≥ 3 (<s>, a token, </s>), got {self.max_text_len}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.caption_drop_prob <= 1.0:
            raise ValueError(f"dropout must be in [0, 1) and caption_drop_prob in [0, 1], got "
                             f"{self.dropout}, {self.caption_drop_prob}")
        if not 0.0 <= self.token_noise_prob < 1.0:
            raise ValueError(f"token_noise_prob must be in [0, 1), got {self.token_noise_prob}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be ≥ 0, got {self.guidance_scale}")
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature must be > 0 and finite, got {self.temperature}")
        if self.guidance_scale != 1.0 and self.caption_drop_prob == 0:
            raise ValueError("a guidance_scale ≠ 1 needs caption_drop_prob > 0 (the unconditional model)")

    @property
    def seq_len(self) -> int:
        """Number of image tokens, H·W."""
        return self.grid[0] * self.grid[1]


def dalle_mini_config() -> TextToImageConfig:
    """DALL·E mini's size (Dayma et al. 2021; a BART-large layout, ~0.4 B parameters): 12 encoder and 12
    decoder layers, 1024 wide, 16 heads, captions of up to 64 BPE ids from a 50 264-entry vocabulary,
    16×16 tokens of a 16 384-code f16 tokenizer (``imagenet-f16-16384``). Parameter count: docs/gpu.md."""
    return TextToImageConfig(vocab_size=16384, grid=(16, 16), text_vocab_size=50264, max_text_len=64, n_embd=1024,
                             n_head=16, n_enc_layer=12, n_dec_layer=12, dropout=0.0, caption_drop_prob=0.1)


class CaptionEncoder(nn.Module):
    """Bidirectional pre-LN transformer over caption ids (B, L) → states (B, L, C)."""

    def __init__(self, config: TextToImageConfig):
        super().__init__()
        c = config.n_embd
        self.tok_emb = nn.Embedding(config.text_vocab_size, c)
        self.pos_emb = nn.Embedding(config.max_text_len, c)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(c, config.n_head, config.dropout, causal=False)
                                    for _ in range(config.n_enc_layer))
        self.ln_f = nn.LayerNorm(c)
        self.recompute = config.activation_checkpointing

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # ids, mask: (B, L)
        x = self.drop(self.tok_emb(ids) + self.pos_emb.weight[: ids.shape[1]])  # (B, L, C)
        for block in self.blocks:
            x = run_block(block, self.recompute, x, None, mask)  # (B, L, C)
        return self.ln_f(x)  # (B, L, C)


def _build_hf_encoder(hf_config: dict[str, Any]) -> nn.Module:
    """The encoder of a transformers model described by ``hf_config``, randomly initialised."""
    from transformers import AutoConfig, AutoModel
    cfg = dict(hf_config)
    model_type = cfg.pop("model_type", None)
    if model_type not in ("bart", "mbart", "t5", "clip_text_model"):
        raise ConfigError(f"hf_text_encoder: model_type {model_type!r} is not supported; use a BART, T5 or "
                          "CLIP text model")
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))
    return model.get_encoder() if hasattr(model, "get_encoder") else model


def hf_hidden_size(hf_config: dict[str, Any]) -> int:
    for key in ("d_model", "hidden_size"):
        if key in hf_config:
            return int(hf_config[key])
    raise ConfigError("hf_text_encoder: the config has neither d_model nor hidden_size")


class TextToImage(nn.Module):
    def __init__(self, config: TextToImageConfig):
        super().__init__()
        self.config = config
        h, w = config.grid
        c = config.n_embd
        self.start_id = config.vocab_size
        if config.hf_text_encoder is None:
            self.text_encoder: nn.Module = CaptionEncoder(config)
            self.text_proj: nn.Module = nn.Identity()
        else:
            self.text_encoder = _build_hf_encoder(config.hf_text_encoder)
            self.text_proj = nn.Linear(hf_hidden_size(config.hf_text_encoder), c)
        self.tok_emb = nn.Embedding(config.vocab_size + 1, c)  # + the start token
        self.start_pos = nn.Parameter(torch.zeros(c))
        self.row_emb = nn.Embedding(h, c)
        self.col_emb = nn.Embedding(w, c)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(c, config.n_head, config.dropout) for _ in range(config.n_dec_layer))
        self.ln_f = nn.LayerNorm(c)
        self.head = nn.Linear(c, config.vocab_size, bias=False)
        cells = torch.arange(h * w)
        self.register_buffer("cell_row", cells // w, persistent=False)  # (HW,)
        self.register_buffer("cell_col", cells % w, persistent=False)  # (HW,)
        # adaLN-Zero: per block, the pooled caption → 6·C shifts and scales, from zero
        self.modulation = (nn.ModuleList(nn.Linear(c, 6 * c) for _ in range(config.n_dec_layer))
                           if config.text_modulation else None)
        # GPT-2 initialisation of all but a pretrained encoder; three residual branches per decoder block
        init_gpt_weights(self, self.blocks, n_residual=3 * config.n_dec_layer,
                         skip=() if config.hf_text_encoder is None else ("text_encoder",))
        for layer in self.modulation or ():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if config.freeze_text_encoder:
            if config.hf_text_encoder is None:
                raise ValueError("freeze_text_encoder needs a pretrained hf_text_encoder")
            self.text_encoder.requires_grad_(False)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- input checks --------------------------------------------------------------------------

    def check_caption_ids(self, ids: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            got = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"caption ids must be a (B, L) torch.long tensor, got {got}")
        if not 1 <= ids.shape[1] <= cfg.max_text_len:
            raise ValueError(f"caption ids: length {ids.shape[1]} is not in [1, {cfg.max_text_len}]")

    def check_tokens(self, tokens: torch.Tensor) -> None:
        check_token_ids(tokens, self.config.vocab_size, self.config.seq_len, "image tokens", whole=True)

    def null_caption(self, batch: int, length: int) -> torch.Tensor:
        """The empty caption ``<s></s>`` padded to ``length``: the unconditional input (B, length)."""
        ids = torch.full((batch, length), self.config.pad_id, dtype=torch.long, device=self.cell_row.device)
        ids[:, 0], ids[:, 1] = self.config.bos_id, self.config.eos_id
        return ids

    # ---- the network ---------------------------------------------------------------------------

    def encode_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption ids (B, L) → (states (B, L, C), mask (B, L): True at real tokens)."""
        mask = ids != self.config.pad_id  # (B, L)
        if self.config.hf_text_encoder is None:
            states = self.text_encoder(ids, mask)  # (B, L, C)
        else:
            states = self.text_encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, C_hf)
        return self.text_proj(states), mask  # (B, L, C), (B, L)

    def memories(self, states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of the encoded caption, one pair per decoder layer (computed once)."""
        return [block.cross.memory(states) for block in self.blocks]

    def modulations(self, states: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor] | None:
        """Per decoder layer, the shifts and scales (B, 1, 6·C) of the caption's ``text_modulation``, once
        per caption; None without it. ``states`` (B, L, C) and the bool ``mask`` (B, L) of :meth:`encode_text`."""
        if self.modulation is None:
            return None
        m = mask.to(states.dtype)[..., None]  # (B, L, 1)
        pooled = F.silu((states * m).sum(1) / m.sum(1))  # (B, C): mean over the real tokens
        return [layer(pooled)[:, None] for layer in self.modulation]  # per layer (B, 1, 6C)

    def new_caches(self, batch: int) -> list[KVCache]:
        p = self.head.weight
        return [blk.attn.new_cache(batch, self.config.seq_len, device=p.device, dtype=p.dtype) for blk in self.blocks]

    def _position_embeddings(self, pos: torch.Tensor) -> torch.Tensor:
        """Embeddings (T, C) of decoder positions ``pos`` (T,): position s ≥ 1 gets grid cell s−1's
        row + column embedding, position 0 ``start_pos``."""
        cell = (pos - 1).clamp(min=0)  # (T,) grid cell of the token sitting at each position
        where = (self.row_emb(self.cell_row[cell]) + self.col_emb(self.cell_col[cell]))  # (T, C)
        return torch.where((pos == 0)[:, None], self.start_pos.expand_as(where), where)  # (T, C)

    def position_table(self) -> torch.Tensor:
        """The embeddings (H·W, C) of every decoder position, for ``decode(positions=...)``: a sampler
        computes them once instead of once per step (the same values either way)."""
        return self._position_embeddings(torch.arange(self.config.seq_len, device=self.cell_row.device))

    def decode(self, memories: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor,
               inputs: torch.Tensor, start: int, caches: list[KVCache] | None = None,
               last_only: bool = False, positions: torch.Tensor | None = None,
               modulations: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Decoder over input positions ``start .. start+T-1`` → logits (B, T, V) (or (B, 1, V)).

        ``inputs`` (B, T) are decoder inputs: position 0 holds the start token, position s ≥ 1 the
        image token s−1; position s sits at grid cell s−1's embedding shifted by one (position 0 has
        its own ``start_pos``), and its output predicts image token s. ``mask`` (B, L) is the
        caption mask of :meth:`encode_text` (bool, True at real tokens) or the same as an additive
        float mask (0 / −inf, see :func:`vqgen.layers.additive_mask`). ``positions``: the
        :meth:`position_table`, if the caller keeps one. ``modulations``: :meth:`modulations` of the
        captions, required with ``text_modulation``.
        """
        if (modulations is None) != (self.modulation is None):
            raise ValueError("decode needs modulations exactly when the model has text_modulation")
        t = inputs.shape[1]
        if positions is None:
            where = self._position_embeddings(torch.arange(start, start + t, device=inputs.device))  # (T, C)
        else:
            where = positions[start:start + t]  # (T, C)
        x = self.drop(self.tok_emb(inputs) + where)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = run_block(block, self.config.activation_checkpointing, x, memories[i], mask,
                          None if caches is None else caches[i],
                          None if modulations is None else modulations[i])  # (B, T, C)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        return self.head(self.ln_f(x))  # (B, T', V)

    def forward(self, ids: torch.Tensor, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, H·W, V) for captions ``ids`` (B, L) and image tokens (B, H·W); the
        decoder reads ``context`` (B, H·W) in place of ``tokens`` when given (the loss's noisy inputs)."""
        self.check_caption_ids(ids)
        self.check_tokens(tokens)
        if context is None:
            context = tokens
        else:
            self.check_tokens(context)
        states, mask = self.encode_text(ids)  # (B, L, C), (B, L)
        start = torch.full_like(context[:, :1], self.start_id)  # (B, 1)
        inputs = torch.cat([start, context[:, :-1]], dim=1)  # (B, HW)
        return self.decode(self.memories(states), mask, inputs, 0,
                           modulations=self.modulations(states, mask))  # (B, HW, V)

    def loss(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats). In training mode each caption is replaced by the
        empty one with probability ``caption_drop_prob``, and each token the decoder reads by a random code
        with probability ``token_noise_prob`` (torch's global RNG: seeded runs repeat)."""
        if self.training and self.config.caption_drop_prob > 0:
            drop = torch.rand(ids.shape[0], device=ids.device) < self.config.caption_drop_prob  # (B,)
            ids = torch.where(drop[:, None], self.null_caption(*ids.shape), ids)  # (B, L)
        context = None
        if self.training and self.config.token_noise_prob > 0:
            noisy = torch.rand(tokens.shape, device=tokens.device) < self.config.token_noise_prob  # (B, HW)
            context = torch.where(noisy, torch.randint_like(tokens, self.config.vocab_size), tokens)  # (B, HW)
        logits = self(ids, tokens, context)  # (B, HW, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    # ---- saving --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, tokenizer: CaptionTokenizer | None = None) -> Path:
        """``config.json`` + ``model.safetensors`` (+ the caption tokenizer's ``tokenizer.json``, whose
        checksum the weights record)."""
        files = {TOKENIZER_FILE: tokenizer.to_str()} if tokenizer is not None else None
        return save_pretrained(self, self.config, directory, KIND, files=files)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "TextToImage":
        return load_pretrained(cls, TextToImageConfig, directory, KIND, map_location=map_location).eval()


def hf_text_encoder_config(path: str | Path) -> dict[str, Any]:
    """The config dict of a transformers model saved in the local directory ``path`` (no download)."""
    from transformers import AutoConfig
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a saved transformers model (no config.json)")
    try:
        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign directory is bad input
        raise ConfigError(f"{path} is not a readable transformers model ({first_line(exc)})") from exc
    if getattr(cfg, "model_type", None) == "clip":
        cfg = cfg.text_config
    return cfg.to_diff_dict() | {"model_type": cfg.model_type}


def load_hf_text_encoder(model: TextToImage, path: str | Path) -> None:
    """Copy the pretrained encoder weights of the transformers model at ``path`` into ``model``."""
    from transformers import AutoModel
    if model.config.hf_text_encoder is None:
        raise ConfigError("this model has its own caption encoder; it takes no pretrained text encoder")
    try:
        pretrained = AutoModel.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - missing, truncated or damaged weights are bad input
        raise ConfigError(f"{path}: its weights cannot be loaded ({first_line(exc)}); give an intact "
                          "transformers model directory") from exc
    if hasattr(pretrained, "text_model") and model.config.hf_text_encoder.get("model_type") == "clip_text_model":
        pretrained = pretrained.text_model  # a whole CLIP: keep its text tower
        state = {f"text_model.{k}": v for k, v in pretrained.state_dict().items()}
    else:
        encoder = pretrained.get_encoder() if hasattr(pretrained, "get_encoder") else pretrained
        state = encoder.state_dict()
    missing, unexpected = model.text_encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path}: its text encoder does not match the configured one "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
