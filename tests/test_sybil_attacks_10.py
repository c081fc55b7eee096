"""A crowd against the first-seals file and the withheld-relay memory (protocol 24).

1. A relay whose fetch of ours timed out is asked after the owner and the leader for 16 rounds
   (UpdateFetcher.withheld). A member whose own link carried nothing in a fetch (down, or filled by
   a crowd's many entries' copies at once: every fetch of the batch times out together) marked every
   relay it had asked, honest ones included: for 16 rounds it then asked every owner first, and each
   honest owner sent it one more copy. Now a fetch in which no copy arrived from anyone marks nobody.
2. A leader's first seals are written to the run's data dir before they are presented
   (sealed.FirstSeals). A write that failed (a full or read-only disk) raised OSError out of the
   leader's build; now it is said and the leader leads as it did before the file existed.
"""

from __future__ import annotations

import logging

from node.config import SwarmConfig
from node.round.fetch import UpdateFetcher
from node.round.trust import sealed
from protocol import signed
from protocol.kinds.sealed import Seal
from tests.fakes import new_key
from tests.test_withheld_relay import OWNERS, RUN, announcement, blob

BASE = "b" * 64
RELAYS = [f"relay{i}" for i in range(len(OWNERS))]


class Net:
    """A member's network: `down` sources accept every request and never answer; the rest serve."""

    me = "member"

    def __init__(self, down):
        self.down = down

    def held_update(self, round_no, peer):
        return None

    def keep_update(self, round_no, peer, blob):
        pass

    def fetch_many(self, jobs, timeout, on_each=None):
        return [TimeoutError("no answer") if self.down(s) else blob(q.round, q.peer) for s, q, _ in jobs]


def fetcher(net):
    return UpdateFetcher(net, RUN, SwarmConfig(collect_timeout=30.0), validate=lambda payload: None)


def sources(a):
    return [RELAYS[OWNERS.index(a.peer)], a.peer, "leader"]  # each update down another honest relay


def test_a_member_whose_own_link_carried_nothing_marks_no_relay():
    net = Net(down=lambda source: True)  # our link: nothing arrives from anyone this round
    f = fetcher(net)
    got = f.fetch([announcement(5, o) for o in OWNERS], 5, sources=sources)
    assert all(isinstance(g, TimeoutError) for g in got)
    print(f"relays marked after a round our own link carried nothing: {len(f.withheld)} of {len(RELAYS)}")
    assert f.withheld == {}  # before: all 4, each passed over for 16 rounds
    net.down = lambda source: False
    for a in (announcement(6, o) for o in OWNERS):
        assert f.order(a, sources(a), 6)[0] == RELAYS[OWNERS.index(a.peer)]  # the tree, not the owners


def test_a_relay_that_timed_out_while_others_served_is_still_passed_over():
    f = fetcher(Net(down=lambda source: source == "relay0"))
    got = f.fetch([announcement(5, o) for o in OWNERS], 5, sources=sources)
    assert got == [blob(5, o) for o in OWNERS]
    assert list(f.withheld) == ["relay0"] and f.withheld["relay0"].round == 5


def test_a_crowd_that_stalls_an_honest_relay_for_one_round_has_it_passed_over_for_2_not_16():
    """A member cannot tell an honest relay whose uplink a crowd filled for one round (copies are
    served to anyone once the roster is out, within the exchange's budgets) from a withholder.
    Before, each member whose fetch from it timed out asked it last for 16 rounds (one more copy
    from the owner a round each); now for 2, and longer only if it times out again when asked
    again (fetch.Strikes: 2, 4, 8, 16 rounds). Never the update's loss: every source is asked."""
    f = fetcher(Net(down=lambda source: source == "relay0"))
    f.fetch([announcement(5, o) for o in OWNERS], 5, sources=sources)
    a = announcement(5, OWNERS[0])
    for r in (6, 7):
        assert f.order(announcement(r, OWNERS[0]), sources(a), r) == [OWNERS[0], "leader", "relay0"]
    assert f.order(announcement(8, OWNERS[0]), sources(a), 8)[0] == "relay0"


def test_a_first_seal_that_cannot_be_written_is_said_and_the_leader_leads(tmp_path, caplog):
    key, me = new_key()
    (tmp_path / "run").write_bytes(b"a file where the run's dir should be")  # mkdir fails: as a full disk
    kept = sealed.FirstSeals(tmp_path / "run" / sealed.SEALS_FILE, me=me)
    env = signed.seal(key, Seal(run=RUN, round=3, base=BASE, leader=me, time=1.0, announcements=()))
    with caplog.at_level(logging.WARNING):
        kept[(3, BASE)] = env  # before: OSError out of RosterBuilder.build
    assert kept == {(3, BASE): env}  # presented from memory, as before the file
    assert "not written" in caplog.text
