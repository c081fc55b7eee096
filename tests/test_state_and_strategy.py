import pytest
import torch

from node.config import ModelConfig, RobustConfig, StrategyConfig
from node.errors import SwarmtrainError
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.peer import checkpoint
from node.train.model import build_model
from protocol.errors import ProtocolError

SMALL = ModelConfig(d_model=32, n_layer=2, n_head=2, ctx=16)


def setup(robust=None, **strategy):
    model = build_model(SMALL, seed=0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    strat = make_strategy(StrategyConfig(**strategy), shapes, robust=robust)
    return model, strat, SwarmState.initial(model, strat.outer_buffers)


class Local(torch.nn.Module):
    """Stands in for a peer's model after its inner steps: parameters and gradients."""

    def __init__(self, state, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ps = torch.nn.ParameterList(p - 0.01 * torch.randn(p.shape, generator=g) for p in state.params)
        for p in self.ps:
            p.grad = torch.randn(p.shape, generator=g)


def local_params(state, seed):
    return Local(state, seed)


def update(strat, state, seed, worker=None):
    return strat.make_update(state, strat.new_worker() if worker is None else worker, Local(state, seed))


@pytest.mark.parametrize(
    "strategy",
    [
        dict(),
        dict(wire_dtype="int8"),
        dict(name="sparseloco"),
        dict(name="sparseloco", sparse_outer_momentum=0.5),
        dict(name="decoupled-momentum", values="1bit"),
        dict(name="decoupled-momentum", values="bf16"),
        dict(name="ddp-adamw"),
    ],
)
@pytest.mark.parametrize("aggregator", ["robust", "mean"])
def test_apply_is_bit_identical_across_peers(strategy, aggregator):
    robust = RobustConfig(aggregator=aggregator)
    _, strat, s1 = setup(robust, **strategy)
    _, _, s2 = setup(robust, **strategy)
    for r in range(3):
        payloads = [update(strat, s1, 10 * r + k) for k in range(3)]
        strat.apply(s1, payloads)
        strat.apply(s2, list(payloads))
        assert s1.digest == s2.digest and s1.full_digest == s2.full_digest and s1.round == r + 1
    assert s1.digest != setup(**strategy)[2].digest  # and it did move the parameters


@pytest.mark.parametrize(
    "strategy",
    [
        dict(wire_dtype="int8"),
        dict(name="sparseloco", sparse_outer_momentum=0.5),
        dict(name="decoupled-momentum"),
        dict(name="ddp-adamw"),
    ],
)
def test_per_peer_buffers_stay_out_of_the_state(strategy):
    """A roster's `full` digest covers the state's outer buffers, so they must be the same on every
    peer: each strategy keeps what is one peer's own (error feedback, decoupled momentum) in its
    worker, never in SwarmState.outer, and making an update leaves the state's bits alone."""
    _, strat, state = setup(**strategy)
    before, worker = state.full_digest, strat.new_worker()
    update(strat, state, 1, worker)
    assert sorted(state.outer) == sorted(strat.outer_buffers) and state.full_digest == before


@pytest.mark.parametrize(
    "strategy", [dict(), dict(name="sparseloco"), dict(name="decoupled-momentum"), dict(name="ddp-adamw")]
)
def test_frozen_parameters_are_not_exchanged(strategy):
    """Only parameters with requires_grad cross the wire (LoRA: the frozen base stays out)."""
    _, full, state = setup(**strategy)
    local = Local(state, 0)
    local.ps[0].requires_grad_(False)
    shapes = [tuple(p.shape) for p in local.ps[1:]]
    strat = make_strategy(StrategyConfig(**strategy), shapes)
    state.params, state.outer = state.params[1:], {k: v[1:] for k, v in state.outer.items()}
    payload = strat.make_update(state, strat.new_worker(), local)
    assert len(payload) == strat.codec.encoded_size() < full.codec.encoded_size()
    strat.apply(state, [payload])


@pytest.mark.parametrize(
    "strategy", [dict(), dict(name="sparseloco"), dict(name="decoupled-momentum"), dict(name="ddp-adamw")]
)
def test_preview_applies_one_payload_without_touching_the_state(strategy):
    _, strat, state = setup(**strategy)
    before = state.full_digest
    after = strat.preview(state, update(strat, state, 1))
    assert state.full_digest == before and state.round == 0
    assert [p.shape for p in after] == [p.shape for p in state.params]
    assert any(not torch.equal(a, p) for a, p in zip(after, state.params))


def test_error_feedback_keeps_what_was_not_sent():
    _, strat, state = setup(name="sparseloco", topk=4, error_decay=1.0, values="bf16")
    worker = strat.new_worker()
    local = Local(state, 0)
    payload = strat.make_update(state, worker, local)
    sent = strat.codec.decode(payload)
    pseudo = [g - l.detach() for g, l in zip(state.params, local.parameters())]
    for e, s, d in zip(worker["error"], sent, pseudo):
        assert torch.allclose(e + s, d, atol=1e-6)  # nothing lost: sent + kept = the pseudo-gradient


def test_diloco_plain_averaging_when_lr1_no_momentum():
    _, strat, state = setup(outer_lr=1.0, outer_momentum=0.0, wire_dtype="float32")
    locals_ = [Local(state, k) for k in range(2)]
    payloads = [strat.make_update(state, None, lp) for lp in locals_]
    strat.apply(state, payloads)
    expected = [(a + b) / 2 for a, b in zip(*[list(lp.parameters()) for lp in locals_])]
    assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(state.params, expected))


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(SwarmtrainError, match="not implemented"):
        setup(name="magic")


def test_state_bytes_roundtrip_and_checks():
    _, strat, state = setup()
    strat.apply(state, [update(strat, state, 1)])
    blob = state.to_bytes("run-1")
    back = SwarmState.from_bytes(blob, run_id="run-1", template=state)
    assert back.full_digest == state.full_digest and back.round == 1
    with pytest.raises(ProtocolError, match="belongs to run"):
        SwarmState.from_bytes(blob, run_id="run-2", template=state)
    _, _, other = setup()
    other.params[0] = torch.zeros(3, 3)
    with pytest.raises(ProtocolError, match="shape"):
        SwarmState.from_bytes(blob, run_id="run-1", template=other)


def test_checkpoint_atomic_and_corrupt_is_an_error(tmp_path):
    _, _, state = setup()
    path = checkpoint.checkpoint_path(str(tmp_path), "run-1")
    assert checkpoint.load(path, run_id="run-1", template=state) is None
    checkpoint.save(path, state.to_bytes("run-1"))
    assert checkpoint.load(path, run_id="run-1", template=state).digest == state.digest
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SwarmtrainError, match="unreadable") as e:
        checkpoint.load(path, run_id="run-1", template=state)
    assert "mv" in e.value.help and path.exists()  # nothing deleted
