"""`swarmtrain bench scale`: the tiers, the run, the table."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import torch

from bench.scale import sim, sketches, wires


@dataclass(frozen=True, kw_only=True)
class Tier:
    simulated: tuple[tuple[int, int], ...]
    """(peers, values per update) of the honest rounds run through the code."""
    counted: tuple[int, ...]
    """Peers of the rounds only counted (bytes, no arithmetic)."""
    attack_peers: int
    attack_values: int
    trials: int
    """Rounds per lying / withholding owner row."""
    collusion_rounds: int
    """Rounds of each colluders row (the escalation row, one campaign of 1 auditor)."""
    collusion_values: int = 4096
    """Values per update of the collusion rows (whether a lie is caught does not depend on it)."""
    renewed: tuple[int, int, int] = (0, 0, 0)
    """(seeds, rounds per seed of the patient rows, of the all-lying rows) of the renewed
    coalition, for each count in AUDITOR_COUNTS."""
    campaigns: int = 0
    """Seeds of the patient campaigns (each until every colluder is banned), per count."""
    draw_trials: tuple[tuple[int, int], ...] = ()
    """(peers, trials) of the counted auditor draws (sim.drawn)."""
    wire_peers: tuple[int, ...] = ()
    """Peers of the rounds on the 1-bit and top-k wires (bench/scale/wires.py)."""
    spot: bool = False
    """Only the spot-audit rows (SPOT_ROWS): the collusion rows and the draw per (auditors, cover,
    lie), and the counted bytes; `collusion_values` must give level-2 parts SPOT_BLOCKS int8 blocks."""
    sketch: bool = False
    """Only the sketch-audit rows (bench/scale/sketches.py: simulated, not the node's audits)."""


TIERS = {
    "smoke": Tier(
        simulated=((16, 16384), (64, 16384)),
        counted=(1000, 10000),
        attack_peers=16,
        attack_values=16384,
        trials=4,
        collusion_rounds=4,
        renewed=(1, 3, 2),
        campaigns=1,
        draw_trials=((16, 500), (64, 500)),
    ),
    "full": Tier(
        simulated=((16, 65536), (64, 65536), (256, 65536), (1000, 262144)),
        counted=(16, 64, 256, 1000, 10000),
        attack_peers=64,
        attack_values=65536,
        trials=20,
        collusion_rounds=30,
        renewed=(3, 60, 30),
        campaigns=4,
        draw_trials=((16, 20000), (64, 20000), (256, 20000), (1000, 5000)),
    ),
    # spot audits against full ones, same seeds (grid.SPOT_COVER): 64 peers, 3 int8 blocks a part
    "spot": Tier(
        simulated=(),
        counted=(16, 64, 256, 1000, 10000),
        attack_peers=64,
        attack_values=0,
        trials=0,
        collusion_rounds=0,
        collusion_values=49152,
        renewed=(3, 40, 0),
        draw_trials=((16, 20000), (64, 20000), (256, 20000), (1000, 5000)),
        spot=True,
    ),
    # linear sketch audits against recompute ones, same seeds (bench/scale/sketches.py)
    "sketch": Tier(
        simulated=(), counted=(), attack_peers=0, attack_values=0, trials=0, collusion_rounds=0, sketch=True
    ),
    # the 1-bit and top-k wires (issue 17, item 1): bytes per peer and the aggregate, no attacks
    "wires": Tier(
        simulated=(), counted=(), attack_peers=0, attack_values=0, trials=0, collusion_rounds=0, wire_peers=(16, 64)
    ),
}
AUDITOR_COUNTS = (1, 2, 3)
"""Auditors per task the collusion and counted rows compare (the honest simulated rows: 1 and 2)."""
COUNTED_VALUES = 125_000_000
"""Values of the counted rows' update: a 1B-parameter model's 1-bit update is 125 MB, as is
this many int8 values."""


SPOT_ROWS = ((1, 0, 0), (2, 0, 0), (3, 1, 0), (3, 1, 1), (3, 2, 1))
"""(auditors, cover, blocks lied on) of the spot tier: the node's full audits (cover 0) with 1 and
2 auditors, and 3 spot auditors covering each block once or twice, against a liar that lies on
its whole result (0) or on one block, its best lie against them. Each row runs the same seeds."""
SIMULATED_SPOT = ((1, 0, 0), (3, 1, 0), (3, 1, 1), (3, 2, 1))
"""The SPOT_ROWS run through ScatterRound (2 full auditors: docs/benchmarks.md's earlier rows)."""


def run_scale(tier_name: str, json_path: str | None, stop: threading.Event, say=print) -> dict:
    torch.set_num_threads(1)  # many small tensors: threads only contend (and the machine is shared)
    tier = TIERS[tier_name]
    if tier.spot or tier.sketch:
        rows = {"tier": tier_name}
        rows |= {"spot": spot_rows(tier, stop, say)} if tier.spot else {"sketch": sketches.sketch_rows(stop, say)}
        if json_path:
            with open(json_path, "w") as f:
                json.dump(rows, f, indent=1)
        return rows
    rows: dict = {"tier": tier_name, "honest": [], "counted": [], "attacks": []}
    for n, values in tier.simulated:
        for auditors in (1, 2):
            if stop.is_set():
                break
            say(f"scale: {n} peers, {values} values, {auditors} auditor(s) per task ...")
            rows["honest"].append(sim.honest_row(n, values, auditors))
    for n in tier.counted:
        for auditors in AUDITOR_COUNTS:
            rows["counted"].append(sim.counted_row(n, COUNTED_VALUES, auditors))
    rows["wires"] = [] if stop.is_set() else wires.wire_rows(tier.wire_peers, say)
    rows["collusion"] = collusion_rows(tier, stop, say)
    n, values = tier.attack_peers, tier.attack_values
    steps = (
        []
        if not tier.trials
        else [
            lambda: sim.lying_owner(n, values, tier.trials),
            lambda: sim.withholding_owner(n, values, tier.trials),
            lambda: sim.colluders(n, tier.collusion_values, tier.collusion_rounds, 0.2, 1, escalate=0),
            lambda: sim.colluders(n, tier.collusion_values, tier.collusion_rounds, 0.2, 1),
            lambda: sim.withholders(n, values, tier.collusion_rounds, 0.2, strikes=False),
            lambda: sim.withholders(n, values, tier.collusion_rounds, 0.2, strikes=True),
            lambda: sim.poisoned(n, values, 0.2),
        ]
    )
    for step in steps:
        if stop.is_set():
            break
        rows["attacks"].append(step())
        say(f"scale: {rows['attacks'][-1]}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def collusion_rows(tier: Tier, stop: threading.Event, say=print) -> dict:
    """20% colluders against 1, 2 and 3 auditors a task: the renewed coalition (patient and all
    lying) and patient campaigns through ScatterRound, summed over seeds; the draw counted."""
    n, values, (seeds, patient_rounds, all_rounds) = tier.attack_peers, tier.collusion_values, tier.renewed
    out: dict = {"simulated": [], "drawn": []}
    for auditors in AUDITOR_COUNTS:
        for patient, rounds, renew, count in (
            (True, patient_rounds, True, seeds),
            (False, all_rounds, True, seeds),
            (True, 10 * n, False, tier.campaigns),
        ):
            if stop.is_set() or not count:
                continue
            runs = [
                sim.colluders(n, values, rounds, 0.2, auditors, patient=patient, renew=renew, seed=s)
                for s in range(count)
            ]
            out["simulated"].append(sim.summed(runs))
            say(f"scale: {out['simulated'][-1]}")
        for peers, trials in tier.draw_trials:
            if not stop.is_set():
                out["drawn"].append(sim.drawn(peers, 0.2, auditors, trials))
    return out


def spot_rows(tier: Tier, stop: threading.Event, say=print) -> dict:
    """20% colluders, renewed, one liar a round, against full and spot audits (SPOT_ROWS), the
    same seeds each; the draw counted; the bytes counted at 125M values."""
    n, values, (seeds, rounds, _) = tier.attack_peers, tier.collusion_values, tier.renewed
    out: dict = {"simulated": [], "drawn": [], "counted": []}
    for auditors, cover, lie in SPOT_ROWS:
        for peers in tier.counted:
            if not any((r["peers"], r["auditors"], r["cover"]) == (peers, auditors, cover) for r in out["counted"]):
                out["counted"].append(sim.counted_row(peers, COUNTED_VALUES, auditors, cover=cover))  # not the lie's
        for peers, trials in tier.draw_trials:
            if not stop.is_set():
                out["drawn"].append(sim.drawn(peers, 0.2, auditors, trials, cover=cover, lie_blocks=lie))
        if (auditors, cover, lie) in SIMULATED_SPOT and seeds and not stop.is_set():
            runs = [
                sim.colluders(
                    n, values, rounds, 0.2, auditors, patient=True, renew=True, seed=s, cover=cover, lie_blocks=lie
                )
                for s in range(seeds)
            ]
            out["simulated"].append(sim.summed(runs))
            say(f"scale: {out['simulated'][-1]}")
    return out


def spot_table(rows: dict) -> str:
    """Spot against full audits: simulated corrupted rounds, the draw, and the bytes (counted)."""
    cost = {(r["peers"], r["auditors"], r.get("cover", 0)): r["per_peer_x_update"] for r in rows["counted"]}
    lines = [
        "| auditors | cover | lie | rounds | corrupted | fraction (95% upper) | lies missed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows["simulated"]:
        lines.append(
            f"| {r['auditors']} | {r['cover'] or 'full'} | {r['lie']} | {r['rounds_with_a_lie']} "
            f"| {r['rounds_corrupted']} | {r['corrupted_fraction']} ({r['upper95']}) "
            f"| {r['lies_missed']} of {r['lies']} |"
        )
    lines += [
        "",
        "| auditors | cover | lie | peers | lies drawn | missed | rate (95% upper)"
        " | bytes down / up, mean / max (x update) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows["drawn"]:
        t = cost.get((r["peers"], r["auditors"], r["cover"]))
        bytes_ = "-" if t is None else " ; ".join(f"{t[k]['mean']} / {t[k]['max']}" for k in ("data_down", "data_up"))
        lines.append(
            f"| {r['auditors']} | {r['cover'] or 'full'} | {r['lie']} | {r['peers']:,} | {r['lies']:,} "
            f"| {r['lies_missed']} | {r['miss_rate']} ({r['upper95']}) | {bytes_} |"
        )
    return "\n".join(lines)


def scale_table(rows: dict) -> str:
    if "spot" in rows:
        return spot_table(rows["spot"])
    if "sketch" in rows:
        return sketches.sketch_table(rows["sketch"])
    lines = [
        "| peers | auditors | groups x chunks | down mean / max (x update) | up mean / max"
        " | records down mean / max (kB) | verify-all (x update) | phases | v3 = honest two-level"
        " | v3 / verify-all robust vs mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows["honest"] + rows["counted"]:
        t = r["per_peer_x_update"]
        lines.append(
            f"| {r['peers']:,}{' (counted)' if r.get('counted_not_simulated') else ''} | {r['auditors']} "
            f"| {r['groups']} x {r['chunks']} | {t['data_down']['mean']} / {t['data_down']['max']} "
            f"| {t['data_up']['mean']} / {t['data_up']['max']} "
            f"| {t['records_down']['mean_kb']} / {t['records_down']['max_kb']} "
            f"| {r['verify_all_x_update']:,} | {r.get('phases', 5)} | {r.get('equals_honest_two_level', '-')} "
            f"| {r.get('v3_vs_mean', '-')} / {r.get('verify_all_robust_vs_mean', '-')} |"
        )
    lines.append("")
    if rows.get("wires"):
        lines += [wires.wires_table(rows["wires"]), ""]
    for a in rows["attacks"]:
        lines.append("- " + ", ".join(f"{k}: {v}" for k, v in a.items()))
    if rows.get("collusion"):
        lines += ["", collusion_table(rows)]
    return "\n".join(lines)


def collusion_table(rows: dict) -> str:
    """20% colluders per auditor count: simulated rounds, the counted draw, and the bytes."""
    cost = {(r["peers"], r["auditors"]): r["per_peer_x_update"] for r in rows["counted"]}
    lines = [
        "| auditors | attack | rounds with a lie | corrupted | fraction (95% upper) | lies missed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows["collusion"]["simulated"]:
        lines.append(
            f"| {r['auditors']} | {r['attack'].split(', ', 1)[1]} ({r['seeds']} seeds) "
            f"| {r['rounds_with_a_lie']} | {r['rounds_corrupted']} | {r['corrupted_fraction']} ({r['upper95']}) "
            f"| {r['lies_missed']} of {r['lies']} |"
        )
    lines += [
        "",
        "| auditors | peers | lies drawn | missed | rate (95% upper) | bytes down / up, mean / max (x update) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows["collusion"]["drawn"]:
        t = cost.get((r["peers"], r["auditors"]))
        bytes_ = "-" if t is None else " ; ".join(f"{t[k]['mean']} / {t[k]['max']}" for k in ("data_down", "data_up"))
        lines.append(
            f"| {r['auditors']} | {r['peers']:,} | {r['lies']:,} | {r['lies_missed']} "
            f"| {r['miss_rate']} ({r['upper95']}) | {bytes_} |"
        )
    return "\n".join(lines)
