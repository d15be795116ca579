"""vla-eval's wire format (the peer harness `vla-eval` 0.8.0: `vla_eval/protocol/messages.py`,
`numpy_codec.py`, `image_codec.py`), written from its description, both directions.

Every frame is one msgpack map `{"type", "payload", "seq", "timestamp"}`; `type` is one of hello,
episode_start, observation, action, episode_end, error. A NumPy array travels as
`{"__ndarray__": True, "data": raw bytes, "dtype": dtype.str, "shape": [...]}` (string keys, not
openpi's byte keys: the two formats do not read each other's arrays), an HxWxC uint8 image (C in
1, 3, 4) as `{"__image__": True, "format": "png" | "jpeg" | "raw", "data": ..., "shape": [...]}`
(vla-eval's client sends PNG by default: lossless, the pixels arrive unchanged), a NumPy scalar as
the Python number. Decoding refuses what would cost the reader more than the frame's size says:
object, void and complex dtypes (nothing is unpickled), an array whose bytes do not match its
shape, an image larger than `max_image_px` a side (checked on the declared shape and on the PNG or
JPEG header, before anything is decompressed) or whose decoded shape is not the one declared.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from evalsuite.serving.wire import WireError

PROTOCOL_VERSION = 1  # vla_eval.protocol.messages.PROTOCOL_VERSION in 0.8.0
MESSAGE_TYPES = ("hello", "episode_start", "observation", "action", "episode_end", "error")
IMAGE_FORMATS = ("png", "jpeg", "raw")
ALLOWED_KINDS = "biuf"  # bool, signed and unsigned integers, floats: as vla-eval's decoder
DEFAULT_MAX_IMAGE_PX = 4096


@dataclass
class Message:
    type: str
    payload: dict[str, Any]
    seq: int = 0
    timestamp: float = field(default_factory=time.time)


def _is_image(value: np.ndarray) -> bool:
    return value.ndim == 3 and value.dtype == np.uint8 and value.shape[2] in (1, 3, 4)


def _encoder(image_format: str):
    def encode(obj: Any) -> Any:
        if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ALLOWED_KINDS:
            raise WireError(f"cannot send a NumPy value of dtype {obj.dtype}")
        if isinstance(obj, np.ndarray):
            array = np.ascontiguousarray(obj)
            if image_format != "raw" and _is_image(array):
                return {"__image__": True, "format": image_format, "data": _compress(array, image_format),
                        "shape": list(array.shape)}  # fmt: skip
            return {
                "__ndarray__": True,
                "data": array.tobytes(),
                "dtype": array.dtype.str,
                "shape": list(array.shape),
            }
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"cannot send a {type(obj).__name__}")

    return encode


def _compress(image: np.ndarray, image_format: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    if image_format == "jpeg":
        pil.save(buffer, format="JPEG", quality=95)  # vla-eval's quality
    else:
        pil.save(buffer, format="PNG")
    return buffer.getvalue()


def pack(message: Message, image_format: str = "png") -> bytes:
    """One frame; images as `image_format` (vla-eval's client default: png)."""
    if message.type not in MESSAGE_TYPES:
        raise WireError(f"unknown message type {message.type!r}")
    raw = {
        "type": message.type,
        "payload": message.payload,
        "seq": message.seq,
        "timestamp": message.timestamp,
    }
    return msgpack.packb(raw, default=_encoder(image_format), use_bin_type=True)


def unpack(data: Any, max_image_px: int = DEFAULT_MAX_IMAGE_PX) -> Message:
    """One frame, checked; a `WireError` saying what is wrong with it otherwise."""
    if not isinstance(data, (bytes, bytearray)):
        raise WireError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        raw = msgpack.unpackb(data, object_hook=lambda obj: _decode(obj, max_image_px), raw=False)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"not a msgpack message ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict):
        raise WireError(f"a message is a map, got {type(raw).__name__}")
    missing = [k for k in ("type", "payload", "seq", "timestamp") if k not in raw]
    if missing:
        raise WireError(f"a message needs type, payload, seq and timestamp; missing {missing}")
    if raw["type"] not in MESSAGE_TYPES:
        raise WireError(f"unknown message type {raw['type']!r}; expected one of {', '.join(MESSAGE_TYPES)}")
    if not isinstance(raw["payload"], dict):
        raise WireError(f"a {raw['type']} message's payload is a map, got {type(raw['payload']).__name__}")
    seq = raw["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise WireError(f"a message's seq is an integer, got {seq!r}")
    timestamp = raw["timestamp"]
    return Message(
        raw["type"], raw["payload"], seq, timestamp if isinstance(timestamp, (int, float)) else 0.0
    )


def _decode(obj: dict, max_image_px: int) -> Any:
    if "__image__" in obj:
        return _decode_image(obj, max_image_px)
    if "__ndarray__" not in obj:
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(n) for n in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise WireError(f"malformed array ({type(e).__name__}: {e})") from e
    if dtype.kind not in ALLOWED_KINDS:
        raise WireError(f"refused an array of dtype {dtype}; arrays are bool, integer or float")
    if (
        any(n < 0 for n in shape)
        or not isinstance(data, bytes)
        or len(data) != int(np.prod(shape)) * dtype.itemsize
    ):
        raise WireError(f"array data does not match shape {shape} and dtype {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _decode_image(obj: dict, max_image_px: int) -> np.ndarray:
    image_format, shape, data = obj.get("format"), obj.get("shape"), obj.get("data")
    if image_format not in IMAGE_FORMATS or not isinstance(data, bytes):
        raise WireError(
            f"malformed image: format {image_format!r} (expected png, jpeg or raw) and bytes of data"
        )
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError) as e:
        raise WireError(f"malformed image shape {obj.get('shape')!r}") from e
    if len(shape) != 3 or shape[2] not in (1, 3, 4) or min(shape) < 1:
        raise WireError(f"an image is HxWxC with C 1, 3 or 4; the message declares shape {list(shape)}")
    if max(shape[:2]) > max_image_px:
        raise WireError(
            f"an image of {shape[0]}x{shape[1]} pixels; this side takes at most {max_image_px} a side"
        )
    if image_format == "raw":
        dtype = np.dtype(obj.get("dtype", "|u1"))
        if dtype != np.uint8 or len(data) != int(np.prod(shape)):
            raise WireError(f"raw image data does not match shape {list(shape)} (uint8)")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()
    from PIL import Image, UnidentifiedImageError

    try:
        pil = Image.open(io.BytesIO(data))  # reads the header only
        if pil.format != image_format.upper() or pil.size != (shape[1], shape[0]):
            raise WireError(
                f"the {image_format} image's header says {pil.format} {pil.size[1]}x{pil.size[0]}; the message "
                f"declares {image_format} {shape[0]}x{shape[1]}"
            )
        image = np.asarray(pil)
    except WireError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise WireError(f"an image that is not {image_format} ({type(e).__name__}: {e})") from e
    if image.ndim == 2:
        image = image[..., None]
    if image.shape != shape or image.dtype != np.uint8:
        raise WireError(
            f"the image decodes to {image.dtype} {list(image.shape)}, not the declared uint8 {list(shape)}"
        )
    return image
