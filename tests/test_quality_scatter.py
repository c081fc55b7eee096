"""`bench quality`'s v3 exchange rows (bench/quality/presets.py EXCHANGES): the presets build, the
scatter ones combine through node/scatter's TwoLevel, and a tiny simulated run goes through it."""

from dataclasses import replace

import pytest
import torch

import bench.quality.simulator as simulator
from bench.quality.presets import ALL_GATHER_MEAN, EXCHANGE_ROWS, EXCHANGES, INT1, PRESETS, SPARSE, TIERS
from node.config import ModelConfig
from node.errors import SwarmtrainError
from node.outer.aggregate import Mean, Robust
from node.outer.strategies.sparseloco import SparseLoCo
from node.scatter import chunks
from node.scatter.reduce import TwoLevel
from node.train import data

SCATTER = ("diloco-int8-scatter", "diloco-int8-scatter-robust", "diloco-int8-scatter-clip")
TINY = replace(
    TIERS["smoke"], model=ModelConfig(d_model=32, n_layer=1, n_head=2, ctx=32), steps=2, eval_points=1, val_seqs=4
)


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus("stdlib")


def test_exchange_presets_are_their_base_with_another_aggregator():
    assert {"diloco-int8-robust", *SCATTER} <= set(EXCHANGES) <= set(PRESETS)
    for name, (base, _) in EXCHANGE_ROWS.items():
        assert PRESETS[name] == PRESETS[base] and base not in EXCHANGES  # only the exchange differs
    assert {base for base, _ in EXCHANGE_ROWS.values()} == {"diloco-int8", INT1, SPARSE}
    assert not ALL_GATHER_MEAN.scatter
    assert ALL_GATHER_MEAN.robust.aggregator == "mean"
    assert not EXCHANGES["diloco-int8-robust"].scatter and EXCHANGES["diloco-int8-robust"].robust.aggregator == "robust"
    assert all(EXCHANGES[name].scatter for name in SCATTER)
    assert TIERS["scatter-16"].workers == 16


class Spy(TwoLevel):
    """TwoLevel that records each round's inputs and output."""

    rounds: list = []

    def dense(self, updates, weights=None):
        out = super().dense(updates, weights)
        Spy.rounds.append((self, updates, out))
        return out


@pytest.mark.parametrize("preset", ["diloco-int8-scatter", "diloco-int8-scatter-robust"])
def test_scatter_preset_simulates_through_two_level(monkeypatch, corpus, preset):
    Spy.rounds = []
    monkeypatch.setattr(simulator, "TwoLevel", Spy)
    configs = PRESETS[preset]._replace(strategy=replace(PRESETS[preset].strategy, inner_steps=1))
    run = simulator.simulate_preset(preset, replace(TINY, workers=8), 0, corpus, configs=configs)  # 2 groups of 4
    assert run["rounds"] == 2 and len(Spy.rounds) == 2 and 0 < run["val_bpb"] < 10
    assert run["settings"]["exchange"]["scatter"] is True
    agg, updates, out = Spy.rounds[0]
    assert Spy.rounds[1][0] is agg and agg.calls == 2  # one aggregator, a new grid each round
    assert len(updates) == 8 and type(agg.inner) is (Robust if preset.endswith("robust") else Mean)
    if isinstance(agg.inner, Mean):  # the plain mean, but for int8 requantisation at each level
        for ts, o in zip(zip(*updates), out):
            mean = torch.stack(ts).mean(0)
            assert o.shape == mean.shape and float((o - mean).abs().max()) <= 0.05 * float(mean.abs().max()) + 1e-6


def test_all_gather_presets_keep_the_plain_mean(corpus):
    run = simulator.simulate_preset("diloco-int8", TINY, 0, corpus)
    assert run["settings"]["exchange"] == {"scatter": False, "robust": ALL_GATHER_MEAN.robust.__dict__}


def test_scatter_refuses_decoupled_momentum(monkeypatch, corpus):
    monkeypatch.setitem(EXCHANGES, "decoupled-momentum", EXCHANGES["diloco-int8-scatter"])
    with pytest.raises(SwarmtrainError, match="decoupled momentum"):
        simulator.simulate_preset("decoupled-momentum", TINY, 0, corpus)


class SparseSpy(TwoLevel):
    """TwoLevel that records each round's sparse aggregate."""

    rounds: list = []

    def sparse(self, codec, sels, weights=None):
        out = super().sparse(codec, sels, weights)
        SparseSpy.rounds.append((self, len(sels), out))
        return out


@pytest.mark.parametrize("preset", [f"{INT1}-scatter-robust", f"{SPARSE}-scatter-robust"])
def test_lowbit_and_sparse_presets_simulate_through_their_wires(monkeypatch, corpus, preset):
    """The 1-bit preset combines on the sign wire; the top-k one on the sparse wire, each round's
    aggregate re-sparsified, and what it dropped handed back to every worker's error buffer."""
    Spy.rounds, SparseSpy.rounds, taken = [], [], []
    monkeypatch.setattr(simulator, "TwoLevel", SparseSpy if preset.startswith("sparse") else Spy)
    monkeypatch.setattr(SparseLoCo, "take_back", lambda self, worker, payload, applied: taken.append(applied))
    configs = PRESETS[preset]._replace(strategy=replace(PRESETS[preset].strategy, inner_steps=1))
    run = simulator.simulate_preset(preset, replace(TINY, workers=8), 0, corpus, configs=configs)
    assert run["rounds"] == 2 and 0 < run["val_bpb"] < 10
    assert run["settings"]["exchange"]["scatter"] is True
    if preset.startswith("sparse"):
        assert len(SparseSpy.rounds) == 2 and isinstance(SparseSpy.rounds[0][0].wire, chunks.SparseWire)
        assert len(taken) == 2 * 8 and taken[0] is SparseSpy.rounds[0][2]  # every worker, every round
    else:
        assert len(Spy.rounds) == 2 and isinstance(Spy.rounds[0][0].wire, chunks.SignWire) and not taken
