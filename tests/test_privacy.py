"""Optional differential privacy: clip + Gaussian noise before encoding, accounted by opacus (issue 10)."""

import math

import pytest
import torch

from node.config import ModelConfig, PrivacyConfig, StrategyConfig, TrainConfig
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.train.model import build_model, trainable
from node.train.privacy import GaussianPrivacy, NoPrivacy, make_privacy

SMALL = ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=8)


def local_progress(seed=0, scale=1.0):
    model = build_model(SMALL, 0)
    state = SwarmState.initial(model, [])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model, state


def norm(ts):
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))


def test_off_is_an_object_that_does_nothing():
    model, state = local_progress()
    before = [p.clone() for p in model.parameters()]
    p = make_privacy(PrivacyConfig(), local_optimizer=True)
    assert isinstance(p, NoPrivacy) and not p.enabled
    p.before_update(state, model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert p.report() == {}


def test_pseudo_gradient_is_clipped_without_noise():
    pytest.importorskip("opacus", reason="the [privacy] extra is not installed")
    model, state = local_progress(scale=1.0)
    priv = make_privacy(PrivacyConfig(clip=0.5, noise_multiplier=0.0), local_optimizer=True)
    priv.before_update(state, model)
    delta = [g - p.detach() for g, p in zip(state.params, trainable(model))]
    assert norm(delta) == pytest.approx(0.5, rel=1e-4)
    assert priv.epsilon == math.inf and priv.report()["epsilon"] == "inf"


def test_noise_has_the_promised_scale_and_is_not_the_runs_seed():
    pytest.importorskip("opacus", reason="the [privacy] extra is not installed")
    cfg = PrivacyConfig(clip=1.0, noise_multiplier=2.0)
    model, state = local_progress(scale=0.0)  # no progress at all: what is left is the noise
    a = GaussianPrivacy(cfg, pseudo_gradient=True)
    a.before_update(state, model)
    noise = torch.cat([(g - p.detach()).flatten() for g, p in zip(state.params, trainable(model))])
    assert noise.std().item() == pytest.approx(2.0, rel=0.05)
    model2, state2 = local_progress(scale=0.0)
    GaussianPrivacy(cfg, pseudo_gradient=True).before_update(state2, model2)
    noise2 = torch.cat([(g - p.detach()).flatten() for g, p in zip(state2.params, trainable(model2))])
    assert not torch.equal(noise, noise2)  # fresh OS randomness on every peer


def test_gradient_strategies_get_a_privatized_gradient():
    pytest.importorskip("opacus", reason="the [privacy] extra is not installed")
    model = build_model(SMALL, 0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    priv = make_privacy(PrivacyConfig(clip=0.1, noise_multiplier=0.0), local_optimizer=False)
    priv.before_update(None, model)
    assert norm([p.grad for p in model.parameters()]) == pytest.approx(0.1, rel=1e-4)


def test_epsilon_comes_from_opacus_and_grows_with_rounds():
    opacus = pytest.importorskip("opacus", reason="the [privacy] extra is not installed")
    seen = []
    cfg = PrivacyConfig(clip=1.0, noise_multiplier=1.5, delta=1e-5)
    priv = make_privacy(cfg, local_optimizer=True, on_epsilon=seen.append)
    for seed in range(5):
        model, state = local_progress(seed)
        priv.before_update(state, model)
    ref = opacus.accountants.RDPAccountant()
    for _ in range(5):
        ref.step(noise_multiplier=1.5, sample_rate=1.0)
    assert seen[-1] == pytest.approx(ref.get_epsilon(1e-5)) and seen == sorted(seen) and seen[0] > 0
    assert priv.report()["releases"] == 5


def test_privatized_updates_still_apply_identically_on_every_peer():
    pytest.importorskip("opacus", reason="the [privacy] extra is not installed")
    model, state = local_progress(scale=0.01)
    strat = make_strategy(StrategyConfig(name="diloco"), [tuple(p.shape) for p in model.parameters()], TrainConfig())
    state = SwarmState.initial(build_model(SMALL, 0), strat.outer_buffers)
    make_privacy(PrivacyConfig(clip=0.05, noise_multiplier=0.5), local_optimizer=True).before_update(state, model)
    payload = strat.make_update(state, None, model)
    a, b = (SwarmState.initial(build_model(SMALL, 0), strat.outer_buffers) for _ in range(2))
    strat.apply(a, [payload])
    strat.apply(b, [payload])
    assert a.digest == b.digest


def test_bad_settings_name_the_fix():
    pytest.importorskip("opacus", reason="the [privacy] extra is not installed")
    from node.errors import SwarmtrainError

    with pytest.raises(SwarmtrainError) as e:
        make_privacy(PrivacyConfig(clip=1.0, delta=2.0), local_optimizer=True)
    assert "clip = 0 turns privacy off" in e.value.help
