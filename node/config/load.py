"""Reading the settings: run.toml into a RunConfig, and a node's settings from its sources.

A node's settings come from, lowest first: defaults < TOML file (--config) < SWARMTRAIN_*
environment < command-line flags; `swarmtrain config show` prints each effective value and
where it came from. Both loaders end in node/config/validate.py, so that a bad value is
refused here, when it is read, not later in a volunteer's training.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from node.config.local import NodeConfig
from node.config.schema import check_value, field_docs, parse_env, type_hints
from node.config.settings import RunConfig
from node.config.validate import validate_node, validate_run
from node.errors import SwarmtrainError

ENV_PREFIX = "SWARMTRAIN_"
ENV_ELSEWHERE = frozenset({"SWARMTRAIN_ARTIFACTS", "SWARMTRAIN_LOG"})
"""Variables with our prefix that are not node settings: where the swarm tests leave their
artifacts; which loggers say more (node/cli.py, docs/operating.md)."""


def from_dict(cls: type, data: Mapping[str, Any], where: str):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are errors. Types
    only: ranges are validate_run's and validate_node's."""
    known = {f.name: f for f in fields(cls)}
    hints = type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise SwarmtrainError(f"{where}: unknown setting {key!r}", f"known settings here: {', '.join(known)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise SwarmtrainError(f"{where}: [{key}] must be a table", f"write it as a [{key}] table of settings")
            kwargs[key] = from_dict(kind, value, f"{where} [{key}]")
        else:
            kwargs[key] = check_value(value, kind, f"{where}: {key}")
    return cls(**kwargs)


def read_toml(path: str | Path) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise SwarmtrainError(f"config file {p} does not exist", "check the path, or leave the option out")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SwarmtrainError(f"{p} is not valid TOML: {e}", "fix the line named above") from None


def load_run_config(path: str | Path | None) -> RunConfig:
    """run.toml -> RunConfig (the defaults when path is None), its names, types and ranges checked."""
    if path is None:
        return RunConfig()
    data = read_toml(path)
    data = {**data.pop("run", {}), **data}  # [run] name = ... is allowed as well as top-level name
    run = from_dict(RunConfig, data, str(path))
    validate_run(run, str(path))
    return run


def load_node_config(
    config_file: str | None, env: Mapping[str, str], flags: Mapping[str, Any]
) -> tuple[NodeConfig, dict[str, str]]:
    """Merge defaults < file < env < flags. Returns the config and each field's source."""
    values: dict[str, Any] = {}
    sources = {f.name: "default" for f in fields(NodeConfig)}
    if config_file:
        data = read_toml(config_file)
        from_dict(NodeConfig, data, config_file)  # validates names and types
        values.update(data)
        sources.update({k: f"file {config_file}" for k in data})
    check_env_names(env)
    hints = type_hints(NodeConfig)
    for f in fields(NodeConfig):
        var = ENV_PREFIX + f.name.upper()
        if var in env:
            values[f.name] = parse_env(env[var], hints[f.name], var)
            sources[f.name] = f"env {var}"
    for key, value in flags.items():
        if value is not None:
            values[key] = value
            sources[key] = "flag --" + key.replace("_", "-")
    cfg = NodeConfig(**values)
    validate_node(cfg, sources)
    return cfg, sources


def check_env_names(env: Mapping[str, str]) -> None:
    """Refuse a SWARMTRAIN_* variable that names no setting: a misspelt one would be ignored silently."""
    known = [ENV_PREFIX + f.name.upper() for f in fields(NodeConfig)]
    for var in sorted(env):
        if var.startswith(ENV_PREFIX) and var not in known and var not in ENV_ELSEWHERE:
            close = difflib.get_close_matches(var, known, n=1)
            raise SwarmtrainError(
                f"unknown environment variable {var}: no setting has that name",
                (f"did you mean {close[0]}? " if close else "")
                + "rename or unset it (`swarmtrain config show` lists every setting)",
            )


def describe(cfg: Any) -> list[tuple[str, Any, str]]:
    """(name, value, doc) rows for printing a config."""
    docs = field_docs(type(cfg))
    return [(f.name, getattr(cfg, f.name), docs.get(f.name, "")) for f in fields(cfg)]


def as_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def environ() -> Mapping[str, str]:
    """The one place the process environment is read for configuration."""
    return os.environ


CHEAP_WORK_TOML = """\
identity_work_bits = 3
identity_work_n_log2 = 6
identity_stamp_bits = 3
"""
"""[swarm] lines that make admission work cost milliseconds (8 evaluations of 48 KiB, a stamp of
8 hashes). The demo run and every run file the tests and benches build end their [swarm] table
with them: the code path runs everywhere, without the default's minutes of a core per identity."""
