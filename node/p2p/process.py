"""The node's DHT: hivemind's DHTNode in a thread of the node's own process, p2pd its one child.

hivemind.DHT forks a process to run its DHTNode and talks to it over a pipe; that child held
~180 MB RSS (~120 MB PSS) of torch and Python pages copied from the node (bench footprint). Here
the same DHTNode, built with what hivemind.DHT gave it, runs in a daemon thread on an asyncio
loop of its own; other threads hand it coroutines (asyncio.run_coroutine_threadsafe: thread-safe,
so no pipe and no lock) and get concurrent futures back. It serves other peers' requests while
the training loop runs: the two share the GIL, which torch's kernels release.

The node's processes and their end:
  * p2pd is spawned with PR_SET_PDEATHSIG = SIGKILL, bound to the DHT thread, which lives until
    shutdown: when the node dies (SIGKILL included), so does p2pd. (Without it, p2pd measured here
    died of SIGPIPE at its next write to the node's closed pipe: a side effect, not a promise.)
  * A signal to the node's process group reaches p2pd too, which ends (exec reset our handlers);
    the node's DHT calls then fail at once (Swarm.reachable) and shutdown does not wait for it.
  * shutdown: DHTNode.shutdown (p2pd terminated and awaited) within GRACE seconds, then SIGKILL of
    whatever p2pd is left; at interpreter exit too (an abort skips the normal shutdown).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import importlib.util
import logging
import os
import secrets
import signal
import sys
import threading
import types
from concurrent.futures import Future
from pathlib import Path

log = logging.getLogger("swarmtrain.swarm")

GRACE = 3.0
"""Seconds the DHT node gets to shut down before its p2pd is killed."""


def lean_hivemind() -> None:
    """Let `import hivemind.dht` (and .p2p, .utils) load without hivemind/__init__.py, which imports
    every subsystem (averaging, moe, optim; scipy among them): ~50 MB RSS and ~0.4 s a node
    spends for nothing. The rest loads on first use of an attribute of `hivemind` itself
    (`hivemind.Optimizer`), so other code sees the whole package. Nothing to do when hivemind is
    imported already. Remove once hivemind imports lazily."""
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


class LocalDHT:
    """hivemind's DHTNode on its own loop in a daemon thread of this process, with what the node used
    of hivemind.DHT: peer_id, get_visible_maddrs, get/store (return_future: a concurrent Future),
    add_validators, replicate_p2p (a libp2p handle for the caller's own loop) and shutdown.

    `node_kwargs` go to DHTNode.create and, from there, to P2P.create (initial_peers, host_maddrs,
    announce_maddrs, identity_path, startup_timeout, client_mode, nat_port_map, auto_nat); like
    hivemind.DHT, it adds hivemind's default num_workers and an empty CompositeValidator, which
    add_validators extends. `event_loop` is 'uvloop' or 'asyncio'."""

    def __init__(self, *, event_loop: str = "uvloop", **node_kwargs):
        self.client_mode = bool(node_kwargs.get("client_mode", False))
        self.peer_id = None  # hivemind's PeerID, once started
        self._kwargs = node_kwargs
        self._loop = _dht_loop(event_loop)
        self._loop.set_exception_handler(self._unhandled)
        self._node = None
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="dht", daemon=True)

    def start(self, timeout: float) -> None:
        """Start p2pd and join the DHT (initial peers pinged); raise what hivemind raised, or TimeoutError."""
        self._thread.start()
        atexit.register(self.shutdown, 1.0)
        fut = asyncio.run_coroutine_threadsafe(self._create(), self._loop)
        try:
            self._node = fut.result(timeout)
        except BaseException:
            fut.cancel()
            self.shutdown(1.0)
            raise
        self.peer_id = self._node.peer_id

    @property
    def daemon_pid(self) -> int | None:
        """The pid of our p2pd (the last one spawned: hivemind's identity check starts and ends one first)."""
        return self._loop.spawned[-1] if self._loop.spawned else None

    def get(self, key, latest: bool = False, return_future: bool = False, **kwargs):
        fut = self._submit(self._node.get(key, latest=latest, **kwargs))
        return fut if return_future else fut.result()

    def store(self, key, value, expiration_time: float, subkey=None, return_future: bool = False, **kwargs):
        fut = self._submit(self._node.store(key, value, expiration_time, subkey=subkey, **kwargs))
        return fut if return_future else fut.result()

    def get_visible_maddrs(self, latest: bool = False) -> list:
        return self._submit(self._node.get_visible_maddrs(latest=latest)).result(30)

    def add_validators(self, record_validators) -> None:
        async def extend():  # in the DHT's loop: the protocol reads its validators there, between awaits
            self._node.protocol.record_validator.extend(record_validators)

        self._submit(extend()).result(30)

    async def replicate_p2p(self):
        """A new hivemind P2P on the caller's running loop, over our p2pd (it works while p2pd runs)."""
        from hivemind.p2p import P2P

        return await P2P.replicate(self._node.p2p.daemon_listen_maddr)

    def shutdown(self, grace: float = GRACE) -> None:
        """Leave: DHTNode.shutdown within `grace` seconds (half a second when p2pd is gone already:
        nothing is left to close), then SIGKILL of any p2pd left, and the thread ends. Safe to
        call twice, and from atexit."""
        self._stopping = True
        if self._thread.is_alive() and self._node is not None:
            wait = grace if running(self.daemon_pid) else min(grace, 0.5)
            fut = self._submit(self._node.shutdown())
            try:
                fut.result(wait)
            except Exception as e:  # TimeoutError, or an error of a half-dead daemon: killed below
                fut.cancel()
                if wait == grace:
                    log.warning("the DHT node did not stop within %.0f s (%s); killing p2pd", grace, e)
        for pid in self._loop.spawned:
            if ours(pid):
                _kill(pid)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _create(self):
        from hivemind.dht.node import DEFAULT_NUM_WORKERS, DHTNode
        from hivemind.dht.routing import DHTID
        from hivemind.dht.validation import CompositeValidator

        return await DHTNode.create(
            # hivemind draws the node's id from the `random` module, which a forked process reseeded
            # and which in-process is the user's: HF's Trainer seeds it alike in every peer, and two
            # peers with one DHT id never found each other's records.
            node_id=DHTID.generate(source=secrets.token_bytes(32)),
            num_workers=DEFAULT_NUM_WORKERS,
            record_validator=CompositeValidator(()),
            **self._kwargs,
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()  # until shutdown; p2pd's death signal is bound to this thread
        left = asyncio.all_tasks(self._loop)  # hivemind's readers and writers of a daemon now gone
        for task in left:
            task.cancel()
        if left:
            self._loop.run_until_complete(asyncio.wait(left, timeout=1.0))

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """An error no one awaited in the DHT's loop (hivemind's background tasks): expected once we
        stop or p2pd is gone (its connections fail), so only logged for debugging then; otherwise
        a one-line warning, not the traceback asyncio would print."""
        error = context.get("exception")
        what = f"{context.get('message', '')}: {type(error).__name__}: {error}" if error else context.get("message")
        if self._stopping or not running(self.daemon_pid):
            log.debug("DHT after stop or without p2pd: %s", what, exc_info=error)
        else:
            log.warning("DHT background task: %s", what)
            log.debug("DHT background task", exc_info=error)


def _dht_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop ('uvloop' where installed, else asyncio's) whose subprocesses die with the
    thread that runs it (PR_SET_PDEATHSIG); it lists their pids in `spawned`."""
    base: type = asyncio.SelectorEventLoop
    if kind == "uvloop":
        try:
            import uvloop

            base = uvloop.Loop
        except ImportError:
            log.info("uvloop is not installed; the DHT runs on asyncio's loop")
    loop = type("DHTLoop", (_DiesWithUs, base), {})()
    loop.spawned = []
    return loop


class _DiesWithUs:
    """Mixed into the DHT's loop class: hivemind's P2P.create spawns p2pd through subprocess_exec."""

    async def subprocess_exec(self, protocol_factory, *args, **kwargs):
        if sys.platform.startswith("linux"):
            kwargs.setdefault("preexec_fn", _die_with_parent(os.getpid()))
        transport, protocol = await super().subprocess_exec(protocol_factory, *args, **kwargs)
        self.spawned.append(transport.get_pid())
        return transport, protocol


def _die_with_parent(parent: int):
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before the fork: the child only calls it

    def in_child() -> None:  # between fork and exec: only the prctl and a check
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: kept across exec
        if os.getppid() != parent:  # the node died before the line above: nobody would end us
            os._exit(1)

    return in_child


def running(pid: int | None) -> bool:
    """Whether `pid` runs (not gone, not a zombie awaiting its parent); True for None (unknown)."""
    if pid is None:
        return True
    if not sys.platform.startswith("linux"):  # no /proc: whether a signal could reach it
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        return _stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def ours(pid: int) -> bool:
    """Whether `pid` runs and is a child of this process (not a later process that reused a reaped pid)."""
    try:
        state, parent = _stat(pid)[:2]
        return state != "Z" and int(parent) == os.getpid()
    except (OSError, IndexError, ValueError):
        return False


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
