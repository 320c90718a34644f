"""Saving and loading models as a directory: ``config.json`` + ``model.safetensors``.

Nothing here unpickles: weights are safetensors, configs are JSON, and loading is strict, so a
checkpoint that does not match the architecture its config describes fails with the keys named.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file

from .config import from_dict, to_dict
from .errors import ConfigError, WeightsError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound=torch.nn.Module)


def atomic_write_bytes(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename into place, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: torch.nn.Module, config: Any, directory: str | Path, kind: str) -> Path:
    """Write ``config.json`` (with the model ``kind``) and ``model.safetensors`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "config": to_dict(config)}
    atomic_write_bytes(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(payload, indent=2)))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, lambda p: save_file(state, p))
    return directory


def read_payload(directory: str | Path) -> dict:
    """The parsed ``config.json`` of a saved model directory (vqgen's, or a transformers model's);
    ConfigError when it is missing, not JSON or not an object."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{directory} is not a saved model directory: no {CONFIG_NAME}")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return payload


def check_kind(directory: str | Path, kind: str) -> dict:
    """The payload of ``directory``'s config.json; ConfigError naming what it holds unless a ``kind`` model."""
    payload = read_payload(directory)
    if payload.get("kind") != kind:
        raise ConfigError(f"{directory} holds a {payload.get('kind')!r} model, not a {kind!r} model")
    return payload


def read_config(directory: str | Path, kind: str, cls: type) -> Any:
    return from_dict(cls, check_kind(directory, kind)["config"])


def load_pretrained(build: Callable[[Any], M], cls: type, directory: str | Path, kind: str,
                    map_location: str | torch.device = "cpu") -> M:
    """Build the model from its config and load weights with strict keys."""
    directory = Path(directory)
    config = read_config(directory, kind, cls)
    model = build(config)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
    state = load_file(str(weights), device=str(map_location))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise RuntimeError(f"{weights} does not match {directory / CONFIG_NAME}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}")
    model.load_state_dict(state, strict=True)
    return model


def read_weight_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a user-supplied weight file — ``.safetensors``, or a ``.pth``/``.pt`` plain state dict
    read with ``weights_only=True`` (never unpickled) — on the CPU. ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: unknown weights format {suffix!r}; use .safetensors, .pth or .pt")
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable or unsafe file is bad input
        raise WeightsError(f"{path} is not a plain tensor state dict (safetensors, or loadable with "
                           f"weights_only=True): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a flat state dict of tensors")
    return dict(state)


def check_weights(given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: str | Path,
                  what: str) -> None:
    """WeightsError unless ``given`` has exactly the keys of ``expected``, same shapes, float tensors."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    if missing or unexpected:
        raise WeightsError(f"{path} does not match {what}: missing keys {missing}, unexpected keys {unexpected}")
    for k in sorted(expected):
        v = given[k]
        if tuple(v.shape) != tuple(expected[k].shape):
            raise WeightsError(f"{path}: key {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
        if not v.is_floating_point():
            raise WeightsError(f"{path}: key {k!r} has dtype {v.dtype}, expected a float tensor")
