"""Spot audits (grid.SPOT_COVER, a measured model, not the node's rule): a task's first auditors each
recompute only a share of its blocks, drawn from the audit seed after the receipts are fixed.
They catch a lie on a whole result, and see a lie on one block only through the auditors whose
share holds it; the bytes they cost are counted as the simulated round moves them."""

from __future__ import annotations

import torch

from bench.scale.count import count_round
from bench.scale.sim import drawn, leader_of, make_updates, one_round, peer_ids, round_of
from node.outer.aggregate import Robust
from node.scatter import chunks
from node.scatter.audit import answer_task, audit_seed
from node.scatter.grid import SPOT_BLOCKS, audit_shares
from node.scatter.reduce import two_level
from node.scatter.round import ScatterRound, seed_of
from node.scatter.traffic import Behaviour

N, TOTAL = 16, 12288  # 4 x 4: a level-2 part is 768 values, SPOT_BLOCKS (3) int8 blocks


def test_shares_cover_every_block_cover_times_by_distinct_auditors():
    for cover in (1, 2, 3):
        shares = audit_shares(seed_of("s"), "1/0/0", 3, SPOT_BLOCKS, cover)
        counts = [sum(b in share for share in shares) for b in range(SPOT_BLOCKS)]
        assert counts == [cover] * SPOT_BLOCKS
        assert sorted(map(len, shares)) == [SPOT_BLOCKS * cover // 3] * 3  # each checks cover/3 of the task
    assert audit_shares(seed_of("s"), "1/0/0", 3, SPOT_BLOCKS, 0) == [tuple(range(SPOT_BLOCKS))] * 3


def test_the_shares_follow_the_fixed_receipts_so_an_owner_cannot_aim_its_lie():
    """The shares are drawn from the audit seed, which hashes the fixed receipts' digest and the
    leader's unique signature of it: a receipt other than the fixed ones gives other shares, so
    when an owner signs, it cannot know which of its blocks anyone will check."""
    grid_seed, draw = seed_of("grid"), b"leader-signature"
    seeds = [audit_seed(grid_seed, seed_of(f"fixed set {i}"), draw) for i in range(30)]
    picks = [audit_shares(s, "2/1/3", 3, SPOT_BLOCKS, 1) for s in seeds]
    assert picks[0] == audit_shares(seeds[0], "2/1/3", 3, SPOT_BLOCKS, 1)  # every peer derives them alike
    assert len(set(map(tuple, picks))) > 3  # another receipt set, other shares
    assert {p[0] for p in picks} == {(b,) for b in range(SPOT_BLOCKS)}  # no block is safe to lie on


def test_a_spot_check_sees_a_one_block_lie_only_on_its_blocks():
    peers = peer_ids(N)
    keys, rnd = round_of(peers, TOTAL)
    sr = ScatterRound(rnd, make_updates(peers, TOTAL, 1), keys, leader_of(peers, 1))
    sr.send_chunks()
    for task in ((1, 0, 0), (2, 1, 2)):
        if task[0] == 2:
            sr.reduce_level(1)
            sr.send_parts()
        owner = rnd.owner(*task)
        sr.receipts[task], sr.outputs[task] = answer_task(
            rnd, keys[owner], task, sr.inputs[task], lie=True, lie_blocks=1
        )
        sr.used[task] = sr.inputs[task]
        blocks = len(rnd.blocks(*task))
        assert blocks == SPOT_BLOCKS
        assert sr.check(task, None) is not None  # a full audit catches it
        assert sr.check(task, (0,)) is not None and sr.check(task, (0, blocks - 1)) is not None
        assert sr.check(task, tuple(range(1, blocks))) is None  # every block but the lied one: it passes


def test_a_whole_result_liar_is_caught_by_three_spot_auditors_and_the_round_ends_exact():
    peers = peer_ids(N)
    updates = make_updates(peers, TOTAL, 2)
    for r, liar in enumerate(peers[:4]):
        out, rnd = one_round(
            peers, updates, TOTAL, behaviour={liar: Behaviour(lie=True)}, auditors=3, cover=1, round_no=r
        )
        assert liar in out.caught and not out.missed
        assert torch.equal(out.final, two_level(updates, rnd.grid, Robust()))


def test_a_one_block_liar_is_caught_when_an_honest_auditor_holds_its_block():
    """With no colluder, the one auditor whose share holds the lied block is honest: caught."""
    peers = peer_ids(N)
    updates = make_updates(peers, TOTAL, 3)
    act = {peers[5]: Behaviour(lie=True, lie_blocks=1)}
    out, rnd = one_round(peers, updates, TOTAL, behaviour=act, auditors=3, cover=1)
    assert peers[5] in out.caught and torch.equal(out.final, two_level(updates, rnd.grid, Robust()))


def test_spot_bytes_counted_match_the_simulated_round_and_cost_one_full_auditor():
    peers = peer_ids(N)
    out, rnd = one_round(peers, make_updates(peers, TOTAL, 4), TOTAL, auditors=3, cover=1)
    counted = count_round(rnd.grid, TOTAL, leader_of(peers, 1), 3, cover=1)
    assert sum(counted.data_up.values()) == sum(out.traffic.data_up.values())
    full = count_round(rnd.grid, TOTAL, leader_of(peers, 1), 1)
    assert sum(counted.data_down.values()) == sum(full.data_down.values())  # 3 x 1/3 = one auditor's bytes
    a, b = sum(counted.records_down.values()), sum(out.traffic.records_down.values())
    assert abs(a - b) <= 0.01 * b
    assert chunks.BLOCK * SPOT_BLOCKS * N <= TOTAL


def test_the_draw_one_block_lies_escape_spot_audits_as_often_as_one_full_auditor():
    """The counted draw (sim.drawn): 3 spot auditors covering each block once catch a whole-result
    lie about as often as 3 full auditors (f^3), a one-block lie only as often as one (f)."""
    whole = drawn(64, 0.2, 3, 1500, cover=1)
    block = drawn(64, 0.2, 3, 1500, cover=1, lie_blocks=1)
    one = drawn(64, 0.2, 1, 1500)
    assert whole["miss_rate"] < 0.02 and block["miss_rate"] > 0.12 and one["miss_rate"] > 0.12
    assert abs(block["miss_rate"] - one["miss_rate"]) < 0.05
