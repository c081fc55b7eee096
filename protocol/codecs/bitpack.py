"""Bit packing for the low-bit codecs: n-bit codes, 2-bit codes, and 12- or 16-bit indices.

Pure layout (numpy in, bytes out and back); no bounds are checked here: the codecs check
indices and decoded values after unpacking.
"""

from __future__ import annotations

import numpy as np
import torch


def pack_bits(c: np.ndarray, bits: int) -> bytes:
    """Codes (uint8, each < 2**bits) packed little-end first: the first code in the low bits."""
    per = 8 // bits
    a = np.concatenate([c.astype(np.uint8), np.zeros((-len(c)) % per, np.uint8)]).reshape(-1, per)
    out = np.zeros(len(a), np.uint8)
    for i in range(per):
        out |= (a[:, i] << (i * bits)).astype(np.uint8)
    return out.tobytes()


def unpack_bits(raw: bytes, n: int, bits: int) -> np.ndarray:
    """The first n codes of `raw` (the inverse of pack_bits)."""
    per, mask = 8 // bits, (1 << bits) - 1
    b = np.frombuffer(raw, dtype=np.uint8)
    return np.stack([(b >> (i * bits)) & mask for i in range(per)], axis=1).reshape(-1)[:n]


def pack_2bit(q: torch.Tensor) -> bytes:
    """2-bit codes (a tensor of 0..3), four to a byte, the first in the low bits."""
    a = q.numpy().astype(np.uint8)
    a = np.concatenate([a, np.zeros((-len(a)) % 4, np.uint8)]).reshape(-1, 4)
    return (a[:, 0] | a[:, 1] << 2 | a[:, 2] << 4 | a[:, 3] << 6).astype(np.uint8).tobytes()


def unpack_2bit(codes: bytes, n: int) -> torch.Tensor:
    """The first n 2-bit codes (int64, ready to index a value table)."""
    b = np.frombuffer(codes, dtype=np.uint8)
    a = np.stack([b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6], axis=1).reshape(-1)[:n]
    return torch.from_numpy(a.astype(np.int64))


def pack_indices(idx: torch.Tensor, bits: int) -> bytes:
    """Indices as little-endian uint16 (16 bits) or two to three bytes (12 bits)."""
    a = idx.numpy().astype(np.uint16)
    if bits == 16:
        return a.astype("<u2").tobytes()
    if len(a) % 2:
        a = np.append(a, np.uint16(0))
    lo, hi = a[0::2], a[1::2]  # two 12-bit indices in three bytes
    out = np.stack([lo & 0xFF, (lo >> 8) | ((hi & 0xF) << 4), hi >> 4], axis=1).astype(np.uint8)
    return out.tobytes()


def unpack_indices(raw: bytes, m: int, bits: int) -> torch.Tensor:
    """The first m indices (int64; the inverse of pack_indices)."""
    if bits == 16:
        return torch.from_numpy(np.frombuffer(raw, dtype="<u2").astype(np.int64)[:m])
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
    lo = b[:, 0] | ((b[:, 1] & 0xF) << 8)
    hi = (b[:, 1] >> 4) | (b[:, 2] << 4)
    return torch.from_numpy(np.stack([lo, hi], axis=1).reshape(-1)[:m].copy())
