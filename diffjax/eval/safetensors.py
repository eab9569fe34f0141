"""Read and write the ``.safetensors`` format (Hugging Face) with NumPy only: no torch, no ``safetensors`` package.

The format: an 8-byte little-endian unsigned header length ``N``, ``N`` bytes of JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (byte offsets into the buffer that follows the header; an
optional ``"__metadata__"`` entry maps strings to strings), then the raw little-endian, row-major tensor bytes. The
tensors tile the buffer without holes or overlaps.
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

__all__ = ["read_safetensors", "write_safetensors", "SAFETENSORS_DTYPES"]

# the format's dtype names -> NumPy's (BF16 has no NumPy dtype: it is read as its 16 bits and widened to float32)
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items() if k not in ("BF16", "U16")}
_NAMES[np.dtype(np.uint16)] = "U16"
_MAX_HEADER = 100 << 20  # the reference implementation's limit


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as ``{name: array}`` (BF16 widened to float32; the header's
    ``__metadata__`` is dropped).

    Raises:
      ValueError: ``path`` is no file, or not a well-formed safetensors file (the message says what is wrong).
    """
    if not os.path.isfile(path):
        raise ValueError(f"path {path!r} does not exist or is not a file")
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path!r} is not a safetensors file: {len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(_MAX_HEADER, len(blob) - 8):
        raise ValueError(f"{path!r} is not a safetensors file: header length {n} exceeds the file "
                         f"({len(blob)} bytes) or {_MAX_HEADER} bytes")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path!r} is not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path!r}: the safetensors header is a {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    data = memoryview(blob)[8 + n:]
    out, spans = {}, []
    for name, info in header.items():
        try:
            dtype_name, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path!r}: tensor {name!r} has a malformed header entry {info!r} (needs dtype, shape, "
                             f"data_offsets)") from None
        if dtype_name not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path!r}: tensor {name!r} has dtype {dtype_name!r}; supported: "
                             f"{sorted(SAFETENSORS_DTYPES)}")
        dtype = np.dtype(SAFETENSORS_DTYPES[dtype_name]).newbyteorder("<")
        if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{path!r}: tensor {name!r} ({dtype_name} {shape}) has data_offsets [{begin}, {end}] "
                             f"that do not hold {math.prod(shape) * dtype.itemsize} bytes inside the "
                             f"{len(data)}-byte buffer")
        array = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        out[name] = _bf16_to_float32(array) if dtype_name == "BF16" else array.astype(dtype.newbyteorder("="))
        spans.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            raise ValueError(f"{path!r}: tensor {name!r} starts at byte {begin} of the buffer, expected {covered} "
                             f"(tensors must tile the buffer without holes or overlaps)")
        covered = end
    if covered != len(data):
        raise ValueError(f"{path!r}: {len(data) - covered} bytes after the last tensor")
    return out


def write_safetensors(path: str, tensors: dict, *, metadata: dict | None = None) -> None:
    """Write ``{name: array}`` as a ``.safetensors`` file (atomically: a temporary file renamed), tensors in name
    order, the header padded with spaces to a multiple of 8 bytes. ``metadata``: optional ``{str: str}``."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        if a.dtype not in _NAMES:
            raise ValueError(f"tensors[{name!r}] has dtype {a.dtype}; allowed: {sorted(str(d) for d in _NAMES)}")
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)
    os.replace(tmp, path)
