"""The inner step's own AdamW (node/train/trainer.py): torch's numbers, without torch's compiler."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from node.train.trainer import PlainAdamW

ROOT = Path(__file__).resolve().parents[1]


def _pair(decay: float):
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=decay)
    return ours, theirs, PlainAdamW(ours, **kw), torch.optim.AdamW(theirs, foreach=False, **kw)


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_plain_adamw_is_bit_for_bit_torch_adamw(decay):
    ours, theirs, a, b = _pair(decay)
    for step in range(40):
        for opt in (a, b):
            opt.param_groups[0]["lr"] = 3e-3 * min(1.0, (step + 1) / 10)  # the schedule sets lr each step
        for i, (p, q) in enumerate(zip(ours, theirs)):
            g = torch.randn_like(p) * (i + 1)
            if step % 7 == 3 and i == 1:
                p.grad, q.grad = None, None  # a parameter without a gradient this step is left alone
            else:
                p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["exp_avg_sq"], b.state[q]["exp_avg_sq"])


def test_zero_grad_clears_or_zeroes():
    ours, _, a, _ = _pair(0.0)
    for p in ours:
        p.grad = torch.ones_like(p)
    a.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ours)
    a.zero_grad()
    assert all(p.grad is None for p in ours)


def test_an_empty_parameter_list_is_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        PlainAdamW([], lr=1e-3)


PROBE = """
import sys, torch
from node.config import ModelConfig, TrainConfig
from node.train.model import build_model
from node.train.trainer import InnerTrainer
trainer = InnerTrainer(build_model(ModelConfig(), 0), TrainConfig(), torch.device("cpu"))
x = torch.randint(0, 256, (2, 32))
for _ in range(3):
    trainer.step(x, x)
print("dynamo", "torch._dynamo" in sys.modules)
"""


def test_inner_steps_on_the_cpu_do_not_import_torch_compiler():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "dynamo False" in out, out  # torch.optim.AdamW imports it: ~1 s and ~70 MB a volunteer
