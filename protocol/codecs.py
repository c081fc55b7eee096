"""Update codecs: a list of float tensors <-> bytes, with exact byte accounting.

The shapes are known to both sides (they come from the run manifest's model), so the wire
carries values only. Decoding checks the byte count and finiteness, and raises ProtocolError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from protocol.errors import ProtocolError


@dataclass(frozen=True)
class DenseCodec:
    """Every value, as fp32 or fp16, little-endian, tensors concatenated in model order."""

    dtype: str = "float16"

    @property
    def name(self) -> str:
        return f"dense-{self.dtype}"

    @property
    def _torch_dtype(self) -> torch.dtype:
        return {"float16": torch.float16, "float32": torch.float32}[self.dtype]

    def encoded_size(self, shapes: list[tuple[int, ...]]) -> int:
        """Exact bytes of `encode` for tensors of these shapes."""
        itemsize = torch.empty((), dtype=self._torch_dtype).element_size()
        return sum(math.prod(s) for s in shapes) * itemsize

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        flat = torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors])
        if self.dtype == "float16":
            # values beyond fp16's range would become inf; clamp so the update stays finite
            flat = flat.clamp(-65504.0, 65504.0)
        return flat.to(self._torch_dtype).numpy().tobytes()

    def decode(self, data: bytes, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        expected = self.encoded_size(shapes)
        if len(data) != expected:
            raise ProtocolError(f"{self.name}: payload is {len(data)} bytes, expected {expected}")
        flat = torch.frombuffer(bytearray(data), dtype=self._torch_dtype).to(torch.float32)
        if not torch.isfinite(flat).all():
            raise ProtocolError(f"{self.name}: payload contains NaN or inf")
        out, offset = [], 0
        for s in shapes:
            n = math.prod(s)
            out.append(flat[offset:offset + n].reshape(s))
            offset += n
        return out


def codec_by_name(name: str) -> DenseCodec:
    """The codec a manifest or envelope names; raises ProtocolError for unknown names."""
    codecs = {"dense-float16": DenseCodec("float16"), "dense-float32": DenseCodec("float32")}
    if name not in codecs:
        raise ProtocolError(f"unknown codec {name!r}; known: {', '.join(codecs)}")
    return codecs[name]
