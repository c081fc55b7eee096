"""`swarmtrain bench upload`: who uploads what in one round, for N peers up to thousands.

The exchange of one round, counted copy by copy with the node's own relay tree
(node/round/relay.py), for three ways of moving it:

- `direct` (relay_fanout = 0): the leader fetches every update from its owner, and every other
  member fetches it from the owner too: the owner uploads N-1 copies;
- `relay` (the default, relay_fanout = F): the owner uploads twice, to the leader and to the
  first fetcher of its tree; the copies to the other members go down the tree, each fetcher
  passing on at most F (the leader sends its own update to every member);
- `reduce-scatter` (a what-if, not built): each peer owns 1/N of the coordinates, receives
  everyone's slice of them, aggregates it and sends the aggregate slice back. Upload per peer
  is flat in N, but no peer sees the other updates: a slice owner could lie about its
  aggregate, which verify-all (every peer re-deriving the state from every update) rules out.

Upload and download per peer are in copies of one update (times --update-bytes for bytes).
In `direct` and `relay` every member downloads the N-1 other updates, so the swarm uploads
N(N-1) copies whoever relays them: relaying moves the copies off the owner's link (its own
upload is two copies, whatever N), it cannot make the mean peer's upload flat.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from node.round import relay

RUN = "bench-upload"


def one_round(n: int, fanout: int) -> dict:
    """Copies each peer uploads in one round of n members (fanout 0: direct from the owner)."""
    members = [f"peer{i:05d}" for i in range(n)]
    leader = members[0]  # which member leads changes no count but its own: the ranking is a hash
    up, own, depth = Counter(), Counter(), 0
    the_ring = relay.ring(RUN, 1, leader, members)
    for owner in members:
        if owner != leader:
            up[owner] += 1
            own[owner] += 1  # to the leader, which builds the roster from it
        order = relay.fetch_order(the_ring, owner)
        for i, _ in enumerate(order, start=1):
            src = relay.parent_at(order, i, owner, leader, fanout) if fanout else owner
            up[src] += 1
            own[src] += src == owner
            depth = max(depth, 1 if owner == leader else _hops(i, fanout))
    ups = [up[m] for m in members]
    return {
        "peers": n,
        "scheme": "relay" if fanout else "direct",
        "fanout": fanout,
        # the owners but the leader (which sends its own to every member: it relays nothing)
        "own_update_copies_up": max((own[m] for m in members if m != leader), default=0),
        "mean_copies_up": statistics.mean(ups),
        "max_copies_up": max(ups),
        "copies_down": n - 1,
        "hops_after_roster": depth,
    }


def _hops(position: int, fanout: int) -> int:
    """Transfers from the owner to the fetcher at `position` (direct: one)."""
    if fanout == 0:
        return 1
    hops = 1
    while position > 1:
        position, hops = (position - 2) // fanout + 1, hops + 1
    return hops


def reduce_scatter(n: int) -> dict:
    """The what-if: slices of 1/n to their owners, aggregate slices back (dense updates)."""
    per = 2 * (n - 1) / n
    return {
        "peers": n,
        "scheme": "reduce-scatter",
        "fanout": None,
        "own_update_copies_up": (n - 1) / n,
        "mean_copies_up": per,
        "max_copies_up": per,
        "copies_down": per,
        "hops_after_roster": 1,
    }


def run_upload_bench(peers: list[int], fanouts: list[int], update_bytes: int, json_path: str, say=print) -> list[dict]:
    rows = []
    for n in peers:
        for r in [one_round(n, f) for f in [0, *[f for f in fanouts if f > 0]]] + [reduce_scatter(n)]:
            r["mean_bytes_up"] = round(r["mean_copies_up"] * update_bytes)
            r["max_bytes_up"] = round(r["max_copies_up"] * update_bytes)
            r["own_update_bytes_up"] = round(r["own_update_copies_up"] * update_bytes)
            r["bytes_down"] = round(r["copies_down"] * update_bytes)
            rows.append(r)
            label = f"{r['scheme']} f={r['fanout']}" if r["scheme"] == "relay" else r["scheme"]
            say(
                f"  N={n:<5} {label:<14} own update up {r['own_update_copies_up']:>6.2f} copies  "
                f"mean up {r['mean_copies_up']:>8.2f}  max up {r['max_copies_up']:>7.2f}  "
                f"down {r['copies_down']:>7.2f}  hops {r['hops_after_roster']}"
            )
    Path(json_path).write_text(json.dumps({"update_bytes": update_bytes, "rows": rows}, indent=2))
    return rows
