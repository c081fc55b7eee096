"""What `swarmtrain bench byzantine` runs: the suite of attacks against the aggregators, its rows
and its table.

Each (strategy, aggregator) also runs clean (0 attackers, every peer honest): gap_vs_clean is
the relative val-bpb difference against it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

import torch

from bench.byzantine.attacks import ATTACKS, HUGE, IPM_EPS, NOISE_SCALE, SIGN_FLIP_SCALE
from bench.byzantine.simulation import TARGET_STRATEGIES, AttackCase, Setup, simulate_case
from bench.quality.presets import BASE_TRAIN
from bench.quality.simulator import Stopped
from bench.tables import markdown_table
from node.config import DataConfig, RobustConfig
from node.errors import SwarmtrainError
from node.train import data


def run_byzantine(
    workers: int,
    attackers: list[int],
    attacks: list[str],
    aggregators: list[str],
    strategies: list[str],
    rounds: int,
    scoring: bool,
    json_path: str,
    say=print,
    setup: Setup | None = None,
    variants: list[dict] | None = None,
    stop: threading.Event | None = None,
) -> list[dict]:
    """Every (strategy, aggregator): a clean run, then one run per attack and attacker count.

    `variants` adds robust-aggregator ablations (node.outer.aggregate.Robust fields) to the robust runs.
    A set `stop` ends the case running within a round and returns the finished rows (already written).
    """
    setup = setup or Setup()
    attacks = list(ATTACKS) if attacks == ["all"] or "all" in attacks else attacks
    _check_names(attacks, aggregators, strategies, workers, attackers, rounds)
    corpus, dcfg = data.load_corpus("stdlib"), DataConfig()
    shards = [data.train_tokens(corpus, dcfg, s) for s in range(dcfg.shards)]
    val = data.windows(
        data.val_tokens(corpus, dcfg), setup.val_seqs, setup.model.ctx, torch.Generator().manual_seed(12345)
    )
    torch.set_num_threads(1)  # one core, as documented; side-by-side runs do not fight
    aggs = [(a, None) for a in aggregators] + [("robust", v) for v in variants or []]
    rows = []
    for strategy in strategies:
        for agg, variant in aggs:
            cases = [AttackCase(strategy, agg, "none", 0, workers, rounds, scoring, variant)]
            cases += [
                AttackCase(strategy, agg, attack, k, workers, rounds, scoring, variant)
                for k in attackers
                if k > 0
                for attack in attacks
            ]
            clean = None
            for case in cases:
                try:
                    row = simulate_case(case, setup, shards, val, stop)
                except Stopped:
                    say(f"  stopped: {len(rows)} rows finished" + (f", in {json_path}" if rows else ""))
                    return rows
                clean = row["val_bpb"] if case.attack == "none" else clean
                row["gap_vs_clean"] = (row["val_bpb"] - clean) / clean if row["val_bpb"] and clean else None
                rows.append(row)
                say(_line(row))
                _write(json_path, rows, setup, workers, rounds, scoring)
    return rows


def _check_names(attacks, aggregators, strategies, workers, attackers, rounds) -> None:
    for kind, names, known in (
        ("attack", attacks, ATTACKS),
        ("aggregator", aggregators, ("robust", "mean")),
        ("strategy", strategies, TARGET_STRATEGIES),
    ):
        bad = [n for n in names if n not in known]
        if bad:
            raise SwarmtrainError(f"unknown {kind}(s) {bad}", f"use any of: {', '.join(known)}")
    if rounds < 1 or any(not 0 <= k < workers for k in attackers):
        raise SwarmtrainError(
            f"{attackers} attackers of {workers} workers, {rounds} rounds is not a run",
            "use --rounds >= 1 and 0 <= --attackers < --workers (at least one honest peer)",
        )


def _line(r: dict) -> str:
    gap = "" if r["gap_vs_clean"] is None else f" gap {r['gap_vs_clean']:+.1%}"
    bpb = "diverged" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}"
    return (
        f"  {r['strategy']:<18} {r['aggregator']:<8} {r['attack']:<13} {r['attackers']:>2}/{r['workers']} "
        f"bpb {bpb}{gap} dropped {r['dropped_payloads']} ban@{r['rounds_to_ban']} ({r['seconds']:.0f} s)"
    )


def _write(path: str, rows: list[dict], setup: Setup, workers: int, rounds: int, scoring: bool) -> None:
    settings = {
        "setup": {**asdict(setup), "model": asdict(setup.model)},
        "workers": workers,
        "rounds": rounds,
        "scoring": scoring,
        "presets": {k: asdict(v) for k, v in TARGET_STRATEGIES.items()},
        "train": asdict(BASE_TRAIN),
        "robust": asdict(RobustConfig()),
        "attack_constants": {
            "sign_flip_scale": SIGN_FLIP_SCALE,
            "noise_scale": NOISE_SCALE,
            "ipm_eps": IPM_EPS,
            "huge": HUGE,
        },
    }
    Path(path).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))


def attack_table(rows: list[dict]) -> str:
    """The rows as the table in docs/security.md."""
    return markdown_table(
        [
            "strategy",
            "attack",
            "aggregator",
            "attackers",
            "scoring",
            "val bpb",
            "gap vs clean",
            "dropped",
            "rounds to ban",
            "banned honest",
        ],
        (
            [
                r["strategy"],
                r["attack"],
                r["aggregator"],
                f"{r['attackers']}/{r['workers']}",
                "on" if r["scoring"] else "off",
                "diverged" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}",
                "n/a" if r["gap_vs_clean"] is None else f"{r['gap_vs_clean']:+.1%}",
                str(r["dropped_payloads"]),
                "-" if r["rounds_to_ban"] is None else str(r["rounds_to_ban"]),
                str(r["banned_honest"]),
            ]
            for r in rows
        ),
    )
