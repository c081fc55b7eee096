"""A relay that withholds (issue 16, "delays without cost"; node/round/fetch.py `withheld`).

Members fetch each update down a relay tree rooted at its owner (node/round/relay.py). A relay
that serves its own update but accepts every request for another's and never answers it made
each member whose parent it was wait a whole fetch bound, every round, for as long as it stayed.
Now a member that saw a relay time out asks the owner and the leader before it for 2 rounds, and
twice as long each time the relay does it again when asked again, up to WITHHELD_ROUNDS (16): a
bound at rounds 1, 4, 9, 18, 35 of 40 instead of all 40. First-hand and local (no rule, no wire)."""

from __future__ import annotations

import hashlib

from node.config import SwarmConfig
from node.round.fetch import FETCH_FLOOR, WITHHELD_ROUNDS, UpdateFetcher
from protocol.messages import UpdateEnvelope
from protocol.records import Announcement

RUN = "test-0123456789ab"
OWNERS = [f"owner{i}" for i in range(4)]


class Net:
    """A member's network: the relay accepts every request and never answers (the batch's timeout
    passes, as on the real exchange); owners and the leader serve at once."""

    me = "member"

    def __init__(self):
        self.lost = 0.0  # seconds spent waiting on the relay

    def held_update(self, round_no: int, peer: str) -> None:
        return None

    def keep_update(self, round_no: int, peer: str, blob: bytes) -> None:
        pass

    def fetch_many(self, jobs, timeout: float, on_each=None) -> list:
        if any(source == "relay" for source, _, _ in jobs):
            self.lost += timeout
        return [TimeoutError("no answer") if s == "relay" else blob(q.round, q.peer) for s, q, _ in jobs]


def blob(round_no: int, owner: str) -> bytes:
    return UpdateEnvelope(run=RUN, round=round_no, peer=owner, codec="raw", payload=owner.encode()).encode()


def announcement(round_no: int, owner: str) -> Announcement:
    b = blob(round_no, owner)
    digest = hashlib.sha256(b).hexdigest()
    return Announcement(
        run=RUN, round=round_no, peer=owner, nbytes=len(b), sha256=digest, tokens=1, base="a" * 64, time=0.0
    )


def seconds_lost(rounds: int, *, remember: bool) -> list[float]:
    net = Net()
    fetcher = UpdateFetcher(net, RUN, SwarmConfig(collect_timeout=30.0), validate=lambda payload: None)
    if not remember:
        fetcher.order = lambda ann, found, round_no: found  # the member before: its tree's order every round
    out = []
    for r in range(1, rounds + 1):
        before = net.lost
        got = fetcher.fetch([announcement(r, o) for o in OWNERS], r, sources=lambda a: ["relay", a.peer, "leader"])
        assert got == [blob(r, o) for o in OWNERS]  # every update arrives either way
        out.append(net.lost - before)
    return out


def test_a_withholding_relay_costs_a_member_a_bound_at_growing_intervals_not_every_round():
    before, after = seconds_lost(40, remember=False), seconds_lost(40, remember=True)
    lost = [r + 1 for r, s in enumerate(after) if s]
    print(f"rounds of 40 that lost a bound to the relay: before {sum(s > 0 for s in before)}; after {lost}")
    assert all(s >= FETCH_FLOOR for s in before)  # every round
    assert lost == [1, 4, 9, 18, 35]  # asked last for 2, 4, 8, then 16 rounds (WITHHELD_ROUNDS) each time


def test_a_relay_that_timed_out_is_asked_after_the_owner_and_the_leader_then_again():
    fetcher = UpdateFetcher(Net(), RUN, SwarmConfig(), validate=lambda payload: None)
    ann = announcement(10, "owner")
    assert fetcher.order(ann, ["relay", "owner", "leader"], 10) == ["relay", "owner", "leader"]
    fetcher.timed_out(10, [("relay", ann), ("owner", ann)])  # an owner's own silence is `unserved`'s
    assert list(fetcher.withheld) == ["relay"]
    for r in (11, 12):
        assert fetcher.order(ann, ["relay", "owner", "leader"], r) == ["owner", "leader", "relay"]
    assert fetcher.order(ann, ["relay", "owner", "leader"], 13) == ["relay", "owner", "leader"]
    fetcher.timed_out(13, [("relay", ann)])  # again when asked again: twice as long
    assert fetcher.order(ann, ["relay", "owner", "leader"], 17)[0] == "owner"
    assert fetcher.order(ann, ["relay", "owner", "leader"], 18)[0] == "relay"
    assert WITHHELD_ROUNDS == 16
