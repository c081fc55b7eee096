"""bench swarm's arithmetic (bench/swarm.py): the measured window cut out of each peer's timeline."""

import pytest

from bench.swarm import SwarmCase, measured, row, run_swarm_bench
from node.errors import SwarmtrainError

FIELDS = [
    "unix_time",
    "round",
    "tokens_trained",
    "tokens_contributed",
    "compute_seconds",
    "bytes_sent",
    "bytes_received",
    "bytes_relayed",
]


def result(step_tokens: int, compute: float, rounds_failed: int = 0) -> dict:
    timeline = [
        [100.0 + 2 * r, r, step_tokens * r, step_tokens * r, compute * r, 1000 * r, 2000 * r, 400 * r]
        for r in range(1, 21)
    ]
    return {"timeline": timeline, "timeline_fields": FIELDS, "rounds_failed": rounds_failed, "val_bpb": [4.0, 3.5]}


def test_the_window_is_cut_from_the_timelines():
    d = measured(result(4096, 1.5), start=110.0, end=130.0)
    assert d["unix_time"] == 20.0 and d["round"] == 10 and d["tokens_trained"] == 40960
    case = SwarmCase(strategy="sparseloco", round_seconds=2.0, fast=2, slow=4.0, link="")
    results = [result(4096, 1.5), result(4096, 1.5), result(1024, 1.5)]
    r = row(case, [measured(x, 110.0, 130.0) for x in results], results)
    assert r["compute_utilization"] == 0.75 and r["fast_tokens_per_s"] == 2048
    assert r["swarm_tokens_per_s"] == 2048 + 2048 + 512 and r["bytes_up_per_peer"] == 1000
    assert r["own_update_bytes_up_per_peer"] == 600 and r["max_bytes_up_per_peer"] == 1000  # 400 of 1000 relayed
    assert r["val_bpb"] == 3.5 and r["rounds_ok"] == 10 and r["link"] == "loopback"


def test_too_short_a_window_and_bad_flags_name_the_fix():
    with pytest.raises(SwarmtrainError, match="measured window"):
        measured(result(4096, 1.5), start=110.0, end=111.0)
    with pytest.raises(SwarmtrainError, match="--slow-peer"):
        run_swarm_bench(
            peers=2,
            strategies=["diloco"],
            seconds=10,
            round_seconds=[1.0],
            slow_peer=0.5,
            link="",
            json_path="/dev/null",
            workdir="/tmp",
            stop=None,
        )
    with pytest.raises(SwarmtrainError):
        run_swarm_bench(
            peers=2,
            strategies=["diloco"],
            seconds=10,
            round_seconds=[1.0],
            slow_peer=0,
            link="up=fast",
            json_path="/dev/null",
            workdir="/tmp",
            stop=None,
        )


def test_seconds_to_the_target_bpb_count_from_the_join():
    from bench.swarm import seconds_to

    timeline = [[110.0, 1, 5.2], [114.0, 2, 4.9], [118.0, 3, 4.7]]
    assert seconds_to(5.0, timeline, since=100.0) == 14.0
    assert seconds_to(4.0, timeline, since=100.0) is None  # never reached within the case
    assert seconds_to(None, timeline, since=100.0) is None


def test_strategy_names_take_overlap_but_not_on_the_baseline():
    from bench.swarm import strategy_of

    assert strategy_of("sparseloco") == ("sparseloco", set())
    assert strategy_of("sparseloco+overlap") == ("sparseloco", {"overlap"})
    assert strategy_of("diloco+direct+overlap") == ("diloco", {"overlap", "direct"})
    for bad in ("hivemind+overlap", "diloco+fast"):
        with pytest.raises(SwarmtrainError, match="unknown option"):
            strategy_of(bad)


def test_v2_v3_and_int8_options_set_the_run_file(tmp_path):
    from bench.swarm import SwarmCase, run_file
    from node.config import load_run_config

    def run(strategy):
        path = tmp_path / "run.toml"
        path.write_text(run_file(SwarmCase(strategy=strategy, round_seconds=None, fast=8, slow=0, link=""), 8))
        return load_run_config(path)

    plain, v3, v2 = run("diloco"), run("diloco+v3+int8"), run("diloco+v2+int8")
    assert plain.swarm.scatter_min_peers == 16 and plain.strategy.wire_dtype == "float16"
    assert (v3.swarm.scatter_min_peers, v3.strategy.wire_dtype) == (4, "int8")
    assert (v2.swarm.scatter_min_peers, v2.strategy.wire_dtype) == (0, "int8") and v2.swarm.min_peers == 8
    with pytest.raises(SwarmtrainError, match="both"):
        run("diloco+v2+v3")


def test_the_hivemind_baselines_result_reads_like_a_volunteers():
    """bench/hivemind_peer.py writes the fields bench swarm cuts its window from."""
    from bench.hivemind_peer import Result

    out = Result(started=0.0)
    for epoch in (1, 2, 3):
        out.tokens += 1024
        out.compute_s += 1.0
        out.sent += 500
        out.row(epoch, 5.0 - epoch)
    summary = out.summary(params=1000, per_avg=500)
    assert summary["timeline_fields"] == FIELDS and len(summary["timeline"]) == 3
    assert summary["val_bpb_timeline"][-1][1:] == [3, 2.0]
    first, last = dict(zip(FIELDS, summary["timeline"][0])), dict(zip(FIELDS, summary["timeline"][-1]))
    assert last["tokens_contributed"] - first["tokens_contributed"] == 2048 and last["bytes_sent"] == 1500
