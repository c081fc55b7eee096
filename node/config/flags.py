"""Command-line flags from the configuration dataclasses, through tyro (as torchtitan does).

tyro reads the same keyword-only dataclasses with docstrings that node/config/settings.py defines,
and turns each field into a flag: `startup_timeout: float` is `--startup-timeout FLOAT`,
`new_swarm: bool` is `--new-swarm` / `--no-new-swarm`, `initial_peers: list[str]` takes several
values, a `Literal[...]` field takes one of its choices; the field's docstring is the flag's help.

The subcommands themselves (and their own few options, like `bootstrap --run`) stay argparse;
argparse hands the flags it does not know to `parse_flags`, which parses them with tyro and
returns only the values given on the command line, so that node.config.load.load_node_config
can apply the precedence defaults < TOML file < SWARMTRAIN_* environment < flags and say where
each value came from.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import fields
from typing import Any

from node.config.load import ENV_PREFIX
from node.config.schema import type_hints


def _tyro():
    import tyro

    return tyro


def given_names(cls: type, argv: list[str]) -> set[str]:
    """Fields of `cls` that `argv` sets (`--port 5`, `--port=5`, `--no-eval`)."""
    names = {f.name for f in fields(cls)}
    out = set()
    for tok in argv:
        if not tok.startswith("--"):
            continue
        name = tok[2:].split("=", 1)[0].replace("-", "_")
        if name in names:
            out.add(name)
        elif name.startswith("no_") and name[3:] in names and type_hints(cls)[name[3:]] is bool:
            out.add(name[3:])
    return out


def parse_flags(cls: type, argv: list[str], prog: str, *, rest: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Parse `argv` as flags of dataclass `cls` with tyro. Returns {field: value} for the fields the
    command line gives, and (with rest=True) the arguments that are not flags of `cls`; without
    it an unknown flag is an error (tyro prints it, with close matches, and exits with status 2)."""
    tyro = _tyro()
    if rest:
        value, left = tyro.cli(cls, args=argv, prog=prog, default=cls(), return_unknown_args=True)
    else:
        value, left = tyro.cli(cls, args=argv, prog=prog, default=cls()), []
    given = given_names(cls, [a for a in argv if a not in left])
    return {name: getattr(value, name) for name in given}, left


def flags_help(cls: type, prog: str, env: bool = False) -> str:
    """tyro's help text for the flags of `cls` (its docstrings), e.g. under a subcommand's own help."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        _tyro().cli(cls, args=["--help"], prog=prog, default=cls())
    text = buf.getvalue()
    if env:
        text += (
            f"\nEvery flag is also an environment variable and a key of the --config file: --startup-timeout 90 "
            f"is {ENV_PREFIX}STARTUP_TIMEOUT=90 and startup_timeout = 90.\n"
            "Precedence: defaults < --config file < environment < flags (`swarmtrain config show` says which won).\n"
        )
    return text
