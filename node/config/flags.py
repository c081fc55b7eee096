"""Command-line flags from the configuration dataclasses: one argparse option per field.

Each field of the keyword-only dataclasses of node/config/settings.py (and the demo's and Ray
launcher's options) becomes an option of the subcommand's own parser: `startup_timeout: float`
is `--startup-timeout FLOAT`, `new_swarm: bool` is `--new-swarm` / `--no-new-swarm`,
`initial_peers: list[str]` takes several values, a `Literal[...]` field lists its choices; the
field's docstring is the option's help. So a subcommand's --help is one usage block that lists
its own options once, and a command lists only the node settings it reads (NODE_FLAGS).

An option left out keeps no value (argparse.SUPPRESS), so that `given` returns only what the
command line sets and node.config.load.load_node_config can apply the precedence defaults <
TOML file < SWARMTRAIN_* environment < flags and say where each value came from.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import MISSING, fields
from typing import Any, get_args, get_origin

from node.config.load import ENV_PREFIX
from node.config.schema import field_docs, is_choice, type_hints

_SWARM = ("initial_peers", "initial_peers_file", "run_id", "data_dir", "identity", "startup_timeout")
_LISTEN = ("host", "port")
_PAGE = ("status_host", "status_port")

NODE_FLAGS: dict[str, tuple[str, ...]] = {
    "bootstrap": (*_SWARM[:2], *_SWARM[3:], *_LISTEN, "announce", "log_format", *_PAGE),
    "monitor": (*_SWARM, *_LISTEN, "log_format", *_PAGE),
    "doctor": (*_SWARM[:3], "new_swarm", "data_dir", "startup_timeout", *_LISTEN, "announce", "device", "threads")
    + _PAGE,
    "audit": (*_SWARM, *_LISTEN),
}
"""The NodeConfig settings a command reads, as flags; a command not named here (join, ray-launch,
which passes them on to each volunteer's join, and config show) takes them all. The others are
still read from the --config file and the environment, which a node's commands share."""


METAVARS = {
    "_dir": "DIR",
    "_file": "FILE",
    "_json": "FILE",
    "identity": "FILE",
    "host": "IP",
    "peers": "MADDR",
    "announce": "MADDR",
    "run": "RUN.TOML",
    "files": "GLOB",
    "workdir": "DIR",
    "run_id": "RUN_ID",
    "device": "{auto,cpu,mps,cuda[:N]}",
}
"""What a str setting's value is, by the end of its name (--data-dir DIR, --initial-peers MADDR ...);
the others show their type (--port INT)."""


def _kind(name: str, kind: Any) -> dict[str, Any]:
    """argparse's keywords for field `name` of annotation `kind`."""
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if is_choice(kind):
        values = get_args(kind)
        return {"choices": values, "type": type(values[0])}
    many = get_origin(kind) is list
    inner = get_args(kind)[0] if many else kind
    metavar = inner.__name__.upper()
    if inner is str:
        metavar = next((m for end, m in METAVARS.items() if name.endswith(end)), metavar)
    return {"type": inner, "metavar": metavar, **({"nargs": "*"} if many else {})}


def add_flags(p: argparse.ArgumentParser, cls: type, kind: str, only: tuple[str, ...] | None = None) -> None:
    """Options of parser `p` for the fields of dataclass `cls` (those in `only`, default all), in a
    group of their own; their values land as '<kind>:<field>' in the namespace, and only when given."""
    docs, hints = field_docs(cls), type_hints(cls)
    group = p.add_argument_group("node settings") if kind == "node" else p  # a command's own: with its options
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        shown = (
            (" ".join(default) or "none") if isinstance(default, list) else repr(default) if default == "" else default
        )
        doc = docs.get(f.name, "").replace("%", "%%")
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"{kind}:{f.name}",
            default=argparse.SUPPRESS,
            help=f"{doc} (default: {shown})",
            **_kind(f.name, hints[f.name]),
        )


def given(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """{field: value} of the '<kind>' flags the command line set."""
    prefix = kind + ":"
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def unknown_flag(p: argparse.ArgumentParser, rest: list[str]) -> str:
    """The usage error for arguments `p` does not know, with the closest option it has."""
    known = [s for action in p._actions for s in action.option_strings]  # noqa: SLF001 (argparse has no public list)
    flag = rest[0].split("=", 1)[0]
    close = difflib.get_close_matches(flag, known, n=1)
    return f"unrecognized arguments: {' '.join(rest)}" + (f" (did you mean {close[0]}?)" if close else "")


ENV_NOTE = (
    f"Every node setting is also an environment variable and a key of the --config file: --startup-timeout 90 "
    f"is {ENV_PREFIX}STARTUP_TIMEOUT=90 and startup_timeout = 90. "
    "Precedence: defaults < --config file < environment < flags (`swarmtrain config show` says which won)."
)


class CommandParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line and its fix, with exit status 2 (not argparse's whole
    usage block, which for a node command is most of a screen)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n  - help: `{self.prog} --help` lists its options\n")
