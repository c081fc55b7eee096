"""Real node processes on 127.0.0.1 (port 0 only), each in its own session so that every
process it starts (the DHT child, p2pd) is cleaned up with it, also when a test fails."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from bench.swarm import stop_group
from node.config import CHEAP_WORK_TOML

ROOT = Path(__file__).resolve().parents[1]

SMALL_RUN = (
    """\
name = "test"
[model]
d_model = 64
n_layer = 2
n_head = 2
ctx = 64
[train]
batch_size = 4
warmup_steps = 2
[strategy]
inner_steps = 4
overlap = false
[swarm]
round_seconds = 0.0
collect_timeout = 20.0
round_timeout = 60.0
heartbeat_interval = 1.0
heartbeat_ttl = 5.0
"""
    + CHEAP_WORK_TOML
)


# SWARM_STAMP=1 stamps every line with seconds since the session began (to line up logs when
# diagnosing; the doctor test, which anchors its patterns at a line's start, then fails)
T0 = time.monotonic()


class Proc:
    """A `swarmtrain ...` process whose output lines can be awaited."""

    started: list[Proc] = []  # every one this session: a failed test shows the ends of those it saw

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        *,
        command: list[str] | None = None,
        prefix: list[str] = (),
        t0: float | None = None,
    ):
        """`command` runs instead of `python -m node.cli`, after `prefix` (e.g. `ip netns exec NS`);
        with `t0`, each line is stamped 't=SECONDS' since then."""
        self.args = args
        self.cwd = cwd
        self.t0 = t0 if t0 is not None else (T0 if os.environ.get("SWARM_STAMP") else None)
        self.popen = subprocess.Popen(
            [*prefix, *(command or [sys.executable, "-m", "node.cli"]), *args],
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.ended = float("inf")  # monotonic time its output ended
        self._cond = threading.Condition()
        Proc.started.append(self)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.popen.stdout:
            stamp = "" if self.t0 is None else f"t={time.monotonic() - self.t0:.2f} "
            with self._cond:
                self.lines.append(stamp + line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self.ended = time.monotonic()
            self._cond.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Block until a line matches (an event, not a sleep); fail with the output so far."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                if "<eof>" in self.lines[-1:] or time.monotonic() > deadline:
                    raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output[-4000:]}")
                self._cond.wait(timeout=max(0.1, deadline - time.monotonic()))

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def descendants(self) -> list[int]:
        """pids of all processes below this one (the DHT child, p2pd)."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        found, frontier = [], [self.popen.pid]
        while frontier:
            kids = [p for p, pp in parents.items() if pp in frontier]
            found += kids
            frontier = kids
        return found

    def kill_all(self) -> None:
        stop_group(self.popen, 20)  # a clean leave first, as a user's Ctrl+C would; then the whole group
        self.save_log()

    def save_log(self) -> None:
        """Keep the whole output beside the test's files (pytest keeps the last runs' tmp dirs)."""
        name = (
            next((a for a in self.args[self.args.index("--name") + 1 :][:1]), None) if "--name" in self.args else None
        )
        path = self.cwd / f"{name or self.args[0]}-{self.popen.pid}.log"
        try:
            path.write_text(self.output)
        except OSError:
            pass


ROUND = re.compile(r"event=round round=(\d+) peers=(\d+) .*digest=(\w+)")


def starter(net, tmp_path: Path, started: list[Proc], **proc_kw) -> Callable[..., Proc]:
    """`start(k, *args)`: `swarmtrain args` in peer k's namespace of an emulated network
    (bench/linkemu.py, bench/natemu.py), on that namespace's own address, with its own
    data dir, with Proc's `proc_kw`; each process joins `started`, which the test kills. (ip netns
    exec execs the command in place: the node is this pid, and leads its own session.)"""

    def start(k: int, *args: str) -> Proc:
        args = (*args, "--host", net.address(k), "--data-dir", str(tmp_path / f"peer{k}"))
        p = Proc(list(args), tmp_path, prefix=net.exec_prefix(k), **proc_kw)
        started.append(p)
        return p

    return start


def rounds_of(p: Proc, since: int = 0) -> dict[int, tuple[int, str]]:
    """round -> (peers in its roster, digest), from the lines this peer printed from index `since` on."""
    return {int(m[1]): (int(m[2]), m[3]) for line in list(p.lines[since:]) if (m := ROUND.search(line))}


def wait_line(p: Proc, pattern: str, timeout: float, since: int = 0, accept=lambda m: True) -> re.Match:
    """Like Proc.wait_for, but only lines printed from index `since` on count, and only matches
    that `accept` takes."""
    rx, deadline = re.compile(pattern), time.monotonic() + timeout
    seen = since
    with p._cond:
        while True:
            for line in p.lines[seen:]:
                if (m := rx.search(line)) and accept(m):
                    return m
            seen = max(seen, len(p.lines))
            if "<eof>" in p.lines[-1:] or time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r} after line {since}; output:\n{p.output[-4000:]}")
            p._cond.wait(timeout=max(0.1, deadline - time.monotonic()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test at teardown."""
    since = time.monotonic() - (call.duration or 0.0)
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)
    if report.when == "call":
        Proc.started[:] = [p for p in Proc.started if p.ended >= since]  # those this test saw, alive or ended in it
        if report.failed:  # a swarm fails across processes: show every one's end
            for p in Proc.started:
                report.sections.append((f"swarmtrain {' '.join(p.args[:4])}: last lines", p.output[-2500:]))


@pytest.fixture
def procs(tmp_path):
    started: list[Proc] = []

    def start(*args: str) -> Proc:
        p = Proc(list(args), tmp_path)
        started.append(p)
        return p

    yield start
    kill_all(started)


def kill_all(started: list[Proc]) -> None:
    """Stop every process, in parallel: clean leaves one after another cost each test seconds."""
    with ThreadPoolExecutor(len(started) or 1) as pool:
        list(pool.map(Proc.kill_all, started))


@pytest.fixture
def small_run(tmp_path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(SMALL_RUN)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Bootstrap(NamedTuple):
    """A started bootstrap peer: its process, the address volunteers dial and the run they join
    (`join` needs --run-id: the DHT's run list is anyone's to write)."""

    proc: Proc
    maddr: str
    run_id: str


def join_args(boot: Bootstrap, data_dir: Path, *more: str) -> list[str]:
    """`join` of a volunteer on loopback into `boot`'s run, with its own data dir and one thread."""
    return ["join", "--run-id", boot.run_id, "--initial-peers", boot.maddr, "--host", "127.0.0.1",
            "--data-dir", str(data_dir), "--threads", "1", *more]  # fmt: skip


def volunteer(procs, boot: Bootstrap, tmp_path: Path, name: str, rounds: int) -> Proc:
    """A volunteer named `name` that trains `rounds` rounds, keeps its data in tmp_path/name and
    writes its summary to tmp_path/name.json."""
    more = ("--max-rounds", str(rounds), "--result-json", str(tmp_path / f"{name}.json"))
    return procs(*join_args(boot, str(tmp_path / name), *more))


def bootstrap_ready(boot: Proc) -> Bootstrap:
    found = boot.wait_for(r"event=bootstrap_ready run=(\S+) .*maddrs=(\S+)", 90)
    return Bootstrap(boot, found.group(2).split(",")[0], found.group(1))


def start_bootstrap(procs, tmp_path: Path, run: Path) -> Bootstrap:
    boot = procs(
        "bootstrap",
        "--run",
        str(run),
        "--host",
        "127.0.0.1",
        "--data-dir",
        str(tmp_path / "boot"),
        "--startup-timeout",
        "60",
    )
    return bootstrap_ready(boot)
