"""A relay that withholds (issue 16, "delays without cost"; node/round/fetch.py `withheld`).

Members fetch each update down a relay tree rooted at its owner (node/round/relay.py). A relay
that serves its own update but accepts every request for another's and never answers it made
each member whose parent it was wait a whole fetch bound, every round, for as long as it stayed.
Now a member that saw a relay time out asks the owner and the leader before it for WITHHELD_ROUNDS
rounds: one bound per member, then none. First-hand and local (no rule, no wire)."""

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


def test_a_withholding_relay_costs_a_member_one_fetch_bound_not_one_a_round():
    before, after = seconds_lost(12, remember=False), seconds_lost(12, remember=True)
    print(f"seconds lost a round: before {before}; after {after}")
    assert all(s >= FETCH_FLOOR for s in before)  # every round
    assert after[0] >= FETCH_FLOOR and not any(after[1:])  # once
    again = seconds_lost(WITHHELD_ROUNDS + 2, remember=True)
    assert again[WITHHELD_ROUNDS + 1] >= FETCH_FLOOR  # then asked first again: an honest relay gets its turn back


def test_a_relay_that_timed_out_is_asked_after_the_owner_and_the_leader_then_again():
    fetcher = UpdateFetcher(Net(), RUN, SwarmConfig(), validate=lambda payload: None)
    ann = announcement(10, "owner")
    assert fetcher.order(ann, ["relay", "owner", "leader"], 10) == ["relay", "owner", "leader"]
    fetcher.timed_out(10, [("relay", ann), ("owner", ann)])  # an owner's own silence is `unserved`'s
    assert fetcher.withheld == {"relay": 10}
    assert fetcher.order(ann, ["relay", "owner", "leader"], 11) == ["owner", "leader", "relay"]
    assert fetcher.order(ann, ["relay", "owner", "leader"], 10 + WITHHELD_ROUNDS + 1) == ["relay", "owner", "leader"]
