"""`swarmtrain bench byzantine` (bench/byzantine/): forged bytes, and a tiny run end to end."""

import json
import math

import pytest
import torch

from bench.byzantine.attacks import ATTACKS, HUGE, alie_z, forged_payload
from bench.byzantine.command import attack_table, run_byzantine
from bench.byzantine.simulation import Setup
from node.config import ModelConfig
from protocol.codecs import FP16_MAX, DenseCodec, Int8Codec, TopKCodec
from protocol.errors import ProtocolError

SHAPES = ((64, 64), (64,))
CODECS = [
    DenseCodec(SHAPES, "float16"),
    DenseCodec(SHAPES, "float32"),
    Int8Codec(SHAPES),
    TopKCodec(SHAPES, k=16, values="2bit"),
    TopKCodec(SHAPES, k=16, values="1bit"),
    TopKCodec(SHAPES, k=16, dct=True, values="bf16"),
]
TINY = Setup(
    model=ModelConfig(d_model=32, n_layer=1, n_head=2, ctx=32), batch_size=4, warmup_steps=2, val_seqs=16, score_seqs=4
)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_forged_payloads_are_refused_past_the_bound_and_accepted_at_65504(codec):
    for bad in (math.nan, math.inf, HUGE):
        if isinstance(codec, DenseCodec) and codec.dtype == "float16" and bad == HUGE:
            continue  # fp16 cannot carry 3e38: it is inf there, covered above
        with pytest.raises(ProtocolError):
            codec.decode(forged_payload(codec, bad))
    out = codec.decode(forged_payload(codec, FP16_MAX))
    assert all(torch.isfinite(t).all() for t in out)


def test_alie_z_follows_the_paper():
    assert alie_z(16, 3) == pytest.approx(0.3186, abs=1e-3)  # s = 6: Phi^-1(10/16)
    assert alie_z(16, 7) == pytest.approx(1.1503, abs=1e-3)
    assert alie_z(4, 0) == 0.0


def test_tiny_run_writes_rows_and_robust_beats_mean_on_scaled_noise(tmp_path):
    out = tmp_path / "byz.json"
    rows = run_byzantine(
        workers=4,
        attackers=[1],
        attacks=["scaled-noise", "nan-inf"],
        aggregators=["robust", "mean"],
        strategies=["diloco"],
        rounds=3,
        scoring=False,
        json_path=str(out),
        say=lambda _: None,
        setup=TINY,
    )
    assert [(r["aggregator"], r["attack"]) for r in rows] == [
        ("robust", "none"),
        ("robust", "scaled-noise"),
        ("robust", "nan-inf"),
        ("mean", "none"),
        ("mean", "scaled-noise"),
        ("mean", "nan-inf"),
    ]
    doc = json.loads(out.read_text())
    assert doc["rows"] == rows and doc["settings"]["workers"] == 4
    for r in rows:
        assert {
            "attack",
            "aggregator",
            "strategy",
            "attackers",
            "workers",
            "val_bpb",
            "gap_vs_clean",
            "rounds_to_ban",
            "dropped_payloads",
            "seconds",
        } <= set(r)
    by = {(r["aggregator"], r["attack"]): r for r in rows}
    assert by[("robust", "nan-inf")]["dropped_payloads"] == 3  # one forged payload a round, all refused
    noisy_mean = by[("mean", "scaled-noise")]["val_bpb"]
    assert noisy_mean is None or by[("robust", "scaled-noise")]["val_bpb"] < noisy_mean  # None: diverged
    assert abs(by[("robust", "scaled-noise")]["gap_vs_clean"]) < 0.05
    assert "| diloco | scaled-noise | robust | 1/4 |" in attack_table(rows)


def test_tiny_run_with_scoring_bans_the_liar(tmp_path):
    rows = run_byzantine(
        workers=5,
        attackers=[1],
        attacks=["sign-flip"],
        aggregators=["robust"],
        strategies=["diloco"],
        rounds=6,
        scoring=True,
        json_path=str(tmp_path / "b.json"),
        say=lambda _: None,
        setup=TINY,
    )
    attacked = rows[1]
    assert attacked["rounds_to_ban"] in (5, 6, 7) and attacked["banned_honest"] == 0  # ban_after = 5


def test_every_attack_has_a_name_in_the_issue():
    assert set(ATTACKS) == {
        "sign-flip",
        "scaled-noise",
        "alie",
        "ipm",
        "nan-inf",
        "max-value",
        "sparse-index",
        "freeloader",
        "copycat",
    }
