"""The bounds every codec shares: what encoders clamp to and what decoders accept.

A peer's payload never reaches a tensor unchecked: decoders call these on every size, scale,
table and decoded value, and raise ProtocolError for anything outside the bounds.
"""

from __future__ import annotations

import torch

from protocol.errors import ProtocolError

FP16_MAX = 65504.0
"""Largest finite fp16 value: encoders clamp every value to +-FP16_MAX, whatever the codec."""
MAX_ABS_VALUE = 65536.0
"""Largest |value| a decoder accepts after scaling (2**16: FP16_MAX, and bf16's rounding of it).
Honest pseudo-gradients and momenta are orders of magnitude smaller; the bound is what keeps an
int8 scale, a 2-bit table or a 1-bit scale of 3e38 from turning parameters into inf, while a
dense fp16 payload of 65504 everywhere stays valid bytes (the aggregator's norm clip handles it).
Sums over any realistic number of peers stay far below fp32's 3.4e38."""


def expect_size(codec, data: bytes) -> None:
    """The payload is exactly `codec.encoded_size()` bytes (every codec's size is fixed)."""
    if len(data) != codec.encoded_size():
        raise ProtocolError(f"{codec.name}: payload is {len(data)} bytes, expected {codec.encoded_size()}")


def check_finite(t: torch.Tensor, name: str) -> None:
    """No NaN or inf anywhere in a decoded tensor."""
    if not torch.isfinite(t).all():
        raise ProtocolError(f"{name}: payload contains NaN or inf")


def check_values(t: torch.Tensor, name: str) -> None:
    """Decoded values: finite and within +-MAX_ABS_VALUE."""
    check_finite(t, name)
    if t.numel() and float(t.abs().max()) > MAX_ABS_VALUE:
        raise ProtocolError(
            f"{name}: decoded value {float(t.abs().max()):.3g} is beyond the bound "
            f"+-{MAX_ABS_VALUE:g} (no honest update comes near it)"
        )


def check_scale(t: torch.Tensor, bound: float, name: str) -> None:
    """A scale or value table: finite and |x| <= bound, so that nothing it multiplies leaves the bound."""
    check_finite(t, name)
    if t.numel() and float(t.abs().max()) > bound:
        raise ProtocolError(f"{name} {float(t.abs().max()):.3g} is beyond the bound {bound:.6g}")
