"""`swarmtrain bench swarm`: real node processes, side by side in one run (issue 9).

Each case starts a bootstrap and --peers volunteers (on loopback, or each in its own network
namespace behind an emulated consumer link with --link), lets them train for --seconds after
the last one joined, stops them as a user's Ctrl+C would, and reads each peer's result JSON.
With --slow-peer F, every case also runs with one more peer F times slower, so that the rows
show what a slow peer costs the others and adds to the swarm.

Everything is measured over the same window of each case: from WARMUP seconds after every
peer finished a round with all peers in it, to --seconds later, from the per-round timeline in each peer's result JSON.
Rows (JSON): strategy, round_seconds, peers, slow_peer, link, wall_seconds,
compute_utilization (fast peers but the evaluating one, unless it is the only fast peer:
seconds in forward, backward and the inner step over wall seconds), tokens (contributed to
accepted rounds, all peers), fast_tokens_per_s (per fast peer),
swarm_tokens_per_s, val_bpb (peer 0 evaluates), bytes_up_per_peer, bytes_down_per_peer
(update bytes, per peer per round), rounds_ok, rounds_failed (median peer), target_bpb,
seconds_to_target_bpb (from the moment every peer joined until the evaluating peer's val bpb
first reached --target-bpb; None: not within the case).
`--strategies hivemind` runs the baseline: hivemind.Optimizer on the same model, data and
inner AdamW (bench/hivemind_peer.py); its byte columns are all-reduce's own figure, since
hivemind does not count bytes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.cpuquota import CpuQuota
from bench.linkemu import EmulatedNetwork, LinkSpec, missing_requirements
from bench.tables import markdown_table
from node.config import CHEAP_WORK_TOML, SwarmConfig
from node.errors import SwarmtrainError

WARMUP = 5.0
"""Seconds after every peer finished a round with all peers in it before the window opens."""
RUN_TOML = (
    """\
name = "bench-swarm"
[model]
d_model = 128
n_layer = 2
n_head = 4
ctx = 128
[train]
batch_size = 8
warmup_steps = 10
[strategy]
name = "{strategy}"
inner_steps = 20
overlap = {overlap}
{wire}
[swarm]
relay_fanout = {relay_fanout}
scatter_min_peers = {scatter_min_peers}
collect_timeout = 20.0
round_timeout = 90.0
heartbeat_interval = 1.0
heartbeat_ttl = 5.0
{window}
min_peers = {min_peers}
"""
    + CHEAP_WORK_TOML
)
"""The run file of every case; the fields in braces come from the case."""


@dataclass(frozen=True, kw_only=True)
class SwarmCase:
    """One case of `bench swarm`: a swarm of real node processes, measured over one window."""

    strategy: str
    """Strategy ([strategy] name in the run file); '+overlap' also sets [strategy] overlap,
    '+direct' [swarm] relay_fanout = 0 (every update fetched from its owner), '+int8' [strategy]
    wire_dtype = "int8", '+v3' the reduce-scatter from 4 members ([swarm] scatter_min_peers = 4),
    '+v2' verify-all at any size (scatter_min_peers = 0); neither: the default (v3 from 16)."""
    round_seconds: float | None
    """Compute window per round; 0: fixed inner_steps; None: unset (sized from the swarm)."""
    fast: int
    """Peers at full speed."""
    slow: float
    """Slowdown of one more peer; 0: no slow peer."""
    link: str
    """Link spec of every peer ('' : loopback)."""
    quota: float = 0.0
    """One more peer whose processes share this fraction of one core (a cgroup); 0: none."""

    @property
    def slowed(self) -> bool:
        return bool(self.slow or self.quota)


HIVEMIND = "hivemind"
"""The baseline: hivemind.Optimizer itself on the same model and data (bench/hivemind_peer.py)."""


OPTIONS = ("overlap", "direct", "int8", "v2", "v3")
"""What a strategy name may add, each after a '+'."""


def strategy_of(spec: str) -> tuple[str, set[str]]:
    """'sparseloco' -> ('sparseloco', set()); 'sparseloco+overlap+direct' -> ('sparseloco', {'overlap', 'direct'})."""
    name, *extra = spec.split("+")
    unknown = [x for x in extra if x not in OPTIONS] or (extra if name == HIVEMIND else [])
    if unknown:
        raise SwarmtrainError(
            f"strategy {spec!r}: unknown option {unknown[0]!r}",
            f"write NAME, optionally followed by +{' +'.join(OPTIONS)}",
        )
    return name, set(extra)


def run_file(case: SwarmCase, peers: int) -> str:
    """The run file of a case of `peers` volunteers."""
    name, options = strategy_of(case.strategy)
    return RUN_TOML.format(
        strategy=name,
        overlap=str("overlap" in options).lower(),
        relay_fanout=0 if "direct" in options else SwarmConfig.relay_fanout,
        wire='wire_dtype = "int8"' if "int8" in options else "",
        scatter_min_peers=scatter_min_peers(options),
        window="" if case.round_seconds is None else f"round_seconds = {case.round_seconds}",
        min_peers=peers,
    )


def scatter_min_peers(options: set[str]) -> int:
    """[swarm] scatter_min_peers for a case's options: v3 from 4 members, v2 always, else the default."""
    if {"v2", "v3"} <= options:
        raise SwarmtrainError("a strategy cannot be both +v2 and +v3", "name one of them")
    return 4 if "v3" in options else 0 if "v2" in options else SwarmConfig.scatter_min_peers


class Node:
    """One `swarmtrain` process in its own session (so that its p2pd goes with it)."""

    def __init__(self, args: list[str], prefix: list[str], log: Path, module: str = "node.cli"):
        self.log = log.open("w")
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", module, *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).parents[1],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.path = log

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.path.read_text()):
                return m
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)  # a log file gives no event to await
        raise SwarmtrainError(
            f"{' '.join(self.popen.args[-6:])}: no line matching {pattern!r}; see {self.path}",
            "read the log named above",
        )

    def stop(self, timeout: float = 30.0) -> None:
        stop_group(self.popen, timeout)
        self.log.close()


def stop_group(popen: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the node (a clean leave, as a user's Ctrl+C), then after `timeout` SIGKILL of
    its whole process group: the node's p2pd goes with it."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_case(
    case: SwarmCase, seconds: float, work: Path, stop: threading.Event, say=print, target_bpb: float | None = None
) -> dict | None:
    work.mkdir(parents=True, exist_ok=True)
    n = case.fast + (1 if case.slowed else 0)
    run = work / "run.toml"
    name, _ = strategy_of(case.strategy)
    run.write_text(run_file(case, n))
    with ExitStack() as stack:
        net = stack.enter_context(EmulatedNetwork([LinkSpec.parse(case.link)] * (n + 1))) if case.link else None
        host = (lambda k: net.address(k)) if net else (lambda k: "127.0.0.1")
        prefix = (lambda k: net.exec_prefix(k)) if net else (lambda k: [])
        if case.quota:  # the slow peer, all its processes, at a fraction of a core
            quota = CpuQuota(f"swarmtrain-bench-{os.getpid()}", case.quota)
            stack.callback(quota.close)
            inner = prefix
            prefix = lambda k: quota.prefix() + inner(k) if k == n else inner(k)  # noqa: E731
        nodes: list[Node] = []
        stack.callback(lambda: [x.stop() for x in reversed(nodes)])
        baseline = name == HIVEMIND
        module = "bench.hivemind_peer" if baseline else "node.cli"
        nodes.append(
            Node(
                ["bootstrap", "--host", host(0)]
                if baseline
                else [
                    "bootstrap",
                    "--run",
                    str(run),
                    "--host",
                    host(0),
                    "--data-dir",
                    str(work / "boot"),
                    "--startup-timeout",
                    "60",
                ],
                prefix(0),
                work / "boot.log",
                module,
            )
        )
        ready = nodes[0].wait_for(r"event=bootstrap_ready (?:run=(\S+) )?.*maddrs=(\S+)", 120)
        maddr = ready.group(2).split(",")[0]
        for k in range(1, n + 1):
            slow = ["--slowdown", str(case.slow)] if case.slow and k == n else []
            own = (
                ["--run", str(run), "--peers", str(n), "--index", str(k)]
                if baseline
                else ["--data-dir", str(work / f"p{k}"), "--run-id", ready.group(1)]
            )
            nodes.append(
                Node(
                    [
                        "join",
                        "--initial-peers",
                        maddr,
                        "--host",
                        host(k),
                        *own,
                        "--threads",
                        "1",
                        "--result-json",
                        str(work / f"p{k}.json"),
                        *(["--eval"] if k == 1 else []),
                        *slow,
                    ],
                    prefix(k),
                    work / f"p{k}.log",
                    module,
                )
            )
        for node in nodes[1:]:
            node.wait_for(r"event=joined ", 180)
        joined = time.time()  # time to the target bpb counts from here
        say(
            f"  {case.strategy} window={window_name(case.round_seconds)} "
            f"peers={case.fast}+{'1 slow' if case.slowed else '0'}"
            f"{' link=' + case.link if case.link else ''}: training {seconds:.0f} s"
        )
        for node in nodes[1:]:  # the first rounds with every peer in them are not measured
            node.wait_for(rf"event=round round=\d+ peers={n} ", 300)
        if stop.wait(WARMUP):
            return None
        start = time.time()
        if stop.wait(seconds):  # the measurement itself; Ctrl+C ends the bench, the peers leave cleanly
            return None
        end = time.time()
        for node in reversed(nodes[1:]):
            node.stop()
        missing = [k for k in range(1, n + 1) if not (work / f"p{k}.json").exists()]
        if missing:
            raise SwarmtrainError(
                f"peer {missing[0]} of {case.strategy} wrote no result JSON",
                f"read its log, {work / f'p{missing[0]}.log'}",
            )
        results = [json.loads((work / f"p{k}.json").read_text()) for k in range(1, n + 1)]
    return row(case, [measured(r, start, end) for r in results], results, joined, target_bpb)


def measured(result: dict, start: float, end: float) -> dict:
    """What a peer did between start and end (unix times): the change between its first round
    finished after start and its last finished before end (its result JSON's timeline)."""
    rows = [dict(zip(result["timeline_fields"], t)) for t in result["timeline"]]
    inside = [t for t in rows if start <= t["unix_time"] <= end]
    if len(inside) < 2:
        raise SwarmtrainError(
            f"a peer finished {len(inside)} rounds in the measured window",
            "give the bench more --seconds, or a shorter --round-seconds",
        )
    a, b = inside[0], inside[-1]
    return {k: b[k] - a[k] for k in rows[0]}


def seconds_to(target: float | None, bpb_timeline: list[list], since: float) -> float | None:
    """Seconds from `since` until the evaluating peer first measured val_bpb <= target (None: never)."""
    if target is None:
        return None
    return next((round(t - since, 1) for t, _, bpb in bpb_timeline if bpb <= target), None)


def row(
    case: SwarmCase, deltas: list[dict], results: list[dict], joined: float = 0.0, target_bpb: float | None = None
) -> dict:
    fast = deltas[: case.fast]
    per_s = lambda d, k: d[k] / d["unix_time"]  # noqa: E731
    bpb = results[0].get("val_bpb") or []
    return {
        "strategy": case.strategy,
        "round_seconds": window_name(case.round_seconds),
        "peers": len(deltas),
        "slow_peer": f"quota {case.quota:g} core" if case.quota else case.slow,
        "link": case.link or "loopback",
        "wall_seconds": round(statistics.mean(d["unix_time"] for d in deltas), 1),
        # the evaluating peer (the first) spends time on the benchmark's own measurement: left out
        "compute_utilization": round(statistics.mean(per_s(d, "compute_seconds") for d in fast[1:] or fast), 3),
        "tokens": sum(d["tokens_contributed"] for d in deltas),
        "fast_tokens_per_s": round(statistics.mean(per_s(d, "tokens_trained") for d in fast)),
        "swarm_tokens_per_s": round(sum(per_s(d, "tokens_contributed") for d in deltas)),
        "val_bpb": bpb[-1] if bpb else None,
        "bytes_up_per_peer": round(statistics.mean(d["bytes_sent"] / max(1, d["round"]) for d in deltas)),
        "bytes_down_per_peer": round(statistics.mean(d["bytes_received"] / max(1, d["round"]) for d in deltas)),
        # upload once: of bytes_up, what a peer sent of its own update, and the most any peer sent
        "own_update_bytes_up_per_peer": round(
            statistics.mean((d["bytes_sent"] - d.get("bytes_relayed", 0)) / max(1, d["round"]) for d in deltas)
        ),
        "max_bytes_up_per_peer": round(max(d["bytes_sent"] / max(1, d["round"]) for d in deltas)),
        "seconds_per_round": round(statistics.mean(d["unix_time"] / max(1, d["round"]) for d in deltas), 2),
        # what a round took beyond the peer's own compute: the exchange, and waiting for the others
        "beyond_compute_seconds_per_round": round(
            statistics.mean((d["unix_time"] - d["compute_seconds"]) / max(1, d["round"]) for d in deltas), 2
        ),
        "rounds_ok": statistics.median(d["round"] for d in deltas),
        "rounds_failed": statistics.median(r["rounds_failed"] for r in results),
        "target_bpb": target_bpb,
        "seconds_to_target_bpb": seconds_to(target_bpb, results[0].get("val_bpb_timeline", []), joined),
    }


def window_name(round_seconds: float | None) -> str | float:
    return "auto" if round_seconds is None else round_seconds


def run_swarm_bench(
    *,
    peers: int,
    strategies: list[str],
    seconds: float,
    round_seconds: list[float | None],
    slow_peer: float,
    slow_quota: float = 0.0,
    link: str,
    json_path: str,
    workdir: str,
    stop: threading.Event,
    say=print,
    target_bpb: float | None = None,
) -> list[dict]:
    if link:
        LinkSpec.parse(link)  # a bad spec fails before anything starts
        if why := missing_requirements():
            raise SwarmtrainError(
                f"--link needs network namespaces: {why}", "run as root on Linux, or leave --link out"
            )
    if peers < 1 or seconds <= 0 or slow_peer < 0 or (0 < slow_peer < 1):
        raise SwarmtrainError(
            "bench swarm: --peers >= 1, --seconds > 0 and --slow-peer 0 (none) or >= 1", "fix the flag named above"
        )
    for strategy in strategies:
        strategy_of(strategy)  # a bad name fails before anything starts
    rows = []
    for strategy in strategies:
        for window in round_seconds[:1] if strategy == HIVEMIND else round_seconds:  # it has no window
            for slowed in [False, True] if slow_peer or slow_quota else [False]:
                case = SwarmCase(
                    strategy=strategy,
                    round_seconds=window,
                    fast=peers,
                    slow=slow_peer if slowed else 0.0,
                    quota=slow_quota if slowed else 0.0,
                    link=link,
                )
                name = f"{strategy}-w{window_name(window)}-{'slow' if slowed else 'even'}"
                try:
                    result = run_case(case, seconds, Path(workdir) / name, stop, say, target_bpb)
                except SwarmtrainError as e:  # one case's trouble costs its row, not the others'
                    say(f"    {name}: no row: {e.render()}")
                    continue
                if result is None:
                    return rows
                rows.append(result)
                say("    " + ", ".join(f"{k}={v}" for k, v in rows[-1].items() if k not in ("strategy", "link")))
                Path(json_path).write_text(json.dumps({"seconds": seconds, "rows": rows}, indent=2))
    return rows


TABLE_KEYS = (
    "strategy",
    "round_seconds",
    "peers",
    "slow_peer",
    "link",
    "compute_utilization",
    "fast_tokens_per_s",
    "swarm_tokens_per_s",
    "val_bpb",
    "bytes_up_per_peer",
    "bytes_down_per_peer",
    "seconds_per_round",
    "rounds_ok",
    "rounds_failed",
    "seconds_to_target_bpb",
)
"""The row keys `swarm_table` shows, in order (the JSON has more)."""


def swarm_table(rows: list[dict]) -> str:
    """The rows as a markdown table: one column per TABLE_KEYS, val bpb to 4 places."""
    return markdown_table(
        list(TABLE_KEYS),
        (
            [f"{r[k]:.4f}" if isinstance(r[k], float) and k == "val_bpb" else str(r[k]) for k in TABLE_KEYS]
            for r in rows
        ),
    )
