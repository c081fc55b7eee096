"""`swarmtrain bench exchange`: the update exchange's event loop, asyncio against uvloop.

Two real libp2p peers (hivemind DHTs, their daemons on 127.0.0.1) in this process; one holds
an update of each --sizes, the other fetches it through node/p2p/exchange.py exactly as a round's
gather does: one at a time (latency) and --parallel at once (throughput). Loop kinds are
interleaved, --repeats times each, so that a busy machine's noise falls on both alike.
Rows (JSON): loop, payload_bytes, mode, fetches, seconds, ms_per_fetch (median over repeats),
mb_per_s.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from bench.tables import markdown_table
from node.errors import SwarmtrainError
from node.p2p.exchange import Exchange
from protocol.messages import Request

RUN = "bench-0123456789ab"
LOOPS = ("asyncio", "uvloop")


def run_exchange_bench(
    *, loops: list[str], sizes: list[int], fetches: int, parallel: int, repeats: int, json_path: str, say=print
) -> list[dict]:
    unknown = [k for k in loops if k not in LOOPS]
    if unknown or fetches < 1 or parallel < 1 or repeats < 1 or not sizes or min(sizes) < 1:
        raise SwarmtrainError(
            "bench exchange: --loops from asyncio,uvloop; --fetches, --parallel, --repeats, --sizes >= 1",
            "fix the flag named above",
        )
    timings: dict[tuple[str, int, str], list[float]] = {}
    for rep in range(repeats):
        for kind in loops if rep % 2 == 0 else loops[::-1]:  # interleaved: noise falls on both
            for size in sizes:
                for mode, secs in _measure(kind, size, fetches, parallel).items():
                    timings.setdefault((kind, size, mode), []).append(secs)
        say(f"  repeat {rep + 1}/{repeats} done")
    rows = [_row(kind, size, mode, fetches, secs) for (kind, size, mode), secs in timings.items()]
    Path(json_path).write_text(
        json.dumps({"fetches": fetches, "parallel": parallel, "repeats": repeats, "rows": rows}, indent=2)
    )
    return rows


def _measure(kind: str, size: int, fetches: int, parallel: int) -> dict[str, float]:
    """Fresh daemons per measurement: a daemon keeps one handler per protocol name for good."""
    import hivemind  # the daemons start here, not at import

    with ExitStack() as stack:
        holder = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        stack.callback(holder.shutdown)
        fetcher = hivemind.DHT(
            start=True,
            host_maddrs=["/ip4/127.0.0.1/tcp/0"],
            initial_peers=[str(a) for a in holder.get_visible_maddrs()],
        )
        stack.callback(fetcher.shutdown)
        a = Exchange(holder, RUN, max_bytes=size + 4096, event_loop=kind)
        stack.callback(a.close)
        b = Exchange(fetcher, RUN, max_bytes=size + 4096, event_loop=kind, max_fetches_per_peer=parallel)
        stack.callback(b.close)
        me = str(holder.peer_id)
        a.keep_update(1, me, bytes(range(256)) * (size // 256) + bytes(size % 256))
        request = Request(op="update", run=RUN, round=1, peer=me)
        b.fetch(me, request, timeout=30, expect=size)  # connection set up outside the timing
        t = time.perf_counter()
        for _ in range(fetches):
            b.fetch(me, request, timeout=30, expect=size)
        sequential = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(max(1, fetches // parallel)):
            got = b.fetch_many([(me, request, size)] * parallel, timeout=60)
            if failed := [g for g in got if isinstance(g, Exception)]:
                raise SwarmtrainError(f"bench exchange: a parallel fetch failed: {failed[0]}")
        return {"sequential": sequential, "parallel": time.perf_counter() - t}


def _row(kind: str, size: int, mode: str, fetches: int, secs: list[float]) -> dict:
    med = statistics.median(secs)
    return {
        "loop": kind,
        "payload_bytes": size,
        "mode": mode,
        "fetches": fetches,
        "seconds": [round(s, 4) for s in secs],
        "ms_per_fetch": round(1000 * med / fetches, 3),
        "mb_per_s": round(size * fetches / med / 1e6, 2),
    }


def exchange_table(rows: list[dict]) -> str:
    """The rows as a markdown table, by payload size, then mode, then loop."""
    ordered = sorted(rows, key=lambda r: (r["payload_bytes"], r["mode"], r["loop"]))
    return markdown_table(
        ["loop", "payload", "mode", "ms per fetch", "MB/s"],
        (
            [r["loop"], f"{r['payload_bytes']:,} B", r["mode"], str(r["ms_per_fetch"]), str(r["mb_per_s"])]
            for r in ordered
        ),
    )
