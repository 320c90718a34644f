"""Tensors out of PyTorch checkpoints that hold more than tensors, read without running any of their code.

A PyTorch Lightning checkpoint (taming-transformers' VQGAN ``.ckpt``) or a training checkpoint that
stores its ``argparse.Namespace`` (LlamaGen's ``.pt``) is a pickle naming classes of the libraries that
wrote it: ``torch.load(weights_only=True)`` refuses it, and a plain ``torch.load`` would import those
libraries and call whatever the pickle names. This reader unpickles with ``find_class`` restricted:

* torch's tensor-rebuild functions become functions of this module that only record where a tensor's
  bytes lie (a :class:`TensorRef`): no tensor is built while unpickling;
* storage types (``torch.FloatStorage`` …) and dtypes (``torch.float32`` …) become inert dtype markers;
* ``collections.OrderedDict`` and a few plain builtins (``set``, ``frozenset``, ``complex``) are
  themselves, and ``_codecs.encode`` (how protocol 2 pickles bytes) only latin-1 encodes a string;
* every other global — Lightning callbacks, omegaconf containers, ``argparse.Namespace``,
  ``os.system`` — becomes an :class:`Opaque` class: calling it, building it, setting its state or items
  does nothing at all.

The records are immutable once validated: BUILD (``__setstate__``) on them is refused, and a tensor's
layout is validated again where it is read. Only the tensors asked for are then read from the file's
storage records, bounds-checked, and no record is read into more bytes than the file holds for it
(see :meth:`Checkpoint._entry`). Both of torch's formats are read: the zip archive (``torch.save`` since
torch 1.6) and the older sequence of pickles (``_use_new_zipfile_serialization=False``); the pre-1.0 tar
format is refused with a clear error.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import torch

from ..errors import WeightsError

# The legacy (pre-zip) format's first two pickles, as torch.serialization writes them.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# torch does its size / stride / offset arithmetic in int64; a larger Python int makes it raise TypeError
# or overflow, so every value of a record, and every element or byte count derived from them, stays below.
INT64_MAX = 2**63 - 1


def _refuse_setstate(self: Any, state: Any) -> None:
    """The ``__setstate__`` of this module's records. Frozen slotted dataclasses get one that sets any
    field (Python 3.11+), which a pickle's BUILD opcode would call on a record it has just had validated."""
    raise pickle.UnpicklingError(f"the pickle sets the state of a {type(self).__name__} (BUILD): refused")


# Each class assigns __setstate__ itself: dataclass(slots=True) replaces one that is only inherited.
@dataclass(frozen=True, slots=True)
class StorageType:
    """What a pickled ``torch.FloatStorage`` (…) global stands for here: only its dtype."""
    dtype: torch.dtype
    __setstate__ = _refuse_setstate


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage record of the checkpoint: its key, element dtype and element count."""
    key: str
    dtype: torch.dtype
    numel: int
    __setstate__ = _refuse_setstate


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A dense tensor of the checkpoint, not yet read: a strided view of a storage record."""
    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    __setstate__ = _refuse_setstate


class Opaque:
    """Stands for an object of any class this reader does not build; it swallows everything."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Opaque":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<opaque {self.global_name}>"


def _is_index(value: Any) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(_is_index(v) for v in value):
        raise pickle.UnpicklingError(f"malformed tensor record: {what} {value!r}")
    return tuple(value)


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRef:
    """A validated TensorRef. Called while unpickling, and again on each ref :meth:`Checkpoint.tensor` reads."""
    if not (isinstance(storage, StorageRef) and isinstance(storage.key, str)
            and isinstance(storage.dtype, torch.dtype) and _is_index(storage.numel)):
        raise pickle.UnpicklingError(f"malformed tensor record: storage {storage!r}")
    if not _is_index(offset):
        raise pickle.UnpicklingError(f"malformed tensor record: offset {offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"malformed tensor record: size {size} and stride {stride}")
    # The tensor's byte count, and the byte just past its last element, must fit in int64 too.
    reach = offset + sum(max(s - 1, 0) * st for s, st in zip(size, stride))  # last element read
    itemsize = storage.dtype.itemsize
    if math.prod(size) * itemsize > INT64_MAX or (reach + 1) * itemsize > INT64_MAX:
        raise pickle.UnpicklingError(f"malformed tensor record: size {size}, stride {stride} at offset "
                                     f"{offset} overflow int64")
    return TensorRef(storage, offset, size, stride)


# Stand-ins for torch._utils' rebuild functions: the same signatures, returning a TensorRef.
def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_ref(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _tensor_ref(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    if not isinstance(storage, StorageRef) or not isinstance(dtype, StorageType):
        raise pickle.UnpicklingError(f"malformed tensor record: storage {storage!r}, dtype {dtype!r}")
    # The storage is untyped (counted in bytes): re-count it in elements of the tensor's dtype.
    typed = StorageRef(storage.key, dtype.dtype, storage.numel // dtype.dtype.itemsize)
    return _tensor_ref(typed, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
               _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor subclass or a tensor with attributes: keep the plain tensor, drop type and state."""
    if func in _REBUILDERS and isinstance(args, tuple):
        return func(*args)
    return Opaque()


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it; nothing but latin-1 of a str."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unsupported _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_STORAGE_DTYPES = {
    "ByteStorage": torch.uint8, "CharStorage": torch.int8, "ShortStorage": torch.int16,
    "IntStorage": torch.int32, "LongStorage": torch.int64, "HalfStorage": torch.float16,
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "BFloat16Storage": torch.bfloat16,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _encode,
    **{(module, name): value for module in ("builtins", "__builtin__")
       for name, value in (("set", set), ("frozenset", frozenset), ("complex", complex))},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, scalars, strings and :class:`TensorRef` s.

    ``storages`` receives every storage record the pickle refers to (key -> StorageRef)."""

    def __init__(self, file: BinaryIO, legacy: bool = False):
        super().__init__(file, encoding="utf-8")
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}
        self._opaque: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return StorageType(_DTYPES[name])
        key = (module, name)
        if key not in self._opaque:  # one inert class per global, so it can still key a dict
            self._opaque[key] = type("Opaque", (Opaque,), {"global_name": f"{module}.{name}"})
        return self._opaque[key]

    def persistent_load(self, pid: Any) -> StorageRef:
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if self.legacy:
            if len(pid) != 6:
                raise pickle.UnpicklingError(f"malformed storage record {pid!r}")
            _, storage_type, key, _location, numel, view = pid
            if view is not None:
                raise pickle.UnpicklingError("storage views of the pre-1.0 legacy format are not supported")
        else:
            if len(pid) != 5:
                raise pickle.UnpicklingError(f"malformed storage record {pid!r}")
            _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType) or not _is_index(numel):
            raise pickle.UnpicklingError(f"malformed storage record {pid!r}")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        ref = StorageRef(key, storage_type.dtype, numel)
        if self.storages.setdefault(key, ref) != ref:
            raise pickle.UnpicklingError(f"storage {key!r} is described twice, differently")
        return ref


class Checkpoint:
    """An open checkpoint: ``root`` is its unpickled object (tensors as :class:`TensorRef`, foreign
    objects as :class:`Opaque`); :meth:`tensor` reads one tensor. Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        self._zip: zipfile.ZipFile | None = None
        self._bytes: dict[str, torch.UntypedStorage] = {}
        try:
            if zipfile.is_zipfile(self._file):
                self.root, self._storages = self._open_zip()
            else:
                self.root, self._storages = self._open_legacy()
        except BaseException:
            self.close()
            raise

    def _open_zip(self) -> tuple[Any, dict]:
        self._zip = zipfile.ZipFile(self._file)
        pickles = [n for n in self._zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise pickle.UnpicklingError("a zip archive without one <name>/data.pkl: not a torch.save file")
        self._prefix = pickles[0][: -len("data.pkl")]
        order = self._prefix + "byteorder"
        if order in self._zip.namelist() and self._zip.read(self._entry(order)).strip() != b"little":
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")
        with self._zip.open(self._entry(pickles[0])) as f:
            unpickler = RestrictedUnpickler(f)
            root = unpickler.load()
        return root, unpickler.storages

    def _entry(self, name: str, max_size: int | None = None) -> zipfile.ZipInfo:
        """The archive's entry ``name``, checked before any of it is read.

        torch's writer stores every record uncompressed (ZIP_STORED, aligned so that ``torch.load(mmap=True)``
        can map it), so a compressed entry is refused: then no read can expand past the bytes the file
        itself holds, whatever sizes the archive declares — a DEFLATEd entry can inflate ~1000:1, and
        zipfile trusts the declared ``file_size``. This bounds data.pkl too, without an arbitrary cap.
        ``max_size``: a storage entry holds no more bytes than its storage record declares."""
        assert self._zip is not None
        info = self._zip.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            raise pickle.UnpicklingError(f"zip entry {name!r} is compressed, as torch.save never writes one")
        if max_size is not None and info.file_size > max_size:
            raise pickle.UnpicklingError(f"zip entry {name!r} holds {info.file_size} bytes, its storage record "
                                         f"declares {max_size}")
        return info

    def _open_legacy(self) -> tuple[Any, dict]:
        f = self._file
        f.seek(0)
        if RestrictedUnpickler(f).load() != LEGACY_MAGIC:
            raise pickle.UnpicklingError("neither a zip archive nor torch's legacy format (bad magic number)")
        if RestrictedUnpickler(f).load() != LEGACY_PROTOCOL:
            raise pickle.UnpicklingError("unknown legacy protocol version")
        sys_info = RestrictedUnpickler(f).load()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")
        unpickler = RestrictedUnpickler(f, legacy=True)
        root = unpickler.load()
        keys = RestrictedUnpickler(f).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise pickle.UnpicklingError("malformed list of storage keys")
        # After the keys come the storages in that order, each an int64 element count then the bytes.
        self._offsets: dict[str, tuple[int, int]] = {}
        file_size = os.fstat(f.fileno()).st_size
        for key in keys:
            header = f.read(8)
            ref = unpickler.storages.get(key)
            if len(header) != 8 or ref is None:
                raise pickle.UnpicklingError(f"storage {key!r} is missing or truncated")
            count = int.from_bytes(header, "little")
            nbytes = count * ref.dtype.itemsize
            if count > ref.numel or f.tell() + nbytes > file_size:  # so no read asks for more than is there
                raise pickle.UnpicklingError(f"storage {key!r} of {count} elements is oversized or truncated")
            self._offsets[key] = (f.tell(), nbytes)
            f.seek(nbytes, io.SEEK_CUR)
        return root, unpickler.storages

    def _storage_bytes(self, ref: StorageRef) -> torch.UntypedStorage:
        if ref.key not in self._bytes:
            record = self._storages.get(ref.key)  # the record as the pickle declared it (untyped for v3)
            if record is None:
                raise pickle.UnpicklingError(f"storage {ref.key!r} has no storage record")
            if self._zip is not None:
                name = f"{self._prefix}data/{ref.key}"
                data = self._zip.read(self._entry(name, max_size=record.numel * record.dtype.itemsize))
            else:
                if ref.key not in self._offsets:
                    raise pickle.UnpicklingError(f"storage {ref.key!r} is not in the file")
                start, nbytes = self._offsets[ref.key]
                self._file.seek(start)
                data = self._file.read(nbytes)
                if len(data) != nbytes:
                    raise pickle.UnpicklingError(f"storage {ref.key!r} is truncated")
            self._bytes[ref.key] = (torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data
                                    else torch.UntypedStorage(0))
        return self._bytes[ref.key]

    def tensor(self, ref: TensorRef) -> torch.Tensor:
        """Read one tensor (CPU); its bytes must lie inside its storage record."""
        if not isinstance(ref, TensorRef):
            raise pickle.UnpicklingError(f"not a tensor record: {ref!r}")
        ref = _tensor_ref(ref.storage, ref.offset, ref.size, ref.stride)  # validated again, where it is used
        dtype = ref.storage.dtype
        if any(s == 0 for s in ref.size):
            return torch.empty(ref.size, dtype=dtype)
        last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride))  # last element read
        storage = self._storage_bytes(ref.storage)
        have = storage.nbytes() // dtype.itemsize
        if last >= min(have, ref.storage.numel):
            raise pickle.UnpicklingError(f"tensor {ref.size} at offset {ref.offset} lies outside its storage "
                                         f"{ref.storage.key!r} of {min(have, ref.storage.numel)} elements")
        return torch.empty(0, dtype=dtype).set_(storage, ref.offset, ref.size, ref.stride)  # (*size)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._file.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# What reading a bad file can raise, anywhere from opening it to building its tensors.
_READ_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError,
                AttributeError, IndexError, OverflowError, MemoryError, RuntimeError, OSError)


def _unreadable(path: Path, exc: BaseException) -> WeightsError:
    return WeightsError(f"{path} cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
                        f"is it the right file, complete?")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open and unpickle ``path`` without running its code; WeightsError when it can't be read."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        return Checkpoint(path)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def read_state_dict(path: str | Path, keys: Sequence[str] = ("state_dict",)) -> tuple[str, dict[str, torch.Tensor]]:
    """The first of ``keys`` found at the checkpoint's top level, as a dict of tensors, and which key it was.

    Nothing else of the checkpoint (optimizer states, callbacks, hyper-parameters) is read past its pickle."""
    path = Path(path)
    with open_checkpoint(path) as ckpt:
        root = ckpt.root
        if not isinstance(root, dict):
            raise WeightsError(f"{path} holds a {type(root).__name__}, not a checkpoint dict")
        found = next((k for k in keys if k in root), None)
        if found is None:
            top = sorted(str(k) for k in root)[:10]
            raise WeightsError(f"{path} has no {' / '.join(repr(k) for k in keys)} entry; its top-level keys: {top}")
        entries = root[found]
        if not isinstance(entries, dict):
            raise WeightsError(f"{path}: {found!r} is a {type(entries).__name__}, not a state dict")
        state = {}
        for name, ref in dict.items(entries):  # dict's own items: a pickle can shadow an instance's methods
            if not isinstance(name, str) or not isinstance(ref, TensorRef):
                raise WeightsError(f"{path}: {found}[{name!r}] is {ref!r}, not a plain dense tensor")
            try:
                state[name] = ckpt.tensor(ref)
            except _READ_ERRORS as exc:
                raise _unreadable(path, exc) from exc
        return found, state
