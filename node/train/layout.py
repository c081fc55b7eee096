"""A model brought from Python (run kind 'user'): what its manifest pins about it.

The swarm cannot build such a model itself, so its peers must agree on what each of them built:
the trained parameters' names, shapes and dtypes in model order (what the state and every update
are laid out by), the round-0 bits of those parameters, and the frozen ones' bits (a LoRA base
model: never exchanged, so it must be the same everywhere). A peer with another model is refused
with the first difference named.
"""

from __future__ import annotations

import torch.nn as nn

from node.errors import SwarmtrainError
from node.train.model import digest, trainable_named

# What a 'user' run's manifest [model] section holds besides the run's settings.
LAYOUT_FIELDS = ("layout", "init_sha256", "frozen_sha256", "tokens_per_step")


def layout_of(model: nn.Module) -> list[list]:
    """[[name, shape, dtype], ...] of the trained parameters, in model order (JSON-able)."""
    return [[n, list(p.shape), str(p.dtype).removeprefix("torch.")] for n, p in trainable_named(model)]


def pin(model: nn.Module, tokens_per_step: int) -> dict:
    """The manifest's [model] fields of a brought model: layout, round-0 and frozen digests, and the
    tokens a typical inner step trains on (the round weights' reference)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return {
        "layout": layout_of(model),
        "init_sha256": digest([p for _, p in trainable_named(model)]),
        "frozen_sha256": digest(frozen) if frozen else "",
        "tokens_per_step": int(tokens_per_step),
    }


def check(model: nn.Module, wanted: dict) -> None:
    """Raise, naming the first difference and the fix, where `model` is not the run's (`wanted`:
    the manifest's [model] section)."""
    found, layout = pin(model, 0), wanted.get("layout")
    if not isinstance(layout, list):
        raise SwarmtrainError(
            "the run's manifest has no parameter layout: it is not a run of a model brought from Python",
            "join it with `swarmtrain join` (the CLI builds the run's model), or join a run made by swarmtrain.join",
        )
    mine, theirs = found["layout"], [list(x) if isinstance(x, (list, tuple)) else x for x in layout]
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            raise SwarmtrainError(
                f"your model differs from the run's at trained parameter {i}: "
                f"yours is {_say(a)}, the run's is {_say(b)}",
                "build the same model class with the same settings as the run's organizer (and freeze the same "
                "parameters: only those with requires_grad are trained)",
            )
    if len(mine) != len(theirs):
        extra, side = (mine[len(theirs)], "yours") if len(mine) > len(theirs) else (theirs[len(mine)], "the run's")
        raise SwarmtrainError(
            f"your model trains {len(mine)} parameter tensors, the run's {len(theirs)}; the first extra one "
            f"({side}) is {_say(extra)}",
            "build the same model as the run's organizer (the same layers, the same frozen parameters)",
        )
    if found["frozen_sha256"] != wanted.get("frozen_sha256", ""):
        raise SwarmtrainError(
            "your model's frozen parameters (e.g. a LoRA base model) differ from the run's",
            "load the same base weights as the organizer (the same files and library versions)",
        )
    if wanted.get("init_sha256") and found["init_sha256"] != wanted["init_sha256"]:
        raise SwarmtrainError(
            "your model's round-0 weights differ from the run's "
            f"({found['init_sha256'][:16]}... here, {str(wanted['init_sha256'])[:16]}... in the run)",
            "seed before building the model as the organizer did (torch.manual_seed(SEED) before the "
            "constructor), or load the same initial weights",
        )


def check_like(model: nn.Module, reference: nn.Module) -> None:
    """Raise, naming the first difference, where `model` does not have the trained layout and frozen
    weights of `reference`: the model a run of the CLI's models (byte GPT, Hugging Face) builds
    from its manifest. Round-0 weights are not compared: the swarm's state replaces them."""
    check(model, {**pin(reference, 0), "init_sha256": ""})


def _say(entry) -> str:
    if isinstance(entry, list) and len(entry) == 3:
        return f"{entry[0]!r} of shape {tuple(entry[1])} and dtype {entry[2]}"
    return repr(entry)[:80]
