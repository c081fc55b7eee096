import pytest
import torch

from node.config import ModelConfig, TrainConfig
from node.errors import SwarmtrainError
from node.train.model import build_model, digest, loss_fn
from node.train.trainer import InnerTrainer, evaluate_bpb

SMALL = ModelConfig(d_model=32, n_layer=2, n_head=2, ctx=16)


def params(m):
    return list(m.parameters())


def test_same_seed_same_bits_other_seed_other_bits():
    torch.manual_seed(123)  # the global RNG must not matter
    a = build_model(SMALL, seed=1)
    torch.manual_seed(456)
    b = build_model(SMALL, seed=1)
    c = build_model(SMALL, seed=2)
    assert digest(params(a)) == digest(params(b)) != digest(params(c))


def test_forward_shape_and_initial_loss():
    m = build_model(SMALL, seed=0)
    x = torch.randint(0, 256, (3, 16))
    logits = m(x)
    assert logits.shape == (3, 16, 256)
    y = torch.randint(0, 256, (3, 16))
    assert abs(loss_fn(logits, y).item() - 5.545) < 0.2  # ln 256: a near-uniform start


def test_inner_steps_learn():
    torch.manual_seed(0)
    m = build_model(SMALL, seed=0)
    tr = InnerTrainer(m, TrainConfig(inner_lr=1e-2, warmup_steps=1), torch.device("cpu"))
    x = torch.randint(0, 256, (4, 16))
    y = torch.roll(x, -1, 1)
    before = evaluate_bpb(m, x, y, torch.device("cpu"))
    for _ in range(30):
        tr.step(x, y)
    assert evaluate_bpb(m, x, y, torch.device("cpu")) < before - 1.0


def test_bad_model_config():
    with pytest.raises(SwarmtrainError, match="divisible"):
        build_model(ModelConfig(d_model=30, n_head=4), seed=0)
