"""bench swarm's arithmetic (node/swarmbench.py): the measured window cut out of each peer's timeline."""
import pytest

from node.errors import SwarmtrainError
from node.swarmbench import Case, measured, row, run_swarm_bench

FIELDS = ["unix_time", "round", "tokens_trained", "tokens_contributed", "compute_seconds", "bytes_sent",
          "bytes_received"]


def result(step_tokens: int, compute: float, rounds_failed: int = 0) -> dict:
    timeline = [[100.0 + 2 * r, r, step_tokens * r, step_tokens * r, compute * r, 1000 * r, 2000 * r]
                for r in range(1, 21)]
    return {"timeline": timeline, "timeline_fields": FIELDS, "rounds_failed": rounds_failed, "val_bpb": [4.0, 3.5]}


def test_the_window_is_cut_from_the_timelines():
    d = measured(result(4096, 1.5), start=110.0, end=130.0)
    assert d["unix_time"] == 20.0 and d["round"] == 10 and d["tokens_trained"] == 40960
    case = Case(strategy="sparseloco", round_seconds=2.0, fast=2, slow=4.0, link="")
    results = [result(4096, 1.5), result(4096, 1.5), result(1024, 1.5)]
    r = row(case, [measured(x, 110.0, 130.0) for x in results], results)
    assert r["compute_utilization"] == 0.75 and r["fast_tokens_per_s"] == 2048
    assert r["swarm_tokens_per_s"] == 2048 + 2048 + 512 and r["bytes_up_per_peer"] == 1000
    assert r["val_bpb"] == 3.5 and r["rounds_ok"] == 10 and r["link"] == "loopback"


def test_too_short_a_window_and_bad_flags_name_the_fix():
    with pytest.raises(SwarmtrainError, match="measured window"):
        measured(result(4096, 1.5), start=110.0, end=111.0)
    with pytest.raises(SwarmtrainError, match="--slow-peer"):
        run_swarm_bench(peers=2, strategies=["diloco"], seconds=10, round_seconds=[1.0], slow_peer=0.5, link="",
                        json_path="/dev/null", workdir="/tmp", stop=None)
    with pytest.raises(SwarmtrainError):
        run_swarm_bench(peers=2, strategies=["diloco"], seconds=10, round_seconds=[1.0], slow_peer=0, link="up=fast",
                        json_path="/dev/null", workdir="/tmp", stop=None)
