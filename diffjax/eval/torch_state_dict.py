"""Read a torch ``state_dict`` file into NumPy arrays without importing torch.

Both of torch's on-disk formats: the zip archive of ``data.pkl`` + raw storages used since torch 1.6, and the older
"legacy" stream of pickles followed by the raw storages. A restricted unpickler resolves only the handful of torch
names a state dict needs (``collections.OrderedDict``, the tensor-rebuild functions, ``torch.*Storage``); any other
global in the pickle is refused. Nothing here downloads anything.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

__all__ = ["read_torch_state_dict"]

_TORCH_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # no NumPy dtype; rejected with a clear message
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stand-in for a torch ``*Storage`` class found in the pickle."""

    def __init__(self, name: str):
        if name not in _TORCH_DTYPES or _TORCH_DTYPES[name] is None:
            raise pickle.UnpicklingError(f"unsupported torch storage type {name!r}")
        self.name = name
        self.dtype = np.dtype(_TORCH_DTYPES[name])


class _Storage:
    """A flat storage whose bytes arrive later (legacy format) or at once (zip format)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


class _PendingTensor:
    """A tensor whose storage may not be read yet: (storage, offset, size, stride)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise ValueError("tensor storage was never read from the checkpoint file")
        if not self.size:
            return np.array(flat[self.offset])
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= flat.size or any(s < 0 for s in self.stride):
            raise ValueError(f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride}) "
                             f"does not fit its storage of {flat.size} elements")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.array(view)  # a contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *args):
    del requires_grad, backward_hooks, args
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    del requires_grad, backward_hooks, args
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only ``OrderedDict``, torch's tensor-rebuild functions and storage classes; nothing else."""

    def __init__(self, file, storages: dict, load_bytes=None):
        super().__init__(file, encoding="latin1")
        self._storages = storages
        self._load_bytes = load_bytes

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, pid):
        pid = tuple(pid)
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id kind {kind!r}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names no torch storage type: {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            st = _Storage(storage_type.dtype, int(numel))
            if self._load_bytes is not None:  # zip format: the bytes are a separate archive member
                st.array = np.frombuffer(self._load_bytes(key), dtype=st.dtype.newbyteorder("<"))[: st.numel]
            self._storages[key] = st
        st = self._storages[key]
        if view_metadata is not None:  # legacy format: a view into a larger storage
            view_key, offset, view_size = view_metadata
            view = _StorageView(st, int(offset), int(view_size))
            self._storages.setdefault(str(view_key), view)
            return self._storages[str(view_key)]
        return st


class _StorageView:
    def __init__(self, base: _Storage, offset: int, size: int):
        self.base, self.offset, self.size = base, offset, size

    @property
    def array(self):
        return None if self.base.array is None else self.base.array[self.offset : self.offset + self.size]


def _finish(obj) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    out = {}
    for k, v in obj.items():
        if isinstance(v, _PendingTensor):
            out[str(k)] = v.materialize()
    return out


def zip_archive(zf: zipfile.ZipFile, path: str):
    """The parts of a torch zip archive (``torch.save`` or TorchScript): ``(prefix, data.pkl bytes, names,
    load_bytes(key) -> the storage bytes of key)``."""
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if len(pkl) != 1:
        raise ValueError(f"path {path!r} is a zip but not a torch archive (no single */data.pkl member)")
    prefix = pkl[0][: -len("data.pkl")]
    return prefix, zf.read(pkl[0]), names, lambda key: zf.read(f"{prefix}data/{key}")


def _read_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        _, data, _, load_bytes = zip_archive(zf, path)
        return _finish(_StateDictUnpickler(io.BytesIO(data), {}, load_bytes).load())


class _NoGlobalsUnpickler(pickle.Unpickler):
    """For the legacy format's header and key-list pickles, which hold builtins only."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights file")


def _load_plain(f):
    return _NoGlobalsUnpickler(f, encoding="latin1").load()


def _read_legacy(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        try:
            magic = _load_plain(f)
        except Exception as e:  # not a pickle at all
            raise ValueError(f"path {path!r} is neither a zip nor a legacy torch checkpoint: {e}") from None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"path {path!r} is neither a zip nor a legacy torch checkpoint (bad magic number)")
        protocol = _load_plain(f)
        if protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"path {path!r}: unsupported legacy torch protocol {protocol!r}")
        _sys_info = _load_plain(f)  # plain dict of builtins
        storages: dict = {}
        result = _StateDictUnpickler(f, storages).load()
        keys = _load_plain(f)  # list of storage keys, in the order their bytes follow
        for key in keys:
            st = storages.get(str(key))
            if not isinstance(st, _Storage):
                raise ValueError(f"path {path!r}: storage {key!r} listed but never referenced")
            numel = int(np.frombuffer(f.read(8), "<i8")[0])
            data = f.read(numel * st.dtype.itemsize)
            if len(data) != numel * st.dtype.itemsize:
                raise ValueError(f"path {path!r} is truncated (storage {key!r})")
            st.array = np.frombuffer(data, dtype=st.dtype.newbyteorder("<"))
    return _finish(result)


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a torch ``state_dict`` file into NumPy arrays without importing torch.

    Supports the zip format (torch >= 1.6: ``<name>/data.pkl`` plus ``<name>/data/<key>`` raw storages) and
    the legacy format (magic number, protocol, system info and the state-dict pickle, then a pickled list
    of storage keys, then each storage as an int64 element count followed by its little-endian bytes).
    Only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and
    ``torch.*Storage`` are resolved; any other global in the pickle is refused.

    Args:
        path: the ``.pth`` / ``.pt`` file.

    Returns:
        ``{name: array}`` for every tensor entry (non-tensor entries are skipped).
    """
    if not os.path.isfile(path):
        raise ValueError(f"path {path!r} does not exist or is not a file")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)
