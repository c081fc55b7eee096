"""The DHT process's life: it never outlives the node, and a signal sent to the node's whole
process group leaves its ending to the node.

hivemind forks its DHT process from the node (and p2pd runs under it). A fork keeps the node's
Python signal handlers, so a SIGTERM to the group (what `timeout`, systemd and supervisors send)
only set the child's copy of the stop request; the child lived on, and the node hung at exit in
multiprocessing's join of it. Now the child ignores SIGTERM and SIGINT while the node lives (the
node still needs it to leave: last DHT writes, then a shutdown request over the pipe), dies with
the node (PR_SET_PDEATHSIG), and the node ends it, and its p2pd, within a bounded time.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import logging
import os
import signal
import sys
import types
from pathlib import Path

log = logging.getLogger("swarmtrain.swarm")

GRACE = 3.0
"""Seconds the DHT process gets to shut down on request before it and its p2pd are killed."""


def lean_hivemind() -> None:
    """Let `import hivemind.dht` (and .p2p, .utils) load without hivemind/__init__.py, which imports
    every subsystem (averaging, moe, optim; scipy among them): ~50 MB RSS and ~0.4 s a node
    spends for nothing, and that its forked DHT process copies. The rest loads on first use of
    an attribute of `hivemind` itself (`hivemind.Optimizer`), so other code sees the whole
    package. Nothing to do when hivemind is imported already. Remove once hivemind imports lazily."""
    if "hivemind" in sys.modules:
        return
    spec = importlib.util.find_spec("hivemind")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the import that needs it says so
    package = _Hivemind(spec.name)
    package.__spec__, package.__file__, package.__loader__ = spec, spec.origin, spec.loader
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[spec.name] = package


class _Hivemind(types.ModuleType):
    """The hivemind package before its __init__ ran: runs it at the first attribute it lacks."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if f"{self.__name__}.{name}" in sys.modules:  # a subpackage still loading (`import hivemind.p2p.x as y`)
            return sys.modules[f"{self.__name__}.{name}"]
        self.__class__ = types.ModuleType  # once: later misses are plain AttributeErrors
        exec(self.__spec__.loader.get_code(self.__name__), self.__dict__)
        return getattr(self, name)


def dht_class():
    """hivemind.DHT whose forked process takes care of its own signals first (see the module doc)."""
    from hivemind.dht import DHT

    class NodeDHT(DHT):
        def __init__(self, *args, **kwargs):
            self.node_pid = os.getpid()  # the process that forks it
            super().__init__(*args, **kwargs)

        def run(self) -> None:
            child_signals(parent=self.node_pid)
            super().run()

    return NodeDHT


def child_signals(*, parent: int) -> None:
    """In the forked DHT process: ignore the signals the node handles, and die with the node.

    A Python handler, not SIG_IGN: p2pd, exec'd from this process, then starts with the default
    dispositions (an ignored signal would stay ignored across exec) and still ends on SIGTERM."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the node died before the line above: nobody is left to end us
        os._exit(0)


def _ignore(signum, _frame) -> None:
    pass  # the node got the same signal (or will end us); it leaves the swarm through us first


def end(dht, grace: float = GRACE) -> None:
    """Stop the DHT process: a shutdown request, then after `grace` seconds SIGKILL of its children
    (p2pd) and of it. Safe to call twice, and from atexit."""
    if dht.pid is None or not dht.is_alive():
        return
    daemon_up = any(running(pid) for pid in children(dht.pid))
    # without p2pd (a signal to the group ended it) hivemind's shutdown stalls, and nothing is left to close
    dht.shutdown_timeout = grace if daemon_up else min(grace, 0.5)
    try:
        dht.shutdown()  # asks over the pipe; its SIGTERM fallback is ignored by design (child_signals)
    except (OSError, ValueError) as e:  # the pipe is gone already
        log.debug("DHT shutdown request: %s", e)
    if dht.is_alive():
        if daemon_up:
            log.warning("the DHT process did not stop within %.0f s; killing it", grace)
        for pid in children(dht.pid):
            _kill(pid)
        _kill(dht.pid)
        dht.join(5)


def daemon_of(dht) -> int | None:
    """The pid of the p2pd under the DHT process (None where it cannot be told)."""
    for pid in children(dht.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "p2pd":
                return pid
        except OSError:
            continue
    return None


def running(pid: int | None) -> bool:
    """Whether `pid` runs (not gone, not a zombie awaiting its parent); True for None (unknown)."""
    if pid is None:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def watch(dht) -> None:
    """End `dht` at interpreter exit too (before multiprocessing's own exit hook, which would send
    an ignored SIGTERM and wait forever): an abort (second Ctrl+C) skips the normal shutdown."""
    atexit.register(end, dht, 1.0)


def children(pid: int) -> list[int]:
    """pids whose parent is `pid` (Linux /proc; elsewhere none)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(entry.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
