"""Which torch device a node trains on, from the --device setting."""

from __future__ import annotations

import torch

from node.errors import SwarmtrainError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SwarmtrainError(
            f"device {name!r} asked for, but torch sees no CUDA GPU",
            "use --device cpu, or install a CUDA build of torch",
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise SwarmtrainError(f"unknown device {name!r}", "use auto, cpu or cuda[:N]") from None
