"""Attacks with many identities, each costing a proof of work, against the four defences of
issue 16: admission (protocol/admission), organizer checkpoints (node/round/trust/anchor.py,
catchup.py), skip and unserved marks (node/round/trust/marks.py) and the roster's `full`
digest (node/peer/sync.py, applier.py). Found by playing the attacker; each docstring says the
attack, its cost and what stops it. `test_open_*` tests pass while an attack still WORKS
(docs/security.md, "Defended partly"): when a later change closes one, its test fails and is
turned into a defence test. Fake network (tests/fakes.py), real round protocol and checks;
puzzles are cheap (a few bits at tiny scrypt costs), so proofs cost milliseconds here."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

from node.round import election
from node.round.ledger import AcceptedRoster
from node.round.trust import marks
from protocol import keys, signed, signing
from protocol.admission import rule, work
from protocol.admission.rule import Admission
from protocol.records import Announcement, Heartbeat
from tests.fakes import new_key
from tests.test_round_protocol import BASE0, RUN, Peer, play_round, swarm
from tests.test_score_checks import applier, roster_of, updates
from tests.test_sybil_attacks import anchored
from tests.test_work import STOP, admit, scrypt_calls  # noqa: F401 -- scrypt_calls is a fixture


def draw(beacon: str, peer: str) -> bytes:
    """The order a leader checks newcomers in (rule.py: SHA-256(beacon | peer)), which no announcer chooses."""
    return hashlib.sha256(f"{beacon}|{peer}".encode()).digest()


# ------------------------------------------------------------------------ admission (step 7)
def test_junk_proofs_take_a_check_only_with_a_stamp_and_a_junk_key_takes_one_check_ever(scrypt_calls):  # noqa: F811
    """Attack (was open): S identities with no work at all (a key and a heartbeat each, both
    free) announce every round with a fresh junk nonce. The memory of checked proofs was keyed
    by (peer, epoch, nonce), so each was new and cost one of the roster's 4 checks, and an honest
    newcomer got in only in a round where it drew one of the first 4 places among the S + 1
    newcomers: (S + 1) / 4 rounds on average (250 at S = 1,000), for no work at all.
    Defence (work.py, rule.py): a proof carries a SHA-256 stamp on (seed, key, nonce), checked
    with one hash before any scrypt call, so a free junk proof takes no check (here the newcomer
    is checked, and admitted, in the first roster); and a leader does not check again, for the
    epoch, a peer whose stamped proof failed, so fresh nonces on one key buy nothing. Each check
    junk takes costs its author a stamp (2^stamp_bits hashes on average: 2^24 at the defaults,
    ~7 s of a core in Python, against the check's ~35 ms of scrypt) and a key, once per leader:
    S stamped keys keep a newcomer out of at most ceil((S + 1) / 4) of one leader's rosters (its
    place in the draw among them; at S = 1,000, 1.7e10 hashes for 251 rosters at most).
    What stays: the memory is each peer's own, so one stamped key takes one check at every
    leader; and SHA-256 is what GPUs do best (see docs/security.md)."""
    puzzle = work.Puzzle(run_id=RUN, bits=12, n_log2=1, r=1, stamp_bits=10)  # a junk nonce passes 1 time in 4,096
    honest_key = b"DER of the honest newcomer"
    honest = Announcement(
        run=RUN, round=1, peer="honest-newcomer", nbytes=8, sha256="1" * 64, tokens=1, base=BASE0, time=1.0
    )
    honest = replace(honest, work=tuple(puzzle.solve(honest_key, STOP, first=0)))

    def flood_of(keys: int, r: int, stamp) -> dict[str, tuple[dict, Announcement]]:
        out = {}
        for i in range(keys):
            peer, key = f"sybil{i:03d}", b"sybil %d" % i
            proof = work.Proof(0, (r * keys + i + 2**40).to_bytes(8, "big"))  # a fresh junk nonce every round
            out[peer] = ({"key": key}, replace(honest, peer=peer, work=tuple(stamp(key, proof))))
        out[honest.peer] = ({"key": honest_key}, honest)
        return out

    # free junk: 200 keys, fresh nonces, a stamp of 8 zero bytes (right 1 time in 2^10: a stamp's price)
    free = flood_of(200, 1, lambda key, proof: proof._replace(stamp=bytes(8)))
    stamped = {p for p, (env, ann) in free.items() if puzzle.stamped(env["key"], work.Proof(*ann.work))}
    leader = Admission(puzzle, newcomers=4)
    scrypt_calls.calls = 0
    assert leader.admit(free, set(), beacon=f"{1:064x}") == {honest.peer}  # the first roster
    assert scrypt_calls.calls <= len(stamped) <= 3  # the honest proof and lucky stamps only

    # stamped junk: 40 keys, each paying a fresh stamp on a fresh junk nonce every round
    sybils, spent, leader = 40, [0], Admission(puzzle, newcomers=4)

    def paid(key: bytes, proof: work.Proof) -> work.Proof:
        done = puzzle.stamp(key, proof, STOP)
        spent[0] += int.from_bytes(done.stamp, "big") + 1  # hashes tried (counters from 0)
        return done

    scrypt_calls.calls = 0
    for r in range(1, 100):
        if honest.peer in leader.admit(flood_of(sybils, r, paid), set(), beacon=f"{r:064x}"):
            break
    assert r <= -(-(sybils + 1) // 4) == 11  # within ceil((S + 1) / 4) rosters: its place in the draw
    for more in range(r + 1, r + 12):  # the flood goes on until this leader has checked every key
        leader.admit(flood_of(sybils, more, paid), set(), beacon=f"{more:064x}")
    assert len(leader.failed) == sybils and scrypt_calls.calls == sybils + 1  # each key once, the newcomer once
    before = scrypt_calls.calls
    assert leader.admit(flood_of(sybils, 1000, paid), set(), beacon=f"{1000:064x}") == {honest.peer}
    assert scrypt_calls.calls == before  # fresh stamped nonces on failed keys: no check
    assert spent[0] / sybils >= 10 * puzzle.stamp_expected  # they paid a stamp a key a round for one check a key


def newcomers_round(peers: list[Peer], crowd: list[Peer], newcomer: Peer) -> set[str]:
    """One round of the honest `peers`; the `crowd` (never serving) and `newcomer` announce too.
    Returns whom the roster lists."""
    for p in [*crowd, newcomer]:
        p.digest, p.round = peers[0].digest, peers[0].round
        p.heartbeat()
        p.announce(f"update {p.id} {p.round}".encode())
    for s in crowd:
        s.net.updates.clear()  # announces, never serves
    played = play_round(peers, owners=[*crowd, newcomer])
    return {a.peer for a in played[peers[0].id].accepted.announcements}


def test_sybils_that_never_serve_cannot_hold_the_newcomer_slots_once_two_leaders_listed_them(monkeypatch):
    """Attack: identities with valid proofs (4 here; one proof each, solved once: epoch 0 lasts
    the run) announce every round and never serve. A leader admitted them before fetching, so
    they took the 4 newcomer slots, their fetches failed and they were left out, and so stayed
    new: an honest newcomer the draw put behind them waited for ever. Defence (lead.py, rule.py):
    newcomers that two distinct leaders listed `unserved` (marks.slow_servers) are checked
    after every other newcomer, so from the round after the second listing the honest newcomer
    comes first. The draw is fixed here to favour the crowd (worst luck, every round)."""
    dht, registry, peers = swarm(3)
    admit(peers)
    for _ in range(2):
        play_round(peers)
    crowd = [Peer(dht, registry) for _ in range(4)]
    newcomer = Peer(dht, registry)
    admit([*crowd, newcomer])
    ids = {s.id for s in crowd}
    monkeypatch.setattr(rule, "_order", lambda beacon, p: (p not in ids, p))  # the crowd draws first
    rounds = []
    for _ in range(6):
        listed = newcomers_round(peers, crowd, newcomer)
        assert not listed & ids  # never listed: the crowd stays new
        rounds.append(newcomer.id in listed)
        if rounds[-1]:
            break
    leaders = {a.roster.leader for a in peers[0].ledger.rosters.values() if a.roster.unserved}
    assert rounds[-1] and len(leaders) >= 2 and not rounds[0], rounds


def test_a_reader_whose_window_is_not_whole_cannot_be_made_to_refuse_an_honest_roster():
    """Framing through counting: a reader that resynced (its window lacks rosters of the
    lookback) or a leader that did could count newcomers differently from the rest. A leader's
    missing rosters only make it stricter (more authors count as new: it admits at most 4 of
    them); a reader's make it check every author's proof (once each) instead of counting. So a
    roster with 4 newcomers among known authors is taken by whole and partial readers alike,
    and a partial leader's roster too."""
    dht, registry, peers = swarm(3)
    admit(peers)
    for _ in range(2):
        play_round(peers)
    crowd = [Peer(dht, registry) for _ in range(4)]
    admit(crowd)
    partial = peers[1]
    for r in list(partial.ledger.rosters)[:-1]:
        del partial.ledger.rosters[r]  # it synced state at the last round: a window not whole
    for p in crowd:
        p.digest, p.round = peers[0].digest, peers[0].round
        p.heartbeat()
        p.announce(f"update {p.id}".encode())
    played = play_round(peers, owners=crowd)
    lists = {len(x.accepted.announcements) for x in played.values()}
    assert lists == {7}  # 3 known + 4 newcomers, taken by every reader (the partial one too)
    leader = played[peers[0].id].accepted.roster.leader
    _, whole = partial.ledger.authors_before(peers[0].round, rule.LOOKBACK)
    assert not whole and leader in {p.id for p in peers}


# --------------------------------------------------------------------- unserved marks (step 8)
def test_two_established_sybils_cannot_frame_a_peer_that_serves_between_their_listings():
    """Attack: two established identities, each leading one round in the window, list an honest
    peer `unserved` (readers check only that the roster does not also hold its update; the peer
    need not even have announced). Every honest leader then stopped waiting for its update and
    fetched it last with marks.SLOW_FETCH (2 s) for the next MARK_WINDOW (32) rounds: a large
    update over a slow uplink was left out for those rounds. Defence (marks.slow_to_me, used by
    RoundProtocol.slow for the wait and the fetch): a listing counts for a peer only if it came
    after the last round whose update of the victim that peer fetched itself, and every peer
    gathers every update of the rounds it applies. One honest roster holding the victim's update
    between the two listings voids the first. Left open: two Sybil-led rounds back to back (no
    roster holds the victim's update between the listings) still impose the treatment until an
    honest leader fetches it within SLOW_FETCH, or the listings age out."""
    _, _, peers = swarm(4)
    for _ in range(3):
        play_round(peers)
    honest, victim = peers[0], peers[3].id
    assert honest.proto.updates.fetched[victim] == 3  # gathered it in round 3
    (_, a), (_, b), (_, c) = new_key(), new_key(), new_key()

    def listed(r: int, leader: str) -> None:  # a Sybil's roster of round r that left the victim out, listed
        roster = replace(honest.ledger.rosters[r].roster, leader=leader, unserved=(victim,))
        marks.check(roster, {leader})  # what every reader checks of the list: it passes
        honest.ledger.rosters[r] = AcceptedRoster({}, roster, ())

    listed(2, a)  # before round 3, whose honest roster held the victim's update
    honest.ledger.rosters[4] = honest.ledger.rosters[3]  # round 4: a Sybil's, listing the victim
    listed(4, b)
    assert victim in marks.slow_servers(honest.ledger, 5)  # the chain's suggestion, as before
    assert victim not in honest.proto.slow(5)  # what the leader acts on: one listing after round 3
    listed(3, c)  # had round 3 been a Sybil's too (back to back: no honest roster in between)...
    honest.proto.updates.fetched[victim] = 2
    assert victim in honest.proto.slow(5)  # ...the treatment holds (left open, docs/security.md)


# --------------------------------------------------------------------- checkpoints (step 2)
def test_a_sybil_checkpoint_pointer_cannot_make_a_leader_fetch():
    """Attack: identities heartbeat a `cp` pointer to a checkpoint round just behind the next
    roster, hoping each leader spends the checkpoint fetch (2 s each) on them. Defence (anchor.py:
    Anchor.carry reads the organizer's heartbeat only; the DHT refuses a heartbeat under the
    organizer's id that it did not sign): no leader asks them, and the rosters carry nothing."""
    dht, registry, peers = swarm(3)
    organizer = Peer(dht, registry)
    anchored(peers, organizer)
    play_round(peers)
    sybils = [Peer(dht, registry) for _ in range(2)]
    for s in sybils:
        hb = Heartbeat(
            run=RUN, peer=s.id, name="s", round=2, state_round=1, digest=peers[0].digest, device="cpu", maddrs=(),
            time=s.net.now() + 2, active=False, cp=(1, "c" * 64),
        )  # fmt: skip
        assert s.net.store(keys.peers_key(RUN), s.id, signed.seal(s.key, hb), 8.0)
    forged = replace(hb, peer=organizer.id)
    assert not dht.store(keys.peers_key(RUN), organizer.id, signed.seal(sybils[0].key, forged), dht.clock() + 8)
    played = play_round(peers)
    assert all(x.accepted.roster.checkpoint is None for x in played.values())
    assert not any(op == "checkpoint" for s in sybils for op, _ in s.net.requests)


# ---------------------------------------------------------------------------- `full` (issue 16)
def test_a_leader_that_omits_full_cannot_let_a_sybil_donor_serve_other_buffers():
    """Attack: an established identity leads a round and writes its roster without `full` (as a
    roster from before the field), so that, once it is the chain's head, a joiner checks a
    donor's parameters only and takes a Sybil donor's state with other outer buffers. Defence:
    every member refuses a roster without `full` (a protocol-4 leader always writes it), so
    it never becomes the head."""
    leader, member = applier("leader", io.StringIO()), applier("member", io.StringIO())
    payloads = updates(member.state, member.strategy, 2)
    honest = roster_of(leader, payloads, ["Qma", "Qmb"])
    assert member.state.outer and honest.roster.full
    omitted = AcceptedRoster({}, replace(honest.roster, full=""), honest.announcements)
    assert not member.apply_round(omitted, payloads)  # refused: it never becomes the head
    assert member.apply_round(honest, payloads)  # the honest roster of the round applies


# ----------------------------------------------------------------------- siblings and marks
def silent_first_rank() -> tuple[list[Peer], Peer, AcceptedRoster]:
    """4 established peers; in round 3 the one ranked first (`hostile`) announces and serves but
    does not lead, so rank 1 leads and lists it `skip`. Returns (honest, hostile, that roster)."""
    _, _, peers = swarm(4)
    for _ in range(2):
        play_round(peers)
    r = peers[0].round + 1
    hostile = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))[0]
    hostile = next(p for p in peers if p.id == hostile)
    honest = [p for p in peers if p is not hostile]
    hostile.net.dht.clock.t += 1  # a heartbeat expiring no later than the stored one is refused
    assert hostile.heartbeat()
    hostile.announce(b"the hostile peer's update")
    led = play_round(honest, owners=[hostile])[honest[0].id].accepted
    assert led.roster.attempt == 0 and hostile.id in led.roster.skip
    assert hostile.id in {a.peer for a in led.announcements}
    return honest, hostile, led


def publish_sibling(hostile: Peer, led: AcceptedRoster, ttl: float, **lists) -> None:
    """`hostile`'s sibling of `led` (the same updates and states, its own reveal), as rank 0 of attempt 0."""
    r = led.roster
    reveal = signing.sign_unique(hostile.key, election.reveal_message(RUN, r.round))
    body = replace(r, leader=hostile.id, time=r.time + 0.5, reveal=reveal, **{"skip": (), "unserved": (), **lists})
    assert hostile.net.store(keys.roster_key(RUN, r.round), hostile.id, signed.seal(hostile.key, body), ttl)


def test_a_better_ranked_sibling_cannot_carry_unchecked_marks():
    """Attack: an established contributor that ranks ahead of the round's leader (here: it drew
    rank 0 and stayed silent) publishes a sibling of the roster (same updates and states, its
    own reveal) whose `skip` names up to 16 honest peers ranked behind it. Members swap to a
    better-ranked sibling (RoundProtocol.converge), and the sibling's lists were not checked
    there: its skip marks counted, so two such siblings in 32 rounds kept 16 honest peers each
    from leading. Defence (checks.py: a sibling must pass marks.check, as any roster): it is
    not swapped in."""
    honest, hostile, led = silent_first_rank()
    r, beacon = led.roster.round, led.roster.beacon
    tickets = honest[0].proto.tickets(r)
    behind = tuple(p.id for p in honest if not marks.ranked_ahead(beacon, 0, p.id, hostile.id, tickets))
    assert behind  # everyone ranks behind the first rank in attempt 0
    publish_sibling(hostile, led, 600.0, skip=behind)
    for p in honest:
        p.proto.converge(r)
        assert p.ledger.rosters[r].hash == led.hash


def test_a_silent_first_rank_cannot_erase_its_skip_mark_with_a_sibling():
    """Attack: an established identity that draws rank 0 stays silent (the round waits for
    collect_timeout + leader_backoff: rank 1 leads, listing it in `skip`), then publishes a
    sibling of rank 1's roster as rank 0 of attempt 0, with an empty `skip` (valid: nobody ranks
    ahead of it). Members converged on the better-ranked sibling, and the mark was gone: it was
    never ranked last, stalled every round it drew a first rank, and picked the next beacon (its
    reveal). Defence (election.better_siblings): a sibling whose leader the roster a member
    holds lists in `skip` never replaces it; the member took that roster while the passed-over
    leader's was not there. Left open: a member that came to the round after rank 1's turn and
    sees both at once takes the smaller slot, the silent rank 0's, and then refuses the swarm's
    next roster (a resync); see better_siblings for why no rule from the two rosters alone
    closes both this and a hostile rank 1's copy of an honest rank 0's roster."""
    honest, hostile, led = silent_first_rank()
    r = led.roster.round
    publish_sibling(hostile, led, 600.0)
    for p in honest:
        p.proto.converge(r)
        taken = p.ledger.rosters[r].roster
        assert p.ledger.rosters[r].hash == led.hash and hostile.id in taken.skip
        assert sum(hostile.id in a.roster.skip for a in p.ledger.rosters.values()) == 1  # one mark of two
