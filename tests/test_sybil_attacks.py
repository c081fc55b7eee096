"""Attacks with many free identities against step 1 of the trust design (the verified chain:
node/round/trust/chain.py, catchup.py, ledger.py, lead.py), found by playing the attacker. Each
docstring says the attack, its cost to the attacker and the rule that stops it. `test_open_*`
tests pass while an attack still WORKS (docs/security.md lists them as open): when a later step
closes one, its test fails and is turned into a defence test, as the others were. Fake
network (tests/fakes.py), real round protocol, ledger, chain and validators, on
default rules (established_rounds = 2, MOST_DONORS = 6, FORGET_FAILED = 256)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

import msgpack
import pytest

from node.round import election
from node.round.ledger import AcceptedRoster, Ledger
from node.round.trust import catchup as catchup_module
from node.round.trust import chain
from node.round.trust import reader as reader_module
from node.round.trust.anchor import Anchor
from node.round.trust.catchup import MOST_DONORS, Catchup, Head
from protocol import keys, signed, signing
from protocol.admission.rule import Admission
from protocol.kinds.checkpoint import checkpoint_hash
from protocol.records import Announcement, Heartbeat, Roster
from tests.fakes import sealed_roster
from tests.test_round_protocol import BASE0, RUN, Peer, play_round, swarm
from tests.test_work import PUZZLE, STOP

Z = "0" * 64  # the state the attacker wants adopted (its result digest: any state it likes)


# --------------------------------------------------------------------------------- helpers
def catchup_of(p: Peer, ledger: Ledger | None = None) -> Catchup:
    return Catchup(p.net, ledger or p.ledger, p.proto.rules, chain.genesis(RUN, BASE0))


def head_of(p: Peer) -> Head:
    return Head(p.round, p.digest)


def beat(peers: list[Peer]) -> None:
    """Fresh heartbeats a second later (the DHT keeps a subkey's latest expiration)."""
    peers[0].net.dht.clock.t += 1
    for p in peers:
        p.heartbeat()


def ledger_requests(peers: list[Peer]) -> int:
    return sum(op == "ledger" for p in peers for op, _ in p.net.requests)


def roster_body(leader: Peer, round_no: int, prev: str, base: str, result: str, beacon: str, crowd, time: float):
    """A roster of `round_no` led by `leader` listing signed announcements of `crowd` (junk
    updates: chain.check never fetches them), unsigned yet."""
    entries = tuple(
        signed.seal(
            s.key,
            Announcement(
                run=RUN, round=round_no, peer=s.id, nbytes=64, sha256="1" * 64, tokens=100, base=base, time=time
            ),
        )
        for s in sorted(crowd, key=lambda s: s.id)
    )
    roster = Roster(
        run=RUN,
        round=round_no,
        leader=leader.id,
        prev=prev,
        base=base,
        result=result,
        time=time,
        entries=entries,
        reveal=signing.sign_unique(leader.key, election.reveal_message(RUN, round_no)),
        beacon=beacon,
        cutoff=time,  # what its leader makes of the chain's floor (node/round/trust/omission.py)
        credit=(64,) * len(entries),  # a crowd's own chain credits the crowd in full: nobody recomputes it
    )
    # the crowd holds every key of its chain: it seals and receipts its own rosters (protocol 18)
    return sealed_roster(roster, {s.id: s.key for s in [*crowd, leader]})


def accepted_of(env: dict) -> AcceptedRoster:
    roster, anns = signed.open_roster(env)
    return AcceptedRoster(env, roster, tuple(anns))


def grow(leader: Peer, crowd, after: AcceptedRoster | None, rounds: int, result: str = Z) -> list[AcceptedRoster]:
    """`rounds` correctly linked rosters after `after` (None: from the genesis), all led by
    `leader`, all listing `crowd`, all ending at `result`. Milliseconds of signing, offline."""
    out: list[AcceptedRoster] = []
    link = chain.genesis(RUN, BASE0) if after is None else chain.after(after)
    for i in range(rounds):  # a minute apart: each roster's cutoff passes the chain's floor
        body = roster_body(
            leader, link.round, link.prev, link.base, result, link.beacon, crowd, leader.net.now() + 60 * i
        )
        out.append(accepted_of(signed.seal(leader.key, body)))
        link = chain.after(out[-1])
    return out


def serve(peers: list[Peer], rosters: list[AcceptedRoster]) -> None:
    """These peers answer `ledger` requests from a chain holding `rosters`."""
    book = Ledger(rosters={a.roster.round: a for a in rosters})
    for p in peers:
        p.net.ledger, p.net.ledger_override = book, None


def hold(peers: list[Peer], head: Head) -> None:
    """Signed heartbeats claiming `head` (a claim: nobody checks it)."""
    for p in peers:
        p.round, p.digest = head
    beat(peers)


def exchange_like(p: Peer) -> None:
    """Make p's transport hand a donor's failure back as a result, as Exchange.fetch_many does
    (asyncio.gather(..., return_exceptions=True)), instead of raising it in the fake."""
    registry = p.net.registry

    def fetch_many(jobs, timeout, on_each=None):
        out = []
        for peer, request, _expect in jobs:
            other = registry.get(peer)
            try:
                other.requests.append((request.op, request.round))
                blob = other.answer(request)
                out.append(blob if blob is not None else ConnectionRefusedError("refused"))
            except Exception as e:  # what the real exchange returns in the list
                out.append(e)
        return out

    p.net.fetch_many = fetch_many


# ------------------------------------------------------------------------------ the attacks
def test_open_a_sybil_chain_from_the_genesis_captures_a_joiner_before_the_first_checkpoint():
    """Attack: five fresh keys sign, offline, a two-roster chain from the genesis (roster 1:
    prev GENESIS, the round-0 state, beacon(1), anyone may lead while nobody is established;
    roster 2 lists the same five, who are then 'established' on their own chain), both ending
    at Z, and heartbeat (2, Z). The honest run is mature (four established peers, three
    rounds) but has no checkpoint yet. A joiner with the organizer offline compares the heads
    of one look by the checkpoints their chains carry: neither carries one, so the head with
    the most holders (5 > 4) wins, and the Sybils are the voters of their own chain.
    Cost: honest-live-peers + 1 keys, 2 rosters (~12 signatures), heartbeats; no GPU, no update.
    Stopped while the organizer is online (its witness's pin: test below) and, organizer offline,
    once the swarm's chain is past its first checkpoint (next test). Open only with
    bootstrap_peers = 0 (this module's CFG: the opt-out), before the first checkpoint
    (checkpoint_rounds, 64 by default); at the default the organizer-led young run refuses the
    crowd's first roster (tests/test_young_run.py::
    test_a_crowd_chain_from_the_genesis_cannot_capture_a_joiner_whose_organizer_is_offline).
    Severity: high for that window (a joiner starts from an attacker-chosen state)."""
    dht, registry, honest = swarm(4)
    for _ in range(3):
        play_round(honest)
    assert chain.eligible(honest[0].ledger, 2) == {p.id for p in honest}  # not a young run

    crowd = [Peer(dht, registry) for _ in range(5)]
    fake = grow(crowd[0], crowd, None, 2)
    serve(crowd, fake)
    hold(crowd, Head(2, Z))
    beat(honest)

    joiner = Peer(dht, registry)
    target = catchup_of(joiner).plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == Head(2, Z) and target.ancestor == 0
    assert set(target.donors) <= {s.id for s in crowd}
    assert ledger_requests(honest) == 1  # the honest head was verified too, and passed over


def anchored(peers: list[Peer], organizer: Peer) -> None:
    """What node/peer/wiring.py sets up: each peer keeps the organizer's checkpoints (its anchor;
    its rules then check carried ones) and, leading, carries the newest in its rosters."""
    for p in peers:
        p.ledger.anchor = Anchor(None, run_id=RUN, organizer=organizer.id)
        p.proto.builder.carry = lambda r, p=p: p.ledger.anchor.carry(r, p.ledger, p.net, p.proto.peers())


def witness_signs(organizer: Peer, source: Peer, every: int) -> dict:
    """The organizer's witness (node/peer/witness.py), its chain that of `source`: signs the due
    checkpoint, serves it (`checkpoint` RPC) and heartbeats `cp`; returns its envelope."""
    book = organizer.ledger.anchor = organizer.ledger.anchor or Anchor(None, run_id=RUN, organizer=organizer.id)
    assert book.sign_due(organizer.key, source.ledger, every=every, now=organizer.net.now())
    organizer.net.checkpoints[book.round] = book.envelope
    held = source.ledger.rosters[max(source.ledger.rosters)].roster
    hb = Heartbeat(
        run=RUN,
        peer=organizer.id,
        name="organizer",
        round=held.round + 1,
        state_round=held.round,
        digest=held.result,
        device="witness",
        maddrs=(),
        time=organizer.net.now(),
        active=False,
        cp=(book.round, checkpoint_hash(book.envelope)),
    )
    organizer.net.store(keys.peers_key(RUN), organizer.id, signed.seal(organizer.key, hb), 8.0)
    return book.envelope


def checkpointed_swarm(n: int = 3, rounds: int = 3, every: int = 2):
    """n honest peers play `rounds` rounds; the organizer's witness checkpoints round `every`,
    and the leaders of the next rounds carry it. Then the organizer goes offline."""
    dht, registry, honest = swarm(n)
    organizer = Peer(dht, registry)
    anchored(honest, organizer)
    for r in range(1, rounds + 1):
        play_round(honest)
        if r == every:
            witness_signs(organizer, honest[0], every)
    dht.clock.t += 20  # the organizer's heartbeat expires: it is offline
    return dht, registry, honest, organizer


def test_a_sybil_chain_from_the_genesis_loses_to_a_checkpointed_chain():
    """The attack above, past the swarm's first checkpoint, with the organizer offline: the
    swarm's roster of round 3 carries the organizer's checkpoint of round 2, which the
    crowd cannot sign (node/round/trust/anchor.py). A joiner compares the heads of its look and takes
    the one whose chain carries the newest checkpoint; the crowd's chain carries none (and its
    roster 2 contradicts the checkpoint). The crowd has more holders than the swarm."""
    dht, registry, honest, organizer = checkpointed_swarm()
    assert all(p.ledger.anchor.round == 2 for p in honest)  # every peer keeps what it verified
    crowd = [Peer(dht, registry) for _ in range(7)]
    serve(crowd, grow(crowd[0], crowd, None, 2))
    hold(crowd, Head(2, Z))
    beat(honest)

    joiner = Peer(dht, registry)
    anchored([joiner], organizer)
    look = Catchup(joiner.net, joiner.ledger, joiner.proto.rules, chain.genesis(RUN, BASE0), organizer=organizer.id)
    target = look.plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == head_of(honest[0]) and target.ancestor == 0
    assert set(target.donors) <= {p.id for p in honest}
    joiner.ledger.extend(target.ancestor, list(target.rosters))
    assert joiner.ledger.anchor.round == 2  # the joiner keeps the checkpoint it took


def test_a_genesis_fork_with_a_ground_hash_moves_no_member(tmp_path):
    """Attack: ONE fresh key signs a chain from the genesis (it may lead rounds 1-2 alone, and
    is established on its own chain from round 3), grinding roster 1's `time` until its body
    hash is below the honest roster 1's hash (expected a handful of SHA-256s: no signature per
    try), and heartbeats a head one round past the honest one. Any member that plans (after a
    failed round, or on restart: initial_state syncs when any heartbeat is ahead) meets the
    branch at ancestor 0, a fork; Catchup.acceptable weighs it among
    chain.eligible(empty ledger) = {} (nobody is established before round 1), so both weights
    are 0 and the tie goes to the smaller (ground) hash: the member leaves the whole honest
    chain for Z, and its ledger file then loads as the Sybil chain (accepted.switches drops the
    honest rosters). Works on every member of a run still holding roster 1 (< 64 rounds).
    Cost: 1 key, ~4 rosters, a few SHA-256s (grinding 20 bits: ~1 M hashes, seconds).
    Stopped by: Catchup.acceptable never moves to a fork weighed among nobody (the peers
    established at the ancestor; at the genesis there are none), so the tie-break hash an
    attacker can grind decides nothing there. Was critical (one identity moved members)."""
    dht, registry, honest = swarm(4)
    for i, p in enumerate(honest):
        p.ledger.path = tmp_path / f"ledger{i}.jsonl"
    for _ in range(3):
        play_round(honest)
    honest_first = honest[0].ledger.rosters[1].hash

    sybil = Peer(dht, registry)
    link = chain.genesis(RUN, BASE0)
    t = sybil.net.now()
    body = roster_body(sybil, 1, link.prev, link.base, Z, link.beacon, [sybil], t)
    tries = 0
    while hashlib.sha256(msgpack.packb(body.to_wire(), use_bin_type=True)).hexdigest() >= honest_first:
        tries += 1
        t += 0.001
        body = replace(body, time=t)
    first = accepted_of(signed.seal(sybil.key, body))
    assert first.hash < honest_first
    fake = [first, *grow(sybil, [sybil], first, 3)]  # rounds 1-4
    serve([sybil], fake)
    hold([sybil], Head(4, Z))
    beat(honest)

    for p in honest:  # a member after a failed round, on its own state
        assert catchup_of(p).plan(p.proto.peers(), head_of(p)) is None
    p = honest[0]
    resumed = Ledger.load(p.ledger.path)  # the same on restart, from its ledger file
    assert catchup_of(p, resumed).plan(p.proto.peers(), head_of(p)) is None
    assert tries < 10**6


def test_an_established_sybil_cannot_extend_the_chain_to_its_state():
    """Attack: one Sybil trains honestly for a few rounds, so honest leaders credit it in rosters
    of 3 leaders: it is established for the next ~60 rounds. It then signs rosters R+1 and R+2 on the honest
    head (prev, base, beacon and its reveal all correct; chain.check never recomputes a
    result) listing itself and 6 fresh keys, both ending at Z. In the window Catchup.acceptable
    judges (`ahead`: our ledger plus THEIR rosters) the fresh keys are now named twice, so they
    are voters, and they hold (R+2, Z): a quorum. worth_a_look fires for every member (an
    established peer points two rounds ahead), plan returns the extension (not a fork), and
    StateSync.adopt would take Z from a Sybil donor on every honest peer.
    Cost: one identity that contributes 2 updates, then honest-live-peers + 2 fresh keys and
    two rosters; no GPU.
    Stopped by: voters are the live peers established on the chain we already hold
    (Catchup.acceptable: chain.eligible(before)), so the fresh keys its own rosters name do not
    vote. Was critical (set the state of the whole swarm)."""
    dht, registry, honest = swarm(4)
    mole = Peer(dht, registry)
    while len({a.roster.leader for a in honest[0].ledger.rosters.values()}) < 3:  # credited by 3 leaders
        play_round(honest + [mole])
    play_round(honest)  # the mole stops contributing; it stays established
    assert mole.id in honest[0].ledger.established(2)
    top = honest[0].ledger.rosters[honest[0].round]

    crowd = [Peer(dht, registry) for _ in range(6)] + [mole]
    fake = grow(mole, crowd, top, 2)
    serve(crowd, list(honest[0].ledger.rosters.values()) + fake)
    hold(crowd, Head(top.roster.round + 2, Z))
    beat(honest)

    for p in honest:
        look = catchup_of(p)
        assert look.worth_a_look(p.proto.peers(), head_of(p))  # StateSync.outvoted() -> resync(force)
        assert look.plan(p.proto.peers(), head_of(p)) is None


def test_an_endless_ledger_answer_costs_one_answer():
    """Attack: one Sybil heartbeats a head at round 2**40 - 1 (records.py allows it) and answers
    every `ledger` request with N junk 'rosters' whose body only names the next rounds (never
    signed: Catchup.rosters checks nothing but the round numbers, and collects every round
    first..head BEFORE chain.verify reads any). One plan() by a member after a failed round
    makes thousands of requests to this one donor and holds every envelope in memory: here
    2,000 requests (then the donor stops) and 100,000 envelopes; with answers sent just under
    reader.LEDGER_TIMEOUT (10 s) each that is 5.5 hours of a stalled sync loop per look, and with
    4 MiB answers, 8 GB held. MOST_DONORS bounds donors, not requests or bytes.
    Cost: one key and a heartbeat; bandwidth for the answers.
    Stopped by: Catchup.walk verifies each answer as it comes (junk is dropped at the first
    roster that fails), at most MOST_REQUESTS answers and MOST_ROUNDS rounds per catch-up.
    Was high (a stalled sync loop; memory)."""
    dht, registry, honest = swarm(3)
    for _ in range(3):
        play_round(honest)
    liar = Peer(dht, registry)
    hold([liar], Head(2**40 - 1, Z))
    beat(honest)
    most, batch = 2000, 50

    def answer(request):
        if request.op != "ledger" or len(liar.net.requests) > most:
            return None
        junk = [
            {"body": msgpack.packb({"round": request.round + i, "prev": "x"}), "key": b"", "sig": b""}
            for i in range(batch)
        ]
        return msgpack.packb(junk, use_bin_type=True)

    liar.net.answer = answer
    held = []
    original = reader_module.decode_rosters

    def counting(payload):
        out = original(payload)
        held.append(len(out))
        return out

    victim = honest[0]
    reader_module.decode_rosters = counting
    try:
        assert catchup_of(victim).plan(victim.proto.peers(), head_of(victim)) is None
    finally:
        reader_module.decode_rosters = original
    assert ledger_requests([liar]) <= 2 and sum(held) <= 2 * batch  # one answer read, then dropped


def fresh_heads(dht, registry, look: int, holders: int = 2) -> list[Peer]:
    """Fresh keys heartbeat 3 new heads (`holders` each) at higher rounds; they serve no ledger."""
    crowd = []
    for h in range(3):
        pair = [Peer(dht, registry) for _ in range(holders)]
        for s in pair:  # no ledger: refused, like a donor that answers nothing
            s.net.ledger = None
        hold(pair, Head(50 + look, hashlib.sha256(f"{look} {h}".encode()).hexdigest()))
        crowd += pair
    return crowd


def test_a_crowd_of_fresh_heads_cannot_starve_a_joiner_while_the_organizer_is_online():
    """The attack below, with the organizer's witness live. Stopped by Catchup.pin_chain: a joiner
    first asks the witness for the chain to its head (not one of the MOST_DONORS asks) and takes
    that head from its holders, under the usual quorum and pin rules. When the swarm has moved past
    the witness's head (it lags a look), the witness's chain still names the established peers, so
    their heads are asked before the crowd's, whatever the crowd's holder counts."""
    dht, registry, honest = swarm(3)
    for _ in range(2):
        play_round(honest)
    organizer = Peer(dht, registry)
    serve([organizer], list(honest[0].ledger.rosters.values()))  # the witness's ledger (its `ledger` RPC)
    organizer.round, organizer.digest = head_of(honest[0])
    organizer.heartbeat(active=False)
    joiner = Peer(dht, registry)
    look = Catchup(joiner.net, joiner.ledger, joiner.proto.rules, chain.genesis(RUN, BASE0), organizer=organizer.id)
    crowd = []
    for n in range(3):
        crowd += fresh_heads(dht, registry, n)
        beat(honest)
        organizer.heartbeat(active=False)
        target = look.plan(joiner.proto.peers(), Head(0, BASE0))
        assert target is not None and target.head == head_of(honest[0])
        assert set(target.donors) <= {p.id for p in honest}
    assert ledger_requests(crowd) == 0 and ledger_requests([organizer]) >= 3
    play_round(honest)  # the swarm moves on; the witness still heartbeats round 2
    crowd += fresh_heads(dht, registry, 9, holders=4)  # more holders than the honest head: first by count
    beat(honest)
    organizer.heartbeat(active=False)
    target = look.plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == head_of(honest[0]) and target.head.round == 3
    assert ledger_requests(crowd) == 0


def paid_swarm(n: int):
    """swarm(n) whose run asks admission work (tests/test_work.py's PUZZLE): each peer announces
    and heartbeats its solved proof."""
    dht, registry, honest = swarm(n)
    for p in honest:
        p.proto.admission = p.proto.builder.admission = Admission(PUZZLE)
        p.proto.admission.proof = solved(p)
    return dht, registry, honest


def solved(p: Peer) -> tuple:
    return tuple(PUZZLE.solve(signing.public_der(p.key), STOP, first=0))


def test_a_crowd_of_fresh_heads_no_longer_starves_a_joiner_whose_organizer_is_offline(monkeypatch):
    """Attack: each look, 6 fresh keys heartbeat 3 new heads (2 holders each, as many as the
    honest head has, at a higher round: plan's order is holders, then round) and refuse the
    `ledger` request. A joiner whose organizer is offline (no witness to ask first: the test
    above) knows no established peer; it asked them first, 3 heads x 2 donors = MOST_DONORS
    asks, and plan() returned None before ever asking the honest peers, every look: the joiner
    started from round 0, outside the swarm (was open, medium: liveness of joiners).
    Stopped by (protocol 11): heartbeats carry the peer's admission proof; such a joiner asks
    first the holders whose proof it checked (stamped, then solved for seed(0); at most
    MOST_PROOFS scrypt evaluations a look), and a paid donor whose head it did not take is
    `spent`. Free keys now reach the honest head on the first look. A crowd holding K solved
    proofs burns K / MOST_DONORS looks (here K = 12: 2 looks, the 3rd reaches the honest head),
    each proof minutes of a core at the defaults instead of a 40 ms key; with the default check
    budget, stamped proofs that keep the honest ones out of the draw add ceil(stamped / 6) looks
    at most (a stamp: seconds of a core each). Stays open: past epoch 0 a fresh joiner cannot
    check the honest peers' renewed proofs (it knows seed(0) only), so they rank as free."""
    dht, registry, honest = paid_swarm(2)
    for _ in range(2):
        play_round(honest)
    joiner = Peer(dht, registry)
    rules = replace(joiner.proto.rules, admission=Admission(PUZZLE))
    look = Catchup(joiner.net, joiner.ledger, rules, chain.genesis(RUN, BASE0))
    crowd = fresh_heads(dht, registry, 0)  # free keys: no proof in their heartbeats
    beat(honest)
    target = look.plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == head_of(honest[0])  # the first look
    assert ledger_requests(honest) >= 1 and len(crowd) == 6

    # K = 12 solved proofs, 6 fresh paid keys a look (every proof checked: the budget aside)
    monkeypatch.setattr(catchup_module, "MOST_PROOFS", 100)
    joiner = Peer(dht, registry)
    look = Catchup(joiner.net, joiner.ledger, rules, chain.genesis(RUN, BASE0))
    paid = [Peer(dht, registry) for _ in range(12)]
    for s in paid:
        s.proto.admission, s.net.ledger = Admission(PUZZLE), None  # no ledger to serve
        s.proto.admission.proof = solved(s)
    burned = 0
    for n in range(4):
        batch = paid[6 * n : 6 * n + 6] or paid[:6]  # then the spent keys again
        for h in range(3):
            hold(batch[2 * h : 2 * h + 2], Head(60 + n, hashlib.sha256(f"paid {n} {h}".encode()).hexdigest()))
        beat(honest)
        target = look.plan(joiner.proto.peers(), Head(0, BASE0))
        if target is not None:
            break
        burned += 1
    assert target is not None and target.head == head_of(honest[0])
    assert burned == 12 // MOST_DONORS and set(look.spent) == {s.id for s in paid}


def test_a_joiner_takes_only_a_chain_through_the_organizers_head():
    """The same Sybil chain from the genesis, with the organizer online: its witness
    (node/peer/witness.py) heartbeats the head of the chain it followed, and a joiner takes only
    a chain through that head (Catchup.pinned), never asking the organizer for a state."""
    dht, registry, honest = swarm(4)
    for _ in range(3):
        play_round(honest)
    organizer = Peer(dht, registry)
    crowd = [Peer(dht, registry) for _ in range(7)]  # more holders than the honest head
    fake = grow(crowd[0], crowd, None, 2)
    serve(crowd, fake)
    hold(crowd, Head(2, Z))
    beat(honest)
    organizer.round, organizer.digest = head_of(honest[0])
    organizer.heartbeat(active=False)  # what the witness publishes: inactive, the head it verified

    joiner = Peer(dht, registry)
    look = Catchup(joiner.net, joiner.ledger, joiner.proto.rules, chain.genesis(RUN, BASE0), organizer=organizer.id)
    target = look.plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == head_of(honest[0])
    assert organizer.id not in target.donors and set(target.donors) <= {p.id for p in honest}
    assert catchup_of(joiner).plan(joiner.proto.peers(), Head(0, BASE0)).head == Head(2, Z)  # without the pin


def test_a_joiner_waits_for_a_witness_that_has_no_head_yet():
    """Attack: the crowd's chain from the genesis, stored while the organizer's witness is still
    at round 0 (it lags a young run by a few rounds). The witness's pin then told nothing and a
    joiner took the crowd's chain (seen in the crowd swarm test, only saved there by the crowd's
    fake digest). Stopped by: a live witness without a head pins nothing yet: wait for it."""
    dht, registry, honest = swarm(4)
    for _ in range(3):
        play_round(honest)
    organizer = Peer(dht, registry)
    crowd = [Peer(dht, registry) for _ in range(7)]
    serve(crowd, grow(crowd[0], crowd, None, 2))
    hold(crowd, Head(2, Z))
    beat(honest)
    organizer.heartbeat(active=False)  # the witness, live, still at round 0
    joiner = Peer(dht, registry)
    look = Catchup(joiner.net, joiner.ledger, joiner.proto.rules, chain.genesis(RUN, BASE0), organizer=organizer.id)
    assert look.plan(joiner.proto.peers(), Head(0, BASE0)) is None  # neither chain: no head to pin yet
    # (once the witness has a head, the joiner takes the chain through it: the test above)


@pytest.mark.parametrize("failure", ["dropped stream", "unreachable donor"])
def test_a_failing_donor_never_crashes_the_planner(failure):
    """Attack: a Sybil heartbeats a head ahead of the swarm and, when asked for `ledger`,
    closes the stream mid-frame (the real read_response raises asyncio.IncompleteReadError, an
    EOFError) or is simply unreachable (hivemind's stream_open raises ControlFailure, a
    P2PDaemonError). Exchange.fetch_many returns that exception, Catchup.rosters raises it, and
    Catchup.branch_of catches only ProtocolError, OSError and TimeoutError: it escapes plan(),
    StateSync.fetch_state, resync/initial_state and Volunteer.train (nothing catches it there):
    the node stops. Any member after a failed round, any restarted peer and any joiner.
    Cost: one key and one heartbeat (an honest peer that just left, still within its
    heartbeat TTL, does it by accident).
    Stopped by: Catchup.branch_of counts any exception from a donor as that donor's failure.
    Was high (a remote crash of any peer that plans)."""
    from hivemind.p2p.p2p_daemon_bindings.utils import ControlFailure

    dht, registry, honest = swarm(3)
    for _ in range(2):
        play_round(honest)
    liar = Peer(dht, registry)
    hold([liar], Head(9, Z))
    beat(honest)
    error = asyncio.IncompleteReadError(b"", 4) if failure == "dropped stream" else ControlFailure("failed to dial")

    def answer(request):
        raise error

    liar.net.answer = answer
    victim = honest[0]
    exchange_like(victim)
    look = catchup_of(victim)
    assert look.plan(victim.proto.peers(), head_of(victim)) is None
    assert any(donor == liar.id for donor, _ in look.failed)


def test_a_silent_established_sybil_costs_a_round_only_the_grace():
    """Attack: a Sybil contributes a few updates, so it is established (2 rounds' credit from 3
    leaders in the 64-round window) for the next ~60 rounds, then keeps a live heartbeat on the round's state
    and never announces again. lead.collected puts it in the `core` (peers the chain
    established), so the grace rule never starts: the rank-0 leader waits the full
    collect_timeout (30 s at defaults) every round, where without it the leader goes GRACE_FLOOR
    (2 s) after the honest peers are in. A fresh, non-established silent key is only granted the
    grace (control). Repeat 2 updates every ~62 rounds to keep it going.
    Cost: 2 updates per 62 rounds and a heartbeat; one identity (several only add nothing).
    Stopped by: the core is last round's members (RoundProtocol._collected): an established
    peer silent since is granted the grace, like any stranger. Was low-medium (throughput)."""
    dht, registry, honest = swarm(3)
    mole = Peer(dht, registry)
    while len({a.roster.leader for a in honest[0].ledger.rosters.values()}) < 3:  # credited by 3 leaders
        play_round(honest + [mole])
    play_round(honest)  # the mole goes silent; its heartbeat stays
    stranger = Peer(dht, registry)  # control: silent, never established
    for s in (mole, stranger):
        s.round, s.digest = head_of(honest[0])
    beat(honest + [mole, stranger])
    r = honest[0].round + 1
    for p in honest:
        p.announce(f"update {p.id} {r}".encode())
    leader = honest[0].proto
    announced = set(leader.builder.announcements(r, honest[0].digest))
    assert announced == {p.id for p in honest}

    without_mole = {k: v for k, v in leader.peers().items() if k != mole.id}
    leader.core_in.clear()
    assert not leader._collected(r, without_mole, announced, 0.5)  # the core is in at 0.5 s...
    assert leader._collected(r, without_mole, announced, 2.5)  # ...the stranger costs the grace only

    leader.core_in.clear()
    peers = leader.peers()
    assert mole.id in peers and mole.id in leader.ledger.established(2)
    assert not leader._collected(r, peers, announced, 0.5)
    assert leader._collected(r, peers, announced, 2.5)  # the grace, not the whole collect_timeout
