"""Many free identities against the verified chain (node/round/trust/chain.py, catchup.py): a state is
taken only at the end of rosters verified from the genesis or from the peer's own ledger, votes
come from peers the chain established, and forks are chosen by established weight.
Fake network (tests/fakes.py), real round protocol, ledger and validators."""

from __future__ import annotations

import copy
from dataclasses import replace

from bench.byzantine import sybilnet
from node.round.ledger import Ledger, read_file, verify
from node.round.trust import chain
from node.round.trust.catchup import MOST_DONORS, Catchup, Head
from tests.fakes import FakeDHT
from tests.test_round_protocol import BASE0, CFG, RUN, Peer, play_round, swarm

Z = "0" * 64  # the all-zero model the attackers want adopted


def catchup_of(p: Peer, ledger: Ledger | None = None) -> Catchup:
    return Catchup(p.net, ledger or p.ledger, p.proto.rules, chain.genesis(RUN, BASE0))


def head_of(p: Peer) -> Head:
    return Head(p.round, p.digest)


def adopt(p: Peer, target) -> None:
    """What StateSync.adopt does to the ledger (the state's download is the exchange's)."""
    p.ledger.extend(target.ancestor, list(target.rosters))
    p.proto.rewound(target.head.round)
    p.round, p.digest = target.head


def sybil_crowd(dht, registry, n: int, *, round_no: int = 99, digest: str = Z) -> list[Peer]:
    """Fresh keys, live signed heartbeats claiming (round_no, digest); each serves `invented` rosters."""
    crowd = [Peer(dht, registry) for _ in range(n)]
    for s in crowd:
        s.round, s.digest = round_no, digest
        s.heartbeat()
    return crowd


def invented_roster(crowd: list[Peer], round_no: int = 99, digest: str = Z) -> dict:
    """A correctly signed roster at an invented round: random prev, base Z, Sybil entries. Every
    Sybil stores it and answers `ledger` requests with it."""
    return sybilnet.invented_roster(crowd, round_no, digest, run=RUN)


def beat(peers: list[Peer]) -> None:
    """Fresh heartbeats (a second later: the DHT keeps a subkey's latest expiration)."""
    peers[0].net.dht.clock.t += 1
    for p in peers:
        p.heartbeat()


def asked_for_state(peers: list[Peer]) -> int:
    return sum(op == "state" for p in peers for op, _ in p.net.requests)


def test_an_empty_ledger_is_not_captured_by_an_invented_round(tmp_path):
    """Five Sybil heartbeats at round 99 and a self-signed roster there (the issue's capture):
    a joiner, a peer that just synced and a peer resumed from its ledger file all end at the
    honest head, and only honest peers are named as donors."""
    dht, registry, peers = swarm(5)
    honest, late = peers[:4], peers[4]
    for i, p in enumerate(peers):
        p.ledger.path = tmp_path / f"ledger{i}.jsonl"
    play_round(peers)  # `late` trains round 1, then is off
    for _ in range(2):
        play_round(honest)
    crowd = sybil_crowd(dht, registry, 5)
    invented_roster(crowd)
    beat(honest)
    ids = {p.id for p in honest}

    joiner = Peer(dht, registry)
    target = catchup_of(joiner).plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == head_of(honest[0])
    assert target.ancestor == 0 and [a.roster.round for a in target.rosters] == [1, 2, 3]
    assert set(target.donors) <= ids and not target.fork
    adopt(joiner, target)
    beat([joiner])
    synced = catchup_of(joiner)  # just synced: nothing better to move to
    assert synced.plan(joiner.proto.peers(), head_of(joiner)) is None
    assert joiner.proto.candidates(joiner.proto.peers(), joiner.digest, joiner.round) == ids  # knows the chain

    resumed = catchup_of(late, Ledger.load(late.ledger.path))  # its ledger file ends at round 1
    target = resumed.plan(late.proto.peers(), head_of(late))
    assert target is not None and target.head == head_of(honest[0]) and target.ancestor == 1
    assert asked_for_state(crowd) == 0
    assert sum(len(s.net.requests) for s in crowd) <= MOST_DONORS  # lying hints cost a bounded number of asks


def test_two_captured_peers_cannot_pull_the_rest_over():
    """Two established peers that hold Z at round 99 (captured, serving the invented roster):
    the others verify nothing that leads there, so they stay, however many hold it."""
    dht, registry, peers = swarm(4)
    for _ in range(3):
        play_round(peers)
    captured = peers[2:]
    crowd = sybil_crowd(dht, registry, 3) + captured
    for p in captured:
        p.round, p.digest = 99, Z
    invented_roster(crowd)
    beat(peers)
    for p in peers[:2]:
        look = catchup_of(p)
        assert look.worth_a_look(p.proto.peers(), head_of(p))  # established peers hold another state...
        for _ in range(3):  # two holders asked a look: five holders, three looks
            assert look.plan(p.proto.peers(), head_of(p)) is None  # ...which no verified chain reaches
        assert not look.worth_a_look(p.proto.peers(), head_of(p))  # and no holder is asked about it again


def split(peers: list[Peer], sides: list[list[Peer]], rounds: list[int]) -> None:
    """Each side trains `rounds` rounds cut off from the others (its own copy of the DHT and
    transport), then the network heals: the DHT copies merge, newest record per subkey."""
    shared, registry = peers[0].net.dht, peers[0].net.registry
    alone = [FakeDHT(clock=shared.clock, validator=shared.validator, data=copy.deepcopy(shared.data)) for _ in sides]
    for side, dht, n in zip(sides, alone, rounds):
        nets = {p.id: p.net for p in side}
        for p in side:
            p.net.dht, p.net.registry = dht, nets
        for _ in range(n):
            play_round(side)
    for dht in alone:
        for key, values in dht.data.items():
            merged = shared.data.setdefault(key, {})
            for sub, (value, exp) in values.items():
                if sub not in merged or merged[sub][1] < exp:
                    merged[sub] = (value, exp)
    for p in peers:
        p.net.dht, p.net.registry = shared, registry
    beat(peers)


def test_a_healed_split_becomes_one_chain_by_established_weight():
    """2|2 after three rounds together, one half three rounds ahead of the other: the halves
    agree which moves (equal weight: the smaller hash of the first roster after the split),
    never by who is newest; the other half stays."""
    dht, registry, peers = swarm(4)
    for _ in range(3):
        play_round(peers)
    a, b = peers[:2], peers[2:]
    split(peers, [a, b], [1, 3])
    moves = {}
    for p in peers:
        target = catchup_of(p).plan(p.proto.peers(), head_of(p))
        moves[p.id] = target
        if target is not None:
            assert target.fork and target.ancestor == 3
    movers = {pid for pid, t in moves.items() if t is not None}
    assert movers in ({p.id for p in a}, {p.id for p in b})  # exactly one half moves
    for p in peers:
        if moves[p.id] is not None:
            adopt(p, moves[p.id])
    assert len({head_of(p) for p in peers}) == 1
    play_round(peers)  # and they train on as one
    assert len({head_of(p) for p in peers}) == 1


def test_a_lighter_branch_moves_whoever_is_ahead_and_sybils_weigh_nothing():
    """3|2: the pair trains three rounds ahead, and five Sybil heartbeats hold its head; the
    pair still moves to the three's branch, and the three stay."""
    dht, registry, peers = swarm(5)
    for _ in range(3):
        play_round(peers)
    three, two = peers[:3], peers[3:]
    split(peers, [three, two], [1, 3])
    sybil_crowd(dht, registry, 5, round_no=two[0].round, digest=two[0].digest)
    for p in three:
        assert catchup_of(p).plan(p.proto.peers(), head_of(p)) is None
    for p in two:
        target = catchup_of(p).plan(p.proto.peers(), head_of(p))
        assert target is not None and target.head == head_of(three[0]) and target.fork


def test_voters_are_peers_the_chain_established():
    """Four Sybils named in one roster are no voters (established_rounds = 2): holding other
    heads, they cannot keep a joiner from the honest head, which needs a quorum of the three."""
    dht, registry, honest = swarm(3)
    for _ in range(2):
        play_round(honest)
    crowd = [Peer(dht, registry) for _ in range(4)]
    for s in crowd:
        s.round, s.digest, s.ledger = honest[0].round, honest[0].digest, Ledger()
    play_round(honest + crowd)  # the crowd contributes once and is named in round 3's roster
    for _ in range(2):
        play_round(honest)
    assert not {s.id for s in crowd} & chain.eligible(honest[0].ledger, 2)
    for s in crowd:
        s.round, s.digest = 5, "3" * 64  # they point elsewhere
    beat(honest + crowd)
    joiner = Peer(dht, registry)
    target = catchup_of(joiner).plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == head_of(honest[0])


def test_the_ledger_keeps_its_way_to_a_synced_state(tmp_path):
    """extend() keeps what proves the state (once, a sync emptied the ledger); the file, with
    the branch switch in it, verifies as one chain; `ledger` answers come from the file."""
    dht, registry, peers = swarm(4)
    for i, p in enumerate(peers):
        p.ledger.path = tmp_path / f"ledger{i}.jsonl"
    for _ in range(2):
        play_round(peers)
    a, b = peers[:2], peers[2:]
    split(peers, [a, b], [1, 2])
    for p in peers:
        target = catchup_of(p).plan(p.proto.peers(), head_of(p))
        if target is not None:
            adopt(p, target)
    for p in peers:
        accepted, problems = verify([line.envelope for line in read_file(p.ledger.path)])
        assert problems == [] and accepted[-1].roster.result == p.digest
        assert [x.roster.round for x in accepted] == list(range(1, p.round + 1))
        again = Ledger.load(p.ledger.path)
        assert [e["body"] for e in again.envelopes_from(1)] == [x.envelope["body"] for x in accepted]


def test_a_source_that_never_answers_costs_a_fetch_bound_not_the_collect():
    """Every batch of update fetches is bounded by FETCH_FLOOR plus its largest update at a slow
    home uplink's rate (fetch.py), not collect_timeout: an announcer that never serves, or a relay
    that withholds, costs a round that bound."""
    from node.round.fetch import FETCH_FLOOR, FETCH_RATE

    cfg = replace(CFG, collect_timeout=40.0, round_timeout=120.0)
    _, _, peers = swarm(4, cfg=cfg)
    play_round(peers)
    bound = FETCH_FLOOR + max(len(b) for p in peers for b in p.net.updates.values()) / FETCH_RATE
    made = [t for p in peers for t in p.net.timeouts]
    assert made and max(made) <= bound < cfg.collect_timeout  # seconds, where a batch once waited 40


def test_a_fork_from_the_genesis_is_settled_by_the_organizers_head():
    """Two halves that each led their own first rounds (a young run: nobody is established, so
    fork choice has nobody to weigh by) merge on the branch the organizer's witness followed;
    without a witness they would stay apart rather than move on a hash someone could grind."""
    dht, registry, peers = swarm(4)
    a, b = peers[:2], peers[2:]
    split(peers, [a, b], [2, 2])
    organizer = Peer(dht, registry)
    organizer.round, organizer.digest = head_of(a[0])
    organizer.heartbeat(active=False)  # the witness followed a's branch
    pinned = {
        p.id: Catchup(p.net, p.ledger, p.proto.rules, chain.genesis(RUN, BASE0), organizer=organizer.id) for p in peers
    }
    for p in a:
        assert not pinned[p.id].worth_a_look(p.proto.peers(), head_of(p))  # on the witness's branch
        assert pinned[p.id].plan(p.proto.peers(), head_of(p)) is None
        assert catchup_of(p).plan(p.proto.peers(), head_of(p)) is None
    for p in b:
        # no peer b's ledger names holds a's head: the witness's head off b's chain is the trigger
        assert pinned[p.id].worth_a_look(p.proto.peers(), head_of(p))
        assert catchup_of(p).plan(p.proto.peers(), head_of(p)) is None  # unpinned: nobody to weigh by
        target = pinned[p.id].plan(p.proto.peers(), head_of(p))
        assert target is not None and target.fork and target.ancestor == 0 and target.head == head_of(a[0])
