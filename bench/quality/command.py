"""What `swarmtrain bench quality` and `swarmtrain bench frontier` run: every preset's runs (side
by side with --jobs), their rows, the JSON and the plots; and the frontier redrawn from results files."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from bench.extras import pyplot
from bench.quality.plots import frontier_path, plot_curves, plot_frontier
from bench.quality.presets import PRESETS, TIERS, Tier
from bench.quality.simulator import Stopped, check_stop, simulate_preset
from bench.quality.summary import DDP_REFERENCES, band_table, merge_rows, quality_table, summarize
from node.errors import SwarmtrainError
from node.train import data


def run_quality(
    tier: str,
    json_path: str,
    plot_path: str | None,
    strategies: list[str] | None,
    jobs: int,
    say=print,
    stop: threading.Event | None = None,
    device: str = "cpu",
) -> list[dict]:
    """Every run, then the rows (written to `json_path`); a set `stop` ends the runs within a round
    (the pool's processes are terminated) and returns [] with nothing written."""
    if tier not in TIERS:
        raise SwarmtrainError(f"unknown tier {tier!r}", f"use one of: {', '.join(TIERS)}")
    names = strategies or list(PRESETS)
    unknown = [s for s in names if s not in PRESETS]
    if unknown:
        raise SwarmtrainError(f"unknown strategy preset(s) {unknown}", f"known: {', '.join(PRESETS)}")
    if plot_path:
        pyplot()  # a missing matplotlib fails now, not after the runs
    # every gap is measured against the better data-parallel reference, run beside the rest
    names = [*(d for d in DDP_REFERENCES if d not in names), *names]
    check_device(device)
    todo = [(s, tier, seed, device) for s in names for seed in TIERS[tier].seeds]
    say(f"bench quality: tier {tier}, {len(todo)} runs on {jobs} process(es)")
    runs = []
    try:
        for r in finished_runs(todo, jobs, stop):
            runs.append(r)
            say(
                f"  {r['strategy']:<24} seed {r['seed']}  val_bpb {r['val_bpb']:.4f}  "
                f"upload {r['upload_bytes_per_step']:.0f} B/step  ({r['seconds']:.0f} s)"
            )
    except Stopped:
        say(f"  stopped: {len(runs)} of {len(todo)} runs had finished; {json_path} not written")
        return []
    runs.sort(key=lambda r: (names.index(r["strategy"]), r["seed"]))
    rows = summarize(runs)
    Path(json_path).write_text(
        json.dumps({"tier": tier, "tier_settings": tier_dict(TIERS[tier]), "rows": rows, "runs": runs}, indent=2)
    )
    if plot_path:
        plot_curves(runs, plot_path, title=f"bench quality, tier {tier}")
        plot_frontier(rows, frontier_path(plot_path), title=f"bench quality, tier {tier}")
    return rows


def finished_runs(todo: list[tuple[str, str, int]], jobs: int, stop: threading.Event | None) -> Iterator[dict]:
    """Each job's run as it finishes, `jobs` at a time (in spawned processes when more than one);
    Stopped within a round of `stop` being set (the pool is terminated on the way out)."""
    if jobs <= 1:
        for job in todo:
            yield run_job(job, stop)
        return
    with mp.get_context("spawn").Pool(jobs) as pool:  # leaving the block terminates the workers
        results = pool.imap_unordered(run_job, todo)
        for _ in todo:
            while True:
                try:
                    yield results.next(timeout=0.5)
                    break
                except mp.TimeoutError:
                    check_stop(stop)  # a stop request is not the workers' to see: they are ended instead


def run_job(job: tuple[str, str, int, str], stop: threading.Event | None = None) -> dict:
    """One (preset, tier name, seed, device) run, in a pool's process (module level: spawn pickles it by name)."""
    preset, tier_name, seed, device = job
    torch.set_num_threads(1)  # one core per job: jobs run side by side
    return simulate_preset(preset, TIERS[tier_name], seed, data.load_corpus("stdlib"), stop=stop, device=device)


def check_device(device: str) -> None:
    """A device torch cannot use fails before any run starts."""
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise SwarmtrainError(f"--device {device}: {e}", "use --device cpu, or a device this machine has") from None


def tier_dict(t: Tier) -> dict:
    """The tier's settings as JSON (its model's too)."""
    d = dict(t.__dict__)
    d["model"] = t.model.__dict__
    return d


def run_frontier(out_path: str, results: list[str], reference: str | None = None, say=print) -> list[dict]:
    """Redraw the frontier from `bench quality --json` files (several merge) into `out_path`; print
    the rows and the best preset of each band."""
    merged = merge_rows(results, reference)
    tier = json.loads(Path(results[0]).read_text())["tier"]
    plot_frontier(merged, out_path, title=f"bench quality, tier {tier}")
    say(quality_table(merged))
    say("")
    say(band_table(merged))
    return merged
