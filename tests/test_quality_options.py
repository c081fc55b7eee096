"""Issue 11's strategy options: low-bit DiLoCo with error feedback (QuantCodec), Nesterov outer
steps for SparseLoCo, Muon as the inner optimizer. Each: encode -> decode -> apply round trip,
bit-identical apply, malformed payloads refused with ProtocolError."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.quality.presets import PRESETS, SMALL
from bench.quality.simulator import build_strategy
from node.config import RobustConfig, StrategyConfig, TrainConfig
from node.errors import SwarmtrainError
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.train.model import build_model
from node.train.trainer import InnerTrainer, muon_matrices
from protocol.codecs import MAX_ABS_VALUE, QUANT_OFFSET, QuantCodec
from protocol.errors import ProtocolError
from tests.test_codecs import random_bytes_decode_safely

SHAPES = ((128, 192), (64,), (3, 5), (7,))
QUANT = [QuantCodec(SHAPES, bits, block) for bits in (4, 2, 1) for block in (256, 100)]


def tensors(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


# ------------------------------------------------------------------------------ the codec
@pytest.mark.parametrize("codec", QUANT, ids=lambda c: c.name)
def test_quant_round_trip_and_exact_size(codec):
    x = tensors()
    blob = codec.encode(x)
    assert len(blob) == codec.encoded_size()
    n = sum(math.prod(s) for s in SHAPES)
    assert (
        codec.encoded_size()
        == sum(-(-math.prod(s) // codec.block) * 4 + -(-math.prod(s) * codec.bits // 8) for s in SHAPES)
        <= n * (codec.bits / 8 + 4 / codec.block) + 5 * len(SHAPES)
    )
    out = codec.decode(blob)
    assert [tuple(t.shape) for t in out] == list(SHAPES)
    big = torch.cat([t.reshape(-1) for t in x]), torch.cat([t.reshape(-1) for t in out])
    rel = float((big[0] - big[1]).norm() / big[0].norm())
    assert rel < {4: 0.15, 2: 0.4, 1: 0.65}[codec.bits]  # 2 bits: Lloyd-Max's 0.34; 1 bit: sqrt(1 - 2/pi)
    assert codec.encode(x) == blob  # a deterministic encoder


def test_quant_levels_per_block():
    c = QuantCodec(((512,),), bits=2, block=256)
    out = c.decode(c.encode([torch.randn(512, generator=torch.Generator().manual_seed(1))]))[0]
    for b in out.view(2, 256):
        assert len(b.unique()) <= 4
    c1 = QuantCodec(((512,),), bits=1, block=256)
    x = torch.randn(512, generator=torch.Generator().manual_seed(2))
    out = c1.decode(c1.encode([x]))[0].view(2, 256)
    assert torch.equal(out.sign(), torch.where(x.view(2, 256) >= 0, 1.0, -1.0))
    assert torch.allclose(out.abs()[:, 0], x.view(2, 256).abs().mean(dim=1))


@pytest.mark.parametrize("codec", QUANT[::2], ids=lambda c: c.name)
def test_quant_malformed_payloads_are_refused(codec):
    blob = bytearray(codec.encode(tensors()))
    for bad in (bytes(blob[:-1]), bytes(blob) + b"\0", b""):
        with pytest.raises(ProtocolError):
            codec.decode(bad)
    top = max(QUANT_OFFSET[codec.bits], 2**codec.bits - 1 - QUANT_OFFSET[codec.bits])
    for scale in (float("nan"), float("inf"), -float("inf"), 3e38, MAX_ABS_VALUE / top * 1.01):
        b = bytearray(blob)
        b[0:4] = np.float32(scale).tobytes()  # the first block's step
        with pytest.raises(ProtocolError):
            codec.decode(bytes(b))
    b = bytearray(blob)
    b[0:4] = np.nextafter(np.float32(MAX_ABS_VALUE / top), np.float32(0)).tobytes()  # at the bound: valid
    assert all(torch.isfinite(t).all() for t in codec.decode(bytes(b)))


@pytest.mark.parametrize("codec", QUANT[::2], ids=lambda c: c.name)
def test_quant_random_bytes_raise_only_protocol_error(codec):
    random_bytes_decode_safely(codec, 60)


@pytest.mark.parametrize("codec", QUANT[::2], ids=lambda c: c.name)
def test_quant_encoder_clamps_to_what_decoders_accept(codec):
    out = codec.decode(codec.encode([t * 1e30 for t in tensors()]))
    assert all(float(t.abs().max()) <= MAX_ABS_VALUE for t in out)
    zeros = codec.decode(codec.encode([torch.zeros(s) for s in SHAPES]))
    assert all(float(t.abs().max()) == 0 for t in zeros)


def test_quant_bad_options():
    with pytest.raises(ValueError):
        QuantCodec(SHAPES, bits=3)
    with pytest.raises(ValueError):
        QuantCodec(SHAPES, bits=4, block=0)


# ------------------------------------------------------------------- strategies on top
DEFAULT_TRAIN = TrainConfig()


def setup(cfg: StrategyConfig, train: TrainConfig = DEFAULT_TRAIN, seed: int = 0):
    model = build_model(SMALL, seed)
    strat = make_strategy(
        cfg, [tuple(p.shape) for p in model.parameters()], train, robust=RobustConfig(aggregator="mean")
    )
    return model, strat, SwarmState.initial(model, strat.outer_buffers)


def moved(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model


OPTIONS = [
    StrategyConfig(name="diloco", inner_steps=5, wire_dtype=w, error_decay=d)
    for w, d in (("int4", 1.0), ("int2", 0.9), ("int1", 1.0))
] + [
    StrategyConfig(name="diloco", inner_steps=5, wire_dtype="int1", wire_block=1024, outer_lr=1.4),
    StrategyConfig(name="diloco", inner_steps=5, wire_dtype="int1", wire_block=1024, wire_share=4),
    StrategyConfig(name="diloco", inner_steps=5, wire_dtype="lowrank", wire_rank=3, wire_block=1024),
    StrategyConfig(name="sparseloco", inner_steps=5, topk=16, sparse_outer_momentum=0.9, outer_lr=1.5),
    StrategyConfig(name="sparseloco", inner_steps=5, topk=8, topk_vector=64),
]


@pytest.mark.parametrize(
    "cfg",
    OPTIONS,
    ids=lambda c: f"{c.name}-{c.wire_dtype}-s{c.wire_share}-{c.sparse_outer_momentum}-{c.topk_vector}",
)
def test_round_trip_and_bit_identical_apply(cfg):
    model, strat, state = setup(cfg)
    workers = [strat.new_worker() for _ in range(3)]
    payloads = [strat.make_update(state, w, moved(build_model(SMALL, 0), s)) for s, w in enumerate(workers)]
    assert all(len(p) == strat.codec.encoded_size() for p in payloads)
    for p in payloads:
        strat.check(p)
    a, b = setup(cfg)[2], setup(cfg)[2]
    for st in (a, b):
        for _ in range(2):  # twice: the outer momentum takes part in the second round
            strat.apply(st, payloads)
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params))
    assert all(torch.equal(x, y) for k in a.outer for x, y in zip(a.outer[k], b.outer[k]))
    assert a.round == 2 and a.digest == b.digest
    assert any(not torch.equal(x, y) for x, y in zip(a.params, state.params))
    preview = strat.preview(state, payloads[0])
    assert len(preview) == len(state.params) and all(torch.isfinite(t).all() for t in preview)
    with pytest.raises(ProtocolError):
        strat.check(payloads[0][:-1])


@pytest.mark.parametrize("wire", ["int4", "int2", "int1", "int1-s2", "int1-s4", "lowrank"])
def test_error_feedback_keeps_what_was_not_sent(wire):
    dtype, _, share = wire.partition("-s")  # int1-s<S>: one sign per S values (wire_share)
    cfg = StrategyConfig(name="diloco", wire_dtype=dtype, wire_share=int(share or 1), error_decay=1.0)
    model, strat, state = setup(cfg)
    worker = strat.new_worker()
    local = moved(build_model(SMALL, 0), 7)
    pseudo = [g - l.detach() for g, l in zip(state.params, local.parameters())]
    sent = strat.codec.decode(strat.make_update(state, worker, local))
    for e, p, s in zip(worker["error"], pseudo, sent):
        assert torch.allclose(e + s, p, atol=1e-6)  # e = pseudo - sent
    total = [s.clone() for s in sent]
    for _ in range(30):  # the same pseudo-gradient again and again: what is sent converges to it
        for t, s in zip(total, strat.codec.decode(strat.make_update(state, worker, local))):
            t.add_(s)
    rel = float(
        sum((t / 31 - p).norm() ** 2 for t, p in zip(total, pseudo)).sqrt() / sum(p.norm() ** 2 for p in pseudo).sqrt()
    )
    # = |final error| / 31 |pseudo-gradient| (lowrank: rank 4 of a full-rank random target, each
    # round the buffer's top 4 directions of 64)
    assert rel < {"int4": 0.05, "int2": 0.1, "int1": 0.25, "int1-s2": 0.35, "int1-s4": 0.5, "lowrank": 0.4}[wire]


def test_defaults_leave_the_old_presets_alone():
    cfg = StrategyConfig()
    assert cfg.wire_dtype == "float16" and cfg.sparse_outer_momentum == 0.0 and cfg.wire_block == 256
    assert TrainConfig().inner_optimizer == "adamw"
    _, strat, _ = setup(StrategyConfig(name="sparseloco"))
    assert strat.outer_buffers == [] and strat.new_worker() == {}
    _, strat, _ = setup(StrategyConfig(name="diloco", wire_dtype="int8"))
    assert strat.new_worker() is None and strat.codec.name == "int8-b256"
    _, strat, _ = setup(StrategyConfig(name="diloco", wire_dtype="int2", wire_block=64))
    assert strat.codec.name == "int2-b64"


def test_bad_strategy_options():
    for cfg in (
        StrategyConfig(name="diloco", wire_dtype="int3"),
        StrategyConfig(name="diloco", wire_dtype="int2", wire_block=0),
        StrategyConfig(name="diloco", wire_dtype="int2", wire_share=2),  # a shared sign is one bit
        StrategyConfig(name="diloco", wire_dtype="int1", wire_block=64, wire_share=3),  # runs must tile a block
        StrategyConfig(name="diloco", wire_dtype="lowrank", wire_rank=0),
        StrategyConfig(name="diloco", wire_dtype="lowrank", wire_rank=64),  # factors no matrix of the model
        StrategyConfig(name="sparseloco", sparse_outer_momentum=1.0),
        StrategyConfig(name="sparseloco", topk_vector=-1),
    ):
        with pytest.raises(SwarmtrainError):
            setup(cfg)


# ------------------------------------------------------------------------------- Muon
def test_muon_trains_the_linear_weights_and_adamw_the_rest():
    torch.manual_seed(0)
    model = build_model(SMALL, 0)
    mats = muon_matrices(model)
    names = {n for n, p in model.named_parameters() if id(p) in mats}
    assert names and all(n.endswith(("qkv.weight", "proj.weight", "fc_in.weight", "fc_out.weight")) for n in names)
    assert not any(n.startswith(("tok", "pos")) for n in names)
    cfg = TrainConfig(inner_optimizer="muon", muon_lr=0.01, warmup_steps=1)
    tr = InnerTrainer(model, cfg, torch.device("cpu"))
    assert [type(o).__name__ for o in tr.opts] == ["PlainAdamW", "Muon"]
    x = torch.randint(0, 256, (4, SMALL.ctx), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in tr.params]
    losses = [tr.step(x, x) for _ in range(8)]
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, tr.params))
    assert tr.opts[1].param_groups[0]["lr"] == pytest.approx(0.01)


def test_adamw_trainer_is_unchanged():
    """inner_optimizer='adamw' is one torch AdamW over every parameter, as before."""
    cfg = TrainConfig(warmup_steps=1)
    tr = InnerTrainer(build_model(SMALL, 0), cfg, torch.device("cpu"))
    ref = build_model(SMALL, 0)
    opt = torch.optim.AdamW(ref.parameters(), lr=cfg.inner_lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    x = torch.randint(0, 256, (4, SMALL.ctx), generator=torch.Generator().manual_seed(0))
    from node.train.model import loss_fn

    for _ in range(3):
        tr.step(x, x)
        loss = loss_fn(ref(x), x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), cfg.grad_clip)
        opt.step()
    assert len(tr.opts) == 1 and all(torch.equal(a, b) for a, b in zip(tr.params, ref.parameters()))
    with pytest.raises(ValueError):
        InnerTrainer(build_model(SMALL, 0), replace(cfg, inner_optimizer="sgd"), torch.device("cpu"))


def test_new_presets_build():
    for strat_cfg, train in PRESETS.values():
        model = build_model(SMALL, 0)
        build_strategy(strat_cfg, model, train, lambda step: 1.0, RobustConfig())
        InnerTrainer(model, train, torch.device("cpu"))


def test_ddp_muon_steps_muon_on_the_matrices_and_adamw_on_the_rest():
    """The DDP-Muon reference: Muon's momentum lives in the state (matrices only), AdamW's moments
    on the rest, and one round moves every parameter."""
    model = build_model(SMALL, 0)
    strat_cfg, train = PRESETS["ddp-muon"]
    strategy = build_strategy(strat_cfg, model, train, lambda step: 1.0, RobustConfig(aggregator="mean"))
    state = SwarmState.initial(model, strategy.outer_buffers)
    before = [p.clone() for p in state.params]
    grads = [torch.randn_like(p) for p in state.params]
    strategy.apply(state, [strategy.codec.encode(grads)])
    mats = muon_matrices(model)
    for p, b, m, v, flag in zip(
        state.params,
        before,
        state.outer["momentum_buffer"],
        state.outer["exp_avg"],
        [id(q) in mats for q in model.parameters()],
    ):
        assert not torch.equal(p, b)
        assert bool(m.abs().sum() > 0) == flag and bool(v.abs().sum() > 0) != flag
    assert state.round == 1
