"""Votes that cannot be stuffed: only established, signed, live peers vouch for a state.

A voter vouches for (state_round, digest) through its signed heartbeat. A state is accepted
when a majority of at least 3 voters (all of them, when fewer than 3 exist) vouch for it, and
never when it is older than ours. Made-up peer ids are not voters: they never appeared in the
rosters of the ledger.
"""
from __future__ import annotations

from collections import Counter

from protocol.records import Heartbeat

MIN_QUORUM = 3


def voters(peers: dict[str, Heartbeat], established: set[str], me: str) -> dict[str, Heartbeat]:
    return {p: hb for p, hb in peers.items() if p != me and p in established}


def needed(n_voters: int) -> int:
    """How many vouchers a state needs among n voters: all of them below 3, else a majority of >= 3."""
    return n_voters if n_voters < MIN_QUORUM else max(MIN_QUORUM, n_voters // 2 + 1)


def vouched_states(votes: dict[str, Heartbeat]) -> list[tuple[int, str, int]]:
    """(round, digest, vouchers) of every state that enough voters vouch for, newest first."""
    counts = Counter((hb.state_round, hb.digest) for hb in votes.values())
    need = needed(len(votes))
    return sorted(((r, d, n) for (r, d), n in counts.items() if n >= need and n > 0), reverse=True)


def outvoted(votes: dict[str, Heartbeat], my_round: int, my_digest: str) -> bool:
    """True when another state of our round is vouched for by enough voters, and by more of them
    than hold ours (us included): then ours is the odd one out."""
    mine = 1 + sum(hb.state_round == my_round and hb.digest == my_digest for hb in votes.values())
    return any(r == my_round and d != my_digest and n > mine for r, d, n in vouched_states(votes))


def acceptable(votes: dict[str, Heartbeat], round_no: int, digest: str, my_round: int, *, same_round: bool) -> bool:
    """May we adopt a downloaded state (round_no, digest)? Enough vouchers, and no rollback."""
    if round_no < my_round or (round_no == my_round and not same_round):
        return False
    return any(r == round_no and d == digest for r, d, _ in vouched_states(votes))


def fork_target(votes: dict[str, Heartbeat], my_round: int, my_digest: str) -> tuple[int, str] | None:
    """Where a lone peer goes when the swarm has split and no state has a quorum (e.g. peers that
    each led alone while the DHT was partitioned): the state held by the most voters, then the
    newest, then the smallest digest. Only a peer that no other voter agrees with moves, and
    never to an older round, so the peers converge without anyone rolling back."""
    if vouched_states(votes) or any(hb.digest == my_digest for hb in votes.values()):
        return None
    counts = Counter((hb.state_round, hb.digest) for hb in votes.values())
    if not counts:
        return None
    (r, d), _ = min(counts.items(), key=lambda kv: (-kv[1], -kv[0][0], kv[0][1]))
    return (r, d) if r >= my_round and d != my_digest else None
