"""A late opener's owner gate (issue 16, docs/protocol.md "Sealed rounds", `gate.opening`): a node
that took the round's base late (a joiner's sync) dates the round's opening from the signed time
of the roster before, as the swarm does, so a rank-1 leader whose turn came on the others' clocks
is served; a roster dated in the past moves no honest owner's turns earlier than the bound."""

from __future__ import annotations

import itertools
from dataclasses import replace

from node.round import election
from node.round.trust import omission
from node.round.trust.gate import opening
from protocol.errors import ProtocolError
from tests.test_round_protocol import CFG, play_round, swarm
from tests.test_sealed_rounds import ask, seal_of


def ranked_round(n: int = 4):
    """n peers after 3 rounds, their looks at the clock frozen (the fakes tick a second a look);
    (peers in round r's rank order, r, the signed time S of round r - 1's roster)."""
    _, _, peers = swarm(n)
    for _ in range(3):
        play_round(peers)
    for p in peers:
        p.net.ticks = itertools.repeat(0)
    r = peers[0].round + 1
    s = peers[0].ledger.rosters[r - 1].roster.time
    order = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    return sorted(peers, key=lambda p: order.index(p.id)), r, s


def announce_at(peers, t: float) -> None:
    peers[0].net.dht.clock.t = t
    for p in peers:
        p.heartbeat()
        p.announce(f"update {p.id} {p.round}".encode())


def test_a_joiner_that_synced_late_serves_a_rank_1_leader_whose_turn_came_on_the_swarms_clock():
    """The donor_dies swarm test: the joiner took the state of round r - 1 N s after its roster was
    signed and opened round r N s after the others; on its own clock the rank-1 leader's turn had
    not come, and it refused it (~26 times over 8 s). Now it dates the round from the roster."""
    ranked, r, s = ranked_round()
    rank1, joiner = ranked[1], ranked[-1]
    for p in ranked:
        p.proto.took[r - 1] = s  # the others took the roster as it was signed (frozen clocks)
    late = 4.0  # < collect_timeout
    announce_at(ranked[:-1], s + 0.5)
    joiner.net.dht.clock.t = s + late
    joiner.proto.took.pop(r - 1)  # a joiner never took that roster: it synced the state
    joiner.proto.rewound(r - 1)
    announce_at([joiner], s + late)
    envs = [p.proto.builder.announcements(r, p.digest)[p.id].envelope for p in ranked]
    came = s + election.turn(election.Slot(0, 1), CFG)  # on the swarm's clock: opened at s
    joiner.net.dht.clock.t = came - 0.5
    early = ask(rank1, joiner, r, seal_of(rank1, r, envs))
    assert isinstance(early, ProtocolError) and "turn to lead has not come" in str(early)
    joiner.net.dht.clock.t = came + 0.5  # before: refused until came + late
    assert ask(rank1, joiner, r, seal_of(rank1, r, envs)) == joiner.net.held_update(r, joiner.id)
    assert joiner.proto.opening(r, s + late) == s  # await_roster dates its attempts alike


def test_a_past_dated_roster_moves_an_honest_owners_turns_at_most_the_bound():
    """A hostile leader of round r - 1 dated its roster 60 s in the past: an owner that took it on
    time moves round r's opening at most omission.AHEAD (5 s) earlier, so rank 1 is refused until
    its turn less 5 s on that owner's clock; a joiner synced after it, at most collect_timeout."""
    ranked, r, s = ranked_round()
    rank1, owner = ranked[1], ranked[2]
    for p in ranked:
        held = p.ledger.rosters[r - 1]
        p.ledger.rosters[r - 1] = replace(held, roster=replace(held.roster, time=s - 60))  # its leader's word
        p.proto.took[r - 1] = s
    announce_at(ranked, s + 1.0)
    assert owner.proto.gate.view.opened == s - omission.AHEAD  # not s - 60
    envs = [p.proto.builder.announcements(r, p.digest)[p.id].envelope for p in ranked]
    came = s + election.turn(election.Slot(0, 1), CFG)  # the turn on an honest clock
    owner.net.dht.clock.t = came - omission.AHEAD - 0.5
    early = ask(rank1, owner, r, seal_of(rank1, r, envs))
    assert isinstance(early, ProtocolError) and "turn to lead has not come" in str(early)
    owner.net.dht.clock.t = came - omission.AHEAD + 0.5
    assert ask(rank1, owner, r, seal_of(rank1, r, envs)) == owner.net.held_update(r, owner.id)
    # a node that synced the state 30 s after it: at most collect_timeout earlier than its opening
    owner.proto.took.pop(r - 1)
    owner.net.dht.clock.t = s + 30
    owner.proto.rewound(r - 1)
    assert owner.proto.opening(r, s + 31) == s + 31 - CFG.collect_timeout


def test_the_opening_is_never_before_the_roster_nor_later_than_our_own():
    assert opening(100.0, None, 0.0, 5.0) == 100.0  # no start known: ours
    assert opening(100.0, 90.0, 88.0, 5.0) == 98.0  # 2 s late taking it: 2 s earlier
    assert opening(100.0, 90.0, 20.0, 5.0) == 95.0  # dated 70 s before: the cap
    assert opening(100.0, 90.0, 93.0, 5.0) == 100.0  # dated after we took it (ahead): ours
    assert opening(100.0, 99.0, 99.5, 30.0) == 100.0  # never later than ours
    assert opening(100.0, 100.0, 99.0, 30.0) == 99.0  # never before the roster's time
