"""Saving and loading models as a directory: ``config.json`` + ``model.safetensors``.

Nothing here unpickles: weights are safetensors, configs are JSON, and loading is strict, so a
checkpoint that does not match the architecture its config describes fails with the keys named.

Every file is written atomically (a temporary file, created with the user's umask, renamed into
place). ``model.safetensors`` carries in its metadata the SHA-256 of its tensors and the config it was
saved with, so a truncated, bit-flipped or mismatched model is refused with the file named instead of
loading as something else. Every reader here turns a missing, unreadable or damaged file into one
``VqgenError`` that names the file and says what to do.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import diff_keys, from_dict, to_dict
from .errors import ConfigError, VqgenError, WeightsError, WeightsMismatch, WriteError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<pid>.<random>.tmp" beside the target
META_KEY = "vqgen"  # the safetensors metadata entry holding the checksum and the config (JSON)

M = TypeVar("M", bound=torch.nn.Module)


def atomic_write_bytes(path: str | Path, write: Callable[[str], None], keep_previous: str | Path | None = None) -> None:
    """Call ``write(tmp_path)`` then rename into place, so a crash never leaves half a file.

    The temporary file is created with mode 0o666 less the umask, so what vqgen writes is as readable as
    any file the user makes. With ``keep_previous``, the file being replaced is first renamed to that
    path, so the previous version stays beside the new one. A ``write`` that fails (disk full, no
    permission, a serialiser error) removes the temporary file and raises WriteError: the file that was
    there before is untouched."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the kernel applies the umask
        mode = os.stat(tmp).st_mode & 0o777
        write(str(tmp))
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that replaced the file (safetensors) made it 0600
            os.chmod(tmp, mode)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        raise WriteError(f"could not write {path} ({reason}); the file there before, if any, is unchanged — "
                         "free space or fix the permissions and run again") from exc
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (library errors can span many), or its class name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def state_digest(state: Any) -> str:
    """SHA-256 of a nested state — mappings (in key order), lists, tuples, tensors (dtype, shape and
    bytes), numbers, strings, None — equal before saving and after loading, so a flipped bit anywhere
    in a checkpoint or a weights file is caught on reading."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(f"M{len(obj)}:".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):  # a tuple may come back as a list: both hash alike
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r};".encode())


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` atomically as safetensors, their ``sha256`` (and ``extra``) as JSON in the
    header's one metadata entry ``vqgen`` (one entry: safetensors orders several at random, and the
    same tensors must make the same bytes)."""
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {META_KEY: json.dumps({**(extra or {}), "sha256": state_digest(state)}, sort_keys=True)}
    atomic_write_bytes(Path(path), lambda p: save_file(state, p, metadata=meta))


def read_safetensors(path: str | Path, device: str = "cpu", fix: str = "copy it again from where it came from"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, what ``write_safetensors`` put in the header, or {}) of a safetensors file; WeightsError
    naming the file and saying ``fix`` when it is missing, truncated, not safetensors, or its tensors
    differ from the ``sha256`` they were written with (files written elsewhere, without one, are read
    as they are)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; {fix}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any file safetensors cannot parse is a damaged file
        raise WeightsError(f"{path} is not a readable safetensors file ({first_line(exc)}): "
                           f"it is truncated or damaged; {fix}") from exc
    try:
        meta = json.loads(header[META_KEY]) if META_KEY in header else {}
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or ("sha256" in meta and state_digest(tensors) != meta["sha256"]):
        raise WeightsError(f"{path} is damaged: its tensors do not match the checksum they were written with; {fix}")
    return tensors, meta


def read_json(path: str | Path, error: type[VqgenError], fix: str) -> Any:
    """The parsed JSON file ``path``; ``error`` naming the file and saying ``fix`` when it is missing,
    unreadable, not UTF-8 or not valid JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path} cannot be read ({exc}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}): it is truncated or damaged; {fix}") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def save_pretrained(model: torch.nn.Module, config: Any, directory: str | Path, kind: str,
                    files: dict[str, str] | None = None) -> Path:
    """Write ``config.json`` (with the model ``kind``), the text ``files`` (name → content, e.g. a caption
    tokenizer's ``tokenizer.json``) and ``model.safetensors`` into ``directory``; the weights' metadata
    repeats the config and holds the checksums of the tensors and of the files, which loading checks."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "config": to_dict(config)}
    text = json.dumps(payload, indent=2)
    atomic_write_bytes(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    extra: dict[str, Any] = {"config": payload}
    if files:
        for name, content in files.items():
            atomic_write_bytes(directory / name, lambda p, data=content.encode("utf-8"): Path(p).write_bytes(data))
        extra["files"] = {name: hashlib.sha256(content.encode("utf-8")).hexdigest() for name, content in files.items()}
    write_safetensors(directory / WEIGHTS_NAME, model.state_dict(), extra)
    return directory


def check_model_files(directory: str | Path, meta: dict[str, Any] | None = None) -> None:
    """WeightsError when a file that ``save_pretrained`` wrote beside the weights (``files``) is missing
    or differs from its checksum. ``meta`` is the weights header (read here when not given; a model
    directory without readable weights has nothing to check against)."""
    directory = Path(directory)
    if meta is None:
        try:
            with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
        except Exception:  # noqa: BLE001 - no readable weights: nothing to compare with
            return
    sums = meta.get("files") if isinstance(meta, dict) else None
    for name, digest in (sums if isinstance(sums, dict) else {}).items():
        path = directory / name
        if not path.is_file():
            raise WeightsError(f"{path} is missing: it belongs with {directory / WEIGHTS_NAME}; {_REDO}")
        if file_sha256(path) != digest:
            raise WeightsError(f"{path} is damaged: it differs from the checksum recorded in "
                               f"{directory / WEIGHTS_NAME}; {_REDO}")


_REDO = "copy the model directory again, or retrain it"


def read_payload(directory: str | Path) -> dict:
    """The parsed ``config.json`` of a saved model directory (vqgen's, or a transformers model's);
    ConfigError when it is missing, unreadable, not JSON or not an object."""
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise ConfigError(f"{directory} is not a saved model directory: no {CONFIG_NAME}")
    payload = read_json(path, ConfigError, _REDO)
    if not isinstance(payload, dict):
        raise ConfigError(f"{path} does not hold a JSON object; {_REDO}")
    return payload


def check_kind(directory: str | Path, kind: str) -> dict:
    """The payload of ``directory``'s config.json; ConfigError naming what it holds unless a ``kind`` model."""
    payload = read_payload(directory)
    if payload.get("kind") != kind:
        held = f"a {payload['kind']!r} model" if "kind" in payload else "no vqgen model kind"
        raise ConfigError(f"{directory} holds {held}, not a {kind!r} model")
    return payload


def run_tokens_dir(run_dir: str | Path, kind: str) -> str:
    """The token directory a ``kind`` run (a prior, a text-to-image model) was trained on, named by its
    ``train_config.json``; ConfigError when the directory holds another kind of model, or that file is
    missing or damaged."""
    check_kind(run_dir, kind)
    path = Path(run_dir) / "train_config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a {kind} run directory (no train_config.json, which names the token "
                          "directory to decode with)")
    fix = "run its training command again: that restores the file from the run's checkpoint"
    cfg = read_json(path, ConfigError, fix)
    tokens = cfg.get("tokens") if isinstance(cfg, dict) else None
    if not isinstance(tokens, str) or not tokens:
        raise ConfigError(f"{path} names no token directory ('tokens'); {fix}")
    return tokens


def read_config(directory: str | Path, kind: str, cls: type) -> Any:
    return _config_of(directory, check_kind(directory, kind), cls)


def _config_of(directory: str | Path, payload: dict, cls: type) -> Any:
    """``cls`` built from the ``config`` object of ``directory``'s parsed config.json ``payload``."""
    path = Path(directory) / CONFIG_NAME
    config = payload.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{path} has no 'config' object; {_REDO}")
    try:
        return from_dict(cls, config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}; {_REDO}") from None


def load_pretrained(build: Callable[[Any], M], cls: type, directory: str | Path, kind: str,
                    map_location: str | torch.device = "cpu") -> M:
    """Build the model from its config and load weights with strict keys; WeightsMismatch when they do
    not fit (keys, shapes, or a config.json that differs from the one the weights were saved with)."""
    directory = Path(directory)
    payload = check_kind(directory, kind)  # config.json, read once
    config = _config_of(directory, payload, cls)
    try:
        model = build(config)
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"{directory / CONFIG_NAME} describes a model that cannot be built ({exc}); {_REDO}") from exc
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}: the model was never exported, or the file "
                                f"was removed; {_REDO}")
    state, meta = read_safetensors(weights, device=str(map_location), fix=_REDO)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise WeightsMismatch(f"{weights} does not match {directory / CONFIG_NAME}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}")
    if "config" in meta:
        differs = sorted(diff_keys(meta["config"], payload))  # a key missing on one side and null on the other: none
        if differs:
            raise WeightsMismatch(f"{directory / CONFIG_NAME} does not match {weights}: it differs from the config "
                                  f"the weights were saved with at {differs} (damaged or edited by hand); {_REDO}")
    check_model_files(directory, meta)
    model.load_state_dict(state, strict=True)
    return model


def read_weight_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a user-supplied weight file — ``.safetensors``, or a ``.pth``/``.pt`` plain state dict
    read with ``weights_only=True`` (never unpickled) — on the CPU. ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {path}")
    suffix = path.suffix.lower()
    fix = f"give an intact {what} weights file"
    if suffix == ".safetensors":
        state, _ = read_safetensors(path, fix=fix)
    elif suffix in (".pth", ".pt"):
        try:
            if zipfile.is_zipfile(path):  # torch's zip format: check every entry's CRC, which torch.load skips
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
                if bad is not None:
                    raise WeightsError(f"{path} is damaged (entry {bad} fails its CRC check); {fix}")
            state = torch.load(path, map_location="cpu", weights_only=True)
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable or unsafe file is bad input
            raise WeightsError(f"{path} is not a plain tensor state dict (loadable with weights_only=True): "
                               f"{first_line(exc)}; {fix}") from exc
    else:
        raise WeightsError(f"{path}: unknown weights format {suffix!r}; use .safetensors, .pth or .pt")
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

