"""What `swarmtrain bench quality` and `swarmtrain bench frontier` run: every preset's runs (side
by side with --jobs), their rows, the JSON and the plots; and the frontier redrawn from results files."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import torch

from bench.extras import pyplot
from bench.quality.plots import frontier_path, plot_curves, plot_frontier
from bench.quality.presets import PRESETS, TIERS, Tier
from bench.quality.simulator import simulate_preset
from bench.quality.summary import band_table, merge_rows, quality_table, summarize
from node.errors import SwarmtrainError
from node.train import data


def run_quality(
    tier: str, json_path: str, plot_path: str | None, strategies: list[str] | None, jobs: int, say=print
) -> list[dict]:
    if tier not in TIERS:
        raise SwarmtrainError(f"unknown tier {tier!r}", f"use one of: {', '.join(TIERS)}")
    names = strategies or list(PRESETS)
    unknown = [s for s in names if s not in PRESETS]
    if unknown:
        raise SwarmtrainError(f"unknown strategy preset(s) {unknown}", f"known: {', '.join(PRESETS)}")
    if plot_path:
        pyplot()  # a missing matplotlib fails now, not after the runs
    if "ddp-adamw" not in names:
        names = ["ddp-adamw", *names]  # every gap is measured against it, in the same run
    todo = [(s, tier, seed) for s in names for seed in TIERS[tier].seeds]
    say(f"bench quality: tier {tier}, {len(todo)} runs on {jobs} process(es)")
    runs = []
    with mp.get_context("spawn").Pool(jobs) if jobs > 1 else InlinePool() as pool:
        for r in pool.imap_unordered(run_job, todo):
            runs.append(r)
            say(
                f"  {r['strategy']:<24} seed {r['seed']}  val_bpb {r['val_bpb']:.4f}  "
                f"upload {r['upload_bytes_per_step']:.0f} B/step  ({r['seconds']:.0f} s)"
            )
    runs.sort(key=lambda r: (names.index(r["strategy"]), r["seed"]))
    rows = summarize(runs)
    Path(json_path).write_text(
        json.dumps({"tier": tier, "tier_settings": tier_dict(TIERS[tier]), "rows": rows, "runs": runs}, indent=2)
    )
    if plot_path:
        plot_curves(runs, plot_path, title=f"bench quality, tier {tier}")
        plot_frontier(rows, frontier_path(plot_path), title=f"bench quality, tier {tier}")
    return rows


def run_job(job: tuple[str, str, int]) -> dict:
    """One (preset, tier name, seed) run, in a pool's process (module level: spawn pickles it by name)."""
    preset, tier_name, seed = job
    torch.set_num_threads(1)  # one core per job: jobs run side by side
    return simulate_preset(preset, TIERS[tier_name], seed, data.load_corpus("stdlib"))


def tier_dict(t: Tier) -> dict:
    """The tier's settings as JSON (its model's too)."""
    d = dict(t.__dict__)
    d["model"] = t.model.__dict__
    return d


class InlinePool:
    """A stand-in for a process pool of one: the same interface, in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, items):
        return map(fn, items)


def run_frontier(out_path: str, results: list[str], reference: str = "ddp-adamw", say=print) -> list[dict]:
    """Redraw the frontier from `bench quality --json` files (several merge) into `out_path`; print
    the rows and the best preset of each band."""
    merged = merge_rows(results, reference)
    tier = json.loads(Path(results[0]).read_text())["tier"]
    plot_frontier(merged, out_path, title=f"bench quality, tier {tier}", reference=reference)
    say(quality_table(merged))
    say("")
    say(band_table(merged, reference))
    return merged
