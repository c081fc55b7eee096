"""Votes that cannot be stuffed: only established, signed, live peers vouch for a state.

A voter vouches for (state_round, digest) through its signed heartbeat. A state is accepted
when a majority of at least 3 voters (all of them, when fewer than 3 exist) vouch for it, and
never when it is older than ours. Made-up peer ids are not voters: they never appeared in the
rosters of the ledger.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from protocol.records import Heartbeat

MIN_QUORUM = 3


class StateId(NamedTuple):
    """A state of the run, as heartbeats vouch for it."""

    round: int
    digest: str


class Vouched(NamedTuple):
    """A state that enough voters vouch for."""

    round: int
    digest: str
    vouchers: int


def voters(peers: dict[str, Heartbeat], established: set[str], me: str) -> dict[str, Heartbeat]:
    return {p: hb for p, hb in peers.items() if p != me and p in established}


def needed(n_voters: int) -> int:
    """How many vouchers a state needs among n voters: all of them below 3, else a majority of >= 3."""
    return n_voters if n_voters < MIN_QUORUM else max(MIN_QUORUM, n_voters // 2 + 1)


def vouched_states(votes: dict[str, Heartbeat]) -> list[Vouched]:
    """Every state that enough voters vouch for, newest first."""
    counts = Counter(StateId(hb.state_round, hb.digest) for hb in votes.values())
    need = needed(len(votes))
    return sorted((Vouched(r, d, n) for (r, d), n in counts.items() if n >= need and n > 0), reverse=True)


def outvoted(votes: dict[str, Heartbeat], my_round: int, my_digest: str) -> bool:
    """True when another state of our round is vouched for by enough voters, and by more of them
    than hold ours (us included): then ours is the odd one out. Also when a vouched state is at
    least two rounds ahead and no voter holds ours: we are stranded on a fork (left alone after
    a split) and would otherwise lead rounds by ourselves for ever. One round behind is the
    normal state of a peer still applying a round, or of one whose round is in flight."""
    mine = 1 + sum(hb.state_round == my_round and hb.digest == my_digest for hb in votes.values())
    vouched = vouched_states(votes)
    if any(r == my_round and d != my_digest and n > mine for r, d, n in vouched):
        return True
    return mine == 1 and any(r >= my_round + 2 for r, _, _ in vouched)


def acceptable(votes: dict[str, Heartbeat], round_no: int, digest: str, my_round: int, *, same_round: bool) -> bool:
    """May we adopt a downloaded state (round_no, digest)? Enough vouchers, and no rollback."""
    if round_no < my_round or (round_no == my_round and not same_round):
        return False
    return any(r == round_no and d == digest for r, d, _ in vouched_states(votes))


def fork_target(votes: dict[str, Heartbeat], my_round: int, my_digest: str) -> StateId | None:
    """Where a peer goes when the swarm has split and no state has a quorum (e.g. two halves that
    each trained on while the network was cut): the state held by the most peers, us counted,
    then the newest, then the smallest digest. A peer moves only when that state is not its own
    and not older than its own, so the peers converge without anyone rolling back: of two equal
    halves, the one behind moves (at equal rounds, the larger digest's). A state exactly one
    round ahead is left alone: it is most likely the successor of ours (we are still applying
    that round, or it is in flight); a fork one round ahead is resolved a round later, when
    the rounds are equal or two apart."""
    if vouched_states(votes):
        return None
    mine = StateId(my_round, my_digest)
    counts = Counter(StateId(hb.state_round, hb.digest) for hb in votes.values())
    counts[mine] += 1
    target = min(counts, key=lambda state: (-counts[state], -state.round, state.digest))
    return target if target != mine and (target.round == my_round or target.round >= my_round + 2) else None
