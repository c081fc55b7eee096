"""`swarmtrain ray-launch`: N volunteers as Ray actors, on an existing Ray cluster or a local one.

For organizers and for volunteers with multi-GPU machines or clusters. Each actor holds one
full peer: a `swarmtrain join` process with its own identity and data dir
(<data-dir>/ray-<i>), one GPU where the cluster has GPUs (Ray sets CUDA_VISIBLE_DEVICES), else
CPU. The peer is a child process of its actor rather than code inside it: it owns its signals,
its libp2p daemon and its end (Ray workers are threaded and handle signals themselves).

Leaving: Ctrl+C or SIGTERM on the launcher (which is what `ray job stop` sends to a job's
driver) asks every peer to leave cleanly (SIGTERM: checkpoint kept, heartbeat withdrawn), waits
for them, then shuts the actors down. Should an actor die without that (a killed job, a lost
node), its peer receives SIGTERM from the kernel (PR_SET_PDEATHSIG) and leaves the same way.
Needs the optional extra: pip install 'swarmtrain[ray]'.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, fields, replace
from pathlib import Path

from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.watch.progress import Reporter

LEAVE_TIMEOUT = 120.0  # seconds a peer may take to leave cleanly before it is killed


@dataclass(kw_only=True)
class RayOptions:
    volunteers: int = 1
    """Volunteer peers to start, one Ray actor each."""
    address: str = ""
    """Ray cluster to use ('auto' = the one this machine belongs to, or ray://HOST:PORT); empty starts a
    local Ray instance (and stops it at the end)."""
    gpus_per_volunteer: float = -1.0
    """GPUs per actor; -1: one where the cluster has GPUs, none otherwise."""
    cpus_per_volunteer: float = 1.0
    """CPUs reserved per actor (also the peer's torch threads)."""


def _ray():
    try:
        import ray
    except ImportError:
        raise SwarmtrainError("ray-launch needs Ray, which is not installed", "pip install 'swarmtrain[ray]'") from None
    return ray


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class VolunteerActor:
    """Runs one `swarmtrain join` process and hands its output lines to the launcher."""

    def __init__(self, label: str, argv: list[str]):
        self.label, self.argv = label, argv
        self.lines: deque[str] = deque(maxlen=10_000)
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        return self.proc.pid

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def drain(self) -> tuple[list[str], int | None]:
        """New output lines, and the exit code once the peer has exited (None while it runs)."""
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        return out, self.proc.poll() if self.proc else None

    def stop(self, timeout: float = LEAVE_TIMEOUT) -> int:
        """Ask the peer to leave cleanly; kill it if it has not after `timeout` seconds."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def volunteer_argv(cfg: NodeConfig, i: int, opt: RayOptions, device: str) -> list[str]:
    """The `swarmtrain join` command line of actor i: the launcher's node settings, with what must
    differ per peer (data dir and so identity, name, result file, fixed ports) made distinct."""
    per_peer = {
        "data_dir": str(Path(cfg.data_dir) / f"ray-{i}"),
        "name": f"{cfg.name or 'ray'}-{i}",
        "result_json": str(Path(cfg.data_dir) / f"ray-{i}" / "result.json"),
        "identity": "",
        "port": cfg.port + i if cfg.port else 0,
        "status_port": cfg.status_port + i if cfg.status_port > 0 else cfg.status_port,
        "device": device,
        "threads": cfg.threads or max(1, int(opt.cpus_per_volunteer)),
        "log_format": "text" if cfg.log_format == "auto" else cfg.log_format,
    }
    argv = [sys.executable, "-m", "node.cli", "join"]
    defaults = NodeConfig()
    for f in fields(NodeConfig):
        value = per_peer.get(f.name, getattr(cfg, f.name))
        if f.name in per_peer or value != getattr(defaults, f.name):
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                argv += [flag] if value else []
            elif isinstance(value, list):
                argv += [flag, *value] if value else []
            elif value != "" or f.name not in ("identity",):
                argv += [flag, str(value)]
    return argv


def run_ray_launch(cfg: NodeConfig, opt: RayOptions, stop: threading.Event, out: Reporter) -> dict:
    """Start the actors, relay their output, and stop them all when `stop` is set or all have exited."""
    if opt.volunteers < 1:
        raise SwarmtrainError("--volunteers must be at least 1", "pass --volunteers N with N >= 1")
    from node.peer.manifest import wanted_run

    cfg = replace(cfg, run_id=wanted_run(cfg))  # each peer joins the run asked for, never "the only one"
    if not cfg.run_id and not cfg.new_swarm:
        raise SwarmtrainError(
            "ray-launch needs the run to join", "pass --run-id RUN (the organizer's join line names it)"
        )
    ray = _ray()
    started_here = not opt.address
    try:
        if started_here:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, int(opt.volunteers * opt.cpus_per_volunteer + 0.999)),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=opt.address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # Ray raises many types (ConnectionError, RuntimeError, ...)
        raise SwarmtrainError(
            f"Ray could not start: {type(e).__name__}: {e}",
            "check `ray status` (for --address), or free memory and /tmp space for a local Ray",
        ) from None
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_gpu = opt.gpus_per_volunteer if opt.gpus_per_volunteer >= 0 else (1.0 if gpus >= 1 else 0.0)
        device = "cuda" if per_gpu > 0 else "cpu"
        remote = ray.remote(VolunteerActor)
        actors = {}
        for i in range(opt.volunteers):
            label = f"ray-{i}"
            actors[label] = remote.options(num_cpus=opt.cpus_per_volunteer, num_gpus=per_gpu, name=None).remote(
                label, volunteer_argv(cfg, i, opt, device)
            )
        pids = ray.get([a.start.remote() for a in actors.values()])
        out.event(
            "ray_launched",
            volunteers=opt.volunteers,
            device=device,
            gpus_in_cluster=gpus,
            local=started_here,
            pids=" ".join(map(str, pids)),
        )
        codes: dict[str, int] = {}
        while len(codes) < len(actors) and not stop.is_set():
            for label, (lines, code) in zip(actors, ray.get([a.drain.remote() for a in actors.values()])):
                for line in lines:
                    if line.strip():
                        out.child(label, line)
                if code is not None and label not in codes:
                    codes[label] = code
            stop.wait(0.5)
        # leave cleanly: every peer at once, then collect what they said last
        codes.update(zip(actors, ray.get([a.stop.remote() for a in actors.values()])))
        for label, (lines, _) in zip(actors, ray.get([a.drain.remote() for a in actors.values()])):
            for line in lines:
                if line.strip():
                    out.child(label, line)
        for a in actors.values():
            ray.kill(a)
    finally:
        if started_here:
            ray.shutdown()
    results = {}
    for i in range(opt.volunteers):
        path = Path(cfg.data_dir) / f"ray-{i}" / "result.json"
        if path.is_file():
            results[f"ray-{i}"] = json.loads(path.read_text())
    return {"exit_codes": codes, "results": results, "device": device}
