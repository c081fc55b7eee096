"""Mixed precision of the inner step ([train] precision): autocast for forward and loss, and for
fp16 a gradient scaler. Weights, optimizer state and the swarm's state stay fp32: autocast only
changes how each peer's own steps round, never the bits peers must agree on."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """'fp32' does nothing (the same operations as without it); 'bf16' autocasts; 'fp16'
    autocasts and scales the loss so small gradients survive (torch.amp.GradScaler)."""

    def __init__(self, precision: str, device: torch.device):
        self.dtype = DTYPES.get(precision)
        self.device_type = device.type
        fp16 = precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16) if fp16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, opts: list[torch.optim.Optimizer], params: list[torch.Tensor]) -> bool:
        """Turn scaled gradients back into true ones (before clipping); False where one overflowed."""
        if self.scaler is None:
            return True
        for opt in opts:
            self.scaler.unscale_(opt)
        grads = [p.grad for p in params if p.grad is not None]
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True

    def step(self, opt: torch.optim.Optimizer) -> None:
        """opt.step(), skipped by the scaler when this step's gradient overflowed."""
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)

    def update(self) -> None:
        """The next step's loss scale (halved after an overflow, grown after a run without one)."""
        if self.scaler is not None:
            self.scaler.update()
