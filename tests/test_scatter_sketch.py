"""Sketch audits (node/scatter/sketch.py), in the simulated round: a liar is caught from a few
signed scalars per sender, an honest owner is never framed, a sender whose sketches are not its
chunk's is convicted by a proof anyone checks, and the limit: a colluding sender covers a lie
unless a checker fetches its chunk."""

from __future__ import annotations

import dataclasses

import torch

from bench.scale.sim import leader_of, make_updates, peer_ids, round_of
from node.scatter import sketch
from node.scatter.audit import Input
from node.scatter.reduce import two_level
from node.scatter.sketch import LINEAR, SketchRound, decoded_output, holds, is_bad_note, probes, write_note
from node.scatter.traffic import Behaviour
from protocol.kinds.scatter import task_name

N, TOTAL = 16, 8192


def run(updates, behaviour=None, checkers=4, fetch=0, round_no=1):
    peers = sorted(updates)
    keys, rnd = round_of(peers, TOTAL, round_no=round_no, agg=LINEAR)
    sr = SketchRound(
        rnd, updates, keys, leader_of(peers, round_no), behaviour=behaviour, checkers=checkers, fetch=fetch
    )
    return sr, sr.run(), rnd


def owned_by(rnd, peer):
    return [
        (1, g, j) for g in range(rnd.grid.n_groups) for j in range(rnd.grid.chunks) if rnd.grid.owner_of(g, j) == peer
    ]


def test_an_honest_round_is_the_linear_rules_two_level_aggregate_and_frames_nobody():
    updates = make_updates(peer_ids(N), TOTAL, 1)
    sr, out, rnd = run(updates)
    assert not out.caught and not out.missed and not sr.framed
    assert torch.equal(out.final, two_level(updates, rnd.grid, LINEAR))


def test_a_lying_owner_is_caught_and_the_round_ends_exact():
    peers = peer_ids(N)
    updates = make_updates(peers, TOTAL, 2)
    for r, liar in enumerate(peers[:3]):
        sr, out, rnd = run(updates, {liar: Behaviour(lie=True)}, round_no=r)
        assert liar in out.caught and not out.missed and not sr.framed
        assert torch.equal(out.final, two_level(updates, rnd.grid, LINEAR))


def test_a_liar_that_forges_its_own_note_is_caught_from_its_own_chunk():
    """The owner is a sender of its own task: checkers always fetch that input."""
    peers = peer_ids(N)
    updates = make_updates(peers, TOTAL, 3)
    sr, out, rnd = run(updates, {peers[4]: Behaviour(lie=True, collude=True)})
    assert peers[4] in out.caught and not out.missed
    assert torch.equal(out.final, two_level(updates, rnd.grid, LINEAR))


def test_a_colluding_sender_covers_its_owners_lie_unless_a_checker_fetches_its_chunk():
    """The limit: a note binds to its chunk only for whoever holds the chunk. Every member colludes
    but the checkers, so a fellow sender signs sketches that make the lie consistent."""
    peers = peer_ids(N)
    updates = make_updates(peers, TOTAL, 4)
    act = {p: Behaviour(lie=p == peers[0], collude=True) for p in peers}
    honest = dataclasses.replace(act[peers[0]], collude=False, lie=False)
    _, _, rnd = run(updates, act, checkers=0)
    tasks = owned_by(rnd, peers[0])
    assert tasks
    # checkers honest: one per member, all others colluders; no fetch of other inputs
    act = {p: act[p] if p == peers[0] or p in rnd.grid.groups[tasks[0][1]] else honest for p in peers}
    sr, out, _ = run(updates, act, checkers=4, fetch=0)
    assert task_name(tasks[0]) in out.missed  # level 1 (level 2: its fellows are not its senders)
    sr, out, _ = run(updates, act, checkers=4, fetch=N)  # every input fetched: forger and liar caught
    assert peers[0] in out.caught and not out.missed
    assert any(p in out.caught for p in rnd.grid.groups[tasks[0][1]] if p != peers[0])


def test_a_sender_with_inconsistent_sketches_is_convicted_by_a_proof_anyone_checks():
    peers = peer_ids(N)
    updates = make_updates(peers, TOTAL, 5)
    sr, out, rnd = run(updates, {peers[7]: Behaviour(skew_sketch=True)})
    assert peers[7] in out.caught and len(out.caught) == 1 and not sr.framed  # the owner is not framed
    assert torch.equal(out.final, two_level(updates, rnd.grid, LINEAR))
    # the proof: its chunk (with its signed commitment) and its signed note, checked from the seed alone
    g = rnd.grid.group_of(peers[7])
    task, place = (1, g, 0), rnd.grid.groups[g].index(peers[7])
    item, seed, name = sr.used[task][place], sr.seeds[1], task_name(task)
    assert isinstance(item, Input)
    span = rnd.span(*task)
    piece, probe = rnd.decode_input(1, item.data, span), probes(seed, name, sketch.PROBES, span.size)
    skewed = write_note(rnd, sr.keys[peers[7]], name, item, piece, probe, [1.0] * sketch.PROBES)
    honest = write_note(rnd, sr.keys[peers[7]], name, item, piece, probe)
    assert is_bad_note(rnd, task, place, item, skewed, seed, sketch.PROBES)
    assert not is_bad_note(rnd, task, place, item, honest, seed, sketch.PROBES)
    other = write_note(rnd, sr.keys[peers[8]], name, item, piece, probe, [1.0] * sketch.PROBES)
    assert not is_bad_note(rnd, task, place, item, other, seed, sketch.PROBES)  # not the sender's signature
    forged = dataclasses.replace(skewed, body=skewed.body.replace(b"\xa51/", b"\xa52/"))  # another task
    assert forged.body != skewed.body
    assert not is_bad_note(rnd, task, place, item, forged, seed, sketch.PROBES)


def test_the_test_catches_a_large_lie_and_passes_one_under_the_tolerance():
    """The tolerance is the int8 wire's rounding: a lie of ~1% of the output's norm passes."""
    peers = peer_ids(N)
    updates = make_updates(peers, TOTAL, 6)
    sr, out, rnd = run(updates)
    task = (1, 0, 0)
    included = [(g, i) for g, i in enumerate(sr.used[task]) if i is not None]
    span, seed = rnd.span(*task), sr.seeds[1]
    probe = probes(seed, task_name(task), sketch.PROBES, span.size)
    pieces = [rnd.decode_input(1, i.data, span) for _, i in included]
    notes = [(float(p.norm()), sketch.sketch_of(probe, p)) for p in pieces]
    y = decoded_output(rnd, task, sr.outputs[task])
    assert holds(y, probe, notes)
    assert not holds(y * -10, probe, notes)
    noise = torch.randn(y.numel(), generator=torch.Generator().manual_seed(0))
    assert holds(y + 0.01 * y.norm() * noise / noise.norm(), probe, notes)
