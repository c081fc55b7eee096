"""`swarmtrain demo`: a bootstrap peer and N volunteers as separate processes on 127.0.0.1.

The demo is only an orchestrator: every peer is a real `swarmtrain join` process talking
over libp2p on loopback. Their output is shown with a [name] prefix; each volunteer writes a
result JSON on exit, which the demo merges into the summary.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from node.config import CHEAP_WORK_TOML, StrategyName
from node.errors import SwarmtrainError
from node.peer.bootstrap import READY_FILE
from node.watch.progress import Reporter

DEMO_RUN_TOML = (
    """\
# The demo run: small enough for a laptop CPU, same code path as a real swarm.
name = "demo"
[model]
d_model = 128
n_layer = 4
n_head = 4
ctx = 128
[train]
batch_size = 8
inner_lr = 0.003
warmup_steps = 10
[strategy]
name = "{strategy}"
inner_steps = {inner_steps}
[swarm]
collect_timeout = 30.0
round_timeout = 120.0
heartbeat_interval = 1.0
heartbeat_ttl = 6.0
# every demo peer in the first round: peers that start together each see a different swarm for
# a moment, and one that led alone would split the run at its genesis
min_peers = {peers}
"""
    + CHEAP_WORK_TOML
)


@dataclass(kw_only=True)
class DemoOptions:
    run: str = ""
    """Run file to train (any run.toml, e.g. examples/hf-lora.toml); default the built-in demo run, shaped
    by --strategy and --inner-steps (which a run file overrides). Paths in it are relative to here."""
    peers: int = 3
    """Volunteer peers started at once."""
    rounds: int = 0
    """Stop after this many rounds; 0 runs until Ctrl+C."""
    late_joiner: bool = False
    """Start one more volunteer after round 2."""
    strategy: StrategyName = "diloco"
    """Outer strategy of the demo run."""
    inner_steps: int = 50
    """Inner steps per round (long enough that a late joiner, which needs ~15 s to start on a busy
    2-core machine, still catches a round to contribute to)."""
    workdir: str = ""
    """Where peers keep identities, checkpoints and results; default a new temp directory."""
    summary_json: str = ""
    """Write the demo summary here."""
    startup_timeout: float = 120.0
    """Seconds each peer may take to start."""
    monitor_port: int = 0
    """Port of the swarm monitor's page (`swarmtrain monitor`); 0 picks a free one, -1 starts no monitor."""


class Child:
    def __init__(
        self,
        label: str,
        argv: list[str],
        events: queue.Queue[tuple[str, str]],
        out: Reporter,
        hide: tuple[str, ...] = (),
    ):
        self.label, self.out, self.hide = label, out, hide
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.thread = threading.Thread(target=self._pump, args=(events,), daemon=True)
        self.thread.start()

    def _pump(self, events) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.strip() and not line.startswith(self.hide):  # (an empty tuple matches nothing)
                self.out.child(self.label, line)
            events.put((self.label, line))
        events.put((self.label, "<exit>"))

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli", *args]


def run_demo(opt: DemoOptions, stop: threading.Event, out: Reporter) -> dict:
    if opt.peers < 1:
        raise SwarmtrainError("--peers must be at least 1", "pass --peers N with N >= 1")
    t_start = time.monotonic()
    work = Path(opt.workdir or tempfile.mkdtemp(prefix="swarmtrain-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    if opt.run:
        if not Path(opt.run).is_file():
            raise SwarmtrainError(f"run file {opt.run} does not exist", "check the path given to --run")
        run_file = Path(opt.run).resolve()
    else:
        run_file = work / "run.toml"
        run_file.write_text(DEMO_RUN_TOML.format(strategy=opt.strategy, inner_steps=opt.inner_steps, peers=opt.peers))
    out.say(f"demo: working directory {work}")
    events: queue.Queue = queue.Queue()
    children: list[Child] = []
    try:
        boot = Child(
            "bootstrap",
            _cli(
                "bootstrap",
                "--run",
                str(run_file),
                "--host",
                "127.0.0.1",
                "--data-dir",
                str(work / "bootstrap"),
                "--startup-timeout",
                str(opt.startup_timeout),
            ),
            events,
            out,
        )
        children.append(boot)
        ready = _await_bootstrap(work / "bootstrap" / READY_FILE, boot, opt.startup_timeout, stop)

        def volunteer(i: int) -> Child:
            label = f"peer{i}"
            argv = _cli(
                "join",
                "--run-id",
                ready.run_id,
                "--initial-peers",
                ready.maddr,
                "--host",
                "127.0.0.1",
                "--data-dir",
                str(work / label),
                "--max-rounds",
                str(opt.rounds),
                "--threads",
                "1",
                "--name",
                label,
                "--result-json",
                str(work / label / "result.json"),
                "--startup-timeout",
                str(opt.startup_timeout),
                *(["--eval"] if i == 0 else []),
            )
            (work / label).mkdir(exist_ok=True)
            return Child(label, argv, events, out)

        volunteers = [volunteer(i) for i in range(opt.peers)]
        children += volunteers
        if opt.monitor_port >= 0:  # the swarm's page; its per-refresh lines would only repeat the peers'
            children.append(
                Child(
                    "monitor",
                    _cli(
                        "monitor",
                        "--run-id",
                        ready.run_id,
                        "--initial-peers",
                        ready.maddr,
                        "--host",
                        "127.0.0.1",
                        "--data-dir",
                        str(work / "monitor"),
                        "--status-port",
                        str(opt.monitor_port),
                        "--startup-timeout",
                        str(opt.startup_timeout),
                    ),
                    events,
                    out,
                    hide=("event=swarm",),
                )
            )
        late = None
        running = {c.label for c in volunteers}
        while running and not stop.is_set():
            try:
                label, line = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if line == "<exit>":
                running.discard(label)
            elif opt.late_joiner and late is None and "event=round " in line and _round_of(line) >= 2:
                late = volunteer(len(volunteers))
                volunteers.append(late)
                children.append(late)
                running.add(late.label)
                out.say(f"demo: round 2 done, starting late joiner {late.label}")
        codes = {c.label: c.wait(120) for c in volunteers}
    finally:
        for c in reversed(children):
            c.stop()
        for c in children:
            c.wait(60)
    summary = _summarize(work, volunteers, late, opt, time.monotonic() - t_start, codes)
    if opt.summary_json:
        Path(opt.summary_json).write_text(json.dumps(summary, indent=2))
    return summary


def _round_of(line: str) -> int:
    for part in line.split():
        if part.startswith("round="):
            try:
                return int(part[6:])
            except ValueError:
                return -1
    return -1


class Ready(NamedTuple):
    """What the demo's bootstrap peer wrote once reachable: where to join, and which run."""

    maddr: str
    run_id: str


def _await_bootstrap(ready: Path, boot: Child, timeout: float, stop: threading.Event) -> Ready:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if ready.is_file():
            written = json.loads(ready.read_text())
            return Ready(written["maddrs"][0], written["run_id"])
        if boot.proc.poll() is not None:
            raise SwarmtrainError(
                "the demo's bootstrap peer exited before it was ready", "its output above says why and how to fix it"
            )
        stop.wait(0.2)  # note: waiting for a file another process writes
    raise SwarmtrainError(
        f"the demo's bootstrap peer was not ready within {timeout:.0f} s",
        "the machine may be busy: retry, or raise --startup-timeout",
    )


def _summarize(
    work: Path, volunteers: list[Child], late: Child | None, opt: DemoOptions, wall: float, codes: dict[str, int]
) -> dict:
    results = {}
    for c in volunteers:
        path = work / c.label / "result.json"
        if path.is_file():
            results[c.label] = json.loads(path.read_text())
    # 0: reached --rounds; 130: left cleanly on Ctrl+C (the demo's own stop)
    finished = {lbl: r for lbl, r in results.items() if codes.get(lbl) in (0, 130)}
    by_peer = {r["peer"]: r for r in finished.values()}
    rounds = min((r["rounds_completed"] for r in finished.values()), default=0)
    evaluator = results.get("peer0", {})
    sent = sum(r["bytes_sent"] for r in by_peer.values())
    return {
        "peers": len(finished),
        "rounds_completed": rounds,
        "val_bpb": evaluator.get("val_bpb", []),
        "model_digests": {p: r["digest"] for p, r in by_peer.items()},
        "bytes_sent": {p: r["bytes_sent"] for p, r in by_peer.items()},
        "bytes_received": {p: r["bytes_received"] for p, r in by_peer.items()},
        "codec_bytes_sent": {p: r["codec_bytes_sent"] for p, r in by_peer.items()},
        "codec_bytes_received": {p: r["codec_bytes_received"] for p, r in by_peer.items()},
        "strategy": evaluator.get("strategy", opt.strategy),
        "params_trainable": evaluator.get("params_trainable"),
        "params_total": evaluator.get("params_total"),
        "privacy": evaluator.get("privacy", {}),
        "late_joiner": results.get(late.label, {}).get("peer") if late else None,
        "names": {r["peer"]: lbl for lbl, r in results.items()},
        "exit_codes": codes,
        "wall_s": round(wall, 1),
        "bytes_sent_per_round": round(sent / max(1, rounds), 1),
        "update_bytes_per_peer": evaluator.get("update_bytes_per_peer"),
        "workdir": str(work),
    }
