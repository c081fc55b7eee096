"""`swarmtrain bench scale`: the tiers, the run, the table."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import torch

from bench.scale import sim, wires


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
    wire_peers: tuple[int, ...] = ()
    """Peers of the rounds on the 1-bit and top-k wires (bench/scale/wires.py)."""


TIERS = {
    "smoke": Tier(
        simulated=((16, 16384), (64, 16384)),
        counted=(1000, 10000),
        attack_peers=16,
        attack_values=16384,
        trials=4,
        collusion_rounds=4,
    ),
    "full": Tier(
        simulated=((16, 65536), (64, 65536), (256, 65536), (1000, 262144)),
        counted=(1000, 10000),
        attack_peers=64,
        attack_values=65536,
        trials=20,
        collusion_rounds=30,
    ),
    # the 1-bit and top-k wires (issue 17, item 1): bytes per peer and the aggregate, no attacks
    "wires": Tier(
        simulated=(), counted=(), attack_peers=0, attack_values=0, trials=0, collusion_rounds=0, wire_peers=(16, 64)
    ),
}
COUNTED_VALUES = 125_000_000
"""Values of the counted rows' update: a 1B-parameter model's 1-bit update is 125 MB, as is
this many int8 values."""


def run_scale(tier_name: str, json_path: str | None, stop: threading.Event, say=print) -> dict:
    torch.set_num_threads(1)  # many small tensors: threads only contend (and the machine is shared)
    tier = TIERS[tier_name]
    rows: dict = {"tier": tier_name, "honest": [], "counted": [], "attacks": []}
    for n, values in tier.simulated:
        for auditors in (1, 2):
            if stop.is_set():
                break
            say(f"scale: {n} peers, {values} values, {auditors} auditor(s) per task ...")
            rows["honest"].append(sim.honest_row(n, values, auditors))
    for n in tier.counted:
        for auditors in (1, 2):
            rows["counted"].append(sim.counted_row(n, COUNTED_VALUES, auditors))
    rows["wires"] = [] if stop.is_set() else wires.wire_rows(tier.wire_peers, say)
    n, values = tier.attack_peers, tier.attack_values
    steps = (
        []
        if not tier.trials
        else [
            lambda: sim.lying_owner(n, values, tier.trials),
            lambda: sim.withholding_owner(n, values, tier.trials),
            lambda: sim.colluders(n, values, tier.collusion_rounds, 0.2, 1, escalate=0),
            lambda: sim.colluders(n, values, tier.collusion_rounds, 0.2, 1),
            lambda: sim.colluders(n, values, tier.collusion_rounds, 0.2, 1, patient=True),
            lambda: sim.colluders(n, values, tier.collusion_rounds, 0.2, 2, patient=True),
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


def scale_table(rows: dict) -> str:
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
    return "\n".join(lines)
