"""`swarmtrain bench ...`: each benchmark's subcommand, its flags, how long it takes, and how it runs.

node/cli.py imports this module only for `swarmtrain bench` (tests/test_imports.py), so the other
commands never load the benchmarks. This module imports no benchmark either: each run function
imports its own, so that `swarmtrain bench --help` loads neither torch nor optuna.
Durations are with the default flags, the simulated benchmarks on one CPU core each (the runs
they come from are in bench/results/).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from dataclasses import dataclass

from node.errors import SwarmtrainError


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    """One `swarmtrain bench NAME` subcommand."""

    help: str
    """What it measures, in one line (`swarmtrain bench --help`)."""
    duration: str
    """How long it takes with its default flags, per tier where it has tiers."""
    add_flags: Callable[[argparse.ArgumentParser], None]
    """Adds its flags to its subparser."""
    run: Callable[[argparse.Namespace, threading.Event], bool]
    """Runs it from the parsed flags; True when a stop request (the first Ctrl+C) cut it short."""


QUALITY_TIERS = (
    "smoke (100 steps, 1 seed: 5-20 s a preset, 4-8 min for all 62), "
    "pilot (0.84M-parameter model, 600 steps, 1 seed: ~6 min a preset), "
    "full (3,000 steps, 2 seeds: ~10 min a preset, 4-26 min; ~6 h for all 62), "
    "full-8 (full with 8 workers: ~12 min a preset), "
    "tune (600 steps of full's model, 1 seed: 25-60 s a preset), "
    "scatter-16 (16 workers, 800 steps of full's model, 2 seeds: ~4-5 min a preset; the v3 exchange rows)"
)
"""`bench quality --tier`'s tiers and what each costs on one core (bench/quality/presets.py TIERS)."""


def _quality_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", default="smoke", help=f"{QUALITY_TIERS}; --jobs N runs N presets at once")
    p.add_argument("--json", required=True, metavar="PATH", help="write rows and curves here")
    p.add_argument("--plot", metavar="PATH.png", help="plot bpb against tokens and against bytes")
    p.add_argument("--strategies", nargs="+", metavar="PRESET", help="subset of presets (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, one core each")
    p.add_argument(
        "--device", default="cpu", help="where the workers train: cpu, cuda, cuda:1 (the state stays on the CPU)"
    )


def _quality(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.quality.command import run_quality
    from bench.quality.summary import quality_table

    rows = run_quality(
        args.tier, args.json, args.plot, args.strategies, max(1, args.jobs), stop=stop, device=args.device
    )
    if rows:
        print(quality_table(rows))
    return stop.is_set()


def _frontier_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT.png", help="where to draw the frontier")
    p.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS.json",
        help="`bench quality --json` files of one tier (several merge; the first names the tier)",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="PRESET",
        help="the preset every gap is measured against (default: the better of ddp-adamw and ddp-muon)",
    )


def _frontier(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.quality.command import run_frontier

    run_frontier(args.out, args.results, args.reference)
    return False


def _tune_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", required=True, metavar="PRESET", help="the preset to tune (bench quality's names)")
    p.add_argument("--trials", type=int, default=10, help="finished trials the study should hold (a rerun continues)")
    p.add_argument(
        "--tier",
        default="tune",
        help="tune (600 steps of the full tier's model: 25-60 s a trial), "
        "smoke (~5 s a trial), pilot (~6 min a trial), full (3,000 "
        "steps, one seed: 2-13 min a trial), full-8 (the same with 8 workers: ~12-25 min a trial); "
        "a pruned trial stops early; a new study's first trial is the preset's own settings",
    )
    p.add_argument("--steps", type=int, help="inner steps per trial (default: the tier's)")
    p.add_argument("--study", metavar="PATH.db", help="SQLite file of the study (default: the JSON path with .db)")
    p.add_argument(
        "--sampler-seed",
        type=int,
        default=0,
        help="TPE's seed: give each of several processes sharing one --study its own, so they do not sample alike",
    )
    p.add_argument("--json", required=True, metavar="PATH", help="write best settings, every trial and the budget here")


def _tune(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.tune import run_tune

    run_tune(args.strategy, args.trials, args.tier, args.json, args.study, args.steps, args.sampler_seed, stop=stop)
    return stop.is_set()


def _byzantine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=16, help="simulated peers, attackers included")
    p.add_argument("--attackers", type=int, nargs="+", default=[3], help="how many of them lie (several: one row each)")
    p.add_argument("--attack", nargs="+", default=["all"], metavar="NAME", help="attacks to run, or 'all'")
    p.add_argument("--aggregator", nargs="+", default=["robust", "mean"], metavar="NAME", help="aggregators to compare")
    p.add_argument("--strategy", nargs="+", default=["diloco"], metavar="NAME", help="strategies to attack")
    p.add_argument("--rounds", type=int, default=60, help="outer rounds per run")
    p.add_argument("--scoring", action="store_true", help="score updates on a shared batch and ban bad scorers")
    p.add_argument("--json", required=True, metavar="PATH", help="write the rows here")
    p.add_argument(
        "--sybil",
        action="store_true",
        help=f"instead, the Sybil rows (many identities: capture, grinding, stall, framing, flood, work; leaders, "
        f"stall and capture at 10-30%% of the credit, one ticket a key and tickets) over the real round protocol "
        f"on the in-memory network; {SYBIL_DURATION}",
    )
    p.add_argument("--sybil-tier", default="full", choices=("full", "tiny"), help="sizes of the Sybil rows")


SYBIL_DURATION = "full: 4-10 min (3 admission proofs at the defaults: each a geometric search, 1-5 min), tiny: ~12 s"
"""How long `bench byzantine --sybil` takes on one busy core here (bench/results/byzantine-sybil.json)."""


def _byzantine(args: argparse.Namespace, stop: threading.Event) -> bool:
    if args.sybil:
        from bench.byzantine.sybil import run_sybil, sybil_table

        print(sybil_table(run_sybil(args.json, args.sybil_tier)))
        return False
    from bench.byzantine.command import attack_table, run_byzantine

    rows = run_byzantine(
        workers=args.workers,
        attackers=args.attackers,
        attacks=args.attack,
        aggregators=args.aggregator,
        strategies=args.strategy,
        rounds=args.rounds,
        scoring=args.scoring,
        json_path=args.json,
        stop=stop,
    )
    if rows:
        print(attack_table(rows))
    return stop.is_set()


def _exchange_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loops", default="asyncio,uvloop", help="comma-separated loop kinds, interleaved")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[8192, 262144, 4194304], metavar="BYTES", help="update sizes to fetch"
    )
    p.add_argument("--fetches", type=int, default=200, help="fetches per size, mode and repeat")
    p.add_argument("--parallel", type=int, default=8, help="fetches in flight at once in the parallel mode")
    p.add_argument("--repeats", type=int, default=3, help="repeats per loop kind (rows report the median)")
    p.add_argument("--json", required=True, metavar="PATH", help="write the rows here")


def _exchange(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.exchange import exchange_table, run_exchange_bench

    rows = run_exchange_bench(
        loops=[x for x in args.loops.split(",") if x],
        sizes=args.sizes,
        fetches=args.fetches,
        parallel=args.parallel,
        repeats=args.repeats,
        json_path=args.json,
    )
    print(exchange_table(rows))
    return False


def _upload_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", type=int, nargs="+", default=[4, 8, 16, 64, 256, 1000], help="swarm sizes")
    p.add_argument("--fanout", type=int, nargs="+", default=[2, 4], help="relay fanouts to compare (direct is 0)")
    p.add_argument(
        "--update-bytes",
        type=int,
        default=23_000,
        help="bytes of one update (default: sparseloco's in bench swarm's 4-peer run)",
    )
    p.add_argument("--json", required=True, metavar="PATH", help="write the rows here")


def _upload(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.upload import run_upload_bench

    if min(args.peers) < 2 or min(args.fanout) < 0:
        raise SwarmtrainError("bench upload needs --peers of 2 or more and --fanout of 0 or more")
    run_upload_bench(args.peers, args.fanout, args.update_bytes, args.json)
    return False


def _swarm_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", type=int, default=3, help="peers at full speed")
    p.add_argument(
        "--strategies",
        default="sparseloco,diloco",
        help="comma-separated strategies; NAME+overlap "
        "also overlaps each round's exchange with the next round's compute, NAME+direct "
        "fetches every update from its owner (no relay tree); hivemind is "
        "hivemind.Optimizer itself on the same model and data (the baseline)",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="training time per case, after every peer joined")
    p.add_argument(
        "--round-seconds",
        type=lambda v: None if v == "auto" else float(v),
        nargs="+",
        default=[2.0],
        help="compute windows to compare (0: fixed inner_steps, every peer waits for the slowest; "
        "auto: left unset, sized from the swarm as a run file without it is)",
    )
    p.add_argument(
        "--slow-peer",
        type=float,
        default=0.0,
        metavar="F",
        help="also run each case with one more peer F times slower (0: no slow peer)",
    )
    p.add_argument(
        "--slow-quota",
        type=float,
        default=0.0,
        metavar="Q",
        help="also run each case with one more peer whose processes share Q of one core (a cgroup; root)",
    )
    p.add_argument(
        "--link",
        default="",
        metavar="SPEC",
        help="every peer behind an emulated link, e.g. up=20mbit,down=100mbit,rtt=50ms,loss=1%% (root; docs/links.md)",
    )
    p.add_argument(
        "--target-bpb",
        type=float,
        metavar="BPB",
        help="also report seconds from join until the evaluating peer reaches this val bpb",
    )
    p.add_argument("--workdir", default="bench-swarm", help="data dirs and logs of the peers")
    p.add_argument("--json", required=True, metavar="PATH", help="write the rows here")


def _swarm(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.swarm import run_swarm_bench, swarm_table

    rows = run_swarm_bench(
        peers=args.peers,
        strategies=[x for x in args.strategies.split(",") if x],
        seconds=args.seconds,
        round_seconds=args.round_seconds,
        slow_peer=args.slow_peer,
        slow_quota=args.slow_quota,
        link=args.link,
        json_path=args.json,
        workdir=args.workdir,
        stop=stop,
        target_bpb=args.target_bpb,
    )
    print(swarm_table(rows))
    return stop.is_set()


def _api_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=20, help="inner steps per timed block")
    p.add_argument("--blocks", type=int, default=5, help="blocks of each loop, alternating")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", required=True, metavar="PATH", help="write the row here")


def _api(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.api_overhead import run_api_overhead

    row = run_api_overhead(steps=args.steps, blocks=args.blocks, threads=args.threads, json_path=args.json)
    print(
        f"plain {row['plain_step_s'] * 1e3:.2f} ms/step, through swarm.optimizer {row['api_step_s'] * 1e3:.2f} "
        f"ms/step: {row['overhead_pct']:+.2f}% (medians of {args.blocks} blocks of {args.steps} steps)"
    )
    return False


def _api_identity_flags(p: argparse.ArgumentParser) -> None:
    from bench.api_identity import CASES

    p.add_argument("--rounds", type=int, default=4, help="rounds each swarm trains")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="runs to compare")
    p.add_argument("--json", default="bench/results/api-identity.json", metavar="PATH", help="write the rows here")


def _api_identity(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.api_identity import run_api_identity

    rows = run_api_identity(rounds=args.rounds, cases=args.cases, json_path=args.json, stop=stop)
    for r in rows:
        same = {True: "bit-identical", False: "DIFFERENT", None: "(random by design: API only)"}[r["bit_identical"]]
        print(f"{r['case']:>20}: API and CLI {same}; API peers equal: {r['api_peers_equal']}")
    return stop.is_set()


def _scale_flags(p: argparse.ArgumentParser) -> None:
    from bench.scale.command import TIERS

    p.add_argument("--tier", default="full", choices=sorted(TIERS), help="sizes and trials (see the duration above)")
    p.add_argument(
        "--json", metavar="PATH", help="write the rows here (bench/results/scale.json holds the last full run)"
    )


def _scale(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.scale.command import run_scale, scale_table

    print(scale_table(run_scale(args.tier, args.json, stop)))
    return stop.is_set()


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tier",
        default="full",
        choices=("quick", "full"),
        help="quick: corpora of 10 MB and 100 MB (~15 s); full: 10 MB and 1 GB (~1-2 min, 1 GB of temporary files)",
    )
    p.add_argument("--batches", type=int, default=200, help="batches drawn by each start (8 windows of 128 bytes)")
    p.add_argument("--json", metavar="PATH", help="write the rows here (bench/results/data.json: the last full run)")


def _data(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.data_rss import run_data

    run_data(args.tier, args.batches, args.json)  # prints each row as it comes
    return False


def _footprint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=2, help="rounds the volunteer trains before it is measured")
    p.add_argument("--workdir", default="bench-footprint", help="data dirs and logs of the two peers (emptied first)")
    p.add_argument("--json", default="bench/results/footprint.json", metavar="PATH", help="write the row here")


def _footprint(args: argparse.Namespace, stop: threading.Event) -> bool:
    from bench.footprint import footprint_table, run_footprint

    result = run_footprint(args.json, args.workdir, max(1, args.rounds), stop)
    if result:
        print(footprint_table(result))
    return stop.is_set()


BENCHMARKS: dict[str, Benchmark] = {
    "quality": Benchmark(
        help="every strategy against data-parallel AdamW at equal tokens",
        duration="smoke: 3-6 min for all presets; pilot: ~6 min a preset; full: ~10 min a preset; "
        "scatter-16: ~5 min a preset",
        add_flags=_quality_flags,
        run=_quality,
    ),
    "frontier": Benchmark(
        help="redraw bench quality's frontier plot and band table from its JSON files",
        duration="a few seconds",
        add_flags=_frontier_flags,
        run=_frontier,
    ),
    "tune": Benchmark(
        help="equal-budget hyperparameter search of one preset (Optuna; bench/tune.py)",
        duration="10 trials on tune: ~3-9 min; on smoke: ~1 min",
        add_flags=_tune_flags,
        run=_tune,
    ),
    "byzantine": Benchmark(
        help="attacks against the aggregators, in one process (docs/security.md)",
        duration=f"~15 min (20 runs of 16 peers x 60 rounds); --sybil: {SYBIL_DURATION}",
        add_flags=_byzantine_flags,
        run=_byzantine,
    ),
    "exchange": Benchmark(
        help="the update exchange on asyncio's loop against uvloop's (two local peers)",
        duration="~2 min",
        add_flags=_exchange_flags,
        run=_exchange,
    ),
    "upload": Benchmark(
        help="one round's uploads per peer, copy by copy, for N up to thousands",
        duration="~20 s",
        add_flags=_upload_flags,
        run=_upload,
    ),
    "api": Benchmark(
        help="the swarmtrain API's overhead per inner step against the plain loop (default model)",
        duration="~1 min on one core (~20 s start-up, 2 x 6 blocks of 20 steps)",
        add_flags=_api_flags,
        run=_api,
    ),
    "api-identity": Benchmark(
        help="the API path against the CLI path on the same run, seed and data: equal digests",
        duration="~8-30 s a case: ~2.5 min for the 9 cases (6 compared bit for bit; DP, overlap, window: API only)",
        add_flags=_api_identity_flags,
        run=_api_identity,
    ),
    "scale": Benchmark(
        help="round protocol v3 (reduce-scatter, audits) of 16 to 1,000 simulated peers, counted to 10,000",
        duration="smoke: ~1.5 min; full: ~28 min (1,000-peer rounds 2-3 min each; the collusion rows ~18 min); "
        "spot (spot audits against full ones): ~80 min on one busy core; "
        "sketch (sketch audits against recompute ones, simulated only): ~20 min on one busy core",
        add_flags=_scale_flags,
        run=_scale,
    ),
    "footprint": Benchmark(
        help="one volunteer of the default run: RSS and PSS per process, seconds to joined and to the first round",
        duration="~1-2 min (a bootstrap peer and a volunteer of the demo run)",
        add_flags=_footprint_flags,
        run=_footprint,
    ),
    "swarm": Benchmark(
        help="real node processes side by side: compute use, tokens/s, bytes (issue 9)",
        duration="~4 min (2 cases, each --seconds plus ~1 min of start-up)",
        add_flags=_swarm_flags,
        run=_swarm,
    ),
    "data": Benchmark(
        help="a node's peak RSS against its corpus' size: tokenized once to disk, against in memory",
        duration="full: ~1-2 min (10 MB and 1 GB corpora, generated in a temporary directory); quick: ~15 s",
        add_flags=_data_flags,
        run=_data,
    ),
}
"""Every `swarmtrain bench` subcommand, in the order of `swarmtrain bench --help`."""


def add_bench_commands(subparsers: argparse._SubParsersAction) -> None:
    """One subparser per benchmark under `swarmtrain bench`; its help line says how long it takes."""
    for name, bench in BENCHMARKS.items():
        p = subparsers.add_parser(
            name,
            help=f"{bench.help}; {bench.duration}",
            description=f"{bench.help[0].upper()}{bench.help[1:]}. Duration: {bench.duration}.",
        )
        bench.add_flags(p)


def run_bench(args: argparse.Namespace, stop: threading.Event) -> bool:
    """Run the benchmark `args` names; True when a stop request cut it short."""
    return BENCHMARKS[args.bench_command].run(args, stop)
