"""How many established peers must hold a head before a peer extends its chain to it.

Voters are live peers established on the verified chain (node/round/trust/chain.py), never identities
the chain did not establish; a vote is a signed heartbeat holding the head. A head needs all
voters when there are fewer than MIN_QUORUM, else at least MIN_QUORUM of them holding more than
half of the voters' tickets (protocol 16: whole rounds of credit in the window, chain.voters; a
majority of heads before, which a crowd of keys with 2 credited rounds each held beside a few
honest peers with 64: tests/test_election_weight.py).
"""

from __future__ import annotations

from collections.abc import Mapping

MIN_QUORUM = 3


def carried(vouch: set[str], voters: Mapping[str, int]) -> bool:
    """Do the peers of `vouch` carry a head among `voters` (peer -> its tickets)? All voters below
    MIN_QUORUM; else at least MIN_QUORUM of them, holding more than half of all voters' tickets."""
    counted = [w for p, w in voters.items() if p in vouch]
    if not counted:
        return False
    if len(voters) < MIN_QUORUM:
        return len(counted) == len(voters)
    return len(counted) >= MIN_QUORUM and 2 * sum(counted) > sum(voters.values())
