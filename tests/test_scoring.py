"""Update scores and bans (node/outer/scoring.py): pure functions of the ledger's scores.
Copies and leaders that frame: tests/test_framing.py."""

import torch

from node.config import ModelConfig, RobustConfig, StrategyConfig
from node.outer.scoring import (
    ONE_SIDED_MAX,
    WORST,
    banned,
    crafted,
    directions,
    flagged,
    payload_digest,
    score_updates,
    shared_batch_loss,
    stale,
)
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.round.ledger import ScoredRound
from node.train.model import build_model

CFG = RobustConfig(scoring=True, score_window=10, ban_after=3)
HONEST = {f"h{i}": -0.05 + 0.002 * i for i in range(9)}


def led(*rounds: dict[str, float]) -> list[ScoredRound]:
    """A score history of rounds 1, 2, ... led in turn by three leaders."""
    return [ScoredRound(r, f"leader{r % 3}", scores) for r, scores in enumerate(rounds, 1)]


def test_stale_is_an_earlier_rounds_bytes_never_a_copy_in_the_same_round():
    a, b = b"update-a", b"update-b"
    assert stale([a, b, a, a]) == [False] * 4  # same-round copies: credited's question, not a flag
    assert stale([b, a], earlier=[payload_digest(a)]) == [False, True]  # seen in an earlier round


def test_flagged_is_relative_to_the_round():
    assert flagged({**HONEST, "liar": 0.5}) == {"liar"}
    assert flagged({**HONEST, "slightly-worse": -0.03}) == set()  # within the honest spread
    assert flagged({"a": -1.0, "b": 5.0, "c": 0.0}) == set()  # too few peers to judge
    assert flagged({**{f"h{i}": -0.01 - 1e-6 * i for i in range(6)}, "zero": 0.0}) == {"zero"}  # spread floor
    # equal scores (one update's copies) count once: 10 copies do not shrink the spread to nothing
    copies = {f"c{i}": HONEST["h4"] for i in range(10)}
    assert flagged({**HONEST, **copies}) == set()
    assert flagged({f"c{i}": -0.01 for i in range(6)} | {"zero": 0.0}) == set()  # 2 distinct scores: too few


def test_banned_after_enough_bad_rounds_within_the_window_and_for_good():
    bad = {**HONEST, "liar": WORST}
    ok = {**HONEST, "liar": -0.05}
    assert banned(led(bad, ok, bad, ok, ok), CFG) == set()
    assert banned(led(bad, ok, bad, ok, bad), CFG) == {"liar"}
    # spread out over more than score_window rounds: never 3 in one window
    assert banned(led(bad, *[ok] * 10, bad, *[ok] * 10, bad), CFG) == set()
    # a banned peer is no longer scored, and stays banned
    history = led(bad, bad, bad, *[dict(HONEST)] * 20)
    assert banned(history, CFG) == {"liar"}
    assert banned(list(reversed(history)), CFG) == banned(history, CFG)  # pure: the same ledger, the same bans


def test_seven_of_sixteen_are_all_banned_and_no_honest_peer():
    liars = {f"x{i}": 0.2 + 0.01 * i for i in range(7)}
    assert banned(led(*[{**HONEST, **liars}] * 3), CFG) == set(liars)


def test_scores_honest_below_poisoned_and_refused_worst():
    model = build_model(ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=8), 0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    strat = make_strategy(StrategyConfig(wire_dtype="float32", outer_lr=1.0, outer_momentum=0.0), shapes)
    state = SwarmState.initial(model, strat.outer_buffers)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 8), generator=g)
    y = x.roll(-1, dims=1)
    loss_of = shared_batch_loss(build_model(ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=8), 0), x, y)
    # an honest update: a few gradient steps on the shared batch itself, as a pseudo-gradient
    local = build_model(ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=8), 0)
    opt = torch.optim.SGD(local.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(local(x).reshape(-1, 256), y.reshape(-1)).backward()
        opt.step()
    delta = [gp - lp.detach() for gp, lp in zip(state.params, local.parameters())]
    honest = strat.codec.encode(delta)
    noise = strat.codec.encode([torch.randn(d.shape, generator=g) for d in delta])
    scores = score_updates(strat, state, [honest, noise, b"\0" * 3, honest], loss_of)
    assert scores[0] < 0 < scores[1] < WORST
    assert scores[2] == WORST  # refused bytes
    assert scores[3] == scores[0]  # a copy in the same round scores what its bytes score, and never frames
    scores = score_updates(strat, state, [honest, noise], loss_of, earlier=[payload_digest(noise)])
    assert scores[0] < 0 and scores[1] == WORST  # a replay of an earlier round's bytes
    # a copy claiming another token count (so another weight) cannot worsen its victim's score
    for claim in (0.25, 4.0):
        weighted = score_updates(strat, state, [honest, noise, honest], loss_of, weights=[1.0, 1.0, claim])
        assert weighted[0] == weighted[2] <= scores[0]


def test_crafted_finds_alie_and_inverted_updates_and_spares_honest_and_copied_ones():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(4096, generator=g)
    honest = [mean + 0.3 * torch.randn(4096, generator=g) for _ in range(9)]
    stack = torch.stack(honest)
    alie = stack.mean(0) - 1.15 * stack.std(0)  # Baruch et al.: mean - z std, z for 7 of 16
    lean = [side for side, _ in directions(honest + [alie.clone() for _ in range(7)])]
    assert max(lean[:9]) < 0.2 < ONE_SIDED_MAX < min(lean[9:])  # the copies do not drag the median
    assert crafted(honest + [alie]) == [False] * 9 + [True]
    assert crafted(honest + [-0.1 * stack.mean(0)] * 7) == [False] * 9 + [True] * 7  # IPM points away
    assert crafted(honest + [-4 * honest[0]]) == [False] * 9 + [True]  # a sign flip too
    assert not any(crafted(honest + [honest[0].clone() for _ in range(7)]))  # a victim's copies: nothing
    assert crafted([honest[0], alie, None]) == [False] * 3  # too few distinct updates to judge
    assert crafted(honest + [None])[-1] is False  # refused or replayed: scored WORST elsewhere
