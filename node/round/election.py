"""Who may lead a round, in which order: no grindable roles.

Candidates are live peers (valid signed heartbeat, active) that hold the round's base state
(or have already moved past the round: a fast leader that applied its roster is still the one
who led it) and are established in the ledger. They are ranked by SHA-256(run | round | base digest | peer):
the base digest is the state after the previous round, unknown until that round ends, so no
peer id can be ground in advance to rank first.
"""

from __future__ import annotations

import hashlib

from protocol.records import Heartbeat


def rank_key(run: str, round_no: int, base: str, peer: str) -> bytes:
    return hashlib.sha256(f"{run}|{round_no}|{base}|{peer}".encode()).digest()


def candidates(
    peers: dict[str, Heartbeat], base: str, established: set[str] | None, round_no: int, ahead: int | None = None
) -> set[str]:
    """Live, active peers on state `base` or past round `round_no` (a leader that applied its
    roster first), restricted to `established` (None: no restriction, the start of a run, when
    no live peer is established yet). `ahead` bounds how far past: whom we wait for to lead is
    only a peer just past the round (ahead=1), not one far ahead, on the other side of a split
    swarm; whose roster we accept is any (a peer catching up reads rosters led long ago), also
    one whose heartbeat says it is leaving (it led, then left: max_rounds, Ctrl+C). A
    peer's digest is its own claim either way; what makes a leader is the ledger and the
    signatures."""
    top = float("inf") if ahead is None else round_no + ahead
    live = {
        p
        for p, hb in peers.items()
        if (hb.active or ahead is None)  # a leader may leave after leading
        and (hb.digest == base or round_no <= hb.state_round <= top)
    }
    return live if established is None else live & established


def ranking(run: str, round_no: int, base: str, peers: set[str]) -> list[str]:
    """Candidates in the order they may lead: rank 0 first."""
    return sorted(peers, key=lambda p: rank_key(run, round_no, base, p))
