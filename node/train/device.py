"""Which torch device a node trains on, from the --device setting; and glibc malloc's free pages."""

from __future__ import annotations

import ctypes
import functools
import sys

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


def release_freed_memory() -> None:
    """Hand the pages malloc holds free back to the system (glibc's malloc_trim; elsewhere nothing).

    A round's end decodes payloads, copies the state and serialises it, in the main thread and in
    the exchange's and the round's threads; glibc keeps what they freed (the main heap can shrink
    only from its top, a thread's arena past a threshold the step's activations raised), and
    bench footprint found 20-40 MB of the node's RSS free in malloc after two rounds. Called once
    a round, outside the inner step (a few ms; the step's own freed memory it reuses either way).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (malloc_trim is glibc's)."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version") else None
