"""What the round protocol needs from the strategy: checking, applying and scoring update payloads.

The node implements these over its model and outer strategy (node/peer/applier.py); tests
implement them over digests of bytes, so the protocol is tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from node.round.ledger import Ledger
from protocol.records import Announcement


class NonFinite(Exception):
    """Applying these updates makes the state NaN or inf."""


class Outcome(NamedTuple):
    """A round's end state as a roster names it."""

    digest: str
    """The roster's `result`: SHA-256 of the parameters."""
    full: str = ""
    """The roster's `full`: SHA-256 of parameters and outer buffers ("" when the hooks hold none,
    as the tests' stand-in states; then the roster carries no `full`)."""


@dataclass
class Hooks:
    """What the round needs from the strategy; each call is pure given its inputs."""

    validate: Callable[[bytes], None]
    """Raise ProtocolError if an update payload cannot be applied."""
    result: Callable[[list[bytes], list[int]], Outcome]
    """The roster's result and full digests of the state after applying these payloads, weighted
    by their signed token counts (on a copy); raises NonFinite."""
    score: Callable[[list[bytes], list[int]], list[float]] | None = None
    """Loss-change score per payload (with its token count) on a shared batch (lower is better);
    None: no scoring."""
    banned: Callable[[Ledger], set[str]] = field(default=lambda ledger: set())
    """Peers the ledger's scores exclude."""
    credit: Callable[[list[bytes], list[Announcement]], list[int]] | None = None
    """As leader: each payload's credit in 1/64 of a round's (node/round/trust/credit.py), given its
    signed announcement (tokens, time), judged useful or not where the updates are decoded
    (node/outer/useful.py); every peer that applies the roster recomputes it. None: hooks that
    cannot judge updates (the tests' stand-ins), and each entry gets its token share."""
    aggregate: Callable[[object], Outcome] | None = None
    """A v3 round (node/round/v3.py): the result and full digests after applying its flat
    aggregate (on a copy); raises NonFinite. None: the strategy cannot (no v3 round is led)."""
