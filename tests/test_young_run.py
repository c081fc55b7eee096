"""The organizer-led young run (issue 16, docs/trust-model.md step 2), over the fake network.

Until `bootstrap_peers` peers other than the organizer are established on the chain, only the
organizer leads (node/round/trust/chain.py: young, leader_problem): its witness applies and
leads, trains nothing (RoundProtocol(trains=False)) and lists every update it fetched. Before,
every live heartbeat was a candidate while nobody was established, and a crowd of fresh keys
that led the first rounds could list only its own updates: four Sybils were the only
established peers within a few rounds, and only they led from then on."""

from __future__ import annotations

import threading
from dataclasses import replace

from node.p2p.validators import RunValidator
from node.round import election
from node.round.hooks import Hooks
from node.round.ledger import AcceptedRoster, Ledger
from node.round.protocol import RoundProtocol
from node.round.trust import chain
from node.round.trust.catchup import Catchup, Head
from protocol import keys
from protocol.errors import ProtocolError
from tests.fakes import FakeDHT, in_step, new_key
from tests.test_round_protocol import BASE0, CFG, RUN, NoSleep, Peer
from tests.test_sybil_attacks import Z, grow, hold, serve

YOUNG = replace(CFG, bootstrap_peers=3)  # the default: three peers besides the organizer


class YoungSwarm:
    """An organizer's witness, 2 honest volunteers and 4 Sybils, all told who the organizer is."""

    def __init__(self, cfg=YOUNG):
        self.dht = FakeDHT()
        self.dht.validator = RunValidator(RUN, heartbeat_ttl=cfg.heartbeat_ttl, round_ttl=600.0)
        self.registry: dict = {}
        key = new_key()
        self.organizer = self.member(cfg, key[1], key=key, trains=False)
        self.honest = [self.member(cfg, key[1]) for _ in range(2)]
        self.sybils = [self.member(cfg, key[1]) for _ in range(4)]

    def member(self, cfg, organizer: str, *, key=None, trains: bool = True) -> Peer:
        p = Peer(self.dht, self.registry, key, cfg=cfg)
        p.proto = RoundProtocol(  # what node/peer/wiring.py and witness.py build
            p.net,
            RUN,
            cfg,
            p.key,
            p.ledger,
            Hooks(validate=lambda x: None, result=p.result),
            max_bytes=1 << 20,
            organizer=organizer,
            trains=trains,
        )
        return p

    @property
    def volunteers(self) -> list[Peer]:
        return self.honest + self.sybils

    def beat(self, *, organizer_online: bool = True) -> None:
        self.dht.clock.t += 2
        for p in self.volunteers:
            p.heartbeat()
        if organizer_online:
            self.organizer.heartbeat(active=False)  # the witness: inactive, it announces nothing

    def take(self, r: int) -> dict[str, AcceptedRoster]:
        """Every peer's roster of round `r`, the candidates awaiting theirs in rank order (so each
        leads in its turn), the rest after them."""
        everyone = [self.organizer, *self.volunteers]
        leaders = [p for p in everyone if p.id in (p.proto.candidates(p.proto.peers(), p.digest, p.round) or ())]
        judge = self.honest[0].proto
        rank = election.ranking(judge.beacon(r), 0, {p.id for p in leaders}, tickets=judge.tickets(r))
        taken, now = {}, []
        for p in everyone:  # a swarm awaits at once: here one after another (bench/fakenet.py in_step)
            in_step(p, now)
        for p in sorted(everyone, key=lambda p: rank.index(p.id) if p in leaders else len(rank)):
            now[:] = [p]
            accepted = p.proto.await_roster(r, p.digest, p.round, NoSleep())
            assert accepted is not None, f"{p.id[:8]} got no roster of round {r}"
            taken[p.id] = accepted
        now.clear()  # the owners' gates are their own again
        return taken


def censoring_roster(sybil: Peer, crowd: list[Peer], round_no: int) -> AcceptedRoster:
    """A Sybil leads the round with the crowd's updates only (honest ones left out), correctly
    linked on its own ledger and ranked under the chain's beacon, and stores it."""
    accepted = sybil.proto.builder.build(
        round_no,
        sybil.digest,
        sybil.ledger.prev_hash(round_no),
        {s.id for s in crowd},
        1,
        beacon=sybil.proto.beacon(round_no),
        attempt=0,
    )
    sybil.net.store(keys.roster_key(RUN, round_no), sybil.id, accepted.envelope, ttl=600.0)
    return accepted


def play(s: YoungSwarm, *, attack: bool = True) -> dict[str, AcceptedRoster]:
    """One round: the volunteers announce; (attack) every Sybil stores a roster of Sybil updates
    only; then whoever may lead leads (the organizer first, as it waits for nobody), and every
    peer takes a roster, gathers and applies it."""
    s.beat()
    for p in s.volunteers:
        p.announce(f"update {p.id} {p.round}".encode())
    r = s.honest[0].round + 1
    if attack:
        for sybil in s.sybils:
            censoring_roster(sybil, s.sybils, r)
    taken = s.take(r)
    for p in [s.organizer, *s.volunteers]:
        p.finish(taken[p.id], p.proto.gather(taken[p.id]))
    return taken


def test_sybils_never_lead_a_young_run_and_cannot_keep_the_honest_peers_out():
    """4 Sybils and 2 honest peers. Each young round every Sybil stores a roster listing Sybil
    updates only: every member refuses them, and the chain check too; the organizer's rosters
    list every honest volunteer (a Sybil that led a roster of its own released its update under
    its own seal first, so it gives the organizer no receipt and is left out), so after
    established_rounds (2) rounds both honest peers are established, whatever the Sybils did.
    Two rounds without the attack establish the Sybils too; then (6 established besides the
    organizer) the run is grown: the organizer is no candidate any more, and established peers lead."""
    s = YoungSwarm()
    for r in (1, 2):
        assert all(p.proto.young() for p in (s.organizer, *s.volunteers))
        taken = play(s)
        assert {a.roster.leader for a in taken.values()} == {s.organizer.id}
        # a Sybil that built its own roster released its update to its own seal first (protocol 18):
        # the organizer gets no receipt from it and leaves it out, which costs that Sybil alone
        assert {a.peer for a in taken[s.honest[0].id].announcements} == {p.id for p in s.honest}
        for member in s.honest:  # every member saw the Sybils' rosters and refused them
            assert {(r, sybil.id) for sybil in s.sybils} <= member.proto.refused
    honest_ids = {p.id for p in s.honest}
    for p in (s.organizer, *s.volunteers):
        established = p.ledger.established(YOUNG.established_rounds)
        assert established == honest_ids and p.proto.young()  # 2 of bootstrap_peers (3): still young
    for _ in (3, 4):  # the Sybils stop leading rosters of their own: the organizer lists everyone
        taken = play(s, attack=False)
        assert {a.roster.leader for a in taken.values()} == {s.organizer.id}
        assert {a.peer for a in taken[s.honest[0].id].announcements} == {p.id for p in s.volunteers}
    for p in (s.organizer, *s.volunteers):
        established = p.ledger.established(YOUNG.established_rounds)
        assert honest_ids <= established and s.organizer.id not in established
        assert not p.proto.young()  # 6 established besides the organizer (rounds to establish: 2)
    taken = play(s, attack=False)  # round 5: a grown run
    leader = taken[s.honest[0].id].roster.leader
    assert leader != s.organizer.id and len({a.hash for a in taken.values()}) == 1
    cands = s.organizer.proto.candidates(s.organizer.proto.peers(), BASE0, 4)
    assert s.organizer.id not in (cands or set())


def test_the_chain_check_refuses_a_young_round_led_by_anyone_but_the_organizer():
    """A Sybil's roster of round 2 (on the organizer's roster 1) and a Sybil chain from the
    genesis fail `chain.check` under the young rule (catch-up, the witness and the audit use
    it); the same Sybil chain verifies with bootstrap_peers = 0 (the opt-out: today's rule)."""
    s = YoungSwarm()
    play(s, attack=False)
    rules = s.honest[0].proto.rules
    window = Ledger(rosters=dict(s.honest[0].ledger.rosters))
    s.beat()
    for sybil in s.sybils:
        sybil.announce(b"round 2 " + sybil.id.encode())
    env = censoring_roster(s.sybils[0], s.sybils, 2).envelope
    try:
        chain.check(env, chain.after(window.rosters[1]), window, rules)
        raise AssertionError("a Sybil-led young roster passed the chain check")
    except ProtocolError as e:
        assert "not the organizer" in str(e)
    ok = chain.check(s.organizer.ledger.rosters[1].envelope, chain.genesis(RUN, BASE0), Ledger(), rules)
    assert ok.roster.leader == s.organizer.id

    crowd_chain = grow(s.sybils[0], s.sybils, None, 6)
    young = chain.verify([a.envelope for a in crowd_chain], chain.genesis(RUN, BASE0), Ledger(), rules)
    assert young.rosters == [] and "round 1" in young.problem and "not the organizer" in young.problem
    opted_out = replace(rules, bootstrap_peers=0)
    verified = chain.verify([a.envelope for a in crowd_chain], chain.genesis(RUN, BASE0), Ledger(), opted_out)
    assert len(verified.rosters) == 6


def test_a_crowd_chain_from_the_genesis_cannot_capture_a_joiner_whose_organizer_is_offline():
    """The capture before the first checkpoint (tests/test_sybil_attacks.py, open with
    bootstrap_peers = 0): 7 fresh keys grow a chain from the genesis and hold its head, the
    organizer is offline and no checkpoint exists yet. Its first roster was not led by the
    organizer, so a joiner's catch-up refuses it; the honest chain, organizer-led while young,
    verifies and is taken."""
    s = YoungSwarm()
    for _ in range(3):
        play(s, attack=False)
    crowd = [s.member(YOUNG, s.organizer.id) for _ in range(7)]
    serve(crowd, grow(crowd[0], crowd, None, 3))
    hold(crowd, Head(3, Z))
    s.dht.clock.t += 20  # the organizer's heartbeat expires: it is offline
    s.beat(organizer_online=False)
    joiner = s.member(YOUNG, s.organizer.id)
    look = Catchup(joiner.net, joiner.ledger, joiner.proto.rules, chain.genesis(RUN, BASE0), organizer=s.organizer.id)
    target = look.plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == Head(s.honest[0].round, s.honest[0].digest)
    assert set(target.donors) <= {p.id for p in s.volunteers}


def test_a_young_run_whose_organizer_is_offline_stalls():
    """The price of the rule: with the organizer offline no volunteer leads a young round (each
    waits round_timeout and gives the round up), however many announce."""
    s = YoungSwarm()
    s.beat(organizer_online=False)
    for p in s.volunteers:
        p.announce(b"update")
    assert all(not p.proto.candidates(p.proto.peers(), BASE0, 0) for p in s.volunteers)
    assert s.honest[0].proto.await_roster(1, BASE0, 0, NoSleep()) is None


def test_the_witness_leads_once_the_updates_are_in_without_an_update_of_its_own():
    """A leader that trains nothing must not wait for its own update (collect_timeout a round):
    the organizer leads round 1 in its first look once every live volunteer announced; counted
    as one that trained would wait (for an update it never sends), it polls on."""
    for trains in (False, True):
        s = YoungSwarm()
        s.organizer.proto.trains = trains
        s.beat()
        for p in s.volunteers:
            p.announce(b"u " + p.id.encode())
        stop = CountingStop()
        accepted = s.organizer.proto.await_roster(1, BASE0, 0, stop)
        assert accepted is not None and accepted.roster.leader == s.organizer.id
        assert (stop.waits > 0) == trains  # (the fake clock moves a second a look: it led at collect_timeout)


class CountingStop(threading.Event):
    """A stop event that counts the polls a waiting peer makes (the fake clock moves by itself)."""

    waits = 0

    def wait(self, timeout=None):
        self.waits += 1
        return self.is_set()
