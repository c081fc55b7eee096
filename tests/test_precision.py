"""[train] precision and micro_batch: autocast and gradient accumulation in the inner step, with
fp32 weights (and so the swarm's state) whatever they are."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from node.config import ModelConfig, RunConfig, TrainConfig, validate_run
from node.errors import SwarmtrainError
from node.train.model import build_model, loss_fn
from node.train.trainer import InnerTrainer

CFG = ModelConfig(d_model=32, n_layer=2, n_head=2, ctx=16)
TRAIN = TrainConfig(batch_size=4, warmup_steps=1)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 256, (4, CFG.ctx + 1), generator=torch.Generator().manual_seed(seed))
    return x[:, :-1], x[:, 1:]


def trained(train: TrainConfig, steps: int = 2, apply: bool = True) -> InnerTrainer:
    torch.manual_seed(0)
    t = InnerTrainer(build_model(CFG, seed=0), train, torch.device("cpu"))
    for i in range(steps):
        t.step(*batch(i), apply=apply)
    return t


def test_fp32_without_micro_batches_is_the_plain_step_bit_for_bit():
    t = trained(TRAIN, steps=1)
    model = build_model(CFG, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN.inner_lr, betas=(0.9, 0.95), weight_decay=TRAIN.weight_decay)
    x, y = batch(0)
    loss_fn(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), TRAIN.grad_clip)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(t.model.parameters(), model.parameters(), strict=True))


def test_micro_batches_accumulate_the_same_gradient():
    whole = trained(TRAIN, steps=1, apply=False)
    split = trained(replace(TRAIN, micro_batch=1), steps=1, apply=False)  # four micro-batches of one
    for a, b in zip(whole.params, split.params, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_bf16_trains_fp32_weights_close_to_fp32():
    fp32, bf16 = trained(TRAIN), trained(replace(TRAIN, precision="bf16"))
    assert all(p.dtype == torch.float32 for p in bf16.params)  # the state every peer must agree on
    assert any(not torch.equal(a, b) for a, b in zip(fp32.params, bf16.params, strict=True))  # autocast ran
    x, y = batch(5)
    with torch.no_grad():
        a, b = loss_fn(fp32.model(x), y).item(), loss_fn(bf16.model(x), y).item()
    assert abs(a - b) / a < 0.02


def test_fp16_skips_a_step_whose_gradient_overflowed_and_sends_no_inf():
    t = trained(replace(TRAIN, precision="fp16"), steps=0)
    t.mixed.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # every scaled gradient overflows
    before = [p.detach().clone() for p in t.params]
    t.step(*batch(0))
    assert all(torch.equal(a, b) for a, b in zip(before, t.params, strict=True))  # skipped
    assert t.mixed.scaler.get_scale() < 2.0**127  # and the scale backed off
    t.mixed.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    t.step(*batch(1), apply=False)  # a gradient strategy reads .grad: zero, never inf
    assert all(torch.isfinite(p.grad).all() and not p.grad.any() for p in t.params)
    t.mixed.scaler = torch.amp.GradScaler("cpu")
    t.step(*batch(2))
    assert any(not torch.equal(a, b) for a, b in zip(before, t.params, strict=True))  # a normal step trains


def test_bad_precision_settings_are_refused():
    with pytest.raises(SwarmtrainError, match="micro_batch"):
        validate_run(replace(RunConfig(), train=replace(TRAIN, micro_batch=-1)))
    from node.config import from_dict

    with pytest.raises(SwarmtrainError, match="precision"):
        from_dict(RunConfig, {"train": {"precision": "fp8"}}, "test")
