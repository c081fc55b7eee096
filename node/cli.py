"""The `swarmtrain` command: join, bootstrap, monitor, demo, doctor, ray-launch, pretrain, bench, audit,
export, config show.

Node flags are made from NodeConfig's fields and docstrings (node/config/flags.py), so a setting
is defined once and has the same name as a flag (--startup-timeout), an env var
(SWARMTRAIN_STARTUP_TIMEOUT) and a config-file key (startup_timeout); each command lists the ones
it reads (flags.NODE_FLAGS). The demo's and the Ray launcher's options are made the same way from
DemoOptions and RayOptions.

COMMANDS is the whole command line: each command's help, flags and handler. Only the chosen
command's flags are built, so `swarmtrain join` never imports the demo (torch) or the benchmarks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node import __version__
from node.config import NodeConfig, environ, load_node_config
from node.errors import SwarmtrainError
from node.watch.panel import reporter_for
from node.watch.progress import Reporter

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _add_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """The flags of dataclass `cls` (DemoOptions, RayOptions): args.main is built from them."""
    from node.config.flags import add_flags

    p.set_defaults(flags_main=cls)
    add_flags(p, cls, "main")


def _add_node_flags(p: argparse.ArgumentParser) -> None:
    from node.config.flags import ENV_NOTE, NODE_FLAGS, add_flags

    p.add_argument("--config", metavar="FILE", help="node settings file (TOML); flags and SWARMTRAIN_* env win")
    p.set_defaults(flags_node=True)
    add_flags(p, NodeConfig, "node", NODE_FLAGS.get(p.prog.split()[1]))  # prog: swarmtrain COMMAND [...]
    p.epilog = ENV_NOTE


# ------------------------------------------------------------------------- each command's flags
def _bootstrap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="RUN.TOML", help="the run's settings (default: the built-in demo run)")
    _add_node_flags(p)


def _doctor_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="RUN.TOML", help="size the memory check by this run when no swarm is given")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    _add_node_flags(p)


def _demo_flags(p: argparse.ArgumentParser) -> None:
    from node.commands.demo import DemoOptions

    _add_flags(p, DemoOptions)


def _ray_flags(p: argparse.ArgumentParser) -> None:
    from node.commands.ray_launch import RayOptions

    _add_flags(p, RayOptions)
    _add_node_flags(p)


def _pretrain_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="RUN.TOML", required=True, help='a run with [model] kind = "hf"')
    p.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write config.json + model.safetensors")
    p.add_argument("--eval-every", type=int, default=100, help="held-out bits per byte every this many steps")
    p.add_argument("--json", metavar="PATH", help="write the loss curve here")


def _bench_flags(p: argparse.ArgumentParser) -> None:
    from bench.cli import add_bench_commands

    add_bench_commands(p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK"))


def _audit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the verified ledger as JSON")
    p.add_argument(
        "--ledger",
        metavar="FILE",
        help="a ledger file (default: <data-dir>/<run>/ledger.jsonl, or the live swarm with --initial-peers)",
    )
    _add_node_flags(p)


def _config_flags(p: argparse.ArgumentParser) -> None:
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = csub.add_parser("show", help="print effective node settings and where each came from")
    show.add_argument("--run", metavar="RUN.TOML", help="also print this run file's settings")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_node_flags(show)


# ------------------------------------------------------------------------- each command's handler
def _node_config(args: argparse.Namespace) -> tuple[NodeConfig, dict[str, str]]:
    return load_node_config(args.config, environ(), args.node_flags)


def _peer_exit(cfg: NodeConfig, stop: threading.Event) -> int:
    """A peer stopped by the user exits 130, unless it was told to stop after --max-rounds anyway."""
    return EXIT_INTERRUPTED if stop.is_set() and not cfg.max_rounds else 0


def _join(args: argparse.Namespace, stop: threading.Event) -> int:
    cfg, _ = _node_config(args)
    from node.peer.volunteer import run_volunteer

    with reporter_for(cfg.log_format, f"swarmtrain {__version__} · join") as reporter:
        run_volunteer(cfg, stop, reporter)
    return _peer_exit(cfg, stop)


def _bootstrap(args: argparse.Namespace, stop: threading.Event) -> int:
    cfg, _ = _node_config(args)
    from node.commands.monitor import page_of
    from node.peer.bootstrap import run_bootstrap

    run_bootstrap(cfg, args.run, stop, Reporter(cfg.log_format), page_of(cfg, "bootstrap (organizer)"))
    return _peer_exit(cfg, stop)


def _monitor(args: argparse.Namespace, stop: threading.Event) -> int:
    cfg, _ = _node_config(args)
    from node.commands.monitor import run_monitor

    run_monitor(cfg, stop, Reporter(cfg.log_format))
    return _peer_exit(cfg, stop)


def _doctor(args: argparse.Namespace, stop: threading.Event) -> int:
    cfg, _ = _node_config(args)
    from dataclasses import asdict

    from node.commands.doctor import FAIL, render, run_doctor

    checks = run_doctor(cfg, args.run)
    print(json.dumps([asdict(c) for c in checks], indent=2) if args.json else render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def _audit(args: argparse.Namespace, stop: threading.Event) -> int:
    cfg, _ = _node_config(args)
    from node.commands.audit import run_audit

    return run_audit(cfg, args.ledger, as_json=args.json)


def _demo(args: argparse.Namespace, stop: threading.Event) -> int:
    from node.commands.demo import DemoOptions, run_demo

    opt: DemoOptions = args.main
    with reporter_for("auto", f"swarmtrain {__version__} · demo ({opt.peers} peers)") as reporter:
        summary = run_demo(opt, stop, reporter)
    print(json.dumps({k: summary[k] for k in ("peers", "rounds_completed", "val_bpb", "wall_s")}))
    if stop.is_set():
        return EXIT_INTERRUPTED
    ok = opt.rounds == 0 or (
        summary["rounds_completed"] >= opt.rounds and len(set(summary["model_digests"].values())) == 1
    )
    return 0 if ok else 1


def _ray_launch(args: argparse.Namespace, stop: threading.Event) -> int:
    cfg, _ = _node_config(args)
    from node.commands.ray_launch import RayOptions, run_ray_launch

    opt: RayOptions = args.main
    summary = run_ray_launch(cfg, opt, stop, Reporter("text" if cfg.log_format == "auto" else cfg.log_format))
    if stop.is_set():
        return EXIT_INTERRUPTED
    return 0 if all(c in (0, 130) for c in summary["exit_codes"].values()) else 1


def _pretrain(args: argparse.Namespace, stop: threading.Event) -> int:
    from node.commands.pretrain import run_pretrain

    result = run_pretrain(args.run, args.steps, args.out, stop, Reporter("text"), args.eval_every)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return EXIT_INTERRUPTED if stop.is_set() else 0


def _bench(args: argparse.Namespace, stop: threading.Event) -> int:
    from bench.cli import run_bench

    return EXIT_INTERRUPTED if run_bench(args, stop) else 0


def _config_show(args: argparse.Namespace, stop: threading.Event) -> int:
    from node.commands.config_show import run_config_show

    return run_config_show(*_node_config(args), args.run, as_json=args.json)


# ------------------------------------------------------------------------- the table
@dataclass(frozen=True, kw_only=True)
class Command:
    """One `swarmtrain COMMAND`."""

    help: str
    """Its line in `swarmtrain --help`."""
    add_flags: Callable[[argparse.ArgumentParser], None]
    """Adds its flags (and subcommands) to its subparser; called only when it is the command given."""
    run: Callable[[argparse.Namespace, threading.Event], int]
    """Runs it from the parsed flags and a stop request (the first Ctrl+C); returns the exit code."""
    stoppable: bool = True
    """Whether the first Ctrl+C or SIGTERM asks it to finish cleanly (sets the stop request) instead of
    interrupting it at once (config show has nothing to finish)."""


COMMANDS: dict[str, Command] = {
    "join": Command(help="join a swarm as a volunteer and train", add_flags=_add_node_flags, run=_join),
    "bootstrap": Command(
        help="start a swarm: a stable peer that publishes the run manifest", add_flags=_bootstrap_flags, run=_bootstrap
    ),
    "doctor": Command(
        help="preflight checks before joining, each failure with its fix", add_flags=_doctor_flags, run=_doctor
    ),
    "monitor": Command(
        help="watch a whole swarm: a client-mode peer serving a live page", add_flags=_add_node_flags, run=_monitor
    ),
    "demo": Command(
        help="a local swarm on 127.0.0.1: a bootstrap peer and N volunteers", add_flags=_demo_flags, run=_demo
    ),
    "ray-launch": Command(
        help="start N volunteers as Ray actors on a Ray cluster or a local one (pip install 'swarmtrain[ray]')",
        add_flags=_ray_flags,
        run=_ray_launch,
    ),
    "pretrain": Command(
        help="train a run's Hugging Face model alone and save it (save_pretrained)",
        add_flags=_pretrain_flags,
        run=_pretrain,
    ),
    "bench": Command(
        help="benchmarks (swarmtrain bench --help: each one and how long it takes)", add_flags=_bench_flags, run=_bench
    ),
    "audit": Command(
        help="verify the run's signed round ledger and print who contributed", add_flags=_audit_flags, run=_audit
    ),
    "export": Command(
        help="the swarm's state from a node's checkpoint as safetensors (+ save_pretrained for hf runs)",
        add_flags=lambda p: importlib.import_module("node.commands.export").add_flags(p),  # imported when given
        run=lambda args, stop: importlib.import_module("node.commands.export").run_export(args),
    ),
    "config": Command(help="inspect configuration", add_flags=_config_flags, run=_config_show, stoppable=False),
}
"""Every command, in the order of `swarmtrain --help`."""


def _command_in(argv: list[str]) -> str | None:
    """The command `argv` names: its first word that is not an option (the top level's options,
    --help and --version, take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `argv` (default: sys.argv[1:]): every command listed, the given one's flags built."""
    return _build(sys.argv[1:] if argv is None else argv)[0]


def _build(argv: list[str]) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's subparser by name."""
    from node.config.flags import CommandParser

    parser = CommandParser(prog="swarmtrain", description="Train one model with a swarm of volunteer peers.")
    parser.add_argument("--version", action="version", version=f"swarmtrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    chosen, subparsers = _command_in(argv), {}
    for name, command in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=command.help, allow_abbrev=False)
        if name == chosen:
            command.add_flags(subparsers[name])
    return parser, subparsers


def _parse(argv: list[str]) -> argparse.Namespace:
    """argparse routes the subcommand and parses its options, the dataclass flags among them
    (args.main: DemoOptions / RayOptions; args.node_flags: the NodeConfig values given)."""
    from node.config.flags import given, unknown_flag

    parser, subparsers = _build(argv)
    args, rest = parser.parse_known_args(argv)
    if rest:
        subparsers[args.command].error(unknown_flag(subparsers[args.command], rest))
    if getattr(args, "flags_main", None) is not None:
        args.main = args.flags_main(**given(args, "main"))
    args.node_flags = given(args, "node")
    return args


def _install_signal_handlers(stop: threading.Event) -> None:
    """First Ctrl+C / SIGTERM: finish cleanly (leave, keep checkpoint). Second Ctrl+C: abort."""

    def handler(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(
            f"\nstopping ({signal.Signals(signum).name}): leaving the swarm; Ctrl+C again to abort",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def verbose_loggers(spec: str) -> None:
    """SWARMTRAIN_LOG: a level for every swarmtrain logger ("debug"), or name=level pairs
    ("rounds=debug,scatter=info": swarmtrain.rounds, swarmtrain.scatter), to watch one part of
    a node at work (docs/operating.md). Unknown levels are ignored: logging is not worth a crash."""
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, level = item.rpartition("=")
        level = logging.getLevelName(level.upper())
        if isinstance(level, int):
            logging.getLogger(f"swarmtrain.{name}" if name else "swarmtrain").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    verbose_loggers(os.environ.get("SWARMTRAIN_LOG", ""))
    command = COMMANDS[args.command]
    stop = threading.Event()
    try:
        if command.stoppable:
            _install_signal_handlers(stop)
        return command.run(args, stop)
    except SwarmtrainError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
