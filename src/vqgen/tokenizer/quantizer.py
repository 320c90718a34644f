"""Quantizers: a vector quantizer with the improvements that keep a codebook in use, and FSQ.

``VectorQuantizer`` (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937) replaces each latent
vector by its nearest code and passes gradients straight through. The loss is

    codebook  ||sg[z] − e||²       (moves codes; replaced by EMA updates when ``ema_decay`` is set)
  + β · commitment ||z − sg[e]||²  (moves the encoder; β = 0.25 in the paper)

— β multiplies the *commitment* term, unlike taming-transformers' "legacy" quantizer.
Options, each from the literature:
  * EMA codebook updates with Laplace-smoothed counts (VQ-VAE appendix A.1).
  * k-means initialisation of the codebook from the first training batch (Łańcucki et al. 2020,
    https://arxiv.org/abs/2005.08520).
  * dead-code restart: codes whose running usage falls below a threshold are reset to random
    encoder outputs of the current batch (Dhariwal et al. 2020 Jukebox, https://arxiv.org/abs/2005.00341).
  * l2-normalised, low-dimensional codes behind linear projections (ViT-VQGAN, Yu et al. 2021,
    https://arxiv.org/abs/2110.04627; LlamaGen uses dim 8).
``FSQuantizer`` (Mentzer et al. 2023, https://arxiv.org/abs/2309.15505) bounds a few dimensions and
rounds each to a fixed number of levels: an implicit codebook of ∏ levels entries, no codebook loss.

Under torch.distributed every rank sees the same codebook: EMA statistics are all-reduced and k-means
init / restarts are computed on rank 0 and broadcast (every rank makes the same collective calls).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..kmeans import kmeans


@dataclass
class QuantizerConfig:
    kind: Literal["vq", "fsq"] = "vq"
    codebook_size: int = 1024          # vq only; FSQ's size is prod(fsq_levels)
    code_dim: int | None = None        # lookup dimension; None = the encoder's z_channels (no projection)
    beta: float = 0.25                 # commitment weight (on the encoder term)
    ema_decay: float | None = None     # None: codes learn by the codebook loss; else EMA updates
    kmeans_init: bool = False
    kmeans_iters: int = 10
    dead_code_threshold: float = 0.0   # restart codes whose running count per batch is below this; 0 = off
    usage_decay: float = 0.99          # decay of the running per-code count that restarts read
    l2_normalize: bool = False
    rotation_trick: bool = False       # gradients through the lookup by rotation instead of straight through
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)

    def __post_init__(self) -> None:
        if self.kind not in ("vq", "fsq"):
            raise ValueError(f"quantizer kind must be 'vq' or 'fsq', got {self.kind!r}")
        if self.codebook_size < 2:
            raise ValueError("codebook_size must be at least 2")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not 0.0 < self.usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in (0, 1), got {self.usage_decay}")
        if self.kind == "fsq" and any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"every FSQ level must be >= 2, got {self.fsq_levels}")

    @property
    def num_codes(self) -> int:
        return math.prod(self.fsq_levels) if self.kind == "fsq" else self.codebook_size


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor          # (B, C, h, w) quantized latents, straight-through gradients
    indices: torch.Tensor      # (B, h, w) int64 code ids
    loss: torch.Tensor         # scalar: codebook + β·commitment (0 for FSQ)
    commitment: torch.Tensor   # scalar, unweighted
    perplexity: torch.Tensor   # scalar: exp(entropy) of this batch's code histogram
    usage: torch.Tensor        # scalar: fraction of codes used in this batch


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def code_histogram_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity and used fraction of a code histogram ``counts`` (K,)."""
    p = counts.float() / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp(), (counts > 0).float().mean()


def rotate_to(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The rotation trick (Fifty et al. 2024, https://arxiv.org/abs/2410.06424): returns q (N, D) in the
    forward pass, and in the backward pass carries the gradient to e (N, D) through the rotation and
    rescaling that map e onto q, held constant — instead of copying it unchanged (straight through).
    The rotation, R = I − 2 r rᵀ + 2 q̂ êᵀ with r = (ê + q̂)/‖ê + q̂‖, is applied without forming R."""
    with torch.no_grad():
        e_norm = e.norm(dim=1, keepdim=True).clamp_min(1e-6)  # (N, 1)
        q_norm = q.norm(dim=1, keepdim=True)  # (N, 1)
        e_hat, q_hat = e / e_norm, q / q_norm.clamp_min(1e-6)  # (N, D)
        r = F.normalize(e_hat + q_hat, dim=1, eps=1e-6)  # (N, D)
    rotated = e - 2 * r * (r * e).sum(1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(1, keepdim=True)  # R e, (N, D)
    out = (q_norm / e_norm) * rotated  # (N, D), equal to q up to rounding
    return out + (q - out).detach()  # exactly q forward


class VectorQuantizer(nn.Module):
    def __init__(self, in_dim: int, cfg: QuantizerConfig):
        super().__init__()
        if cfg.kind != "vq":
            raise ValueError("VectorQuantizer needs a config of kind 'vq'")
        self.cfg = cfg
        dim = cfg.code_dim or in_dim
        self.dim = dim
        # Low-dimensional lookup behind projections (ViT-VQGAN); identity when dims agree.
        self.proj_in = nn.Linear(in_dim, dim) if dim != in_dim else nn.Identity()
        self.proj_out = nn.Linear(dim, in_dim) if dim != in_dim else nn.Identity()
        init = torch.randn(cfg.codebook_size, dim)  # (K, D)
        init = F.normalize(init, dim=1) if cfg.l2_normalize else init.uniform_(-1 / cfg.codebook_size, 1 / cfg.codebook_size)
        if cfg.ema_decay is None:
            self.embed = nn.Parameter(init)
        else:
            self.register_buffer("embed", init)
            self.register_buffer("ema_count", torch.zeros(cfg.codebook_size))
            self.register_buffer("ema_sum", init.clone())
        self.register_buffer("usage_count", torch.ones(cfg.codebook_size))  # running count per batch
        self.register_buffer("initialized", torch.tensor(not cfg.kmeans_init))

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    def codebook(self) -> torch.Tensor:
        e = self.embed  # (K, D)
        return F.normalize(e, dim=1) if self.cfg.l2_normalize else e

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        z = self.proj_in(z)  # (N, D)
        return F.normalize(z, dim=1) if self.cfg.l2_normalize else z

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code ids for projected vectors z (N, D) -> (N,)."""
        e = self.codebook()  # (K, D)
        if self.cfg.l2_normalize:  # unit vectors: the nearest code is the most similar one
            return (z @ e.t()).argmax(dim=1)  # (N,)
        d = e.pow(2).sum(1) - 2 * z @ e.t()  # (N, K) squared distances less ‖z‖², the same for every code
        return d.argmin(dim=1)

    @torch.no_grad()
    def _kmeans_init(self, z: torch.Tensor) -> None:
        centroids = kmeans(z.float(), self.codebook_size, self.cfg.kmeans_iters, spherical=self.cfg.l2_normalize)
        centroids = _broadcast(centroids.contiguous())
        self.embed.data.copy_(centroids)
        # The running counts start at the cluster sizes (as vector-quantize-pytorch does), not at 1: with a
        # restart threshold above 1 a count of 1 would restart every code at step 0 and undo the k-means.
        sizes = _all_reduce(torch.bincount(self.lookup(z), minlength=self.codebook_size).to(z.dtype))  # (K,)
        self.usage_count.copy_(sizes)
        if self.cfg.ema_decay is not None:  # an empty cluster keeps its centroid (count 1), not a zero sum
            self.ema_count.copy_(sizes.clamp_min(1))
            self.ema_sum.copy_(centroids * self.ema_count.unsqueeze(1))  # so that ema_sum / ema_count = centroids
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        """``counts``: (K,) code counts of the global batch (already summed over ranks)."""
        decay, k = self.cfg.ema_decay, self.codebook_size
        sums = _all_reduce(z.new_zeros(k, z.shape[1]).index_add_(0, idx, z))  # (K, D) sum of the vectors of each code
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing, (K,)
        embed = self.ema_sum / smoothed.unsqueeze(1)
        self.embed.copy_(F.normalize(embed, dim=1) if self.cfg.l2_normalize else embed)

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor) -> None:
        """Move each code whose running count fell below the threshold onto a distinct encoder output of
        this batch (drawn without replacement: two codes never restart onto the same vector; if more codes
        are dead than the batch has vectors, a random subset restarts now and the rest in later steps).
        A restarted code's counts restart at the threshold, its EMA sum at that many copies of its vector."""
        dead = self.usage_count < self.cfg.dead_code_threshold  # (K,)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        if n_dead > z.shape[0]:
            keep = dead.nonzero().squeeze(1)[torch.randperm(n_dead, device=z.device)[:z.shape[0]]]  # (N,)
            keep = _broadcast(keep.contiguous())  # every rank restarts the same codes (rank 0's draw)
            dead = torch.zeros_like(dead).index_fill_(0, keep, True)
            n_dead = z.shape[0]
        pick = torch.randperm(z.shape[0], device=z.device)[:n_dead]  # (n_dead,) distinct rows
        fresh = _broadcast(z[pick].contiguous())  # (n_dead, D) encoder outputs
        self.embed.data[dead] = fresh
        c = self.cfg.dead_code_threshold
        if self.cfg.ema_decay is not None:
            self.ema_sum[dead] = fresh * c
            self.ema_count[dead] = c
        self.usage_count[dead] = c  # time to be picked: the counts decay from the threshold, not below it

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # z: (B, C, h, w)
        # Distances and codebook statistics in fp32 even under bf16 autocast.
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float())

    def _forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        flat = self._project(rearrange(z, "b c h w -> (b h w) c").float())  # (N, D)
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        idx = self.lookup(flat.detach())  # (N,)
        # The codes this batch was assigned to, taken before the EMA update and the restarts below move
        # them: a restart must not hand the vectors that chose a code somebody else's encoder output.
        q = self.codebook()[idx]  # (N, D)
        counts = torch.bincount(idx, minlength=self.codebook_size).to(flat.dtype)  # (K,)
        if self.training:
            global_counts = _all_reduce(counts.clone())  # (K,) over every rank's batch: one collective for both
            if self.cfg.ema_decay is not None:
                self._ema_update(flat.detach(), idx, global_counts)
            with torch.no_grad():
                self.usage_count.mul_(self.cfg.usage_decay).add_(global_counts, alpha=1 - self.cfg.usage_decay)
            if self.cfg.dead_code_threshold > 0:
                self._restart_dead(flat.detach())
        commitment = F.mse_loss(flat, q.detach())
        codebook_loss = F.mse_loss(q, flat.detach()) if self.cfg.ema_decay is None else flat.new_zeros(())
        q_st = rotate_to(flat, q) if self.cfg.rotation_trick else flat + (q - flat).detach()  # (N, D)
        z_q = rearrange(self.proj_out(q_st), "(b h w) c -> b c h w", b=b, h=h, w=w)  # (B, C, h, w)
        perplexity, usage = code_histogram_stats(counts)
        return QuantizerOutput(z_q, idx.view(b, h, w), codebook_loss + self.cfg.beta * commitment,
                               commitment.detach(), perplexity, usage)

    def codes_to_latents(self, indices: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, C, h, w)
        if indices.min() < 0 or indices.max() >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got [{int(indices.min())}, {int(indices.max())}]")
        q = self.proj_out(self.codebook()[indices])  # (B, h, w, C)
        return rearrange(q, "b h w c -> b c h w")


class FSQuantizer(nn.Module):
    """Finite scalar quantization: project to len(levels) dims, bound with tanh, round (straight-through)."""

    def __init__(self, in_dim: int, cfg: QuantizerConfig):
        super().__init__()
        if cfg.kind != "fsq":
            raise ValueError("FSQuantizer needs a config of kind 'fsq'")
        self.cfg = cfg
        levels = torch.tensor(cfg.fsq_levels, dtype=torch.float32)
        self.register_buffer("levels", levels, persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(cfg.fsq_levels[:-1])), dim=0)
        self.register_buffer("basis", basis, persistent=False)
        self.proj_in = nn.Linear(in_dim, len(cfg.fsq_levels))
        self.proj_out = nn.Linear(len(cfg.fsq_levels), in_dim)

    @property
    def codebook_size(self) -> int:
        return self.cfg.num_codes

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Map z into [-(L-1)/2, (L-1)/2] per dim (shifted for even L so rounding gives L levels)."""
        half = (self.levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # z: (B, C, h, w)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float())

    def _forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        flat = self.proj_in(rearrange(z, "b c h w -> (b h w) c").float())  # (N, d)
        bounded = self._bound(flat)
        q = bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding, (N, d)
        half_width = self._half_width()
        idx = self._index(q.detach())  # (N,)
        z_q = rearrange(self.proj_out(q / half_width), "(b h w) c -> b c h w", b=b, h=h, w=w)
        counts = torch.bincount(idx, minlength=self.codebook_size)
        perplexity, usage = code_histogram_stats(counts)
        zero = flat.new_zeros(())
        return QuantizerOutput(z_q, idx.view(b, h, w), zero, zero, perplexity, usage)

    def codes_to_latents(self, indices: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, C, h, w)
        if indices.min() < 0 or indices.max() >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got [{int(indices.min())}, {int(indices.max())}]")
        return rearrange(self.proj_out(self._grid_point(indices)), "b h w c -> b c h w")

    # The lookup-space view that CLIP-guided generation (vqgen.rerank.clip_guided) shares with VectorQuantizer:
    # FSQ's implicit codebook is the grid of its rounded, rescaled values, and the nearest grid point is a
    # rounding.

    def _half_width(self) -> torch.Tensor:
        return torch.div(self.levels, 2, rounding_mode="floor")  # (d,)

    def _index(self, rounded: torch.Tensor) -> torch.Tensor:
        """Integer grid values (N, d), each in [-⌊L/2⌋, L-1-⌊L/2⌋] → code ids (N,)."""
        return ((rounded + self._half_width()) * self.basis).sum(-1).long()

    def _grid_point(self, indices: torch.Tensor) -> torch.Tensor:
        """Code ids (...) → their points (..., d) in the lookup space: each value in [-1, 1]."""
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels.long()  # (..., d)
        return (digits.float() - self._half_width()) / self._half_width()

    def codebook(self) -> torch.Tensor:
        """Every code's point in the lookup space (K, d), in id order."""
        return self._grid_point(torch.arange(self.codebook_size, device=self.levels.device))

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder vectors (N, C) → the lookup space (N, d), before rounding."""
        return self._bound(self.proj_in(z)) / self._half_width()

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code ids of lookup-space vectors z (N, d) → (N,): each value rounded to its grid."""
        hw = self._half_width()
        rounded = torch.minimum(torch.maximum(torch.round(z * hw), -hw), self.levels - 1 - hw)  # (N, d)
        return self._index(rounded)


def build_quantizer(in_dim: int, cfg: QuantizerConfig) -> nn.Module:
    return VectorQuantizer(in_dim, cfg) if cfg.kind == "vq" else FSQuantizer(in_dim, cfg)
