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


MMAP = """
import ctypes, sys
from node.train.device import hold_mmap_threshold
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usm fsm uord ford keep".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
held = sys.argv[1] == "held" and hold_mmap_threshold()
libc.free(libc.malloc(16 << 20))  # glibc's own rule raises its threshold to 16 MiB here
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 << 20)
print(held, libc.mallinfo2().hblkhd - before)
"""


def test_the_volunteer_holds_mallocs_mmap_threshold():
    """Held at 4 MiB, an 8 MiB block freed later is mapped (and unmapped whole), not cut from the
    heap, even after a larger block freed would have raised glibc's own threshold; elsewhere
    hold_mmap_threshold does nothing."""
    from node.train.device import _glibc

    if _glibc() is None or not hasattr(_glibc(), "mallinfo2"):
        return  # not glibc (or older than 2.33): nothing set, nothing to test
    run = [sys.executable, "-c", MMAP]
    held = subprocess.run([*run, "held"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    free = subprocess.run([*run, "default"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert held.stdout.split()[0] == "True" and int(held.stdout.split()[1]) >= 8 << 20, held.stdout
    assert int(free.stdout.split()[1]) == 0, free.stdout  # glibc's default: from the heap


def test_a_larger_model_holds_a_higher_mmap_threshold():
    """The demo's 0.84M parameters hold 4 MiB; a model's step tensors grow with it, so a larger
    one holds an eighth of its parameters' bytes, up to glibc's largest (32 MiB): a 100M model's
    activations stay in the heap (no page faults every step) and its state's copies are mapped."""
    from node.train.device import MMAP_THRESHOLD, mmap_threshold_for

    assert mmap_threshold_for(840_000 * 4) == MMAP_THRESHOLD == 4 << 20
    assert mmap_threshold_for(20_000_000 * 4) == 10_000_000
    assert mmap_threshold_for(100_000_000 * 4) == 32 << 20
