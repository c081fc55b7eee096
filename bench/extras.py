"""The benchmarks' optional dependencies (matplotlib, optuna): a volunteer's install carries
neither, so each is imported where it is used, and a missing one names the install that has it."""

from __future__ import annotations

import importlib
from types import ModuleType

from node.errors import SwarmtrainError

BENCH_EXTRA = "pip install 'swarmtrain[bench]'"
"""The fix for a missing benchmark dependency: pyproject.toml's `bench` extra holds them all."""


def import_extra(module: str, needed_by: str) -> ModuleType:
    """`module`, or a SwarmtrainError saying that `needed_by` (e.g. '--plot') needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SwarmtrainError(f"{needed_by} needs {module}", BENCH_EXTRA) from None


def pyplot() -> ModuleType:
    """matplotlib.pyplot, drawing to files only (the Agg backend: no display needed)."""
    matplotlib = import_extra("matplotlib", "--plot")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
