"""Upload once (node/round/relay.py, bench/upload.py): the relay tree, and one round's
copies counted per peer."""

from __future__ import annotations

import pytest

from bench.upload import one_round, reduce_scatter, run_upload_bench
from node.round import relay

RUN = "test-0123456789ab"


def members(n: int) -> list[str]:
    return [f"p{i:03d}" for i in range(n)]


@pytest.mark.parametrize("n", [2, 3, 4, 9, 33])
@pytest.mark.parametrize("fanout", [1, 2, 4])
def test_every_fetcher_asks_a_holder_that_got_it_earlier(n, fanout):
    peers, leader = members(n), "p001" if n > 1 else "p000"
    the_ring = relay.ring(RUN, 7, leader, peers)
    for owner in peers:
        order = relay.fetch_order(the_ring, owner)
        assert set(order) == set(peers) - {owner, leader}
        children: dict[str, int] = {}
        for i, me in enumerate(order, start=1):
            src = relay.parent_at(order, i, owner, leader, fanout)
            assert src == owner or order.index(src) < order.index(me)  # it holds the copy first
            children[src] = children.get(src, 0) + 1
        if owner != leader:
            assert children.get(owner, 0) <= 1 and all(c <= fanout for c in children.values())
            assert leader not in children  # the leader's uplink is not the start of every tree


@pytest.mark.parametrize("n", [3, 5, 12])
def test_every_member_takes_every_position_once_a_round(n):
    """The Latin square: over the non-leaders' updates, each relay is at each position once."""
    peers, leader = members(n), "p000"
    the_ring = relay.ring(RUN, 2, leader, peers)
    for me in the_ring:
        positions = sorted(relay.fetch_order(the_ring, o).index(me) for o in the_ring if o != me)
        assert positions == list(range(n - 2))


def test_sources_fall_back_to_the_owner_then_the_leader():
    peers = members(6)
    owner, leader = "p002", "p000"
    the_ring = relay.ring(RUN, 3, leader, peers)
    order = relay.fetch_order(the_ring, owner)
    first, second = order[0], order[1]
    assert relay.sources(the_ring, owner, leader, first, 2) == [owner, leader]
    assert relay.sources(the_ring, owner, leader, second, 2) == [first, owner, leader]
    assert relay.sources(the_ring, owner, leader, second, 0) == [owner, leader]  # relaying off
    assert relay.sources(the_ring, owner, leader, "stranger", 2) == [owner, leader]  # not in the roster
    assert relay.sources(the_ring, owner, leader, leader, 2) == [owner]  # (the leader holds them all)
    assert relay.sources(the_ring, leader, leader, second, 2) == [leader]  # the leader's own: direct


def test_the_ring_changes_from_round_to_round():
    """Nobody picks its place: the shuffle is a hash of the round."""
    peers = members(12)
    assert len({tuple(relay.ring(RUN, r, "p000", peers)) for r in range(1, 6)}) == 5


@pytest.mark.parametrize("n", [4, 8, 64])
def test_the_owner_uploads_twice_whatever_n_but_the_mean_peer_still_n_minus_1(n):
    direct, tree = one_round(n, 0), one_round(n, 2)
    assert direct["own_update_copies_up"] == n - 1 and tree["own_update_copies_up"] == 2  # leader + tree root
    # verify-all: every member downloads n-1 updates, so the swarm uploads n(n-1) copies
    assert direct["mean_copies_up"] == tree["mean_copies_up"] == tree["copies_down"] == n - 1
    assert tree["max_copies_up"] == n - 1  # and spread evenly: nobody uploads more than without relaying
    assert tree["hops_after_roster"] <= 1 + (n - 2).bit_length()
    assert reduce_scatter(n)["mean_copies_up"] < 2


def test_the_upload_bench_writes_its_rows(tmp_path):
    rows = run_upload_bench([4, 8], [2], 1000, str(tmp_path / "u.json"), say=lambda s: None)
    assert {(r["peers"], r["scheme"]) for r in rows} == {
        (n, s) for n in (4, 8) for s in ("direct", "relay", "reduce-scatter")
    }
    assert next(r for r in rows if r["peers"] == 8 and r["scheme"] == "relay")["own_update_bytes_up"] == 2000
    assert (tmp_path / "u.json").exists()
