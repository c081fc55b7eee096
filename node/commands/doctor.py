"""`swarmtrain doctor`: preflight checks before joining, each failure with the fix.

Cheap local checks first (ports, disk, memory, threads); then, if initial peers are given,
TCP reachability of each, and, through a short client-mode DHT visit, the run's model size
(for the memory check) and clock skew against the peers' heartbeats. Whether peers elsewhere
will be able to dial this node (behind NAT they cannot) is a warning, never a failure: such a
node still trains (node/p2p/reach.py says what it misses). Exit status 1 when any check fails,
so scripts can gate `join` on it.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from node.config import ModelConfig, NodeConfig, RunConfig
from node.errors import SwarmtrainError
from node.p2p.addresses import Address, initial_peers, parse_announce
from node.p2p.dht import NOT_A_PEER_FIX, probe_peer
from node.p2p.reach import judge, local_maddrs

OK, WARN, FAIL = "ok", "warn", "FAIL"
FIX_UNKNOWN = "check the flags named above; `swarmtrain config show` prints every effective setting"
"""The fix line of a failure whose error names none: every FAIL has one."""


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def port_check(host: str, port: int, what: str) -> Check:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            got = s.getsockname()[1]
        except OSError as e:
            return Check(
                f"{what} port",
                FAIL,
                f"cannot bind {host}:{port}: {e.strerror}",
                "pick another port, or 0 for a free one; is another node already running?",
            )
    return Check(f"{what} port", OK, f"{host}:{port} is free" if port else f"{host}: a free port is available ({got})")


def peer_check(address: Address, timeout: float = 5.0) -> Check:
    answer = probe_peer(address, timeout)
    if not answer["up"]:
        return Check(
            "initial peer",
            FAIL,
            f"{address.text}: {answer['error']}",
            "check the address (copy it from `swarmtrain bootstrap`'s output), that the peer runs, "
            "and that no firewall blocks the port",
        )
    if not answer["libp2p"]:
        return Check("initial peer", FAIL, f"{address.text}: {answer['error']}", NOT_A_PEER_FIX)
    return Check("initial peer", OK, f"{address.text}: a libp2p peer, answers in {answer['latency_ms']:.0f} ms")


def reach_check(cfg: NodeConfig, peers: list[Address]) -> Check:
    """Will peers elsewhere be able to dial this node? Judged from what it would announce:
    --announce, else its --host, or for 0.0.0.0 the address its route to the initial peers leaves
    from. A warning, not a failure, when they cannot: the node still trains."""
    try:
        announced = parse_announce(cfg.announce)
    except SwarmtrainError as e:
        return Check("reachable", FAIL, str(e), e.help or FIX_UNKNOWN)
    reach = judge(announced or local_maddrs(cfg.host, cfg.port, [p.host for p in peers]), port=cfg.port)
    remote = any(not p.host.startswith("127.") and p.host not in ("localhost", "::1") for p in peers)
    if reach.reachable or (reach.kind == "loopback" and not remote):  # a swarm on this machine: nothing to fix
        return Check("reachable", OK, reach.summary)
    return Check("reachable", WARN, f"{reach.summary}; {reach.meaning}".rstrip("; "), reach.fix)


def param_count(model: ModelConfig) -> int:
    """About the parameters of node/train/model.py's GPT: 12 d^2 per block plus the embeddings."""
    return 12 * model.n_layer * model.d_model**2 + 256 * model.d_model + model.ctx * model.d_model


def training_bytes(model: ModelConfig, batch_size: int) -> int:
    """A generous estimate of a node's training memory: fp32 weights, grads, AdamW moments, the
    swarm state and its outer buffers (~8 copies of the parameters), plus activations."""
    params = param_count(model)
    activations = batch_size * model.ctx * model.d_model * model.n_layer * 20 * 4
    attention = batch_size * model.n_head * model.ctx**2 * model.n_layer * 3 * 4
    return 8 * 4 * params + activations + attention + 400 * 2**20  # + torch and the interpreter


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_check(run: RunConfig, where: str) -> Check:
    need, have = training_bytes(run.model, run.train.batch_size), available_memory()
    if have is None:
        return Check("memory", WARN, f"the run needs about {need / 2**30:.2f} GiB; free memory unknown here")
    status = OK if have >= need else FAIL
    return Check(
        "memory",
        status,
        f"the run ({where}) needs about {need / 2**30:.2f} GiB; {have / 2**30:.1f} GiB free",
        "" if status == OK else "close other programs, or join a run with a smaller model",
    )


def disk_check(data_dir: str, run: RunConfig) -> Check:
    path = Path(data_dir).resolve()
    while not path.exists():
        path = path.parent
    need = 2 * 3 * 4 * param_count(run.model) + 100 * 2**20  # state + outer buffers, twice while saving
    fix = "use --data-dir with a directory you can write to (it is created if missing)"
    if not path.is_dir():
        return Check("disk", FAIL, f"--data-dir {data_dir}: {path} is a file, not a directory", fix)
    try:  # by trying: as root, file modes do not say whether a write succeeds (a read-only mount)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return Check("disk", FAIL, f"--data-dir {data_dir}: cannot write in {path}: {e.strerror}", fix)
    free = shutil.disk_usage(path).free
    status = OK if free >= need else FAIL
    return Check(
        "disk",
        status,
        f"{free / 2**30:.1f} GiB free at {path}, about {need / 2**20:.0f} MiB needed",
        "" if status == OK else "free some space or use --data-dir on another disk",
    )


def threads_check(cfg: NodeConfig) -> Check:
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = cfg.threads or torch.get_num_threads()
    if threads > cpus:
        return Check(
            "threads",
            WARN,
            f"torch would use {threads} threads on {cpus} usable cores",
            f"use --threads {cpus} (more threads than cores slows training down)",
        )
    return Check(
        "threads",
        OK,
        f"torch uses {threads} of {cpus} usable cores"
        + ("" if cfg.threads else " (set --threads to leave cores to other work)"),
    )


def device_check(cfg: NodeConfig) -> Check:
    import torch

    cuda = torch.cuda.is_available()
    if cfg.device.startswith("cuda") and not cuda:
        return Check(
            "device",
            FAIL,
            f"--device {cfg.device}, but torch {torch.__version__} sees no CUDA GPU",
            "use --device cpu, or install a CUDA build of torch",
        )
    gpu = f"CUDA: {torch.cuda.get_device_name(0)}" if cuda else "no CUDA GPU: training on the CPU"
    return Check("device", OK, f"torch {torch.__version__}; {gpu}")


def swarm_checks(cfg: NodeConfig, peers: list[Address]) -> tuple[list[Check], RunConfig | None]:
    """Visit the swarm in client mode: the run manifest, and clock skew from the peers' heartbeats."""
    from node.p2p.dht import Swarm, dht_time, read_peers
    from node.peer import manifest as manifests

    probe_cfg = replace(
        cfg,
        port=0,
        announce=[],
        identity=str(Path(cfg.data_dir) / "doctor.key"),
        startup_timeout=min(cfg.startup_timeout, 30.0),
    )
    try:
        swarm = Swarm.start(probe_cfg, peers, client_mode=True)
    except SwarmtrainError as e:
        return [Check("swarm", FAIL, str(e), e.help or FIX_UNKNOWN)], None
    try:
        run_id, manifest, _ = manifests.fetch(swarm, manifests.wanted_run(cfg), probe_cfg.startup_timeout)
        run, corpus = manifests.accept(run_id, manifest)  # protocol version, settings, our copy of the data
        checks = [
            Check(
                "run",
                OK,
                f"{run_id}: {run.strategy.name}, model d={run.model.d_model} "
                f"L={run.model.n_layer}; our corpus {corpus.origin} matches",
            )
        ]
        beats = read_peers(swarm, run_id)
        now = dht_time()
        if not beats:
            checks.append(Check("clock", WARN, "no live peer to compare clocks with"))
        else:
            # each heartbeat is re-stamped every heartbeat_interval: its age by our clock is 0..interval
            ages = [now - hb.time for hb in beats.values()]
            age, interval = statistics.median(ages), run.swarm.heartbeat_interval
            off = age - interval / 2
            bad = abs(off) > interval / 2 + 3.0  # hivemind peers need clocks within about 3 s
            checks.append(
                Check(
                    "clock",
                    WARN if bad else OK,
                    f"median heartbeat age {age:+.1f} s by our clock over {len(ages)} peers "
                    f"(expected 0..{interval:.0f} s): skew about {off:+.1f} s",
                    "sync the clock (timedatectl set-ntp true): DHT records expire by wall clock" if bad else "",
                )
            )
        return checks, run
    except SwarmtrainError as e:
        return [Check("swarm", FAIL, str(e), e.help or FIX_UNKNOWN)], None
    finally:
        swarm.shutdown()


def run_doctor(cfg: NodeConfig, run_path: str | None) -> list[Check]:
    from node.config import load_run_config

    checks = [device_check(cfg), port_check(cfg.host, cfg.port, "listen")]
    if cfg.status_port >= 0:
        checks.append(port_check(cfg.status_host, cfg.status_port, "status page"))
    checks.append(threads_check(cfg))
    try:
        peers = initial_peers(cfg.initial_peers, cfg.initial_peers_file, 0.0)
    except SwarmtrainError as e:
        peers, checks = [], checks + [Check("initial peer", FAIL, str(e), e.help or FIX_UNKNOWN)]
    if not peers and not cfg.new_swarm:
        checks.append(
            Check(
                "initial peer",
                WARN,
                "no initial peers given: only local checks ran",
                "pass --initial-peers MADDR to check the swarm too",
            )
        )
    reachable = []
    for p in peers:
        checks.append(peer_check(p))
        if checks[-1].status == OK:
            reachable.append(p)
    checks.append(reach_check(cfg, peers))
    run, where = load_run_config(run_path), run_path or "the built-in demo run"
    if reachable:
        found, swarm_run = swarm_checks(cfg, reachable)
        checks += found
        if swarm_run is not None:
            run, where = swarm_run, "the swarm's manifest"
    checks += [memory_check(run, where), disk_check(cfg.data_dir, run)]
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append(
        f"\n{len(checks)} checks: {fails} failed, {warns} warnings"
        if fails or warns
        else f"\nall {len(checks)} checks passed"
    )
    return "\n".join(lines)
