"""Round protocol v3's exchange (node/scatter) over the simulated bus: the grid, a round of honest
owners, liars caught with proofs anyone can check, withholders replaced, bad inputs left out,
and the byte count that `bench scale` uses for 10,000 peers."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from bench.scale.count import count_round, one_update
from bench.scale.keys import FastChecker, FastKeys
from bench.scale.sim import leader_of, make_updates, one_round, peer_ids
from node.outer.aggregate import Robust
from node.scatter import chunks
from node.scatter.audit import FraudProof, Input, audit, is_fraud
from node.scatter.grid import assign_auditors, place, uses_scatter
from node.scatter.reduce import TwoLevel, two_level
from node.scatter.round import ScatterRound, seed_of
from node.scatter.traffic import Behaviour
from protocol.errors import ProtocolError
from protocol.kinds.scatter import Commitment, Receipt, flags_of

TOTAL = 8192  # values per update: 32 blocks


def test_the_switch_is_a_function_of_the_roster_size():
    assert not uses_scatter(15) and uses_scatter(16) and uses_scatter(1000)
    assert not uses_scatter(1000, min_peers=0)  # 0 turns it off
    assert uses_scatter(4, min_peers=4) and not uses_scatter(3, min_peers=4)


def test_grid_is_deterministic_and_owners_are_reachable():
    peers = peer_ids(50)
    behind_nat = set(peers[:20])
    grid = place(peers, set(peers) - behind_nat, seed_of("b"))
    assert grid == place(list(reversed(peers)), set(peers) - behind_nat, seed_of("b"))  # order does not matter
    assert grid != place(peers, set(peers) - behind_nat, seed_of("c"))  # a new beacon, a new grid
    assert sorted(grid.members()) == sorted(peers)
    for g in range(grid.n_groups):
        for j in range(grid.chunks):
            assert grid.owner_of(g, j) in grid.groups[g] and grid.owner_of(g, j) not in behind_nat
    with pytest.raises(ValueError, match="reachable"):
        place(peers, set(), seed_of("b"))


def test_auditors_are_balanced_and_never_audit_themselves():
    peers = peer_ids(40)
    tasks = {f"t{i}": peers[i % 40] for i in range(40)}
    drawn = assign_auditors(seed_of("s"), tasks, peers, 2)
    load = Counter(a for chosen in drawn.values() for a in chosen)
    assert all(len(chosen) == 2 and tasks[t] not in chosen for t, chosen in drawn.items())
    assert max(load.values()) == 2 and min(load.values()) == 2


def test_an_honest_round_gives_every_peer_the_two_level_aggregate_at_flat_bytes():
    for n in (16, 40):
        peers = peer_ids(n)
        updates = make_updates(peers, TOTAL, 0)
        out, rnd = one_round(peers, updates, TOTAL)
        assert torch.equal(out.final, two_level(updates, rnd.grid, Robust()))
        assert not out.caught and not out.withheld and out.phases == 5
        unit = one_update(TOTAL, rnd.grid)
        assert max(out.traffic.data_down[p] for p in peers) <= 4 * unit
        assert max(out.traffic.data_up[p] for p in peers) <= 4 * unit


def test_a_lying_owner_is_caught_in_the_round_and_its_task_recomputed():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 1)
    liar = peers[5]
    out, rnd = one_round(peers, updates, TOTAL, behaviour={liar: Behaviour(lie=True)})
    assert liar in out.caught and not out.missed
    assert torch.equal(out.final, two_level(updates, rnd.grid, Robust()))


def test_a_fraud_proof_convinces_anyone_and_an_honest_receipt_does_not():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 2)
    _, rnd = one_round(peers, updates, TOTAL)  # the round's grid and rule
    keys = {p: FastKeys(p) for p in peers}
    rnd = dataclasses.replace(rnd, checker=FastChecker(keys), replaced={}, fixed={}, caught=set(), committed=None)
    liar = rnd.grid.owner_of(0, 0)
    sr = ScatterRound(rnd, updates, keys, peers[0], behaviour={liar: Behaviour(lie=True)})
    sr.send_chunks()
    sr.compute((1, 0, 0))
    proof = audit(rnd, sr.receipts[(1, 0, 0)], 1, 0, 0, sr.inputs[(1, 0, 0)])
    assert proof is not None and is_fraud(rnd, proof)
    sr.behaviour = {}
    sr.compute((1, 0, 0))  # the same owner, honest now
    honest = FraudProof(sr.receipts[(1, 0, 0)], 1, 0, 0, tuple(sr.inputs[(1, 0, 0)]))
    assert not is_fraud(rnd, honest)
    forged = list(sr.inputs[(1, 0, 0)])
    first = next(i for i, x in enumerate(forged) if x is not None)
    forged[first] = Input(forged[first].envelope, chunks.encode(torch.ones(rnd.chunk(0).size)))
    assert not is_fraud(rnd, FraudProof(sr.receipts[(1, 0, 0)], 1, 0, 0, tuple(forged)))  # inputs nobody signed


def test_a_withholding_owner_is_replaced_and_the_round_ends_exact():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 3)
    quiet = peers[7]
    out, rnd = one_round(peers, updates, TOTAL, behaviour={quiet: Behaviour(withhold=True)})
    assert quiet in out.withheld and quiet not in out.caught
    assert out.phases > 5
    assert torch.equal(out.final, two_level(updates, rnd.grid, Robust()))


def test_chunks_a_sender_did_not_commit_to_are_left_out():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 4)
    cheat = peers[2]
    out, rnd = one_round(peers, updates, TOTAL, behaviour={cheat: Behaviour(garble=True)})
    g = rnd.grid.group_of(cheat)
    at = rnd.grid.groups[g].index(cheat)
    for j in range(rnd.grid.chunks):
        receipt = rnd.checker.open(out.receipts[(1, g, j)], Receipt, rnd.owner(1, g, j))
        assert not flags_of(receipt.included, len(rnd.grid.groups[g]))[at]
    honest = torch.stack([u for p, u in updates.items() if p != cheat]).mean(0)
    assert rel_close(out.final, honest)


def rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 0.6) -> bool:
    return float((a - b).norm() / b.norm()) < tol


def test_the_count_for_10000_peers_matches_the_simulated_round():
    peers = peer_ids(40)
    updates = make_updates(peers, TOTAL, 5)
    out, rnd = one_round(peers, updates, TOTAL)
    counted = count_round(rnd.grid, TOTAL, leader_of(peers, 1))
    for name in ("data_up", "data_down"):
        assert sum(getattr(counted, name).values()) == sum(getattr(out.traffic, name).values())
    for name in ("records_up", "records_down"):
        a, b = sum(getattr(counted, name).values()), sum(getattr(out.traffic, name).values())
        assert abs(a - b) <= 0.01 * b


def test_two_level_aggregator_plugs_into_a_strategy_and_tracks_the_mean():
    torch.manual_seed(0)
    shared = torch.randn(64, 33) * 0.01
    updates = [[shared + torch.randn(64, 33) * 0.005] for _ in range(16)]
    out = TwoLevel(Robust()).dense(updates)[0]
    mean = torch.stack([u[0] for u in updates]).mean(0)
    assert out.shape == (64, 33) and rel_close(out, mean, 0.2)


def test_records_from_peers_are_checked_field_by_field():
    good = Commitment(run="r", round=1, attempt=0, peer=peer_ids(1)[0], base="0" * 64, tokens=5, chunks=("a" * 64,))
    assert Commitment.from_wire(good.to_wire()) == good
    for bad in ({"chunks": []}, {"chunks": ["xyz"]}, {"tokens": -1}, {"peer": "not base58!"}, {"base": 7}):
        with pytest.raises(ProtocolError):
            Commitment.from_wire({**good.to_wire(), **bad})
    receipt = Receipt(
        run="r", round=1, attempt=0, owner=peer_ids(1)[0], level=1, a=0, b=0,
        included=b"\x01", inputs_root="b" * 64, outputs=("c" * 64,),
    )  # fmt: skip
    assert Receipt.from_wire(receipt.to_wire()) == receipt
    for bad in ({"level": 3}, {"included": b""}, {"outputs": []}, {"included": "x"}, {"a": -1}):
        with pytest.raises(ProtocolError):
            Receipt.from_wire({**receipt.to_wire(), **bad})
    with pytest.raises(ProtocolError):
        flags_of(b"\x01\x00", 3)


def test_an_owner_that_leaves_out_most_inputs_is_replaced():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 6)
    _, rnd = one_round(peers, updates, TOTAL)
    censor = rnd.grid.owner_of(1, 0)
    out, rnd = one_round(peers, updates, TOTAL, behaviour={censor: Behaviour(censor=True)})
    assert censor in out.withheld and censor not in out.caught
    assert torch.equal(out.final, two_level(updates, rnd.grid, Robust()))


def test_a_withholder_owns_nothing_for_a_while_but_still_sends():
    from node.scatter.grid import STRIKE_ROUNDS, may_own

    peers = peer_ids(16)
    struck = {peers[0]: 5}
    assert peers[0] not in may_own(set(peers), struck, 5) and peers[0] not in may_own(
        set(peers), struck, 5 + STRIKE_ROUNDS
    )
    assert peers[0] in may_own(set(peers), struck, 6 + STRIKE_ROUNDS) and peers[1] in may_own(set(peers), struck, 5)
    grid = place(peers, may_own(set(peers), struck, 6), seed_of("b"))
    assert peers[0] in grid.members() and all(peers[0] not in owners for owners in grid.owners)


def test_the_node_deals_the_named_default_of_auditors_a_task():
    """One constant (grid.AUDITORS) is what the node's leader deals before any conviction, what the
    simulated round and `bench scale` default to, and the count the 4x byte budget allows."""
    import ast
    import inspect

    from node.scatter import grid, runner
    from node.scatter.leader import Leader

    assert grid.AUDITORS == 1 and grid.ESCALATE == 3
    for cls in (Leader, ScatterRound):
        params = inspect.signature(cls.__init__).parameters
        assert (params["auditors"].default, params["escalate"].default) == (grid.AUDITORS, grid.ESCALATE)
    calls = [
        n
        for n in ast.walk(ast.parse(inspect.getsource(runner)))
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "Leader"
    ]
    assert [{k.arg: ast.unparse(k.value) for k in c.keywords} for c in calls] == [
        {"auditors": "AUDITORS", "escalate": "ESCALATE"}
    ]
    assert runner.AUDITORS is grid.AUDITORS
    peers = peer_ids(16)
    out, rnd = one_round(peers, make_updates(peers, TOTAL, 3), TOTAL)
    unit = one_update(TOTAL, rnd.grid)
    worst = max(max(out.traffic.data_up[p], out.traffic.data_down[p]) for p in peers) / unit
    assert worst <= 4.0  # the default keeps every peer within 4x one update
