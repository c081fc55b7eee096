"""dense-float32 / dense-float16: every value, little-endian, tensors in model order."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from protocol.codecs.bounds import FP16_MAX, check_values, expect_size


@dataclass(frozen=True)
class DenseCodec:
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "float16"

    @property
    def name(self) -> str:
        return f"dense-{self.dtype}"

    @property
    def _dt(self) -> torch.dtype:
        return {"float16": torch.float16, "float32": torch.float32}[self.dtype]

    def encoded_size(self) -> int:
        return sum(math.prod(s) for s in self.shapes) * (2 if self.dtype == "float16" else 4)

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        flat = _flat(tensors).clamp(-FP16_MAX, FP16_MAX)  # beyond fp16's range would become inf
        return flat.to(self._dt).numpy().tobytes()

    def decode(self, data: bytes) -> list[torch.Tensor]:
        expect_size(self, data)
        flat = torch.frombuffer(bytearray(data), dtype=self._dt).to(torch.float32)
        check_values(flat, self.name)
        return _split(flat, self.shapes)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors])


def _split(flat: torch.Tensor, shapes) -> list[torch.Tensor]:
    out, off = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(flat[off : off + n].reshape(s))
        off += n
    return out
