"""The DHT node in the node's own thread (node/p2p/process.py: LocalDHT), with hivemind's DHTNode.create
replaced by a fake whose "p2pd" is a `sleep` spawned the way P2P.create spawns p2pd: no network."""

import asyncio
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.p2p.process import LocalDHT, running

ROOT = Path(__file__).resolve().parents[1]


class FakeNode:
    def __init__(self, node_id, daemon):
        self.node_id, self.daemon = node_id, daemon
        self.peer_id = f"peer-{node_id}"
        self.stored: dict = {}

    async def store(self, key, value, expiration_time, subkey=None):
        self.stored[(key, subkey)] = (value, expiration_time)
        return True

    async def get(self, key, latest=False):
        return self.stored.get((key, None))

    async def shutdown(self):
        self.daemon.terminate()
        await self.daemon.wait()


async def fake_create(*, node_id=None, **kwargs):
    from hivemind.dht.routing import DHTID

    daemon = await asyncio.create_subprocess_exec("sleep", "60")
    return FakeNode(node_id if node_id is not None else DHTID.generate(), daemon)  # as hivemind does


@pytest.fixture
def fake_hivemind(monkeypatch):
    from hivemind.dht.node import DHTNode

    monkeypatch.setattr(DHTNode, "create", staticmethod(fake_create))


def test_two_nodes_of_a_seeded_process_get_different_dht_ids(fake_hivemind):
    """hivemind draws a node's id from `random`; HF's Trainer seeds it alike in every peer."""
    ids = []
    for _ in range(2):
        random.seed(42)
        dht = LocalDHT(event_loop="asyncio")
        dht.start(timeout=30)
        ids.append(dht.peer_id)
        dht.shutdown()
    assert ids[0] != ids[1]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_calls_from_any_thread_and_shutdown_ends_the_daemon(fake_hivemind, loop):
    dht = LocalDHT(event_loop=loop)
    starter = threading.Thread(target=dht.start, args=(30,))  # not the main thread: any thread may start it
    starter.start()
    starter.join()
    daemon = dht.daemon_pid
    assert daemon is not None and running(daemon)
    with ThreadPoolExecutor(4) as pool:  # stores from several threads at once
        stored = list(pool.map(lambda i: dht.store(f"k{i}", i, 123.0, return_future=True).result(10), range(8)))
    assert stored == [True] * 8
    assert dht.get("k3") == (3, 123.0)
    dht.shutdown()
    assert not running(daemon)
    dht.shutdown()  # twice: a no-op (atexit calls it again)


CHILD = """
import os, signal, sys
from hivemind.dht.node import DHTNode
from tests.test_local_dht import fake_create
from node.p2p.process import LocalDHT
DHTNode.create = staticmethod(fake_create)
dht = LocalDHT(event_loop=sys.argv[1])
dht.start(timeout=30)
print(dht.daemon_pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no shutdown, no atexit
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_daemon_dies_with_a_killed_node(loop):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, loop], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    daemon = int(out.split()[0])
    deadline = time.monotonic() + 5
    while running(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)  # note: not our child, so there is no exit to await
    assert not running(daemon)
