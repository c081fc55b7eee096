"""`swarmtrain bench quality --tier smoke`: one row per strategy with the documented keys."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.cli import BENCHMARKS
from bench.quality.presets import PRESETS, TIERS
from bench.quality.summary import summarize
from node.cli import main
from node.config import ModelConfig
from node.errors import SwarmtrainError

KEYS = {
    "strategy",
    "params",
    "tokens",
    "upload_bytes_per_step",
    "download_bytes_per_step",
    "dense_ring_bytes_per_step",
    "upload_reduction",
    "download_reduction",
    "val_bpb",
    "gap_vs_ddp",
}


# the reference and two compressed families, enough to show the tier's rows, keys and byte
# accounting (all 27 presets take minutes on two cores: `make bench TIER=smoke` runs them; each
# option's own encode, decode and apply round trip is in tests/test_quality_options.py)
SMOKE = ["ddp-adamw", "diloco", "sparseloco"]


def test_smoke_tier_writes_a_row_per_strategy(tmp_path):
    out, png = tmp_path / "q.json", tmp_path / "q.png"
    assert (
        main(
            [
                "bench",
                "quality",
                "--tier",
                "smoke",
                "--json",
                str(out),
                "--plot",
                str(png),
                "--jobs",
                "2",
                "--strategies",
                *SMOKE,
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in doc["rows"]}
    assert set(rows) == set(SMOKE) | {"ddp-muon"} and set(SMOKE) <= set(PRESETS)  # both DDP references run
    ref = min(("ddp-adamw", "ddp-muon"), key=lambda d: rows[d]["val_bpb"])  # the better DDP is the reference
    assert {r["reference"] for r in rows.values()} == {ref} and rows[ref]["gap_vs_ddp"] == 0
    assert {p[0].name for p in PRESETS.values()} >= {"ddp-adamw", "diloco", "sparseloco", "decoupled-momentum"}
    for row in rows.values():
        assert KEYS <= set(row), KEYS - set(row)
        assert row["tokens"] == rows["ddp-adamw"]["tokens"]  # equal tokens by construction
        assert 2.0 < row["val_bpb"] < 8.5
    ddp = rows["ddp-adamw"]
    p = ddp["params"]
    assert ddp["dense_ring_bytes_per_step"] == 2 * 3 / 4 * 4 * p
    assert ddp["upload_bytes_per_step"] == rows["ddp-muon"]["upload_bytes_per_step"] == 3 * 4 * p
    assert rows["sparseloco"]["upload_reduction"] > 10 * rows["diloco"]["upload_reduction"] > 10
    assert png.stat().st_size > 10_000


def test_summary_math():
    runs = [
        {
            "strategy": "ddp-adamw",
            "params": 10,
            "tokens": 5,
            "upload_bytes_per_step": 120.0,
            "download_bytes_per_step": 120.0,
            "dense_ring_bytes_per_step": 60.0,
            "payload_bytes": 40,
            "val_bpb": 2.0,
            "seconds": 1,
        },
        {
            "strategy": "x",
            "params": 10,
            "tokens": 5,
            "upload_bytes_per_step": 0.6,
            "download_bytes_per_step": 0.6,
            "dense_ring_bytes_per_step": 60.0,
            "payload_bytes": 1,
            "val_bpb": 2.2,
            "seconds": 1,
        },
        {
            "strategy": "x",
            "params": 10,
            "tokens": 5,
            "upload_bytes_per_step": 0.6,
            "download_bytes_per_step": 0.6,
            "dense_ring_bytes_per_step": 60.0,
            "payload_bytes": 1,
            "val_bpb": 2.0,
            "seconds": 1,
        },
    ]
    rows = {r["strategy"]: r for r in summarize(runs)}
    assert rows["x"]["val_bpb"] == 2.1 and abs(rows["x"]["gap_vs_ddp"] - 0.05) < 1e-12
    muon = {**runs[0], "strategy": "ddp-muon", "val_bpb": 1.75}  # a better DDP becomes the reference
    rows = {r["strategy"]: r for r in summarize([*runs, muon])}
    assert rows["x"]["reference"] == "ddp-muon" and abs(rows["x"]["gap_vs_ddp"] - 0.2) < 1e-12
    assert rows["x"]["upload_reduction"] == 100 and rows["ddp-adamw"]["upload_reduction"] == 0.5


def test_tiers_are_as_documented():
    assert TIERS["full"].steps == 3000 and len(TIERS["full"].seeds) == 2


def test_the_compression_warm_up_sends_denser_first_rounds():
    """TOPK_WARMUP (bench only): the warm-up preset's first rounds carry 8x, 4x and 2x the values, then
    the same payload as the preset without it; bytes are counted round by round."""
    from bench.quality.presets import TOPK_WARMUP
    from bench.quality.simulator import simulate_preset
    from node.train import data

    # bytes, not quality: the smoke tier's steps (so its rounds) on a model too small to learn
    tiny = ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=16)
    tier = replace(TIERS["smoke"], model=tiny, workers=2, batch_size=1, val_seqs=4, eval_points=1)
    corpus = data.load_corpus("stdlib")
    warm, plain = (
        simulate_preset(p, tier, 0, corpus) for p in ("sparseloco-c32-k8-h32-muon-warmup", "sparseloco-c32-k8-h32-muon")
    )
    assert TOPK_WARMUP["sparseloco-c32-k8-h32-muon-warmup"] == 3 and warm["rounds"] == plain["rounds"] == 4
    assert warm["payload_bytes"] == plain["payload_bytes"]
    assert plain["own_upload_bytes_per_step"] * tier.steps == 4 * plain["payload_bytes"]
    assert 3 * plain["payload_bytes"] < warm["own_upload_bytes_per_step"] * tier.steps - plain["payload_bytes"]


def test_only_bench_loads_the_benchmarks():
    """Parsing any other command imports neither bench nor torch nor optuna (a fresh interpreter)."""
    code = (
        "import sys; from node import cli\n"
        "for argv in (['join'], ['bootstrap'], ['doctor'], ['monitor'], ['audit'], ['config', 'show'],\n"
        "             ['ray-launch'], ['pretrain', '--run', 'r', '--out', 'o']):\n"
        "    cli._parse(argv)\n"
        "print(sorted(m for m in ('bench', 'torch', 'optuna', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert out.strip() == "[]"


def test_bench_help_lists_every_benchmark_with_its_duration(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per benchmark: argparse wraps to the terminal
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, bench in BENCHMARKS.items():
        assert f"{name} {bench.help}; {bench.duration}" in out
    assert {
        "quality",
        "frontier",
        "tune",
        "byzantine",
        "exchange",
        "upload",
        "scale",
        "swarm",
        "api",
        "api-identity",
        "data",
        "footprint",
    } == set(BENCHMARKS)


def test_bench_quality_refuses_a_device_torch_cannot_use_before_any_run():
    from bench.quality.command import run_quality

    with pytest.raises(SwarmtrainError, match="--device no-such-device"):
        run_quality("smoke", "/nonexistent/q.json", None, ["diloco"], 1, device="no-such-device")


def test_the_warm_up_of_h_doubles_h_from_8_and_counts_every_round():
    """H_WARMUP (bench only, issue 20): rounds of 8, 16, 32, ... inner steps up to the preset's H,
    a function of the round number alone; each extra round's upload is counted."""
    from bench.quality.presets import H_WARMUP
    from bench.quality.simulator import round_inner_steps, simulate_preset
    from node.train import data

    assert [round_inner_steps(216, 8, r) for r in range(7)] == [8, 16, 32, 64, 128, 216, 216]
    assert round_inner_steps(72, None, 0) == 72 and set(H_WARMUP) <= set(PRESETS)
    tiny = ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=16)
    tier = replace(TIERS["smoke"], model=tiny, workers=2, batch_size=1, val_seqs=4, eval_points=1)
    corpus = data.load_corpus("stdlib")
    warm, plain = (
        simulate_preset(p, tier, 0, corpus)
        for p in ("diloco-int1-h72-muon-t15-olr0.7-hw8", "diloco-int1-h72-muon-t15-olr0.7")
    )
    assert (warm["rounds"], plain["rounds"]) == (4, 2)  # 8 + 16 + 32 + 44 steps; 72 + 28
    for run in (warm, plain):
        assert run["own_upload_bytes_per_step"] * tier.steps == run["rounds"] * run["payload_bytes"]
