"""openpi's wire format: msgpack, with NumPy arrays as {"__ndarray__": True, data, dtype, shape}.

The convention of `openpi_client.msgpack_numpy` (openpi's websocket policy server and client): an
array travels as its raw bytes with its dtype string and shape, a NumPy scalar as
{"__npgeneric__": True, data, dtype}. msgpack does the encoding; these hooks only say how NumPy
values map to msgpack maps. Object, void and complex arrays are refused both ways (nothing is ever
unpickled), and a decoded array whose byte count does not match its shape and dtype is an error.

The messages (docs/remote.md): on connect the server sends a metadata map; then each request is
an observation map and each answer an action map ({"actions": [L, A] float32, ...}); an answer
that is a text frame instead is the server's error message.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

REFUSED_KINDS = ("O", "V", "c")


class WireError(ValueError):
    """A message that is not openpi-style msgpack, or carries an array that cannot be decoded."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_KINDS:
        raise WireError(f"cannot send a NumPy array of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        return {
            b"__ndarray__": True,
            b"data": array.tobytes(),
            b"dtype": array.dtype.str,
            b"shape": array.shape,
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _field(obj: dict, name: str) -> Any:
    return obj[name.encode()] if name.encode() in obj else obj[name]


def _decode(obj: dict) -> Any:
    is_array = b"__ndarray__" in obj or "__ndarray__" in obj
    is_scalar = b"__npgeneric__" in obj or "__npgeneric__" in obj
    if not (is_array or is_scalar):
        return obj
    try:
        dtype = np.dtype(_field(obj, "dtype"))
        if dtype.kind in REFUSED_KINDS:
            raise WireError(f"refused a NumPy value of dtype {dtype}")
        if is_scalar:
            return dtype.type(_field(obj, "data"))
        shape = tuple(int(n) for n in _field(obj, "shape"))
        data = _field(obj, "data")
        if not isinstance(data, bytes) or len(data) != int(np.prod(shape)) * dtype.itemsize:
            raise WireError(f"array data does not match shape {shape} and dtype {dtype}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except (KeyError, TypeError) as e:
        raise WireError(f"malformed NumPy value ({type(e).__name__}: {e})") from e


def packb(value: Any) -> bytes:
    return msgpack.packb(value, default=_encode)


def unpackb(data: bytes) -> Any:
    """Decode one message; anything that is not openpi-style msgpack is a `WireError`."""
    if not isinstance(data, (bytes, bytearray)):
        raise WireError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, strict_map_key=False)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"not a msgpack message ({type(e).__name__}: {e})") from e
