"""`swarmtrain bench tune`: a smoke-sized Optuna study (3 trials) that resumes from its SQLite file."""

import json
import threading
from dataclasses import replace

import pytest

from bench.quality.presets import PRESETS, TIERS
from bench.quality.simulator import simulate_preset
from bench.tune import SPACES, configs_for, preset_values, run_tune, search_space
from node.cli import main
from node.config import StrategyConfig, TrainConfig
from node.errors import SwarmtrainError
from node.train import data

pytest.importorskip("optuna")


def test_every_preset_has_a_search_space_of_real_settings():
    assert {s.name for s, _ in PRESETS.values()} <= set(SPACES)
    for preset in PRESETS:
        space = search_space(preset)
        assert "train.inner_lr" in space  # DDP-AdamW included: every method tunes its learning rate
        mid = {k: (v[1] * v[2]) ** 0.5 if v[0] == "float" and v[3] else (v[1] + v[2]) / 2 for k, v in space.items()}
        strat, train = configs_for(preset, mid)
        assert isinstance(strat, StrategyConfig) and isinstance(train, TrainConfig)
        assert train.inner_lr == mid["train.inner_lr"] and strat.name == PRESETS[preset][0].name
    assert "train.muon_lr" in search_space("diloco-int2-h15-muon") and "train.muon_lr" not in search_space("diloco")
    assert "error_decay" in search_space("diloco-int2-h15") and "error_decay" not in search_space("diloco")
    with pytest.raises(SwarmtrainError):
        configs_for("diloco", {"no_such_setting": 1.0})


def test_simulate_reports_each_eval_point():
    seen = []
    tier = replace(TIERS["smoke"], steps=12, eval_points=3, val_seqs=8)
    run = simulate_preset(
        "ddp-adamw", tier, 0, data.load_corpus("stdlib"), on_eval=lambda step, bpb: seen.append((step, bpb))
    )
    assert [s for s, _ in seen] == [c["step"] for c in run["curve"]] and len(seen) == 3
    assert seen[-1][1] == run["val_bpb"]


def test_smoke_study_of_three_trials_resumes(tmp_path):
    out, db = tmp_path / "t.json", tmp_path / "t.db"
    lines = []
    rec = run_tune("diloco", 3, "smoke", str(out), str(db), steps=8, say=lines.append)
    assert db.exists() and json.loads(out.read_text()) == rec
    assert rec["budget"]["trials_finished"] == 3 and rec["budget"]["budget_steps"] == 24
    assert len(rec["trials"]) == 3 and all(t["state"] in ("COMPLETE", "PRUNED") for t in rec["trials"])
    assert set(rec["best_params"]) == set(search_space("diloco"))
    assert rec["best_value"] == min(t["value"] for t in rec["trials"] if t["state"] == "COMPLETE")
    assert rec["best_settings"]["strategy"]["outer_lr"] == rec["best_params"]["outer_lr"]
    assert any("trial" in line for line in lines)
    assert rec["trials"][0]["params"] == preset_values("diloco")  # the preset first: the study never ends worse
    curve = [p["best"] for p in rec["best_so_far"]]
    assert len(curve) == 3 and curve[-1] == rec["best_value"] and all(b <= a for a, b in zip(curve, curve[1:]) if a)
    n = len(lines)
    again = run_tune("diloco", 3, "smoke", str(out), str(db), steps=8, say=lines.append)  # resumes: nothing to add
    assert again["trials"] == rec["trials"] and any("(3 already in" in line for line in lines[n:])
    more = run_tune("diloco", 4, "smoke", str(out), str(db), steps=8, say=lines.append)
    assert more["budget"]["trials_finished"] == 4 and more["trials"][:3] == rec["trials"]


def test_a_rerun_samples_from_a_new_random_state(tmp_path, monkeypatch):
    """A rerun continues the study with the sampler seeded past the trials it holds: seeded as the
    first call was, it drew that call's points again (a resumed 8-worker study repeated its trial 5)."""
    import optuna

    seeds, real = [], optuna.samplers.TPESampler

    def spy(*args, seed=None, **kwargs):
        seeds.append(seed)
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(optuna.samplers, "TPESampler", spy)
    out, db = str(tmp_path / "r.json"), str(tmp_path / "r.db")
    for trials in (2, 3):
        run_tune("ddp-adamw", trials, "smoke", out, db, steps=4, say=lambda _: None)
    assert len(seeds) == 4 and seeds[1] == 0 and seeds[3] == 2  # each call: the study's, then the one it uses


def test_a_stop_request_leaves_the_study_intact(tmp_path):
    stop = threading.Event()
    stop.set()
    rec = run_tune(
        "ddp-adamw",
        2,
        "smoke",
        str(tmp_path / "s.json"),
        str(tmp_path / "s.db"),
        steps=4,
        stop=stop,
        say=lambda _: None,
    )
    assert rec["interrupted"] and rec["budget"]["trials_finished"] == 0 and (tmp_path / "s.db").exists()


def test_cli_tune(tmp_path):
    out = tmp_path / "c.json"
    assert (
        main(
            [
                "bench",
                "tune",
                "--strategy",
                "ddp-adamw",
                "--trials",
                "1",
                "--tier",
                "smoke",
                "--steps",
                "4",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["preset"] == "ddp-adamw" and doc["budget"]["trials_finished"] == 1
    assert (tmp_path / "c.db").exists()
    assert main(["bench", "tune", "--strategy", "nope", "--trials", "1", "--json", str(out)]) == 2


def test_frontier_plot_band_table_and_merge(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.quality.plots import frontier_path, plot_frontier
    from bench.quality.summary import band_table, merge_rows

    def run(name, seed, bpb, up):
        return {
            "strategy": name,
            "seed": seed,
            "params": 10,
            "tokens": 5,
            "upload_bytes_per_step": up,
            "download_bytes_per_step": up,
            "dense_ring_bytes_per_step": 6000.0,
            "payload_bytes": 1,
            "val_bpb": bpb,
            "seconds": 1,
        }

    a = [
        run("ddp-adamw", 0, 2.0, 12000.0),
        run("ddp-adamw", 1, 2.2, 12000.0),
        run("x", 0, 2.02, 50.0),
        run("x", 1, 2.2, 50.0),
    ]
    b = [
        run("ddp-adamw", 0, 2.0, 12000.0),
        run("ddp-adamw", 1, 2.2, 12000.0),
        run("y", 1, 3.3, 0.5),  # seeds in another order than the reference's: still paired by seed
        run("y", 0, 3.0, 0.5),
    ]
    for name, runs in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"tier": "full", "runs": runs}))
    rows = merge_rows([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert [r["strategy"] for r in rows] == ["ddp-adamw", "x", "y"]
    table = band_table(rows)
    assert "| >= 100x | x |" in table and "(+1.0% / +0.0%)" in table and "| >= 10,000x | y |" in table
    assert "(+50.0% / +50.0%)" in table  # y: 3.0 against 2.0 (seed 0), 3.3 against 2.2 (seed 1)
    assert "| >= 3,000x | y |" in table and table.splitlines()[0].endswith("| bits/param/sync |")
    assert "| 0.8 |" in table  # 1 byte of payload over 10 parameters
    png = tmp_path / "f.png"
    plot_frontier(rows, str(png), title="t")
    assert png.stat().st_size > 10_000 and frontier_path("docs/q.png") == "docs/q-frontier.png"
