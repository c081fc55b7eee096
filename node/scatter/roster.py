"""From a signed roster to the v3 round every member runs alike (docs/protocol.md "v3").

Pure helpers for the node (the round protocol decides with grid.uses_scatter): which of a
roster's members are reachable (may own chunks), and the Round (grid, rule, keys) each member
builds from the roster alone, so every peer derives the same one. Running it
(node/scatter/member.py Member, leader.py Leader) over the exchange (node/p2p/roundnet.py
RealNet.call) is the round protocol's, and not wired yet (docs/protocol.md "Not built yet").
"""

from __future__ import annotations

from node.outer.aggregate import Aggregator
from node.scatter.audit import Round
from node.scatter.grid import place
from node.scatter.keys import RsaChecker
from protocol import maddrs as addresses
from protocol.records import Announcement, Heartbeat, Roster


def reachable(members: list[str], peers: dict[str, Heartbeat]) -> set[str]:
    """The members others can dial (a public address or a relay in their signed heartbeat:
    protocol/maddrs.py dialable); where none is, but every member announces only loopback
    addresses (one machine: tests, a demo), all of them. A member without a heartbeat here owns
    nothing. Every peer must read the same: the leader's roster will list them (not built yet)."""
    known = {p: peers[p].maddrs for p in members if p in peers}
    out = {p for p, m in known.items() if addresses.dialable(m)}
    if not out and known and all(addresses.kind_of(list(m)) == "loopback" for m in known.values()):
        return set(known)
    return out


def scatter_round(
    envelope: dict,
    roster: Roster,
    announcements: tuple[Announcement, ...],
    reach: set[str],
    total: int,
    agg: Aggregator,
) -> Round:
    """The v3 Round of this roster (its signed `envelope`, opened, and its announcements opened,
    as node/round/ledger.py AcceptedRoster holds them): its members placed under its beacon and
    attempt (the unground beacon: no leader chose the grid), updates of `total` values reduced
    with `agg`, and the members' and leader's keys from the envelopes the roster carries (a
    board's draw is checked against the leader's). Raises ValueError when no member is reachable."""
    members = [a.peer for a in announcements]
    keys = {a.peer: env["key"] for a, env in zip(announcements, roster.entries) if isinstance(env, dict)}
    keys[roster.leader] = envelope["key"]
    grid = place(members, reach & set(members), roster.beacon, roster.attempt)
    return Round(
        run=roster.run,
        round=roster.round,
        attempt=roster.attempt,
        grid=grid,
        total=total,
        agg=agg,
        checker=RsaChecker(keys),
        committed=set(members),
    )
