"""`bench scale --tier sketch`: linear sketch audits (node/scatter/sketch.py) against 1 and 2
recompute auditors, same seeds: bytes per peer, corrupted rounds with 20% patient colluders
(renewed), and what the linear rule (a norm-clipped mean, no trim) costs in accuracy. Simulated
only: the node audits by recompute."""

from __future__ import annotations

import threading

from bench.scale import sim
from bench.scale.count import one_update
from node.outer.aggregate import Mean, Robust
from node.scatter import chunks
from node.scatter.reduce import two_level
from node.scatter.sketch import LINEAR

ROWS = (("recompute", 1, 0), ("recompute", 2, 0), ("sketch", 4, 0), ("sketch", 8, 0), ("sketch", 4, 2))
"""(audit, auditors or checkers a task, inputs besides the owner's own each checker fetches)."""
PEERS, VALUES, BYTES_VALUES = 64, 4096, 49152
"""The collusion rounds' size (as the collusion rows); the bytes and accuracy rounds' values."""
SEEDS, ROUNDS = 3, 40


def args(audit: str, count: int, fetch: int) -> dict:
    return {"auditors": count} if audit == "recompute" else {"sketch": (count, fetch)}


def kwargs(audit: str, count: int, fetch: int) -> dict:
    return {} if audit == "recompute" else {"sketch": (count, fetch)}


def sketch_rows(stop: threading.Event, say=print) -> dict:
    out: dict = {"bytes": [], "collusion": [], "accuracy": []}
    peers = sim.peer_ids(PEERS)
    updates = sim.make_updates(peers, BYTES_VALUES, 0)
    for audit, count, fetch in ROWS:
        o, rnd = sim.one_round(peers, updates, BYTES_VALUES, **args(audit, count, fetch))
        t = sim.traffic_stats(o.traffic, peers, one_update(BYTES_VALUES, rnd.grid))
        out["bytes"].append({"audit": audit, "count": count, "fetch": fetch, "per_peer_x_update": t})
    for audit, count, fetch in ROWS:
        if stop.is_set():
            break
        say(f"scale sketch: 20% patient colluders, {audit} x {count} (fetch {fetch}) ...")
        runs = [
            sim.colluders(
                PEERS, VALUES, ROUNDS, 0.2, count, patient=True, renew=True, seed=s, **kwargs(audit, count, fetch)
            )
            for s in range(SEEDS)
        ]
        out["collusion"].append(sim.summed(runs) | {"audit": audit, "count": count, "fetch": fetch})
    out["accuracy"] = accuracy(peers, updates)
    return out


def accuracy(peers: list[str], updates: dict) -> dict:
    """The linear rule's aggregate against verify-all's robust one, honest and with 20% of the
    senders poisoned (x -100, as the poisoned row)."""
    wire = {p: chunks.decode(chunks.encode(u), BYTES_VALUES) for p, u in updates.items()}
    robust = Robust().dense([[u] for u in wire.values()])[0]
    o, rnd = sim.one_round(peers, updates, BYTES_VALUES, sketch=(4, 0))
    trimmed = two_level(updates, rnd.grid, Robust())
    bad = {p: updates[p] * -100.0 for p in peers[: round(0.2 * len(peers))]}
    honest = Mean().dense([[updates[p]] for p in peers if p not in bad])[0]
    poisoned = {**updates, **bad}
    lin, _ = sim.one_round(peers, poisoned, BYTES_VALUES, sketch=(4, 0))
    trim, _ = sim.one_round(peers, poisoned, BYTES_VALUES)
    pwire = [[chunks.decode(chunks.encode(u), BYTES_VALUES)] for u in poisoned.values()]
    return {
        "linear_vs_verify_all_robust": sim.rel(o.final, robust),
        "trimmed_two_level_vs_verify_all_robust": sim.rel(trimmed, robust),
        "linear_equals_its_two_level": bool((o.final == two_level(updates, rnd.grid, LINEAR)).all()),
        "poisoned_linear_vs_honest_mean": sim.rel(lin.final, honest),
        "poisoned_trimmed_vs_honest_mean": sim.rel(trim.final, honest),
        "poisoned_verify_all_robust_vs_honest_mean": sim.rel(Robust().dense(pwire)[0], honest),
        "poisoned_verify_all_mean_vs_honest_mean": sim.rel(Mean().dense(pwire)[0], honest),
    }


def sketch_table(rows: dict) -> str:
    cost = {(r["audit"], r["count"], r["fetch"]): r["per_peer_x_update"] for r in rows["bytes"]}
    lines = [
        "| audit | per task | fetch | bytes down / up, mean / max (x update) | records down mean (kB) "
        "| rounds with a lie | corrupted | fraction (95% upper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows["collusion"]:
        t = cost[(r["audit"], r["count"], r["fetch"])]
        lines.append(
            f"| {r['audit']} | {r['count']} | {r['fetch'] if r['audit'] == 'sketch' else '-'} "
            f"| {t['data_down']['mean']} / {t['data_down']['max']}, {t['data_up']['mean']} / {t['data_up']['max']} "
            f"| {t['records_down']['mean_kb']} | {r['rounds_with_a_lie']} | {r['rounds_corrupted']} "
            f"| {r['corrupted_fraction']} ({r['upper95']}) |"
        )
    lines += ["", "- " + ", ".join(f"{k}: {v}" for k, v in rows["accuracy"].items())]
    return "\n".join(lines)
