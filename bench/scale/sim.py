"""The rows of `bench scale`: v3 rounds of N simulated peers through node/scatter's code.

Updates are synthetic pseudo-gradients: a shared direction plus each peer's own noise (twice
the shared part's size, cosine ~0.2 between peers, as peers on different data see), flat, of
`total` values. Bytes are in units of one update as v3 sends it (int8 chunks); verify-all's
figure is N - 1 updates down per peer (and, on average, up).
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import time

import torch

from bench.scale.count import count_round, one_update
from bench.scale.keys import FastChecker, FastKeys
from node.outer.aggregate import Mean, Robust
from node.scatter import chunks
from node.scatter import sketch as sketch_rule
from node.scatter.audit import Round
from node.scatter.grid import AUDITORS, ESCALATE, SPOT_BLOCKS, SPOT_COVER, assign_auditors, audit_shares, may_own, place
from node.scatter.reduce import two_level
from node.scatter.round import ScatterRound, seed_of
from node.scatter.sketch import SketchRound
from node.scatter.traffic import Behaviour, Outcome, Traffic
from protocol.kinds.scatter import task_name
from protocol.signing import b58encode


def peer_ids(n: int, salt: str = "") -> list[str]:
    return [b58encode(b"\x12\x20" + hashlib.sha256(f"{salt}{i}".encode()).digest()) for i in range(n)]


def make_updates(peers: list[str], total: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(total, generator=gen) * 0.01
    return {p: shared + torch.randn(total, generator=gen) * 0.02 for p in peers}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a - b).norm() / b.norm()), 4)


def traffic_stats(t: Traffic, peers: list[str], unit: int) -> dict:
    """Per peer, in units of one update; records also in kB (they do not grow with the model)."""
    out = {}
    for name in ("data_up", "data_down", "records_up", "records_down"):
        values = [getattr(t, name)[p] for p in peers]
        out[name] = {"mean": round(statistics.fmean(values) / unit, 3), "max": round(max(values) / unit, 3)}
        if name.startswith("records"):
            out[name] |= {"mean_kb": round(statistics.fmean(values) / 1e3, 1), "max_kb": round(max(values) / 1e3, 1)}
    return out


def leader_of(peers: list[str], round_no: int) -> str:
    """The simulated round's leader (the election is issue 16's, not what is measured here)."""
    return sorted(peers, key=lambda p: hashlib.sha256(f"{round_no}{p}".encode()).digest())[0]


def round_of(peers, total, *, round_no=1, reachable=None, agg=None) -> tuple[dict, Round]:
    """(keys, Round) of a simulated round: every peer reachable unless `reachable` says otherwise."""
    keys = {p: FastKeys(p, hashlib.sha256(p.encode()).digest()) for p in peers}
    grid = place(peers, set(peers) if reachable is None else reachable, seed_of(f"beacon{round_no}"))
    checker = FastChecker(keys)
    return keys, Round(
        run="bench-scale", round=round_no, attempt=0, grid=grid, total=total, agg=agg or Robust(), checker=checker
    )


def one_round(
    peers,
    updates,
    total,
    *,
    behaviour=None,
    auditors=AUDITORS,
    escalate=ESCALATE,
    round_no=1,
    agg=None,
    reachable=None,
    cover=SPOT_COVER,
    sketch=None,
) -> tuple[Outcome, Round]:
    """`cover` > 0: spot audits (grid.SPOT_COVER), each block checked by `cover` of the `auditors`.
    `sketch` (checkers, fetch): sketch audits on the linear rule instead (node/scatter/sketch.py)."""
    agg = sketch_rule.LINEAR if sketch else agg
    keys, rnd = round_of(peers, total, round_no=round_no, agg=agg, reachable=reachable)
    leader = leader_of(peers, round_no)
    if sketch:
        checkers, fetch = sketch
        sr = SketchRound(rnd, updates, keys, leader, behaviour=behaviour, checkers=checkers, fetch=fetch)
        return sr.run(), rnd
    sr = ScatterRound(rnd, updates, keys, leader, behaviour=behaviour, auditors=auditors, escalate=escalate)
    sr.cover = cover
    return sr.run(), rnd


def honest_row(n: int, total: int, auditors: int = AUDITORS, seed: int = 0) -> dict:
    """One honest round: bytes per peer, phases, and the aggregate against verify-all's."""
    peers = peer_ids(n)
    updates = make_updates(peers, total, seed)
    t0 = time.monotonic()
    out, rnd = one_round(peers, updates, total, auditors=auditors)
    seconds = time.monotonic() - t0
    wire = {p: chunks.decode(chunks.encode(u), total) for p, u in updates.items()}  # what verify-all receives
    mean, robust = Mean().dense([[u] for u in wire.values()])[0], Robust().dense([[u] for u in wire.values()])[0]
    unit = one_update(total, rnd.grid)
    return {
        "peers": n,
        "values": total,
        "auditors": auditors,
        "groups": rnd.grid.n_groups,
        "chunks": rnd.grid.chunks,
        "update_bytes": unit,
        "per_peer_x_update": traffic_stats(out.traffic, peers, unit),
        "verify_all_x_update": n - 1,
        "phases": out.phases,
        "equals_honest_two_level": torch.equal(out.final, two_level(updates, rnd.grid, Robust())),
        "v3_vs_mean": rel(out.final, mean),
        "verify_all_robust_vs_mean": rel(robust, mean),
        "v3_vs_verify_all_robust": rel(out.final, robust),
        "seconds": round(seconds, 1),
    }


def counted_row(n: int, total: int, auditors: int = AUDITORS, cover: int = 0) -> dict:
    peers = peer_ids(n)
    grid = place(peers, set(peers), seed_of("beacon1"))
    t0 = time.monotonic()
    traffic = count_round(grid, total, peers[0], auditors, cover=cover)
    unit = one_update(total, grid)
    return {
        "peers": n,
        "values": total,
        "auditors": auditors,
        "cover": cover,
        "groups": grid.n_groups,
        "chunks": grid.chunks,
        "update_bytes": unit,
        "per_peer_x_update": traffic_stats(traffic, peers, unit),
        "verify_all_x_update": n - 1,
        "counted_not_simulated": True,
        "seconds": round(time.monotonic() - t0, 1),
    }


def lying_owner(n: int, total: int, trials: int) -> dict:
    """One liar per trial (a random member, lying at every task it owns): caught in that round?"""
    peers, rng, caught, corrupted = peer_ids(n), random.Random(1), 0, 0
    for trial in range(trials):
        updates = make_updates(peers, total, trial)
        liar = rng.choice(peers)
        out, rnd = one_round(peers, updates, total, behaviour={liar: Behaviour(lie=True)}, round_no=trial)
        caught += liar in out.caught
        corrupted += not torch.equal(out.final, two_level(updates, rnd.grid, Robust()))
    return {
        "attack": "lying owner",
        "peers": n,
        "trials": trials,
        "caught_in_round": caught,
        "rounds_corrupted": corrupted,
    }


def withholding_owner(n: int, total: int, trials: int) -> dict:
    peers, rng, done, phases = peer_ids(n), random.Random(2), 0, []
    for trial in range(trials):
        updates = make_updates(peers, total, trial)
        out, rnd = one_round(
            peers, updates, total, behaviour={rng.choice(peers): Behaviour(withhold=True)}, round_no=trial
        )
        done += torch.equal(out.final, two_level(updates, rnd.grid, Robust()))
        phases.append(out.phases)
    return {
        "attack": "withholding owner",
        "peers": n,
        "trials": trials,
        "rounds_complete_and_exact": done,
        "phases": max(phases),
    }


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """The upper end of the Wilson 95% interval of k events in n trials."""
    if n == 0:
        return 1.0
    p, zz = k / n, z * z
    return round((p + zz / (2 * n) + z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))) / (1 + zz / n), 4)


def colluders(
    n: int,
    total: int,
    rounds: int,
    fraction: float,
    auditors: int,
    *,
    escalate=ESCALATE,
    patient=False,
    renew=False,
    seed=3,
    cover=0,
    lie_blocks=0,
    sketch=None,
) -> dict:
    """A fraction of members cover for each other as auditors and lie as owners until caught; a
    caught liar is banned. All at once (every colluder lies whenever it owns a task), or patient:
    one colluder lies per round, so a conviction never warns of the others.
    A campaign (renew False) ends when every colluder is banned (or after `rounds`): the corrupted
    rounds it buys do not grow with the run, so they are given over the rounds with a lie. Renew:
    a fresh colluding identity takes each banned one's place (the coalition stays `fraction` of
    the members, every round is attacked): the steady state, which a run's length does not dilute.
    `cover`: spot audits (grid.SPOT_COVER); `lie_blocks`: a liar lies on that many blocks of a
    task only (0: its whole result). `sketch` (checkers, fetch): sketch audits (one_round)."""
    peers, rng = peer_ids(n, f"s{seed}-"), random.Random(seed)
    bad = set(rng.sample(peers, round(fraction * n)))
    members, banned, fresh = list(peers), set(), 0
    corrupted, attacked, lies, missed, ran = 0, 0, 0, 0, 0
    for r in range(rounds):
        left = sorted(bad - banned)
        if not left:
            break
        updates = make_updates(members, total, 100 + r)
        liars = set(rng.sample(left, 1)) if patient else set(left)
        act = {p: Behaviour(lie=p in liars, lie_blocks=lie_blocks, collude=True) for p in left}
        out, _ = one_round(
            members,
            updates,
            total,
            behaviour=act,
            auditors=auditors,
            escalate=escalate,
            round_no=r,
            cover=cover,
            sketch=sketch,
        )
        ran += 1
        told = len(out.caught) + len(out.missed)
        lies, missed, attacked = lies + told, missed + len(out.missed), attacked + bool(told)
        corrupted += bool(out.missed)
        gone = set(out.caught)  # a liar caught on two tasks is listed twice
        banned |= gone
        members = [p for p in members if p not in gone]
        if renew:
            new = peer_ids(len(gone), f"s{seed}-new{fresh}-")
            fresh, bad, members = fresh + 1, bad | set(new), members + new
    return {
        "attack": f"{fraction:.0%} colluding owners and auditors, {'one liar a round' if patient else 'all lying'}"
        + (", renewed" if renew else ", one campaign"),
        "peers": n,
        "auditors": auditors,
        "cover": cover,
        "sketch": list(sketch) if sketch else None,
        "lie": f"{lie_blocks} block(s)" if lie_blocks else "whole result",
        "escalate": escalate,
        "seed": seed,
        "rounds": ran,
        "rounds_with_a_lie": attacked,
        "rounds_corrupted": corrupted,
        "lies": lies,
        "lies_missed": missed,
        "colluders_banned": len(banned & bad),
        "colluders": len(bad),
    }


def summed(rows: list[dict]) -> dict:
    """Rows of one attack over several seeds, added up, with the corrupted fraction of the rounds
    that had a lie and its Wilson 95% upper bound."""
    out = {k: v for k, v in rows[0].items() if k != "seed"} | {"seeds": len(rows)}
    for k in (
        "rounds",
        "rounds_with_a_lie",
        "rounds_corrupted",
        "lies",
        "lies_missed",
        "colluders_banned",
        "colluders",
    ):
        out[k] = sum(r[k] for r in rows)
    k, m = out["rounds_corrupted"], out["rounds_with_a_lie"]
    return out | {"corrupted_fraction": round(k / max(1, m), 4), "upper95": wilson_upper(k, m)}


def drawn(n: int, fraction: float, auditors: int, trials: int, seed: int = 5, cover=0, lie_blocks=0) -> dict:
    """Counted, not simulated: the node's auditor draw (grid.place, grid.assign_auditors) for a
    fresh grid, coalition and audit seed per trial; a colluder that owns a level-1 task lies there,
    and the lie survives iff every auditor dealt to the task colludes (as in ScatterRound before
    any escalation). The per-lie rate is the steady state of the patient attack. `cover`: spot
    audits (grid.audit_shares of SPOT_BLOCKS); the lie, on its first `lie_blocks` blocks (0: all),
    survives iff every auditor whose share holds one of them colludes."""
    peers, rng, lies, missed = peer_ids(n, "draw-"), random.Random(seed), 0, 0
    for t in range(trials):
        grid = place(peers, set(peers), seed_of(f"draw{seed}-{t}"))
        bad = set(rng.sample(peers, round(fraction * n)))
        names = {task_name((1, g, j)): grid.owner_of(g, j) for g in range(grid.n_groups) for j in range(grid.chunks)}
        liar = rng.choice(sorted({o for o in names.values() if o in bad}))
        dealt = assign_auditors(seed_of(f"audit{seed}-{t}"), names, grid.members(), auditors)
        for name, owner in names.items():
            if owner == liar:
                shares = audit_shares(seed_of(f"audit{seed}-{t}"), name, len(dealt[name]), SPOT_BLOCKS, cover)
                lied = set(range(lie_blocks or SPOT_BLOCKS))
                seen = [a for a, share in zip(dealt[name], shares) if lied & set(share)]
                lies, missed = lies + 1, missed + all(a in bad for a in seen)
    return {
        "peers": n,
        "auditors": auditors,
        "cover": cover,
        "lie": f"{lie_blocks} block(s)" if lie_blocks else "whole result",
        "colluding": fraction,
        "trials": trials,
        "lies": lies,
        "lies_missed": missed,
        "miss_rate": round(missed / lies, 4),
        "upper95": wilson_upper(missed, lies),
        "counted_not_simulated": True,
    }


def withholders(n: int, total: int, rounds: int, fraction: float, *, strikes: bool) -> dict:
    """A fraction of members withhold whenever they own a task (never caught: withholding is not
    provable). With strikes, a withholder owns nothing for STRIKE_ROUNDS rounds (grid.may_own)."""
    peers, rng = peer_ids(n), random.Random(4)
    quiet = set(rng.sample(peers, round(fraction * n)))
    struck: dict[str, int] = {}
    slowed = 0
    for r in range(rounds):
        owners = may_own(set(peers), struck, r) if strikes else set(peers)
        act = dict.fromkeys(quiet, Behaviour(withhold=True))
        out, _ = one_round(
            peers, make_updates(peers, total, 200 + r), total, behaviour=act, round_no=r, reachable=owners
        )
        slowed += bool(out.withheld)
        struck |= dict.fromkeys(out.withheld, r)
    return {
        "attack": f"{fraction:.0%} withholding owners, {'with' if strikes else 'without'} strikes",
        "peers": n,
        "rounds": rounds,
        "rounds_with_a_replacement": slowed,
    }


def poisoned(n: int, total: int, fraction: float) -> dict:
    """A fraction of senders send their update negated and 100 times larger."""
    peers = peer_ids(n)
    updates = make_updates(peers, total, 7)
    honest = [p for p in peers if p not in set(peers[: round(fraction * n)])]
    truth = Mean().dense([[updates[p]] for p in honest])[0]
    bad = {p: updates[p] * -100.0 for p in peers[: round(fraction * n)]}
    out, _ = one_round(peers, {**updates, **bad}, total)
    wire = [[chunks.decode(chunks.encode(u), total)] for u in {**updates, **bad}.values()]
    return {
        "attack": f"{fraction:.0%} poisoned updates (x -100)",
        "peers": n,
        "v3_vs_honest_mean": rel(out.final, truth),
        "verify_all_robust_vs_honest_mean": rel(Robust().dense(wire)[0], truth),
        "verify_all_mean_vs_honest_mean": rel(Mean().dense(wire)[0], truth),
    }
