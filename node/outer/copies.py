"""A round's copies count once: identical payloads are one update in the aggregate.

Scoring no longer flags a same-round copy (a Sybil that copies a victim would otherwise get the
victim flagged), so copies stay in rosters; without this, each copy of an update would add its
weight again and a crowd of copiers would multiply one peer's say. Every peer drops the same
copies (by bytes, in roster order), so results stay bit-identical.
"""

from __future__ import annotations

from node.outer.aggregate import Weights


def distinct(payloads: list[bytes], weights: Weights = None) -> tuple[list[bytes], Weights]:
    """The payloads without repeats, first holder's position kept; a repeated payload weighs the
    least of its holders' weights (a copy's token claim never raises it)."""
    index: dict[bytes, int] = {}
    kept: list[bytes] = []
    kept_weights: list[float] = []
    for i, payload in enumerate(payloads):
        w = 1.0 if weights is None else weights[i]
        if payload in index:
            j = index[payload]
            kept_weights[j] = min(kept_weights[j], w)
            continue
        index[payload] = len(kept)
        kept.append(payload)
        kept_weights.append(w)
    return kept, None if weights is None else kept_weights
