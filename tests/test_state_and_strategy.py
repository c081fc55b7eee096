import pytest
import torch

from node import checkpoint
from node.config import ModelConfig, StrategyConfig
from node.errors import SwarmtrainError
from node.model import build_model
from node.state import SwarmState
from node.strategies import make_strategy
from protocol.errors import ProtocolError

SMALL = ModelConfig(d_model=32, n_layer=2, n_head=2, ctx=16)


def setup(**strategy):
    model = build_model(SMALL, seed=0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    strat = make_strategy(StrategyConfig(**strategy), shapes)
    return model, strat, SwarmState.initial(model, strat.outer_buffers)


def local_params(state, seed):
    g = torch.Generator().manual_seed(seed)
    return [p - 0.01 * torch.randn(p.shape, generator=g) for p in state.params]


def test_diloco_apply_is_bit_identical_across_peers():
    _, strat, s1 = setup()
    _, _, s2 = setup()
    for r in range(3):
        payloads = [strat.make_update(s1, local_params(s1, 10 * r + k)) for k in range(3)]
        strat.apply(s1, payloads)
        strat.apply(s2, list(payloads))
        assert s1.digest == s2.digest and s1.full_digest == s2.full_digest and s1.round == r + 1


def test_diloco_plain_averaging_when_lr1_no_momentum():
    _, strat, state = setup(outer_lr=1.0, outer_momentum=0.0, wire_dtype="float32")
    locals_ = [local_params(state, k) for k in range(2)]
    payloads = [strat.make_update(state, lp) for lp in locals_]
    strat.apply(state, payloads)
    expected = [(a + b) / 2 for a, b in zip(*locals_)]
    assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(state.params, expected))


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(SwarmtrainError, match="not implemented"):
        setup(name="magic")


def test_state_bytes_roundtrip_and_checks():
    _, strat, state = setup()
    strat.apply(state, [strat.make_update(state, local_params(state, 1))])
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
