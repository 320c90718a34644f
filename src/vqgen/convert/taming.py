"""taming-transformers' VQGAN checkpoints (Esser et al. 2020, https://arxiv.org/abs/2012.09841) as vqgen
tokenizer runs: ``vqgen import taming vqgan_imagenet_f16_16384.ckpt --config model.yaml --out RUN``.

taming's ``VQModel`` and vqgen's :class:`~vqgen.tokenizer.vqgan.VQTokenizer` compute the same function:
the same ResNet blocks (GroupNorm(32, eps 1e-6), swish, 1×1 ``nin_shortcut`` when channels change),
stride-2 convolution with asymmetric padding down, nearest + convolution up, single-head attention at
``attn_resolutions`` and in the middle, ``num_res_blocks + 1`` blocks per decoder level, 1×1
``quant_conv`` / ``post_quant_conv`` around a plain L2 nearest-neighbour lookup over
``quantize.embedding.weight`` (no normalisation). The weights differ only in layout:

* taming's ``down[i].block[j]`` / ``down[i].attn[j]`` / ``down[i].downsample`` (and ``up[i]…``,
  ``up[i].upsample``) are the entries of vqgen's flat ``encoder.down`` / ``decoder.up`` sequences in
  the order they run; ``mid.block_1`` / ``attn_1`` / ``block_2`` are ``mid.0`` / ``1`` / ``2``;
* attention's separate 1×1 ``q``, ``k``, ``v`` convolutions are stacked into vqgen's one ``qkv``,
  ``proj_out`` is ``proj``; a block's ``nin_shortcut`` is ``skip``;
* when ``embed_dim`` differs from ``z_channels``, taming's 1×1 ``quant_conv`` (z → embed_dim) and
  ``post_quant_conv`` (embed_dim → z) become the quantizer's ``proj_in`` / ``proj_out`` (``code_dim =
  embed_dim``) and vqgen's own 1×1 convolutions are set to the identity;
* the discriminator and LPIPS weights (``loss.*``) are left out.

What vqgen does not reproduce is refused with a ConfigError naming the setting: ``double_z``,
``resamp_with_conv: false``, ``give_pre_end``, ``out_ch`` ≠ ``in_channels``, ``remap`` (index remapping),
``colorize_nlabels``, a model ``target`` other than ``taming.models.vqgan.VQModel`` (e.g. ``GumbelVQ``).
Training-only settings (``lossconfig``, ``monitor``, ``image_key``, …) are ignored. One difference
remains for whoever fine-tunes an imported run: vqgen puts β on the commitment term, taming's
VectorQuantizer2 (``legacy=True``) on the codebook term — encoding and decoding are unaffected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..errors import ConfigError, WeightsError
from ..layers import AttnBlock2d, Downsample, ResnetBlock, Upsample
from ..tokenizer.autoencoder import AutoencoderConfig
from ..tokenizer.quantizer import QuantizerConfig
from ..tokenizer.vqgan import TokenizerConfig, VQTokenizer
from .pickle_reader import read_state_dict

VQMODEL_TARGET = "taming.models.vqgan.VQModel"
GROUPS = 32  # taming's Normalize: GroupNorm(num_groups=32, eps=1e-6)
BETA = 0.25  # VQModel's VectorQuantizer2(beta=0.25)
# model.params that only matter for training or for the shape of returned indices.
IGNORED_PARAMS = frozenset({"lossconfig", "monitor", "ckpt_path", "ignore_keys", "image_key", "sane_index_shape"})
# model.params vqgen cannot express; accepted only when null.
NULL_ONLY_PARAMS = frozenset({"remap", "colorize_nlabels"})
DDCONFIG_KEYS = frozenset({"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                           "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "give_pre_end"})


def _get(section: dict, key: str, where: str, path: Path, kind: type, default: Any = ...) -> Any:
    if key not in section:
        if default is ...:
            raise ConfigError(f"{path}: {where}.{key} is missing")
        return default
    value = section[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{path}: {where}.{key} must be a list of integers, got {value!r}")
    elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def _section(data: Any, key: str, where: str, path: Path) -> dict:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}{key} must be a mapping (is this a taming-transformers model.yaml?)")
    return value


def read_taming_config(path: str | Path) -> TokenizerConfig:
    """The vqgen config of the model a taming ``model.yaml`` describes (``model.params``: ``ddconfig``,
    ``n_embed``, ``embed_dim``). ConfigError naming the key for anything vqgen would not reproduce."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    model = _section(data, "model", "", path)
    target = model.get("target", VQMODEL_TARGET)
    if target != VQMODEL_TARGET:
        raise ConfigError(f"{path}: model.target {target!r} is not supported; only {VQMODEL_TARGET} "
                          f"(the plain VQGAN) can be imported")
    params = _section(model, "params", "model.", path)
    for key in params:
        if key in NULL_ONLY_PARAMS and params[key] is not None:
            raise ConfigError(f"{path}: model.params.{key} is not supported (vqgen has no equivalent); "
                              f"only models without it can be imported")
        if key not in IGNORED_PARAMS | NULL_ONLY_PARAMS | {"ddconfig", "n_embed", "embed_dim"}:
            raise ConfigError(f"{path}: unknown setting model.params.{key}; vqgen cannot tell what it would change")
    n_embed = _get(params, "n_embed", "model.params", path, int)
    embed_dim = _get(params, "embed_dim", "model.params", path, int)
    dd = _section(params, "ddconfig", "model.params.", path)
    where = "model.params.ddconfig"
    unknown = sorted(set(dd) - DDCONFIG_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting {where}.{unknown[0]}; vqgen cannot tell what it would change")
    # taming's own defaults where a key is absent (Encoder: double_z=True, which VQModel cannot use).
    if _get(dd, "double_z", where, path, bool, True):
        raise ConfigError(f"{path}: {where}.double_z must be false for a VQGAN (its encoder then outputs z_channels)")
    if not _get(dd, "resamp_with_conv", where, path, bool, True):
        raise ConfigError(f"{path}: {where}.resamp_with_conv=false (average pooling / no up convolution) "
                          f"is not supported")
    if _get(dd, "give_pre_end", where, path, bool, False):
        raise ConfigError(f"{path}: {where}.give_pre_end=true is not supported")
    in_channels = _get(dd, "in_channels", where, path, int)
    if _get(dd, "out_ch", where, path, int) != in_channels:
        raise ConfigError(f"{path}: {where}.out_ch must equal in_channels ({in_channels}) for a vqgen tokenizer")
    ch = _get(dd, "ch", where, path, int)
    ch_mult = tuple(_get(dd, "ch_mult", where, path, list))
    bad = [ch * m for m in ch_mult if ch * m <= 0 or (ch * m) % GROUPS]
    if not ch_mult or bad:
        raise ConfigError(f"{path}: {where}.ch × ch_mult must give channel counts divisible by {GROUPS} "
                          f"(taming's GroupNorm), got {[ch * m for m in ch_mult]}")
    try:
        ae = AutoencoderConfig(
            in_channels=in_channels,
            resolution=_get(dd, "resolution", where, path, int),
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=_get(dd, "num_res_blocks", where, path, int),
            attn_resolutions=tuple(_get(dd, "attn_resolutions", where, path, list)),
            mid_attention=True,
            z_channels=_get(dd, "z_channels", where, path, int),
            dropout=_get(dd, "dropout", where, path, float, 0.0),
            norm_groups=GROUPS,
        )
        quantizer = QuantizerConfig(kind="vq", codebook_size=n_embed,
                                    code_dim=None if embed_dim == ae.z_channels else embed_dim,
                                    beta=BETA, ema_decay=None, kmeans_init=False, dead_code_threshold=0.0,
                                    l2_normalize=False)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if min(ae.num_res_blocks, ae.z_channels, embed_dim) < 1:
        raise ConfigError(f"{path}: num_res_blocks, z_channels and embed_dim must be positive")
    return TokenizerConfig(autoencoder=ae, quantizer=quantizer)


def _sequence_prefixes(ae: AutoencoderConfig, encoder: bool) -> list[str]:
    """taming's key prefixes of the level modules, in the order vqgen's ``encoder.down`` /
    ``decoder.up`` sequences hold them (the order both run them)."""
    levels, attn, out = len(ae.ch_mult), ae.attn_resolutions, []
    if encoder:
        res = ae.resolution
        for level in range(levels):
            for j in range(ae.num_res_blocks):
                out.append(f"encoder.down.{level}.block.{j}")
                if res in attn:
                    out.append(f"encoder.down.{level}.attn.{j}")
            if level != levels - 1:
                out.append(f"encoder.down.{level}.downsample")
                res //= 2
    else:
        res = ae.latent_resolution
        for level in reversed(range(levels)):
            for j in range(ae.num_res_blocks + 1):
                out.append(f"decoder.up.{level}.block.{j}")
                if res in attn:
                    out.append(f"decoder.up.{level}.attn.{j}")
            if level != 0:
                out.append(f"decoder.up.{level}.upsample")
                res *= 2
    return out


class _Mapper:
    """Builds vqgen's state dict from taming's, checking each entry's shape as it goes, naming the taming key."""

    def __init__(self, source: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], ckpt: Path):
        self.source, self.expected, self.ckpt = source, expected, ckpt
        self.used: set[str] = set()
        self.out: dict[str, torch.Tensor] = {}

    def take(self, key: str) -> torch.Tensor:
        if key not in self.source:
            raise WeightsError(f"{self.ckpt}: the checkpoint's state_dict has no {key!r}; is it the checkpoint "
                               f"of the model this model.yaml describes?")
        value = self.source[key]
        if not value.is_floating_point():
            raise WeightsError(f"{self.ckpt}: {key!r} has dtype {value.dtype}, expected a float tensor")
        self.used.add(key)
        return value

    def shape_error(self, origin: str, got: tuple, want: tuple) -> WeightsError:
        return WeightsError(f"{self.ckpt}: {origin} has shape {got}, but the config describes {want}; "
                            f"is it the checkpoint of this model.yaml?")

    def put(self, dst: str, value: torch.Tensor, origin: str) -> None:
        want = tuple(self.expected[dst].shape)
        if tuple(value.shape) != want:
            raise self.shape_error(origin, tuple(value.shape), want)
        self.out[dst] = value

    def copy(self, src: str, dst: str, names: tuple[str, ...] = ("weight", "bias")) -> None:
        for n in names:
            self.put(f"{dst}.{n}", self.take(f"{src}.{n}"), f"{src}.{n}")

    def module(self, src: str, dst: str, module: nn.Module) -> None:
        if isinstance(module, ResnetBlock):
            for name in ("norm1", "conv1", "norm2", "conv2"):
                self.copy(f"{src}.{name}", f"{dst}.{name}")
            if isinstance(module.skip, nn.Conv2d):
                self.copy(f"{src}.nin_shortcut", f"{dst}.skip")
        elif isinstance(module, AttnBlock2d):
            self.copy(f"{src}.norm", f"{dst}.norm")
            for n in ("weight", "bias"):  # three (C, C, 1, 1) / (C,) -> (3C, C, 1, 1) / (3C,)
                whole = tuple(self.expected[f"{dst}.qkv.{n}"].shape)
                want = (whole[0] // 3, *whole[1:])
                parts = [self.take(f"{src}.{p}.{n}") for p in ("q", "k", "v")]
                for p, t in zip("qkv", parts):
                    if tuple(t.shape) != want:
                        raise self.shape_error(f"{src}.{p}.{n}", tuple(t.shape), want)
                self.put(f"{dst}.qkv.{n}", torch.cat(parts), f"{src}.q/k/v.{n}")
            self.copy(f"{src}.proj_out", f"{dst}.proj")
        elif isinstance(module, (Downsample, Upsample)):
            self.copy(f"{src}.conv", f"{dst}.conv")
        else:  # pragma: no cover - the walk below only meets the types above
            raise TypeError(f"no taming counterpart for {type(module).__name__}")


def convert_taming_state(state: dict[str, torch.Tensor], cfg: TokenizerConfig, ckpt: str | Path = "checkpoint"
                         ) -> dict[str, torch.Tensor]:
    """vqgen's :class:`VQTokenizer` state dict (for ``cfg``, from :func:`read_taming_config`) holding the
    weights of taming's ``VQModel`` state dict ``state``. WeightsError on a missing key, a shape that
    does not match the config, or a weight vqgen would leave unused (other than ``loss.*``)."""
    ckpt = Path(ckpt)
    model = VQTokenizer(cfg)
    expected = model.state_dict()
    m = _Mapper(state, expected, ckpt)
    ae = cfg.autoencoder
    for part, seq, encoder in (("encoder", model.encoder.down, True), ("decoder", model.decoder.up, False)):
        m.copy(f"{part}.conv_in", f"{part}.conv_in")
        for i, src in enumerate(("block_1", "attn_1", "block_2")):
            m.module(f"{part}.mid.{src}", f"{part}.mid.{i}", getattr(model, part).mid[i])
        prefixes = _sequence_prefixes(ae, encoder)
        if len(prefixes) != len(seq):  # pragma: no cover - both walks follow the same config
            raise RuntimeError(f"{part}: {len(prefixes)} taming modules for {len(seq)} vqgen modules")
        for i, (src, module) in enumerate(zip(prefixes, seq)):
            m.module(src, f"{part}.{'down' if encoder else 'up'}.{i}", module)
        m.copy(f"{part}.norm_out", f"{part}.norm_out")
        m.copy(f"{part}.conv_out", f"{part}.conv_out")
    m.put("quantizer.embed", m.take("quantize.embedding.weight"), "quantize.embedding.weight")  # (K, D)
    if cfg.quantizer.code_dim is None:
        m.copy("quant_conv", "quant_conv")
        m.copy("post_quant_conv", "post_quant_conv")
    else:  # taming's 1×1 convolutions become the quantizer's projections; vqgen's own ones the identity
        z, d = ae.z_channels, cfg.quantizer.code_dim
        for conv, proj, shape in (("quant_conv", "proj_in", (d, z, 1, 1)), ("post_quant_conv", "proj_out", (z, d, 1, 1))):
            weight = m.take(f"{conv}.weight")
            if tuple(weight.shape) != shape:
                raise m.shape_error(f"{conv}.weight", tuple(weight.shape), shape)
            m.put(f"quantizer.{proj}.weight", weight[:, :, 0, 0], f"{conv}.weight")  # (out, in)
            m.put(f"quantizer.{proj}.bias", m.take(f"{conv}.bias"), f"{conv}.bias")
            m.put(f"{conv}.weight", torch.eye(z).view(z, z, 1, 1), "identity")  # (z, z, 1, 1)
            m.put(f"{conv}.bias", torch.zeros(z), "identity")
    for key in ("quantizer.usage_count", "quantizer.initialized"):  # vqgen's training statistics: fresh
        m.put(key, expected[key], "new")
    if set(m.out) != set(expected):  # pragma: no cover - a mapping bug, not a user's file
        raise RuntimeError(f"taming mapping incomplete: {sorted(set(expected) ^ set(m.out))[:5]}")
    unused = sorted(k for k in state if k not in m.used and not k.startswith("loss."))
    if unused:
        raise WeightsError(f"{ckpt} holds weights that the config's model has no place for: {unused[:5]}; "
                           f"is it the checkpoint of this model.yaml?")
    return {k: v.detach().to(expected[k].dtype).contiguous() for k, v in m.out.items()}


def import_taming(checkpoint: str | Path, config: str | Path, out: str | Path) -> VQTokenizer:
    """Read a taming VQGAN checkpoint (never running its code) and its ``model.yaml``, and save the
    equivalent vqgen tokenizer run in ``out`` (a new or empty directory). Returns the loaded tokenizer."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory; choose a new --out")
    cfg = read_taming_config(config)  # a bad YAML fails before a large checkpoint is read
    _, state = read_state_dict(checkpoint, ("state_dict",))
    model = VQTokenizer(cfg)
    model.load_state_dict(convert_taming_state(state, cfg, checkpoint), strict=True)
    model.save_pretrained(out)
    return model.eval()
