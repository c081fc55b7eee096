"""The `swarmtrain` command: join, bootstrap, monitor, demo, doctor, ray-launch, pretrain, bench, audit,
config show.

Node flags are made by tyro from NodeConfig's fields and docstrings (node/config/flags.py), so a
setting is defined once and has the same name as a flag (--startup-timeout), an env var
(SWARMTRAIN_STARTUP_TIMEOUT) and a config-file key (startup_timeout). The demo's and the Ray
launcher's options are made the same way from DemoOptions and RayOptions.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from node import __version__
from node.config import (NodeConfig, describe, environ, load_node_config,
                         load_run_config, as_dict)
from node.errors import SwarmtrainError
from node.watch.panel import reporter_for
from node.watch.progress import Reporter

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Help:
    """Whether this invocation asks for help: only then is tyro's text for the flags built."""
    wanted = False


def _add_flags(p: argparse.ArgumentParser, cls: type, kind: str) -> None:
    """The flags of dataclass `cls` (NodeConfig, DemoOptions, RayOptions) are parsed by tyro from the
    arguments argparse leaves over (node/config/flags.py); their help follows the subcommand's own."""
    p.set_defaults(**{f"flags_{kind}": cls})
    if _Help.wanted:
        from node.config.flags import flags_help
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.epilog = (p.epilog or "") + flags_help(cls, p.prog, env=cls is NodeConfig)


def _add_node_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="node settings file (TOML); flags and SWARMTRAIN_* env win")
    _add_flags(p, NodeConfig, "node")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    _Help.wanted = bool(argv) and any(a in ("-h", "--help") for a in argv)
    parser = argparse.ArgumentParser(prog="swarmtrain", description="Train one model with a swarm of volunteer peers.")
    parser.add_argument("--version", action="version", version=f"swarmtrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    join = sub.add_parser("join", help="join a swarm as a volunteer and train")
    _add_node_flags(join)

    boot = sub.add_parser("bootstrap", help="start a swarm: a stable peer that publishes the run manifest")
    boot.add_argument("--run", metavar="RUN.TOML", help="the run's settings (default: the built-in demo run)")
    _add_node_flags(boot)

    doctor = sub.add_parser("doctor", help="preflight checks before joining, each failure with its fix")
    doctor.add_argument("--run", metavar="RUN.TOML", help="size the memory check by this run when no swarm is given")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    _add_node_flags(doctor)

    mon = sub.add_parser("monitor", help="watch a whole swarm: a client-mode peer serving a live page")
    _add_node_flags(mon)

    demo = sub.add_parser("demo", help="a local swarm on 127.0.0.1: a bootstrap peer and N volunteers")
    from node.commands.demo import DemoOptions
    _add_flags(demo, DemoOptions, "main")

    ray = sub.add_parser("ray-launch", help="start N volunteers as Ray actors on a Ray cluster or a local one "
                                            "(pip install 'swarmtrain[ray]')")
    from node.commands.ray_launch import RayOptions
    _add_flags(ray, RayOptions, "main")
    _add_node_flags(ray)

    pre = sub.add_parser("pretrain", help="train a run's Hugging Face model alone and save it (save_pretrained)")
    pre.add_argument("--run", metavar="RUN.TOML", required=True, help="a run with [model] kind = \"hf\"")
    pre.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    pre.add_argument("--out", metavar="DIR", required=True, help="directory to write config.json + model.safetensors")
    pre.add_argument("--eval-every", type=int, default=100, help="held-out bits per byte every this many steps")
    pre.add_argument("--json", metavar="PATH", help="write the loss curve here")

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    quality = bsub.add_parser("quality", help="every strategy against data-parallel AdamW at equal tokens")
    quality.add_argument("--tier", default="smoke", help="smoke (~1 min), pilot (~5 min per strategy), full")
    quality.add_argument("--json", required=True, metavar="PATH", help="write rows and curves here")
    quality.add_argument("--plot", metavar="PATH.png", help="plot bpb against tokens and against bytes")
    quality.add_argument("--strategies", nargs="+", metavar="PRESET", help="subset of presets (default: all)")
    quality.add_argument("--jobs", type=int, default=1, help="runs side by side, one core each")

    tune = bsub.add_parser("tune", help="equal-budget hyperparameter search of one preset (Optuna; bench/tune.py)")
    tune.add_argument("--strategy", required=True, metavar="PRESET", help="the preset to tune (bench quality's names)")
    tune.add_argument("--trials", type=int, default=10, help="finished trials the study should hold (a rerun continues)")
    tune.add_argument("--tier", default="tune", help="tune (600 steps of the full tier's model), smoke, pilot, full")
    tune.add_argument("--steps", type=int, help="inner steps per trial (default: the tier's)")
    tune.add_argument("--study", metavar="PATH.db", help="SQLite file of the study (default: the JSON path with .db)")
    tune.add_argument("--json", required=True, metavar="PATH", help="write best settings, every trial and the budget here")

    byz = bsub.add_parser("byzantine", help="attacks against the aggregators, in one process (docs/security.md)")
    byz.add_argument("--workers", type=int, default=16, help="simulated peers, attackers included")
    byz.add_argument("--attackers", type=int, nargs="+", default=[3], help="how many of them lie (several: one row each)")
    byz.add_argument("--attack", nargs="+", default=["all"], metavar="NAME", help="attacks to run, or 'all'")
    byz.add_argument("--aggregator", nargs="+", default=["robust", "mean"], metavar="NAME", help="aggregators to compare")
    byz.add_argument("--strategy", nargs="+", default=["diloco"], metavar="NAME", help="strategies to attack")
    byz.add_argument("--rounds", type=int, default=60, help="outer rounds per run")
    byz.add_argument("--scoring", action="store_true", help="score updates on a shared batch and ban bad scorers")
    byz.add_argument("--json", required=True, metavar="PATH", help="write the rows here")

    ex = bsub.add_parser("exchange", help="the update exchange on asyncio's loop against uvloop's (two local peers)")
    ex.add_argument("--loops", default="asyncio,uvloop", help="comma-separated loop kinds, interleaved")
    ex.add_argument("--sizes", type=int, nargs="+", default=[8192, 262144, 4194304], metavar="BYTES",
                    help="update sizes to fetch")
    ex.add_argument("--fetches", type=int, default=200, help="fetches per size, mode and repeat")
    ex.add_argument("--parallel", type=int, default=8, help="fetches in flight at once in the parallel mode")
    ex.add_argument("--repeats", type=int, default=3, help="repeats per loop kind (rows report the median)")
    ex.add_argument("--json", required=True, metavar="PATH", help="write the rows here")

    up = bsub.add_parser("upload", help="one round's uploads per peer, copy by copy, for N up to thousands")
    up.add_argument("--peers", type=int, nargs="+", default=[4, 8, 16, 64, 256, 1000], help="swarm sizes")
    up.add_argument("--fanout", type=int, nargs="+", default=[2, 4], help="relay fanouts to compare (direct is 0)")
    up.add_argument("--update-bytes", type=int, default=23_000,
                    help="bytes of one update (default: sparseloco's in bench swarm's 4-peer run)")
    up.add_argument("--json", required=True, metavar="PATH", help="write the rows here")

    sw = bsub.add_parser("swarm", help="real node processes side by side: compute use, tokens/s, bytes (issue 9)")
    sw.add_argument("--peers", type=int, default=3, help="peers at full speed")
    sw.add_argument("--strategies", default="sparseloco,diloco", help="comma-separated strategies; NAME+overlap "
                    "also overlaps each round's exchange with the next round's compute, NAME+direct "
                    "fetches every update from its owner (no relay tree); hivemind is "
                    "hivemind.Optimizer itself on the same model and data (the baseline)")
    sw.add_argument("--seconds", type=float, default=60.0, help="training time per case, after every peer joined")
    sw.add_argument("--round-seconds", type=float, nargs="+", default=[2.0],
                    help="compute windows to compare (0: fixed inner_steps, every peer waits for the slowest)")
    sw.add_argument("--slow-peer", type=float, default=0.0, metavar="F",
                    help="also run each case with one more peer F times slower (0: no slow peer)")
    sw.add_argument("--link", default="", metavar="SPEC",
                    help="every peer behind an emulated link, e.g. up=20mbit,down=100mbit,rtt=50ms,loss=1%% "
                         "(root; docs/links.md)")
    sw.add_argument("--target-bpb", type=float, metavar="BPB",
                    help="also report seconds from join until the evaluating peer reaches this val bpb")
    sw.add_argument("--workdir", default="bench-swarm", help="data dirs and logs of the peers")
    sw.add_argument("--json", required=True, metavar="PATH", help="write the rows here")

    audit = sub.add_parser("audit", help="verify the run's signed round ledger and print who contributed")
    audit.add_argument("--json", action="store_true", help="print the verified ledger as JSON")
    audit.add_argument("--ledger", metavar="FILE", help="a ledger file (default: <data-dir>/<run>/ledger.jsonl, "
                                                        "or the live swarm with --initial-peers)")
    _add_node_flags(audit)

    config = sub.add_parser("config", help="inspect configuration")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = csub.add_parser("show", help="print effective node settings and where each came from")
    show.add_argument("--run", metavar="RUN.TOML", help="also print this run file's settings")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_node_flags(show)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse routes the subcommand and parses its own options; tyro parses the dataclass flags
    from what is left (args.main: DemoOptions / RayOptions; args.node_flags: NodeConfig values given)."""
    parser = build_parser(argv)
    args, rest = parser.parse_known_args(argv)
    main_cls, node_cls = getattr(args, "flags_main", None), getattr(args, "flags_node", None)
    if rest and not (main_cls or node_cls):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from node.config.flags import parse_flags
    prog = "swarmtrain " + args.command
    if main_cls is not None:
        given, rest = parse_flags(main_cls, rest, prog, rest=node_cls is not None)
        args.main = main_cls(**given)
    args.node_flags = parse_flags(NodeConfig, rest, prog)[0] if node_cls is not None else {}
    return args


def _node_config(args: argparse.Namespace) -> tuple[NodeConfig, dict[str, str]]:
    return load_node_config(args.config, environ(), args.node_flags)


def _install_signal_handlers(stop: threading.Event) -> None:
    """First Ctrl+C / SIGTERM: finish cleanly (leave, keep checkpoint). Second Ctrl+C: abort."""
    def handler(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(f"\nstopping ({signal.Signals(signum).name}): leaving the swarm; Ctrl+C again to abort",
              file=sys.stderr, flush=True)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _config_show(args) -> int:
    cfg, sources = _node_config(args)
    rows = [{"name": n, "value": v, "source": sources[n], "doc": d} for n, v, d in describe(cfg)]
    if args.json:
        out = {"node": rows}
        if args.run:
            out["run"] = as_dict(load_run_config(args.run))
        print(json.dumps(out, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {json.dumps(r['value']):<28} {r['source']}")
    if args.run:
        print(f"\nrun settings from {args.run}:")
        for section, values in as_dict(load_run_config(args.run)).items():
            print(f"  {section} = {json.dumps(values)}")
    return 0


def _doctor(cfg: NodeConfig, args) -> int:
    from dataclasses import asdict
    from node.commands.doctor import FAIL, render, run_doctor
    checks = run_doctor(cfg, args.run)
    print(json.dumps([asdict(c) for c in checks], indent=2) if args.json else render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    try:
        if args.command == "config":
            return _config_show(args)
        _install_signal_handlers(stop)
        if args.command == "bench" and args.bench_command == "byzantine":
            from bench.byzantine import markdown_table, run_byzantine
            rows = run_byzantine(workers=args.workers, attackers=args.attackers, attacks=args.attack,
                                 aggregators=args.aggregator, strategies=args.strategy, rounds=args.rounds,
                                 scoring=args.scoring, json_path=args.json)
            print(markdown_table(rows))
            return 0
        if args.command == "bench" and args.bench_command == "tune":
            from bench.tune import run_tune
            run_tune(args.strategy, args.trials, args.tier, args.json, args.study, args.steps, stop=stop)
            return EXIT_INTERRUPTED if stop.is_set() else 0
        if args.command == "bench" and args.bench_command == "exchange":
            from bench.exchange import markdown_table as exchange_table, run_exchange_bench
            rows = run_exchange_bench(loops=[x for x in args.loops.split(",") if x], sizes=args.sizes,
                                      fetches=args.fetches, parallel=args.parallel, repeats=args.repeats,
                                      json_path=args.json)
            print(exchange_table(rows))
            return 0
        if args.command == "bench" and args.bench_command == "upload":
            from bench.upload import run_upload_bench
            if min(args.peers) < 2 or min(args.fanout) < 0:
                raise SwarmtrainError("bench upload needs --peers of 2 or more and --fanout of 0 or more")
            run_upload_bench(args.peers, args.fanout, args.update_bytes, args.json)
            return 0
        if args.command == "bench" and args.bench_command == "swarm":
            from bench.swarm import markdown_table as swarm_table, run_swarm_bench
            rows = run_swarm_bench(peers=args.peers, strategies=[x for x in args.strategies.split(",") if x],
                                   seconds=args.seconds, round_seconds=args.round_seconds, slow_peer=args.slow_peer,
                                   link=args.link, json_path=args.json, workdir=args.workdir, stop=stop,
                                   target_bpb=args.target_bpb)
            print(swarm_table(rows))
            return EXIT_INTERRUPTED if stop.is_set() else 0
        if args.command == "pretrain":
            from node.commands.pretrain import run_pretrain
            result = run_pretrain(args.run, args.steps, args.out, stop, Reporter("text"), args.eval_every)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2))
            return EXIT_INTERRUPTED if stop.is_set() else 0
        if args.command == "bench":
            from bench.quality import markdown_table, run_quality
            rows = run_quality(args.tier, args.json, args.plot, args.strategies, max(1, args.jobs))
            print(markdown_table(rows))
            return 0
        if args.command == "demo":
            from node.commands.demo import DemoOptions, run_demo
            opt: DemoOptions = args.main
            with reporter_for("auto", f"swarmtrain {__version__} · demo ({opt.peers} peers)") as reporter:
                summary = run_demo(opt, stop, reporter)
            print(json.dumps({k: summary[k] for k in ("peers", "rounds_completed", "val_bpb", "wall_s")}))
            if stop.is_set():
                return EXIT_INTERRUPTED
            ok = opt.rounds == 0 or (summary["rounds_completed"] >= opt.rounds
                                     and len(set(summary["model_digests"].values())) == 1)
            return 0 if ok else 1
        cfg, _ = _node_config(args)
        if args.command == "doctor":
            return _doctor(cfg, args)
        if args.command == "audit":
            from node.commands.audit import run_audit
            return run_audit(cfg, args.ledger, as_json=args.json)
        if args.command == "ray-launch":
            from node.commands.ray_launch import RayOptions, run_ray_launch
            opt: RayOptions = args.main
            summary = run_ray_launch(cfg, opt, stop, Reporter("text" if cfg.log_format == "auto" else cfg.log_format))
            if stop.is_set():
                return EXIT_INTERRUPTED
            return 0 if all(c in (0, 130) for c in summary["exit_codes"].values()) else 1
        if args.command == "monitor":
            from node.commands.monitor import run_monitor
            run_monitor(cfg, stop, Reporter(cfg.log_format))
        elif args.command == "bootstrap":
            from node.peer.bootstrap import run_bootstrap
            run_bootstrap(cfg, args.run, stop, Reporter(cfg.log_format))
        else:
            from node.peer.volunteer import run_volunteer
            with reporter_for(cfg.log_format, f"swarmtrain {__version__} · join") as reporter:
                run_volunteer(cfg, stop, reporter)
        return EXIT_INTERRUPTED if stop.is_set() and not cfg.max_rounds else 0
    except SwarmtrainError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
