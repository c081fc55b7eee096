"""Step 7's epochs: admission proofs seeded by the chain's beacon every `epoch_rounds` rounds
(protocol/admission/work.py, rule.py, renew.py). Cheap puzzles and epochs of 4 rounds, over the
fake network of tests/fakes.py, which runs the real round protocol and chain checks."""

from __future__ import annotations

import threading

import pytest

from node.round.trust import chain
from protocol import signing
from protocol.admission import work
from protocol.admission.renew import Renewal
from protocol.admission.rule import DISABLED, Admission
from protocol.errors import ProtocolError
from tests.fakes import ungated
from tests.test_round_protocol import RUN, Peer, play_round, swarm

EPOCH = 4
PUZZLE = work.Puzzle(run_id=RUN, bits=3, n_log2=4, r=8, stamp_bits=3, epoch_rounds=EPOCH)
STOP = threading.Event()  # never set: the searches here end by finding


def admit(peers: list[Peer]) -> dict[str, Renewal]:
    """Each peer gets the run's rule, an epoch-0 proof, and a renewal (none kept on disk)."""
    out = {}
    for p in peers:
        adm = Admission(PUZZLE)
        p.proto.admission = p.proto.builder.admission = adm
        adm.proof = tuple(PUZZLE.solve(signing.public_der(p.key), STOP, first=0))
        out[p.id] = Renewal(adm, signing.public_der(p.key), STOP, say=lambda line: None)
    return out


def renew(peers: list[Peer], renewals: dict[str, Renewal]) -> None:
    """As a volunteer opens a round: start the next epoch's solve if due (joined here: the test's
    clock is the fake one; a real peer's solve runs on while the old proof counts)."""
    for p in peers:
        if p.id in renewals and renewals[p.id].due(p.round + 1, p.ledger.beacon_of):
            renewals[p.id].join()


def listed(played: dict, peer: Peer) -> set[str]:
    return {a.peer for a in played[peer.id].accepted.announcements}


def test_an_epoch_seed_is_the_chain_beacon_of_its_first_round_unknown_before_it():
    _, _, peers = swarm(3)
    admit(peers)
    for _ in range(EPOCH - 1):
        play_round(peers)
    ledger, der = peers[0].ledger, signing.public_der(peers[0].key)
    assert PUZZLE.seeds(EPOCH - 1, ledger.beacon_of) == {0: PUZZLE.first_seed()}  # epoch 1 has no seed yet
    beacon = peers[0].proto.beacon(EPOCH)  # known once roster EPOCH - 1 is: its leader's reveal made it
    seeds = PUZZLE.seeds(EPOCH, lambda r: beacon if r == EPOCH else ledger.beacon_of(r))
    assert seeds[1] == bytes.fromhex(beacon)
    # a proof of epoch 1 made before that round could only guess the seed: it never counts
    hard = work.Puzzle(run_id=RUN, bits=16, n_log2=1, r=1, stamp_bits=16, epoch_rounds=EPOCH)  # chance: 2^-16
    for guess in (hard.first_seed(), bytes.fromhex(ledger.beacon_of(EPOCH - 1)), b"\0" * 32):
        early = hard.solve(der, STOP, first=0, epoch=1, seed=guess)
        assert not hard.solved(der, early, seeds) and not hard.stamped(der, early, seeds)
    assert PUZZLE.valid(der, PUZZLE.solve(der, STOP, first=0, epoch=1, seed=seeds[1]), seeds)
    assert not PUZZLE.valid(der, PUZZLE.solve(der, STOP, first=0, epoch=1, seed=seeds[1]))  # seed unknown: False


def test_honest_peers_renew_in_the_background_with_no_round_lost_and_a_stockpiled_key_stops_counting():
    _, _, peers = swarm(5)
    renewals = admit(peers)
    attacker = peers[-1]  # its epoch-0 proof was made as soon as the run id was public; it never renews
    del renewals[attacker.id]
    epochs = {}
    for r in range(1, 3 * EPOCH + 2):
        renew(peers, renewals)
        played = play_round(peers[:-1] + [attacker])
        names = listed(played, peers[0])
        assert {p.id for p in peers[:-1]} <= names or r == 1  # round 1 lists 4 newcomers of 5
        assert (attacker.id in names) == (r < 2 * EPOCH) or r == 1  # epoch-0 proof: epochs 0 and 1 only
        epochs[r] = {a.work[0] for a in played[peers[0].id].accepted.announcements if a.peer != attacker.id}
    # each honest peer switched its proof once per epoch, starting once the epoch's first roster was
    # on its chain (here it is ready the round after), while the old one counted
    assert [epochs[r] for r in range(EPOCH, 3 * EPOCH + 2)] == [{0}, *[{1}] * 4, *[{2}] * 4, {3}]
    # a joiner verifies the whole chain from the genesis, the renewals' proofs each checked once
    envs = peers[0].ledger.envelopes_from(1)
    joiner = Admission(PUZZLE)
    checked = chain.verify(envs, chain.genesis(RUN, "a" * 64), peers[0].ledger.window({}), _rules(peers[0], joiner))
    assert checked.problem == "" and len(checked.rosters) == 3 * EPOCH + 1


@pytest.mark.parametrize(
    "relabel, match", [(False, "not of epoch 1 or 2"), (True, "no valid admission proof")], ids=["stale", "relabelled"]
)
def test_a_roster_listing_a_stale_or_relabelled_proof_is_refused_by_readers(relabel, match):
    """The stockpiled epoch-0 proof, in epoch 2; or its nonce relabelled epoch 2: checked (a renewal), fails."""
    _, _, peers = swarm(4)
    renewals = admit(peers)
    stale = peers[-1]
    del renewals[stale.id]
    for _ in range(2 * EPOCH - 1):
        renew(peers, renewals)
        play_round(peers)
    renew(peers, renewals)
    leader, reader = peers[0], peers[1]
    r = leader.round + 1  # epoch 2: an epoch-0 proof counts no more
    assert PUZZLE.epoch_of(r) == 2
    proof = stale.proto.admission.proof
    der = signing.public_der(stale.key)
    seeds = Admission(PUZZLE).seeds(r, leader.proto.beacon(r), leader.ledger.beacon_of)
    while relabel and PUZZLE.valid(der, work.Proof(2, *proof[1:]), seeds):  # these cheap bits make 1
        proof = tuple(PUZZLE.solve(der, STOP, first=None))  # relabelled nonce in 64 valid (CI drew one)
    stale.proto.admission.proof = (2, *proof[1:]) if relabel else proof
    leader.proto.admission = leader.proto.builder.admission = DISABLED  # a leader that ignores the rule
    ungated(*peers)  # built by hand, outside any round's turns
    for p in peers:
        p.heartbeat()
        p.announce(f"update {p.id} {proof[0]}".encode())
    built = leader.proto.builder.build(
        r, leader.digest, leader.ledger.prev_hash(r), {p.id for p in peers}, 1,
        beacon=leader.proto.beacon(r), attempt=0,
    )  # fmt: skip
    assert stale.id in {a.peer for a in built.announcements}
    reader.proto.seen.setdefault(r, set()).update(p.id for p in peers)
    with pytest.raises(ProtocolError, match=match):
        reader.proto.check_roster(built.envelope, leader.id, r, reader.digest, None)
    with pytest.raises(ProtocolError, match=match):
        chain.check(built.envelope, chain.after(reader.ledger.rosters[r - 1]), reader.ledger, reader.proto.rules)
    honest_leader = Admission(PUZZLE)  # an honest leader lists neither
    seeds = honest_leader.seeds(r, leader.proto.beacon(r), leader.ledger.beacon_of)
    announced = leader.proto.builder.announcements(r, leader.digest)
    candidates = {p: (s.envelope, s.announcement) for p, s in announced.items()}
    known, _ = leader.ledger.authors_before(r, honest_leader.lookback)
    proven = leader.ledger.proofs_before(r, honest_leader.lookback)
    admitted = honest_leader.admit(candidates, known, "b" * 64, proven=proven, seeds=seeds)
    assert stale.id not in admitted and {p.id for p in peers[1:-1]} <= admitted  # the leader: DISABLED, no proof


def test_a_ledger_keeps_the_seeds_of_the_epochs_whose_rosters_left_its_window(tmp_path):
    from node.round.ledger import WINDOW, Ledger

    path = tmp_path / "ledger.jsonl"
    _, _, peers = swarm(2)
    renewals = admit(peers)
    peers[0].ledger.path, peers[0].ledger.epoch_rounds = path, EPOCH
    for _ in range(2 * EPOCH + 1):
        renew(peers, renewals)
        play_round(peers)
    kept = dict(peers[0].ledger.seeds)
    assert set(kept) == {EPOCH, 2 * EPOCH}  # rounds 0 mod 4 taken after the file began
    loaded = Ledger.load(path, epoch_rounds=EPOCH)
    assert loaded.seeds == kept and loaded.beacon_of(EPOCH) == peers[0].ledger.rosters[EPOCH].roster.beacon
    loaded.rosters = {r: a for r, a in loaded.rosters.items() if r > 2 * EPOCH}  # as if they left a WINDOW
    assert loaded.beacon_of(2 * EPOCH) == kept[2 * EPOCH] and WINDOW > 2 * EPOCH


def _rules(peer: Peer, admission: Admission) -> chain.ChainRules:
    from dataclasses import replace

    return replace(peer.proto.rules, admission=admission)


def test_a_late_joiner_solves_once_for_the_epoch_of_the_chain_it_synced_and_is_in_the_next_roster(
    tmp_path, monkeypatch
):
    """A joiner solved epoch 0's proof before its chain synced, then its chain's epoch in the
    background: past round 2 x epoch_rounds its first rounds did not count. Now the volunteer syncs
    first (Peer.begin) and solves for the newest epoch its chain's seeds tell (NodeParts.obtain_proof)."""
    from types import SimpleNamespace

    from node.config import NodeConfig
    from node.peer.volunteer import Peer as Volunteer
    from node.peer.wiring import NodeParts

    dht, registry, peers = swarm(3)
    renewals = admit(peers)
    for _ in range(10):  # round 10, epoch 2
        renew(peers, renewals)
        play_round(peers)
    joiner = Peer(dht, registry)
    adm = Admission(PUZZLE)
    joiner.proto.admission = joiner.proto.builder.admission = adm
    synced = chain.verify(
        peers[0].ledger.envelopes_from(1), chain.genesis(RUN, "a" * 64), joiner.ledger, _rules(joiner, adm)
    )
    joiner.ledger.extend(0, list(synced.rosters))  # what StateSync.adopt does with a verified head
    joiner.digest, joiner.round = peers[0].digest, peers[0].round
    solves, said = [], []
    real_solve = work.Puzzle.solve
    monkeypatch.setattr(work.Puzzle, "solve", lambda self, *a, **k: solves.append(k) or real_solve(self, *a, **k))
    node = SimpleNamespace(
        rounds=SimpleNamespace(admission=adm),
        key=joiner.key,
        me=joiner.id,
        manifest={"organizer": "someone else"},
        cfg=NodeConfig(data_dir=str(tmp_path)),
        run_id=RUN,
        out=SimpleNamespace(say=said.append),
        ledger=joiner.ledger,
    )
    assert NodeParts.obtain_proof(node, STOP) and adm.proof[0] == PUZZLE.epoch_of(11) == 2
    assert "for epoch 2 of our chain" in said[0] and "Ctrl+C stops" in said[0]
    renewals[joiner.id] = Renewal(adm, signing.public_der(joiner.key), STOP, say=lambda line: None)
    renew(peers + [joiner], renewals)  # round 11: its proof is of the current epoch, nothing to renew
    played = play_round(peers + [joiner])
    assert joiner.id in listed(played, peers[0]) and len(solves) == 1
    assert {a.work[0] for a in played[peers[0].id].accepted.announcements if a.peer == joiner.id} == {2}
    # the volunteer syncs before it solves (and a Ctrl+C during the solve still ends begin)
    order = []
    stopped = SimpleNamespace(
        sync=SimpleNamespace(initial_state=lambda stop: order.append("sync") or (None, "from_peers")),
        applier=SimpleNamespace(),
        obtain_proof=lambda stop: order.append("proof") or False,
    )
    assert Volunteer.begin(stopped, STOP) is False and order == ["sync", "proof"]
