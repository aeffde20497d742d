"""Read a PyTorch ``state_dict`` file into NumPy arrays without importing (or needing) torch.

Contract
--------
``load_state_dict(path) -> dict[str, numpy.ndarray]``

* ``path`` is a file written by ``torch.save(model.state_dict(), path)``, in either format:
  the legacy (non-zip) stream format, i.e. magic-number pickle, protocol-version pickle,
  sys-info pickle, the state-dict pickle, the storage-key-list pickle, then for every storage
  an int64 element count followed by its raw little-endian bytes; or the zip format of
  torch >= 1.6 (``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` file per storage).
* Returns a plain ``dict`` in the file's key order, mapping each parameter/buffer name to a
  C-contiguous NumPy array with the tensor's shape and dtype (float32 for float tensors,
  int64 for ``num_batches_tracked``...). Arrays are copies, not views of the file.
* The unpickler is restricted: ``find_class`` only resolves the handful of globals a state
  dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` /
  ``_rebuild_tensor``, ``torch._utils._rebuild_parameter`` and the ``torch.*Storage`` types),
  each mapped to a local stand-in. Any other global raises ``pickle.UnpicklingError``, so a
  malicious file cannot run code through ``__reduce__``.
* Raises ``ValueError`` for files that are neither format, or whose data is truncated, and
  ``pickle.UnpicklingError`` for forbidden globals.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # handled specially (no numpy dtype)
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(eq=False)
class _StorageType:
    name: str

    @property
    def dtype(self):
        return _STORAGE_DTYPES[self.name]

    @property
    def itemsize(self) -> int:
        return 2 if self.name == "BFloat16Storage" else np.dtype(self.dtype).itemsize


@dataclass(eq=False)
class _Storage:
    """A storage referenced from the pickle; its bytes are filled in after unpickling."""

    key: str
    storage_type: _StorageType
    numel: int | None
    data: np.ndarray | None = field(default=None, repr=False)


@dataclass(eq=False)
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise ValueError(f"storage {self.storage.key!r} has no data")
        shape = tuple(int(s) for s in self.size)
        if not shape:
            return flat[self.offset : self.offset + 1].reshape(()).copy()
        if any(s == 0 for s in shape):
            return np.zeros(shape, dtype=flat.dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(shape, self.stride))
        if self.offset < 0 or last >= flat.size:
            raise ValueError(f"tensor of shape {shape} runs past its storage {self.storage.key!r}")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=shape, strides=tuple(int(st) * item for st in self.stride)
        )
        return np.ascontiguousarray(view).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage], zip_format: bool):
        super().__init__(file)
        self._storages = storages
        self._zip_format = zip_format

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"forbidden global in state dict file: {module}.{name}")

    def persistent_load(self, pid):
        # legacy: ('storage', storage_type, key, location, numel, view_metadata)
        # zip:    ('storage', storage_type, key, location, numel)
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type, int(numel))
            self._storages[key] = storage
        return storage


def _to_array(raw: bytes, storage_type: _StorageType, numel: int) -> np.ndarray:
    if storage_type.name == "BFloat16Storage":
        bits = np.frombuffer(raw, dtype="<u2", count=numel).astype(np.uint32) << 16
        return bits.view(np.float32)
    dtype = np.dtype(storage_type.dtype).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype, count=numel).astype(storage_type.dtype, copy=False)


def _materialize(obj) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"file does not hold a state dict (got {type(obj).__name__})")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            raise ValueError(f"entry {name!r} is not a tensor ({type(value).__name__})")
        out[str(name)] = value.materialize()
    return out


def _load_legacy(f) -> dict[str, np.ndarray]:
    def plain_load():
        return _RestrictedUnpickler(f, {}, zip_format=False).load()

    try:
        magic = plain_load()
    except Exception as exc:  # not a pickle at all
        raise ValueError("not a PyTorch state dict file") from exc
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a legacy PyTorch file (bad magic number)")
    plain_load()  # protocol version
    plain_load()  # sys info (endianness, type sizes)
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(f, storages, zip_format=False).load()
    keys = _RestrictedUnpickler(f, {}, zip_format=False).load()
    for key in keys:
        key = str(key)
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("truncated storage data")
        (numel,) = struct.unpack("<q", head)
        storage = storages.get(key)
        if storage is None:
            raise ValueError(f"storage {key!r} listed but never referenced")
        nbytes = numel * storage.storage_type.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"truncated data for storage {key!r}")
        storage.data = _to_array(raw, storage.storage_type, numel)
    return _materialize(result)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError("zip file does not look like a torch.save archive (no data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        result = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages, zip_format=True).load()
        for key, storage in storages.items():
            raw = zf.read(f"{prefix}data/{key}")
            numel = len(raw) // storage.storage_type.itemsize
            storage.data = _to_array(raw, storage.storage_type, numel)
    return _materialize(result)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a ``torch.save``d state dict as ``{name: numpy array}`` (see the module docstring)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)
