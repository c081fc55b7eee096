"""The organizer's witness in a grown run (node/peer/witness.py follow_chain), over the fake
network with v3 rounds (tests/test_v3_rounds.py's peers and in-memory reduce-scatter).

A v3 round gives its aggregate to its members only, and the witness trains nothing: it cannot
apply such a round. Before, it resynced after each, downloading the whole state from a donor
every round. Now, while the run is grown, it follows the chain without the state: its catch-up
verifies the rosters from its ledger (the `ledger` RPC only) and its heartbeat names that head,
the pin joiners take. Young again, it leads on the state at that head."""

from __future__ import annotations

import threading
from dataclasses import replace

import torch

from node.peer.witness import chain_head, follow_chain
from node.round.hooks import Hooks, Outcome
from node.round.protocol import RoundProtocol
from node.round.trust import chain
from node.round.trust.catchup import Catchup, Head
from protocol import keys, signed
from protocol.records import Heartbeat
from tests.fakes import digest_of
from tests.test_v3_rounds import BASE0, CFG, RUN, TOTAL, Peer, swarm

YOUNG = replace(CFG, bootstrap_peers=3)


def organized(n: int):
    """n volunteers (v3 from 4 entries) and the organizer's witness, all told who the organizer is."""
    dht, bus, peers = swarm(n + 1)
    witness, volunteers = peers[0], peers[1:]
    for p in peers:
        trains = p is not witness
        hooks = p.proto.hooks
        if not trains:  # the witness: verify-all hooks only, as node/peer/witness.py builds it
            hooks = Hooks(validate=lambda x: None, result=lambda pl, t, w=p: Outcome(digest_of(pl, w.digest)))
        scatter = p.scatter if trains else None
        kw = {"scatter": scatter} if scatter is not None else {}
        p.proto = RoundProtocol(
            p.net, RUN, YOUNG, p.key, p.ledger, hooks, 1 << 20, organizer=witness.id, trains=trains, **kw
        )
        p.net.ledger = p.ledger  # served by the `ledger` RPC
    return dht, witness, volunteers


def witness_beat(w: Peer) -> Head:
    """The witness's heartbeat: inactive, naming the head of its verified chain."""
    head = chain_head(w.ledger, Head(w.round, w.digest))
    hb = Heartbeat(run=RUN, peer=w.id, name="organizer", round=head.round + 1, state_round=head.round,
                   digest=head.digest, device="witness", maddrs=(), time=w.net.now(), active=False)  # fmt: skip
    assert w.net.store(keys.peers_key(RUN), w.id, signed.seal(w.key, hb), YOUNG.heartbeat_ttl)
    return head


def play(players: list[Peer], witness: Peer, seed: int) -> dict:
    """One round: the witness beats, the trainers announce, every player awaits, gathers, applies."""
    witness.net.dht.clock.t += 2
    witness_beat(witness)
    gen = torch.Generator().manual_seed(seed)
    for p in players:
        if p is not witness:
            p.heartbeat()
    for p in players:
        if p is not witness:
            p.announce(torch.randn(TOTAL, generator=gen) * 0.01)
    out: dict = {}
    threads = [threading.Thread(target=p.play, args=(out,), daemon=True) for p in players]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    witness.net.dht.clock.t += 1  # a newer heartbeat: the validator keeps the newest
    for p in players:
        assert p.id in out and not isinstance(out[p.id], Exception), f"{p.id[:8]}: {out.get(p.id)!r}"
        p.finish(*out[p.id])
        if p is not witness:
            p.heartbeat()
    return out


def test_a_grown_runs_witness_follows_v3_rounds_without_the_state_and_leads_when_young_again():
    dht, w, volunteers = organized(4)
    for r in range(2):  # the young run: the witness leads, verify-all
        out = play([w, *volunteers], w, r)
        assert {a.roster.leader for a, _ in out.values()} == {w.id}
    assert not w.proto.young() and all(not p.proto.young() for p in volunteers)  # 4 established
    for p in volunteers:
        p.net.requests.clear()
    catchup = Catchup(w.net, w.ledger, w.proto.rules, chain.genesis(RUN, BASE0))  # as StateSync builds it
    state = Head(w.round, w.digest)
    for r in range(2, 5):  # grown: v3 rounds among the volunteers; the witness follows the chain
        out = play(volunteers, w, r)
        accepted, _ = next(iter(out.values()))
        assert accepted.roster.finals and accepted.roster.leader != w.id  # a v3 roster
        assert follow_chain(catchup, w.ledger, w.proto.peers())
        head = witness_beat(w)
        assert head == Head(volunteers[0].round, volunteers[0].digest) == Head(r + 1, accepted.roster.result)
        assert w.ledger.rosters[r + 1].hash == accepted.hash and (w.round, w.digest) == state  # no state moved
        assert not follow_chain(catchup, w.ledger, w.proto.peers())  # nothing new: no move
    asked = {op for p in volunteers for op, _ in p.net.requests}
    assert asked == {"ledger"}  # the rosters by RPC, never the `state`

    # the run young again (established peers gone from the window: here, more are needed)
    for p in (w, *volunteers):
        p.proto.cfg = replace(YOUNG, bootstrap_peers=5)
    assert w.proto.young() and head != state  # the witness must take the state before it leads
    holders = [p for p in volunteers if Head(p.round, p.digest) == head]
    assert holders  # StateSync.fetch_head's donors: live peers holding the ledger's head
    w.round, w.digest = head  # (the state a donor serves; its digests are the head roster's)
    out = play([w, *volunteers], w, 9)
    assert {a.roster.leader for a, _ in out.values()} == {w.id} and len({p.digest for p in volunteers}) == 1
