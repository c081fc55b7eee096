"""The organizer's checkpoints (trust model step 2; node/round/trust/anchor.py, protocol/kinds/checkpoint.py):
signed by the organizer only, carried in rosters, kept in the anchor file, and a pin on the chain
a peer takes. Fake network (tests/fakes.py), real round protocol, ledger, chain and validators."""

from __future__ import annotations

import logging
from dataclasses import replace

import msgpack
import pytest

from node.round.ledger import Ledger
from node.round.trust import chain
from node.round.trust.anchor import FILENAME, Anchor, check_embedded
from node.round.trust.catchup import Catchup, Head
from protocol import signed
from protocol.errors import ProtocolError
from protocol.kinds.checkpoint import Checkpoint, checkpoint_hash, open_checkpoint, seal_checkpoint
from tests.fakes import new_key
from tests.test_round_protocol import BASE0, RUN, Peer, play_round
from tests.test_sybil_attacks import (
    Z,
    accepted_of,
    anchored,
    beat,
    checkpointed_swarm,
    grow,
    head_of,
    hold,
    serve,
    swarm,
    witness_signs,
)


def joiner_look(joiner: Peer, organizer: Peer) -> Catchup:
    return Catchup(joiner.net, joiner.ledger, joiner.proto.rules, chain.genesis(RUN, BASE0), organizer=organizer.id)


def test_leaders_fetch_and_carry_the_checkpoint_and_every_peer_keeps_it():
    dht, registry, honest, organizer = checkpointed_swarm(rounds=6, every=2)
    assert ("checkpoint", 2) in organizer.net.requests  # a leader asked the organizer for the body
    carriers = [r for r in range(1, 7) if honest[0].ledger.rosters[r].roster.checkpoint is not None]
    assert carriers == [3, 4, 5, 6]  # rounds c+1..c+CARRY_ROUNDS
    assert {p.ledger.anchor.round for p in honest} == {2}
    cp = honest[1].ledger.anchor.checkpoint
    assert cp.roster == honest[1].ledger.rosters[2].hash and cp.result == honest[1].ledger.rosters[2].roster.result


def test_the_witness_signs_only_at_multiples_of_checkpoint_rounds():
    dht, registry, honest = swarm(3)
    organizer = Peer(dht, registry)
    book = Anchor(None, run_id=RUN, organizer=organizer.id)
    play_round(honest)
    assert not book.sign_due(organizer.key, honest[0].ledger, every=2, now=0.0)  # round 1: not due
    play_round(honest)
    assert book.sign_due(organizer.key, honest[0].ledger, every=2, now=0.0) and book.round == 2
    play_round(honest)
    assert not book.sign_due(organizer.key, honest[0].ledger, every=2, now=0.0)  # 2 again: held
    assert not book.sign_due(organizer.key, honest[0].ledger, every=0, now=0.0)  # 0: no checkpoints


def test_a_forged_checkpoint_is_refused():
    """Attack: a Sybil signs a checkpoint of its own chain with its own key, and, leading, carries
    it. open_checkpoint takes the organizer's key only; a roster carrying a forged one does not
    verify; an anchor does not keep it."""
    dht, registry, honest, organizer = checkpointed_swarm()
    sybil_key, sybil_id = new_key()
    held = honest[0].ledger.rosters[3]
    forged = seal_checkpoint(
        sybil_key, Checkpoint(run=RUN, round=2, roster=held.roster.prev, result=held.roster.base, time=0.0)
    )
    with pytest.raises(ProtocolError, match="key is not the key"):
        open_checkpoint(forged, organizer=organizer.id, run_id=RUN)
    with pytest.raises(ProtocolError):
        honest[0].ledger.anchor.keep(forged)
    assert honest[0].ledger.anchor.round == 2
    # the organizer's body under the Sybil's signature is refused the same way
    real = honest[0].ledger.anchor.envelope
    with pytest.raises(ProtocolError):
        open_checkpoint({**real, "key": forged["key"], "sig": forged["sig"]}, organizer=organizer.id, run_id=RUN)
    with pytest.raises(ProtocolError, match="of run"):
        open_checkpoint(real, organizer=organizer.id, run_id="other-0123456789ab")
    # a roster carrying the forged checkpoint does not verify on the chain
    leader = next(p for p in honest if p.id == held.roster.leader)
    body = replace(held.roster, checkpoint=forged)
    env = signed.seal(leader.key, body)
    window = Ledger(rosters={r: a for r, a in honest[0].ledger.rosters.items() if r < 3})
    link = chain.after(window.rosters[2])
    with pytest.raises(ProtocolError):
        chain.check(env, link, window, honest[0].proto.rules)
    with pytest.raises(ProtocolError, match="another chain"):  # the real one, on a chain without its roster
        check_embedded(real, 3, Ledger(rosters={2: accepted_of(env)}), organizer=organizer.id, run_id=RUN)


def test_a_chain_that_contradicts_a_held_checkpoint_is_refused(tmp_path, caplog):
    """A peer whose anchor holds checkpoint 2 (a joiner restarted with its anchor file, the
    organizer offline, only the crowd's chain on offer): the crowd's roster 2 is another one,
    so its chain is refused; a crowd chain that ends before round 2 is refused too."""
    dht, registry, honest, organizer = checkpointed_swarm()
    crowd = [Peer(dht, registry) for _ in range(5)]
    for p in honest:  # the swarm is gone: only the crowd answers
        p.net.ledger = None
    serve(crowd, grow(crowd[0], crowd, None, 3))
    hold(crowd, Head(3, Z))
    joiner = Peer(dht, registry)
    anchored([joiner], organizer)
    joiner.ledger.anchor.keep(honest[0].ledger.anchor.envelope)
    with caplog.at_level(logging.WARNING):
        assert joiner_look(joiner, organizer).plan(joiner.proto.peers(), Head(0, BASE0)) is None
    assert "the organizer's checkpoint says" in caplog.text

    short = [Peer(dht, registry) for _ in range(5)]
    serve(short, grow(short[0], short, None, 1))
    hold(short, Head(1, Z))
    assert joiner_look(joiner, organizer).plan(joiner.proto.peers(), Head(0, BASE0)) is None
    assert "which the organizer checkpointed" in caplog.text


def test_a_member_refuses_a_fork_that_contradicts_its_checkpoint(caplog):
    """A member holding checkpoint 2 is offered a heavier-looking branch that leaves the chain at
    round 1: the branch's roster 2 is another one, so it is refused before any fork choice."""
    dht, registry, honest, organizer = checkpointed_swarm()
    member = honest[0]
    crowd = [Peer(dht, registry) for _ in range(6)]
    branch = grow(crowd[0], crowd, member.ledger.rosters[1], 2)  # rounds 2-3 after the swarm's roster 1
    serve(crowd, [member.ledger.rosters[1], *branch])
    hold(crowd, Head(3, Z))
    look = Catchup(member.net, member.ledger, member.proto.rules, chain.genesis(RUN, BASE0))
    with caplog.at_level(logging.WARNING):
        assert look.branch_of(crowd[0].id, Head(3, Z), [c.id for c in crowd]) is None
    assert "the organizer's checkpoint says" in caplog.text  # verified, then refused by the checkpoint


def test_the_anchor_file_survives_a_restart(tmp_path, caplog):
    dht, registry, honest, organizer = checkpointed_swarm()
    path = tmp_path / RUN / FILENAME
    kept = Anchor(path, run_id=RUN, organizer=organizer.id)
    assert kept.keep(honest[0].ledger.anchor.envelope) and path.is_file()
    again = Anchor.load(path, run_id=RUN, organizer=organizer.id)
    assert again.checkpoint == kept.checkpoint and again.round == 2
    assert not again.keep(honest[0].ledger.anchor.envelope)  # not newer: kept once
    # a restarted joiner (empty ledger, the organizer offline) still refuses the crowd's chain
    crowd = [Peer(dht, registry) for _ in range(7)]
    for p in honest:
        p.net.ledger = None
    serve(crowd, grow(crowd[0], crowd, None, 2))
    hold(crowd, Head(2, Z))
    joiner = Peer(dht, registry)
    joiner.ledger.anchor = again
    assert joiner_look(joiner, organizer).plan(joiner.proto.peers(), Head(0, BASE0)) is None
    # a torn file or one signed by another key: no anchor, said in the log, no crash
    path.write_bytes(b"\x93garbage")
    with caplog.at_level(logging.WARNING):
        assert Anchor.load(path, run_id=RUN, organizer=organizer.id).checkpoint is None
    other_key, other_id = new_key()
    assert Anchor.load(path.with_name("none"), run_id=RUN, organizer=other_id).checkpoint is None
    path.write_bytes(msgpack.packb(kept.envelope, use_bin_type=True))
    assert Anchor.load(path, run_id=RUN, organizer=other_id).checkpoint is None
    assert "starting without it" in caplog.text


@pytest.mark.parametrize(
    "answer", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"body": b"x", "key": b"k", "sig": b"s"}), "other"]
)
def test_a_malformed_checkpoint_from_the_organizer_is_dropped(answer, caplog):
    """The organizer's `checkpoint` answer is junk, a map that is no envelope, or another
    checkpoint than its heartbeat names: the leader logs it and leads without one."""
    dht, registry, honest = swarm(4)
    organizer = Peer(dht, registry)
    anchored(honest, organizer)
    play_round(honest)
    play_round(honest)
    real = witness_signs(organizer, honest[0], 2)
    for p in honest:  # the witness's checkpoint is known to nobody yet
        p.ledger.anchor = anchored_copy = Anchor(None, run_id=RUN, organizer=organizer.id)
        assert anchored_copy.round == 0
    if answer == "other":  # a real checkpoint, of round 1: not what the heartbeat names
        held = honest[0].ledger.rosters[1]
        cp = Checkpoint(run=RUN, round=1, roster=held.hash, result=held.roster.result, time=0.0)
        organizer.net.checkpoints[2] = seal_checkpoint(organizer.key, cp)
        assert checkpoint_hash(organizer.net.checkpoints[2]) != checkpoint_hash(real)
    else:
        organizer.net.checkpoints = {}
        organizer.net.answer = lambda request: answer  # what a broken organizer sends
    with caplog.at_level(logging.WARNING):
        played = play_round(honest)
    assert all(p.accepted.roster.checkpoint is None for p in played.values())
    assert all(p.ledger.anchor.round == 0 for p in honest)
    assert "checkpoint 2 from the organizer" in caplog.text


def test_the_witness_pin_still_holds_with_the_organizer_online():
    """With the organizer online its witness's head pins a joiner (catchup.through_pin), as
    before checkpoints: the joiner takes the swarm's head, not the crowd's."""
    dht, registry, honest = swarm(4)
    organizer = Peer(dht, registry)
    anchored(honest, organizer)
    for _ in range(3):
        play_round(honest)
    crowd = [Peer(dht, registry) for _ in range(7)]
    serve(crowd, grow(crowd[0], crowd, None, 2))
    hold(crowd, Head(2, Z))
    beat(honest)
    organizer.round, organizer.digest = head_of(honest[0])
    organizer.heartbeat(active=False)
    joiner = Peer(dht, registry)
    anchored([joiner], organizer)
    target = joiner_look(joiner, organizer).plan(joiner.proto.peers(), Head(0, BASE0))
    assert target is not None and target.head == head_of(honest[0])
    assert organizer.id not in target.donors and set(target.donors) <= {p.id for p in honest}
