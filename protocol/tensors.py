"""A strict container for named tensors: training state on the wire and on disk.

Never pickle or torch.load: a container is msgpack of
    {"format": "swarmtrain-tensors", "version": 1, "meta": {...},
     "tensors": [[name, dtype, [dims...], <raw little-endian bytes>], ...]}
and decoding checks every dtype, shape and byte count before it builds a tensor.
"""

from __future__ import annotations

import math

import msgpack
import torch

from protocol.errors import ProtocolError

FORMAT = "swarmtrain-tensors"
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "uint8": torch.uint8,
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_TENSORS = 10_000

ENVELOPE_SLACK = 4096
"""Bytes of the packing buffer beyond the tensors' own: the markers, meta and each entry's head."""


def encode_tensors(tensors: dict[str, torch.Tensor], meta: dict | None = None) -> bytes:
    """The container's bytes. Each tensor's bytes are packed from a view of its memory (no copy
    of each first), into a buffer sized for them at once (msgpack's doubles from 256 KB): a
    node builds its state's container each round, and those copies were 2-3 times the state's
    size in the main heap for a moment (bench footprint). Same bytes as before (tested)."""
    items, size = [], ENVELOPE_SLACK
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        raw = memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else b""
        items.append([name, _NAMES[t.dtype], list(t.shape), raw])
        size += len(raw) + len(name) + 16 + 9 * t.dim()
    packer = msgpack.Packer(use_bin_type=True, buf_size=size)
    return packer.pack({"format": FORMAT, "version": 1, "meta": meta or {}, "tensors": items})


def decode_tensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of encode_tensors; raises ProtocolError on anything unexpected."""
    try:
        obj = msgpack.unpackb(data, raw=False, max_array_len=MAX_TENSORS, max_map_len=256)
    except Exception as e:
        raise ProtocolError(f"tensor container: not valid msgpack ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != 1:
        raise ProtocolError("tensor container: wrong format marker or version")
    meta, items = obj.get("meta"), obj.get("tensors")
    if not isinstance(meta, dict) or not isinstance(items, list):
        raise ProtocolError("tensor container: 'meta' must be a map and 'tensors' a list")
    out: dict[str, torch.Tensor] = {}
    for item in items:
        if not (isinstance(item, list) and len(item) == 4):
            raise ProtocolError("tensor container: each tensor is [name, dtype, shape, bytes]")
        name, dtype, shape, raw = item
        if not isinstance(name, str) or name in out:
            raise ProtocolError(f"tensor container: bad or repeated name {name!r}")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ProtocolError(f"tensor container: {name}: dtype {dtype!r} not allowed")
        if not (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise ProtocolError(f"tensor container: {name}: bad shape {shape!r}")
        itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
        if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * itemsize:
            raise ProtocolError(f"tensor container: {name}: byte count does not match shape {shape}")
        t = torch.frombuffer(bytearray(raw), dtype=DTYPES[dtype]) if raw else torch.empty(0, dtype=DTYPES[dtype])
        out[name] = t.reshape(shape)
    return out, meta
