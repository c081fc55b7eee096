"""Upload once: who fetches a roster's update from whom (docs/protocol.md, "Upload once").

Every peer re-derives the state from every update of the roster (that is what lets it refuse a
lying leader), so each update must reach every member. Fetched from its owner, an update leaves
the owner once per member: N-1 copies on the slowest link of a home connection. Instead the
copies spread down a tree rooted at the owner, which sends two copies whatever N: one to the
leader (which needs it to build the roster) and one to the first fetcher:

    position 1 fetches from the owner; position i >= 2 from position (i - 2) // fanout + 1

The fetchers are the members but the owner and the leader, in a ring shuffled once a round by a
hash of (run, round, peer); each update's order starts after its owner on the ring. So every
member takes each position exactly once over the round's updates (a Latin square): every
member relays as much as any other, and uploads N-1 copies in all, its own two included, the
same as without relaying but spread over the swarm's uplinks instead of the owners' alone.
The leader, which relays nothing, sends its own update to every member directly (its N-1).
The tree is about log_fanout(N) deep. (A tree rooted at the leader would save each owner its
second copy but put N-1 copies on the leader's uplink at the start of every round; with
1 Mbit/s uplinks that made rounds slower than fetching from the owners.)

A copy from anyone is as good as the owner's: its size and SHA-256 are pinned by the owner's
signed announcement.
"""

from __future__ import annotations

import hashlib


def ring(run_id: str, round_no: int, leader: str, members: list[str] | set[str]) -> list[str]:
    """The round's relays (members but the leader), shuffled by a hash nobody chooses."""

    def rank(peer: str) -> bytes:
        return hashlib.sha256(f"{run_id}|{round_no}|{peer}".encode()).digest()

    return sorted((p for p in set(members) if p != leader), key=rank)


def fetch_order(the_ring: list[str], owner: str) -> list[str]:
    """The update's fetchers in tree order (positions 1, 2, ...): the ring from after its owner."""
    if owner not in the_ring:  # the leader's own update: every position is the leader's child
        return list(the_ring)
    j = the_ring.index(owner)
    return the_ring[j + 1 :] + the_ring[:j]


def parent_at(order: list[str], position: int, owner: str, leader: str, fanout: int) -> str:
    """The holder the fetcher at `position` (1-based) fetches from: the owner for the first
    (for every position when the owner is the leader), else an earlier fetcher, each of which
    has at most `fanout` children."""
    if position == 1 or owner == leader:
        return owner
    return order[(position - 2) // fanout]


def sources(the_ring: list[str], owner: str, leader: str, me: str, fanout: int) -> list[str]:
    """Where `me` asks for `owner`'s update, in turn: its parent in the tree (fanout > 0), then
    the owner, then the leader. A peer outside the roster (left out, or late) is a leaf nobody
    waits on: it asks the owner, then the leader. `the_ring`: `ring(...)` of the round."""
    first = None
    if fanout > 0 and me != leader:
        order = fetch_order(the_ring, owner)
        first = parent_at(order, order.index(me) + 1, owner, leader, fanout) if me in order else None
    return [p for p in dict.fromkeys([first, owner, leader]) if p is not None and p != me]
