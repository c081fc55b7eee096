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


MMAP_THRESHOLD = 4 << 20
"""Bytes from which glibc's malloc maps a block of its own, held fixed (see hold_mmap_threshold)."""
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_M_TRIM_THRESHOLD = -1
TRIM_THRESHOLD = 128 << 10
"""glibc's default trim threshold: its dynamic rule has raised it to twice the mmap threshold by
the time the volunteer starts, and mallopt of the mmap threshold alone leaves it there."""


def mmap_threshold_for(state_bytes: int) -> int:
    """The threshold to hold for a model whose trainable parameters take `state_bytes`: 4 MiB, or an
    eighth of the parameters up to glibc's largest (32 MiB). A larger model's step tensors grow
    with it, and mapping each of them anew every step costs its page faults (the 1 MiB row in
    docs/benchmarks.md), while its round's end's copies of the state still go to their own maps."""
    return min(32 << 20, max(MMAP_THRESHOLD, state_bytes // 8))


def hold_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Hold glibc's mmap threshold at `size` (True when set; elsewhere nothing, False).

    glibc raises the threshold to the size of each mapped block freed (up to 32 MiB) and its
    trim threshold to twice that, so after a few large blocks (a round's end builds several-MiB
    buffers: payloads, the state's copies, the checkpoint) they too come from the main heap,
    among the step's freed activations, and the heap is rarely trimmed. Held at 4 MiB (the
    demo's step tensors are 2 MiB at most: its step is unchanged), blocks from 4 MiB are mapped
    and unmapped whole: the node -12 MB RSS after 6 rounds in bench footprint. 1 MiB took 20 MB
    but cost ~15% of the step (each activation's page faults), 128 KiB 25-40%
    (docs/benchmarks.md, "glibc's mmap threshold").
    """
    libc = _glibc()
    return (
        libc is not None
        and libc.mallopt(_M_MMAP_THRESHOLD, size) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )


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
