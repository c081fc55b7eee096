"""A stop request (the first Ctrl+C or SIGTERM) ends `bench quality` and `bench byzantine` within a
round, instead of computing on for minutes."""

import threading
from dataclasses import replace

import pytest

from bench.byzantine.command import run_byzantine
from bench.byzantine.simulation import Setup
from bench.quality.command import run_quality
from bench.quality.presets import TIERS
from bench.quality.simulator import Stopped, simulate_preset
from node.config import ModelConfig
from node.train import data

MODEL = ModelConfig(d_model=32, n_layer=1, n_head=2, ctx=32)


def test_a_set_stop_ends_a_quality_run_before_its_next_round():
    stop = threading.Event()
    stop.set()
    tier = replace(TIERS["smoke"], model=MODEL, steps=2, eval_points=1, val_seqs=4)
    with pytest.raises(Stopped):
        simulate_preset("diloco", tier, 0, data.load_corpus("stdlib"), stop=stop)


def test_bench_quality_stops_and_writes_nothing(tmp_path):
    stop, said = threading.Event(), []
    stop.set()
    out = tmp_path / "q.json"
    assert run_quality("smoke", str(out), None, ["diloco"], 1, say=said.append, stop=stop) == []
    assert "stopped: 0 of 3 runs" in said[-1] and not out.exists()


def test_bench_byzantine_stops_after_the_case_running_and_keeps_the_finished_rows(tmp_path):
    stop = threading.Event()
    out = tmp_path / "byz.json"
    tiny = Setup(model=MODEL, batch_size=4, warmup_steps=2, val_seqs=16, score_seqs=4)
    rows = run_byzantine(
        workers=4,
        attackers=[1],
        attacks=["scaled-noise", "nan-inf"],
        aggregators=["robust"],
        strategies=["diloco"],
        rounds=3,  # the next cases would run had the stop not been seen
        scoring=False,
        json_path=str(out),
        say=lambda line: stop.set(),  # the stop request comes while the first row prints
        setup=tiny,
        stop=stop,
    )
    assert [r["attack"] for r in rows] == ["none"] and out.exists()
