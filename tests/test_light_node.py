"""A volunteer loads only what it uses: hivemind's DHT without the rest of hivemind, no torch
shared-memory manager, and none of the optional heavy packages (node/p2p/process.py, bench footprint)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys
import node.cli, node.peer.volunteer, node.peer.wiring, node.peer.bootstrap
from node.p2p import dht
from hivemind.dht import DHT
import torch.multiprocessing
heavy = ("hivemind.optim", "hivemind.averaging", "hivemind.moe", "scipy", "transformers", "peft", "ray",
         "optuna", "datasets", "matplotlib", "opacus", "rich")  # rich: the terminal panel's alone
print("loaded", [m for m in heavy if m in sys.modules])
print("sharing", torch.multiprocessing.get_sharing_strategy())
import hivemind
print("later", hivemind.Optimizer.__name__, hivemind.DHT is DHT)
"""


def test_a_volunteer_imports_the_dht_alone_and_the_rest_of_hivemind_on_demand():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "loaded []" in out, out
    assert "sharing file_descriptor" in out, out  # hivemind's default starts a torch_shm_manager per node
    assert "later Optimizer True" in out, out  # code that wants all of hivemind still gets it


class FakeProc:
    def __init__(self, pid: int, name: str):
        self.pid, self._name = pid, name

    def name(self) -> str:
        return self._name


def test_bench_footprint_names_each_process_and_totals_them():
    from bench.footprint import footprint_table, role

    names = [
        role(FakeProc(p, n), 10) for p, n in ((10, "python3"), (11, "python3"), (12, "p2pd"), (13, "torch_shm_manag"))
    ]
    assert names == ["node", "dht", "p2pd", "torch_shm_manager"]
    row = {"processes": {"node": {"rss_mb": 400.0, "pss_mb": 300.0}, "p2pd": {"rss_mb": 60.0, "pss_mb": 60.0}}}
    row |= {"total_rss_mb": 460.0, "total_pss_mb": 360.0, "beyond_model_rss_mb": 440.0, "beyond_model_pss_mb": 340.0}
    table = footprint_table(row | {"seconds_to_joined": 4.21, "seconds_to_first_round": 20.0})
    assert "| all | 460 | 360 |" in table and "| all beyond the model state | 440 | 340 |" in table
    assert "start to joined 4.2 s" in table


TRIM = """
from node.train.device import release_freed_memory
def rss():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) // 1024
held = [bytearray(100_000) for _ in range(1000)]  # 100 MB in the heap (under malloc's mmap threshold)
top = bytearray(100_000)  # allocated last: the heap cannot shrink from its top below it
del held
before = rss()
release_freed_memory()
print("freed", before - rss())
"""


def test_a_round_end_hands_mallocs_free_pages_back():
    """What the round's end freed in the middle of the heap (glibc keeps it) goes back to the
    system; elsewhere release_freed_memory does nothing."""
    from node.train.device import _glibc

    if _glibc() is None:
        return  # not glibc: nothing to hand back, nothing to test
    out = subprocess.run([sys.executable, "-c", TRIM], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout.split()[1]) > 80, out.stdout  # of the 100 MB freed
