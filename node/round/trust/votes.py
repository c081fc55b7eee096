"""How many established peers must hold a head before a peer extends its chain to it.

Voters are live peers established on the verified chain (node/round/trust/chain.py), never identities
the chain did not establish; a vote is a signed heartbeat holding the head. A head needs all
voters when there are fewer than MIN_QUORUM, else a majority of at least MIN_QUORUM.
"""

from __future__ import annotations

MIN_QUORUM = 3


def needed(n_voters: int) -> int:
    """How many vouchers a state needs among n voters: all of them below 3, else a majority of >= 3."""
    return n_voters if n_voters < MIN_QUORUM else max(MIN_QUORUM, n_voters // 2 + 1)
