"""The one place where the values of settings are checked: the range of every number, the
choices of every Literal setting, and the few rules that tie two settings together.

The loaders (node/config/load.py) call validate_run and validate_node, so that a bad run.toml
is refused by `bootstrap` when it reads the file, with the field, its value, the allowed range
and the fix, rather than later in a volunteer's torch. Code that builds settings itself (the
benchmarks, the tests) may call them too. A range here is what the code that uses the field
needs: a learning rate of 0 trains nothing, a momentum of 1 never forgets, a timeout of 0
gives up at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, NamedTuple, get_args

from node.config.local import NodeConfig
from node.config.schema import choices, field_docs, is_choice, type_hints
from node.config.settings import RunConfig, StrategyName, WireDtype
from node.errors import SwarmtrainError


class Range(NamedTuple):
    """The allowed values of a number: from low to high, each end included unless it is open;
    None: no bound on that side. NaN and infinities are never allowed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(x: float | None) -> str:
    return "" if x is None else str(x) if isinstance(x, int) else f"{x:g}"


POSITIVE = Range(0, low_open=True)
NOT_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)
"""[0, 1): a momentum or decay of 1 would never forget, a dropout of 1 drops everything."""
UNIT = Range(0, 1)
"""[0, 1]: an error-feedback or momentum decay of 1 keeps everything (classic error feedback)."""

RUN_RANGES: dict[str, Range] = {
    "model.d_model": AT_LEAST_ONE,
    "model.n_layer": AT_LEAST_ONE,
    "model.n_head": AT_LEAST_ONE,
    "model.ctx": AT_LEAST_ONE,
    "model.n_kv_head": NOT_NEGATIVE,
    "model.d_ff": NOT_NEGATIVE,
    "data.val_percent": Range(0, 100, high_open=True),  # 100 would leave nothing to train on
    "data.shards": AT_LEAST_ONE,
    "train.batch_size": AT_LEAST_ONE,
    "train.inner_lr": POSITIVE,
    "train.weight_decay": NOT_NEGATIVE,
    "train.grad_clip": NOT_NEGATIVE,
    "train.warmup_steps": NOT_NEGATIVE,
    "train.muon_lr": NOT_NEGATIVE,
    "train.micro_batch": NOT_NEGATIVE,
    "train.seed": Range(-(2**63), 2**64 - 1),  # what torch.manual_seed takes
    "strategy.inner_steps": AT_LEAST_ONE,
    "strategy.outer_lr": POSITIVE,
    "strategy.outer_momentum": FRACTION,
    "strategy.wire_block": AT_LEAST_ONE,
    "strategy.wire_share": AT_LEAST_ONE,
    "strategy.wire_rank": AT_LEAST_ONE,
    "strategy.topk": AT_LEAST_ONE,
    "strategy.topk_vector": NOT_NEGATIVE,
    "strategy.chunk": AT_LEAST_ONE,
    "strategy.error_decay": UNIT,
    "strategy.sparse_outer_momentum": FRACTION,
    "strategy.momentum_decay": UNIT,
    "swarm.collect_timeout": POSITIVE,
    "swarm.round_timeout": POSITIVE,
    "swarm.heartbeat_interval": POSITIVE,
    "swarm.heartbeat_ttl": POSITIVE,
    "swarm.max_update_mb": POSITIVE,
    "swarm.min_peers": AT_LEAST_ONE,
    "swarm.established_rounds": NOT_NEGATIVE,
    "swarm.leader_backoff": NOT_NEGATIVE,
    "swarm.checkpoint_rounds": NOT_NEGATIVE,
    "swarm.bootstrap_peers": NOT_NEGATIVE,
    "swarm.state_requests_per_minute": NOT_NEGATIVE,  # 0 refuses every download of our state
    "swarm.max_streams_per_peer": AT_LEAST_ONE,
    "swarm.round_seconds": NOT_NEGATIVE,
    "swarm.max_inner_steps": NOT_NEGATIVE,
    "swarm.relay_fanout": NOT_NEGATIVE,
    "swarm.scatter_min_peers": NOT_NEGATIVE,
    "swarm.relay_wait": NOT_NEGATIVE,
    "swarm.identity_work_bits": Range(0, 32),  # 32 bits: 4 billion evaluations, years of a core
    "swarm.identity_work_n_log2": Range(1, 22),  # scrypt needs n >= 2; 2^22 at r 8 is 4 GiB an evaluation
    "swarm.identity_work_r": Range(1, 32),
    "swarm.identity_stamp_bits": Range(0, 40),  # 40 bits: ~5 days of a core per stamp
    "swarm.identity_epoch_rounds": AT_LEAST_ONE,
    "robust.clip_multiple": NOT_NEGATIVE,
    "robust.trim_fraction": Range(0, 0.5, high_open=True),
    "robust.score_window": AT_LEAST_ONE,
    "robust.ban_after": AT_LEAST_ONE,
    "robust.distinct_leaders": AT_LEAST_ONE,
    "robust.weight_cap": POSITIVE,
    "peft.r": AT_LEAST_ONE,
    "peft.alpha": POSITIVE,
    "peft.dropout": FRACTION,
    "privacy.clip": NOT_NEGATIVE,
    "privacy.noise_multiplier": NOT_NEGATIVE,
    "privacy.delta": Range(0, 1, low_open=True, high_open=True),
}
"""'table.field' -> the values that field may take in a run."""

NODE_RANGES: dict[str, Range] = {
    "port": Range(0, 65535),
    "status_port": Range(-1, 65535),
    "threads": NOT_NEGATIVE,
    "slowdown": AT_LEAST_ONE,
    "upload_limit_mbit": NOT_NEGATIVE,
    "max_inbound_streams": AT_LEAST_ONE,
    "max_state_uploads": AT_LEAST_ONE,
    "max_fetch_mb_in_flight": POSITIVE,
    "startup_timeout": AT_LEAST_ONE,
    "max_rounds": NOT_NEGATIVE,
}
"""NodeConfig field -> the values it may take."""

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""NodeConfig.device: what node.peer.volunteer.pick_device can give a model to."""

TOPK_STRATEGIES = ("sparseloco", "decoupled-momentum")
"""The strategies whose wire is the top-k codec (chunk, topk, values, index_bits)."""


class Problem(NamedTuple):
    """What is wrong with one or more settings, and how to fix it."""

    message: str
    fix: str
    about: str = ""
    """The docstring of the field, when one field is wrong: what its values mean."""

    def help(self, where: str = "") -> str:
        return self.fix + (f" in {where}" if where else "") + (f"\n{self.about}" if self.about else "")


def _field_problem(section: Any, name: str, rule: Range | None, label: str, source: str = "") -> Problem | None:
    """Field `name` of dataclass `section` as a Literal outside its choices, or a number outside
    `rule`. `label` names the field in the message, `source` where its value came from."""
    value, kind = getattr(section, name), type_hints(type(section))[name]
    about = f"{name}: {field_docs(type(section)).get(name, '')}"
    if is_choice(kind) and value not in get_args(kind):
        return Problem(
            f"{label} = {value!r}{source} is not one of {choices(kind)}", f"use one of {choices(kind)}", about
        )
    if rule is not None and isinstance(value, (int, float)) and not rule.holds(value):
        return Problem(f"{label} = {value!r}{source} is out of range: it must be {rule}", f"use a value {rule}", about)
    return None


def _heartbeats(run: RunConfig) -> Problem | None:
    s = run.swarm
    if s.heartbeat_ttl <= s.heartbeat_interval:
        return Problem(
            f"[swarm] heartbeat_ttl = {s.heartbeat_ttl!r} is not above heartbeat_interval = "
            f"{s.heartbeat_interval!r}: live peers would be taken as gone between two heartbeats",
            "make heartbeat_ttl a few heartbeat intervals, e.g. heartbeat_ttl = 4 x heartbeat_interval",
        )
    return None


def _index_bits(run: RunConfig) -> Problem | None:
    s = run.strategy
    if s.name in TOPK_STRATEGIES and s.index_bits == 12 and s.chunk > 64:
        return Problem(
            f"[strategy] chunk = {s.chunk} is too large for index_bits = 12: 12-bit indices address "
            "chunks of at most 64 x 64 values",
            "use chunk <= 64, or index_bits = 16",
        )
    return None


# Names registered from Python (node.outer.strategies.register_strategy / register_codec) that
# [strategy] name / wire_dtype take besides the built-in Literal choices.
REGISTERED: dict[str, set[str]] = {"name": set(), "wire_dtype": set()}


def _registered(run: RunConfig) -> Problem | None:
    for name, builtin in (("name", StrategyName), ("wire_dtype", WireDtype)):
        value, known = getattr(run.strategy, name), [*get_args(builtin), *sorted(REGISTERED[name])]
        if value not in known:
            listed = ", ".join(repr(k) for k in known)
            return Problem(
                f"[strategy] {name} = {value!r} is not one of {listed}",
                f"use one of {listed}, or register yours from Python first (swarmtrain.register_"
                + ("strategy" if name == "name" else "codec")
                + ")",
                f"{name}: {field_docs(type(run.strategy)).get(name, '')}",
            )
    return None


RUN_RULES: tuple[Callable[[RunConfig], Problem | None], ...] = (_heartbeats, _index_bits, _registered)
"""Rules that tie two settings of a run together."""


def run_problems(run: RunConfig) -> list[Problem]:
    """Every bad value of a run: fields first, table by table, then the rules across fields."""
    out = []
    for table in fields(run):
        section = getattr(run, table.name)
        if not is_dataclass(section):
            continue
        out += [
            _field_problem(section, f.name, RUN_RANGES.get(f"{table.name}.{f.name}"), f"[{table.name}] {f.name}")
            for f in fields(section)
        ]
    out += [rule(run) for rule in RUN_RULES]
    return [p for p in out if p is not None]


def validate_run(run: RunConfig, where: str = "run settings") -> None:
    """Raise SwarmtrainError naming the first bad setting of `run` (read from `where`)."""
    problems = run_problems(run)
    if problems:
        raise SwarmtrainError(f"{where}: {problems[0].message}", problems[0].help(where))


def node_problems(cfg: NodeConfig, sources: Mapping[str, str] | None = None) -> list[Problem]:
    """Every bad value of a node's settings; `sources` says where each came from (load_node_config)."""
    sources = sources or {}
    source = {
        f.name: f" (from {sources[f.name]})" if sources.get(f.name, "default") != "default" else "" for f in fields(cfg)
    }
    out = [_field_problem(cfg, f.name, NODE_RANGES.get(f.name), f.name, source[f.name]) for f in fields(cfg)]
    if not DEVICE.fullmatch(cfg.device):
        out.append(
            Problem(
                f"device = {cfg.device!r}{source['device']} is not known",
                "use auto, cpu, mps or cuda[:N]",
                f"device: {field_docs(NodeConfig)['device']}",
            )
        )
    return [p for p in out if p is not None]


def validate_node(cfg: NodeConfig, sources: Mapping[str, str] | None = None) -> None:
    """Raise SwarmtrainError naming the first bad setting of `cfg`."""
    problems = node_problems(cfg, sources)
    if problems:
        raise SwarmtrainError(problems[0].message, problems[0].help())
