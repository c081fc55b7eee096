"""Robust aggregation (node/outer/aggregate.py): deterministic, clipped, trimmed, voting; 'mean' as before."""

import math
import statistics

import pytest
import torch

from node.config import ModelConfig, RobustConfig, StrategyConfig
from node.errors import SwarmtrainError
from node.outer import norm
from node.outer.aggregate import (
    MIN_WEIGHT,
    Mean,
    NoUpdates,
    Robust,
    clip_factors,
    l2_norm,
    make_aggregator,
    mean_dense,
    per_round,
    token_weights,
    trim_count,
    trimmed_mean,
)
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.train.model import build_model
from protocol.codecs import TopKCodec

SHAPES = [(16, 8), (8,)]


def updates(n, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) * scale for s in SHAPES] for _ in range(n)]


def test_l2_norm_is_exact_and_thread_independent():
    x = torch.randn(100_003, generator=torch.Generator().manual_seed(1))
    exact = math.sqrt(math.fsum(v * v for v in x.double().tolist()))
    assert abs(l2_norm([x]) - exact) <= 1e-12 * exact
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = l2_norm([x, x[:7]])
        torch.set_num_threads(2)
        assert l2_norm([x, x[:7]]) == one
    finally:
        torch.set_num_threads(before)
    assert l2_norm([torch.tensor([3.0, 4.0])]) == 5.0 and l2_norm([]) == 0.0


def test_l2_norm_by_blocks_is_the_whole_trees_bits(monkeypatch):
    """The blocks are subtrees of the one pairwise tree over the padded values: any block size
    gives the bits of summing all values at once (what every peer computed before the blocks)."""

    def whole(tensors):
        x = torch.cat([t.reshape(-1).double() for t in tensors]).square()
        x = torch.cat([x, x.new_zeros((1 << (x.numel() - 1).bit_length()) - x.numel())])
        while x.numel() > 1:
            x = x[0::2] + x[1::2]
        return math.sqrt(float(x[0]))

    g = torch.Generator().manual_seed(3)
    for shapes in ([(1,)], [(65536,)], [(65537,)], [(512, 128), (128,), (256, 128), (7,)], [(2, 65536), (5,)]):
        ts = [torch.randn(s, generator=g) * 10.0 ** (i % 5 - 2) for i, s in enumerate(shapes)]
        for block in (1 << 16, 1 << 4, 1):
            monkeypatch.setattr(norm, "NORM_BLOCK", block)
            assert l2_norm(ts) == whole(ts), (shapes, block)


def _with_threads(n, fn):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        return fn()
    finally:
        torch.set_num_threads(before)


def test_robust_is_deterministic_whatever_the_threads():
    us = updates(9)
    a, b = Robust().dense(us), Robust().dense([[t.clone() for t in u] for u in us])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    big = [[torch.randn(256, 256, generator=torch.Generator().manual_seed(k))] for k in range(6)]
    codec = TopKCodec(((256, 256),), chunk=64, k=64, dct=True, values="bf16")
    sels = _sels(codec, big)
    for fn in (lambda: Robust().dense(big), lambda: Robust().sparse(codec, sels), lambda: Robust().signs(codec, sels)):
        one, two = _with_threads(1, fn), _with_threads(2, fn)
        assert all(torch.equal(x, y) for x, y in zip(one, two))


def test_a_single_huge_update_is_clipped_to_the_median():
    us = updates(5)
    us.append([torch.full(s, 65504.0) for s in SHAPES])
    norms = [l2_norm(u) for u in us]
    factors = clip_factors(norms, 2.0)
    assert factors[:5] == [1.0] * 5  # honest norms agree: nothing clipped
    clipped = Robust(trim_fraction=0.0).clip(us)[-1]
    assert l2_norm(clipped) == pytest.approx(2.0 * statistics.median(norms), rel=1e-5)
    out = Robust().dense(us)  # clipped, and then trimmed away
    assert max(float(t.abs().max()) for t in out) < 5.0
    assert max(float(t.abs().max()) for t in Mean().dense(us)) > 10_000  # the plain mean is not protected


def test_trimmed_mean_ignores_the_extremes():
    stack = torch.tensor([[1.0, -100.0], [2.0, 2.0], [3.0, 3.0], [1e6, 4.0]])
    assert torch.equal(trimmed_mean(stack, 1), torch.tensor([2.5, 2.5]))
    assert torch.equal(trimmed_mean(stack, 0), stack.sum(0) / 4)
    assert [trim_count(n, 0.25) for n in (1, 2, 3, 4, 8, 16)] == [0, 0, 0, 1, 2, 4]
    assert trim_count(4, 0.49) == 1  # at least one value always kept


def test_two_updates_degenerate_to_the_mean_of_the_clipped_ones():
    us = updates(2)
    assert all(torch.equal(a, b) for a, b in zip(Robust().dense(us), Mean().dense(us)))


def test_mean_is_the_old_arithmetic_bit_for_bit():
    """DiLoCo's apply under 'mean': exactly the plain loop of the old code (sum in order, divide, Nesterov)."""
    model = build_model(ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=8), 0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    strat = make_strategy(StrategyConfig(wire_dtype="float32"), shapes, robust=RobustConfig(aggregator="mean"))
    state = SwarmState.initial(model, strat.outer_buffers)
    deltas = [[torch.randn(s, generator=torch.Generator().manual_seed(k)) * 0.01 for s in shapes] for k in range(3)]
    expected = []
    for i, p in enumerate(state.params):
        mean = torch.zeros_like(p)
        for d in deltas:
            mean.add_(d[i])
        mean.div_(3.0)
        step = mean + mean * 0.9  # momentum starts at 0: m = g
        expected.append(p - step * 0.7)
    strat.apply(state, [strat.codec.encode(d) for d in deltas])
    assert all(torch.equal(a, b) for a, b in zip(state.params, expected))


def _sels(codec, dense_updates):
    return [codec.select(u) for u in dense_updates]


def test_mean_dense_float64_signs_agree_with_float32_path():
    shapes = ((128, 192), (64,), (3, 5), (7,))
    codec = TopKCodec(shapes, chunk=64, k=32, dct=True, values="bf16")
    sels = [
        codec.unpack(codec.encode([torch.randn(sh, generator=torch.Generator().manual_seed(s)) for sh in shapes]))
        for s in range(3)
    ]
    m64 = mean_dense(codec, sels, dtype=torch.float64)
    m32 = [sum(codec.densify(s)[i] for s in sels) / 3 for i in range(len(shapes))]
    for a, b in zip(m64, m32):
        assert torch.allclose(a.float(), b, atol=1e-5)
        big = b.abs() > 1e-4
        assert torch.equal(torch.sign(a.float())[big], torch.sign(b)[big])


@pytest.mark.parametrize("agg", [Mean(), Robust()], ids=lambda a: a.name)
def test_zero_updates_raise_no_updates(agg):
    """An empty round has no aggregate: a clear NoUpdates (the round fails), never an IndexError or NaN."""
    codec = TopKCodec(tuple(SHAPES), chunk=8, k=4, values="bf16")
    for call in (
        lambda: agg.dense([]),
        lambda: agg.dense([], None),
        lambda: agg.sparse(codec, []),
        lambda: agg.signs(codec, []),
    ):
        with pytest.raises(NoUpdates, match="no updates"):
            call()


def test_sparse_no_peer_sets_a_coordinate_only_it_picked():
    codec = TopKCodec(((8, 8),), chunk=8, k=3, values="bf16")
    honest = []
    for i in range(7):  # agree on two coordinates, and each has a lone pick of its own
        t = torch.zeros(8, 8)
        t[0, 0], t[0, 1], t[1, i] = 1.0, -1.0, 0.5
        honest.append([t])
    liar = torch.zeros(8, 8)
    liar[5, 5], liar[6, 6], liar[0, 0] = 65504.0, 65504.0, -65504.0
    sels = _sels(codec, honest + [[liar]])
    out = Robust().sparse(codec, sels)[0]
    assert out[5, 5] == out[6, 6] == 1.0 / 8  # capped at the median peer's largest value, / n
    assert out[0, 0] == 7.0 / 8 and out[0, 1] == -7.0 / 8  # outvoted: the liar's value does not count
    assert out[1, 3] == 0.5 / 8  # an honest lone pick still counts, / n
    assert Mean().sparse(codec, sels)[0][5, 5] > 8000
    flip = _sels(codec, [honest[0], [-4 * honest[0][0]]] + honest[1:])
    assert Robust().sparse(codec, flip)[0][1, 0] == 0  # a flipped copy cancels a lone pick, never reverses it
    assert torch.equal(Robust().sparse(codec, sels)[0], out)  # and the same bits again


def test_sign_vote_no_single_peer_decides():
    codec = TopKCodec(((8, 8),), chunk=8, k=64, dct=True, values="bf16")
    honest = [
        [torch.ones(8, 8) + 0.1 * torch.randn(8, 8, generator=torch.Generator().manual_seed(k))] for k in range(4)
    ]
    liar = [torch.full((8, 8), -65504.0)]
    sels = _sels(codec, honest + [liar])
    assert torch.equal(Robust().signs(codec, sels)[0], torch.ones(8, 8))
    assert torch.equal(Mean().signs(codec, sels)[0], -torch.ones(8, 8))  # the plain mean obeys the liar
    again = Robust().signs(codec, _sels(codec, honest + [liar]))[0]
    assert torch.equal(again, Robust().signs(codec, sels)[0])


def test_make_aggregator_names_the_fix():
    assert isinstance(make_aggregator(), Robust) and isinstance(make_aggregator(RobustConfig(aggregator="mean")), Mean)
    with pytest.raises(SwarmtrainError, match="not known") as e:
        make_aggregator(RobustConfig(aggregator="median"))
    assert "robust" in e.value.help
    with pytest.raises(SwarmtrainError, match="out of range"):
        make_aggregator(RobustConfig(trim_fraction=0.5))


def test_token_weights_are_capped_claims_and_none_when_equal():
    assert token_weights([4096] * 5, 4096, cap=2.0) is None  # the unweighted arithmetic, bit for bit
    assert token_weights([1024, 4096, 4096], 4096, cap=2.0) == [0.25, 1.0, 1.0]
    liar = token_weights([4096, 4096, 4096, 10**12], 4096, cap=2.0)
    assert liar == [1.0, 1.0, 1.0, 2.0]  # a claimed count buys at most cap x the median
    assert token_weights([0, 4096, 4096], 4096, cap=2.0)[0] == MIN_WEIGHT


def test_weighted_aggregates_count_work_and_keep_the_bits():
    us = updates(5, seed=3)
    w = [0.25, 1.0, 1.0, 2.0, 1.0]
    raw = [[t * wi for t in u] for u, wi in zip(us, w)]  # u: one full round's worth; raw: what each peer did
    mean = Mean().dense(raw, w)
    # the per-round mean (sum of work / total weight), at the median peer's work (weight 1 here)
    expect = [sum(r[i] for r in raw) / sum(w) for i in range(len(SHAPES))]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(mean, expect))
    assert all(torch.equal(a, b) for a, b in zip(Mean().dense(us, None), Mean().dense(us)))
    robust = _with_threads(1, lambda: Robust().dense(raw, w))
    assert all(torch.equal(a, b) for a, b in zip(robust, _with_threads(2, lambda: Robust().dense(raw, w))))
    assert all(torch.equal(a, b) for a, b in zip(per_round(us, None)[0], us[0]))
    # every peer ran 4 rounds' worth in the window: the step is theirs, not shrunk to one round's
    four = Mean().dense([[t * 4 for t in u] for u in us], [4.0] * 5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(four, [t * 4 for t in Mean().dense(us)]))
    # a slow peer's quarter round counts a quarter as much as a full one in the weighted trimmed mean
    stack = torch.tensor([[0.0], [4.0], [4.0], [4.0], [100.0]])
    assert float(trimmed_mean(stack, 1, [1.0, 0.25, 1.0, 1.0, 1.0])[0]) == pytest.approx(4.0)
    assert float(trimmed_mean(torch.tensor([[1.0], [2.0], [4.0]]), 0, [1.0, 1.0, 2.0])[0]) == pytest.approx(11 / 4)
