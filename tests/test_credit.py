"""Credit from useful work (issue 16, design step 4): node/outer/useful.py judges each update,
node/round/trust/credit.py turns the roster's credit into weights and establishment, and every
peer that applies a roster recomputes its credit (node/peer/applier.py Crediting). The 40-round
Sybil crowd is tests/test_sybil_attacks_4.py."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import pytest
import torch

from node.config import RobustConfig
from node.outer import useful
from node.round.ledger import AcceptedRoster
from node.round.trust import credit
from protocol.errors import ProtocolError
from protocol.records import Announcement, Roster
from tests.fakes import new_key
from tests.test_score_checks import RUN, applier, roster_of

DIM = 4096


def unit(rng) -> np.ndarray:
    x = rng.standard_normal(DIM)
    return x / np.linalg.norm(x)


def rows(*xs) -> torch.Tensor:
    return torch.tensor(np.stack(xs), dtype=torch.float64)


def test_zeros_noise_copies_and_stale_mixes_are_worthless_and_fresh_work_useful():
    """4 honest updates on a direction that persists from round to round (cos 0.9), beside zeros,
    noise, a later copy of an honest update and a mix of the round before's updates. Without the
    rounds before (a plain cosine with the round's aggregate), the stale mix counts as useful:
    it points where training goes; its fresh part is nothing."""
    rng = np.random.default_rng(1)
    common, before = unit(rng), []
    for _ in range(3):  # the 3 rounds before (useful.SPAN_ROUNDS)
        before.append(rows(*[common + 0.7 * unit(rng) for _ in range(4)]))
        common = 0.9 * common + math.sqrt(1 - 0.81) * unit(rng)
    honest = [common + 0.7 * unit(rng) for _ in range(4)]
    w = rng.random(4)
    stale = 0.5 * sum(wi / w.sum() * x for wi, x in zip(w, before[-1].numpy()))
    dirs = rows(*honest, np.zeros(DIM), 1e-3 * unit(rng), honest[0], stale)
    payloads = [d.numpy().astype(np.float32).tobytes() for d in dirs]
    times = [100.0] * 4 + [103.0] * 4  # the copy (entry 6) was announced after what it copies
    cosines = useful.fresh_cosines(dirs, payloads, useful.span(before))
    judged = useful.judged(payloads, times, dirs, cosines, useful.COSINE)
    assert judged == [True] * 4 + [False] * 4, cosines
    assert min(cosines[:4]) > 0.3 and max(abs(c) for c in cosines[4:6] + cosines[7:]) < 0.05
    plain = useful.fresh_cosines(dirs, payloads, None)
    assert plain[7] > 0.5 and useful.judged(payloads, times, dirs, plain, useful.COSINE)[7]  # why the span
    tie = useful.judged(payloads, [100.0] * 8, dirs, cosines, useful.COSINE)
    assert tie[0] is False and tie[6] is False  # a copy at the same signed time: nobody is credited


def test_the_others_sum_weighs_entries_by_their_authors_standing():
    """12 crowd entries that share a part outside the span (as int1's re-quantized stale mixes do:
    tests/test_sybil_attacks_6.py) beside 4 honest ones. All alike, the crowd's shared part carries
    the others' sum and the crowd is useful; weighed by standing (the honest authors' credit in the
    rounds before, the crowd's 0) it is not, and the honest entries are, against one another. With
    nobody's standing (a run's first rounds) every entry is weighed alike, as without any."""
    rng = np.random.default_rng(2)
    common, before = unit(rng), []
    for _ in range(3):
        before.append(rows(*[common + 0.7 * unit(rng) for _ in range(4)]))
        common = 0.9 * common + math.sqrt(1 - 0.81) * unit(rng)
    honest = [common + 0.7 * unit(rng) for _ in range(4)]
    shared = unit(rng)
    crowd = [before[-1].numpy().mean(0) + 0.3 * shared + 0.1 * unit(rng) for _ in range(12)]
    dirs = rows(*honest, *crowd)
    payloads = [d.numpy().astype(np.float32).tobytes() for d in dirs]
    basis = useful.span(before)
    alike = useful.fresh_cosines(dirs, payloads, basis)
    assert min(alike[4:]) > 0.5, alike  # the crowd votes itself in
    ranked = useful.fresh_cosines(dirs, payloads, basis, [192.0] * 4 + [0.0] * 12)
    assert min(ranked[:4]) > 0.2 and max(abs(c) for c in ranked[4:]) < 0.05, ranked
    assert useful.fresh_cosines(dirs, payloads, basis, [0.0] * 16) == alike


def test_token_claims_buy_nothing_above_the_median_of_the_useful_entries():
    assert credit.token_units([100, 100, 10**9, 50]) == [64, 64, 64, 32]
    junk = [True, True, False, False, False]  # 10^9-token claims of useless entries move nothing
    assert credit.token_units([100, 100, 10**9, 10**9, 10**9], junk) == [64, 64, 0, 0, 0]
    assert credit.token_units([400, 400], nominal=200) == [64, 64]  # a full round's tokens, at most
    assert credit.token_units([100, 300], nominal=200) == [64, 64] and credit.token_units([50, 100]) == [64, 64]
    assert credit.token_units([], []) == [] and credit.token_units([0, 0]) == [0, 0]


def pid(name: str) -> str:
    return name.ljust(20, "z")


class Held(NamedTuple):
    roster: Roster
    announcements: tuple[Announcement, ...]


def held(round_no: int, leader: str, units: dict[str, int]) -> Held:
    """A roster of `leader` crediting each peer its units (names stand for peer ids: base58, padded)."""
    leader, units = pid(leader), {pid(p): u for p, u in units.items()}
    anns = tuple(
        Announcement(run="r", round=round_no, peer=p, nbytes=1, sha256="1" * 64, tokens=100, base="b" * 64, time=0.0)
        for p in units
    )
    roster = Roster(
        run="r", round=round_no, leader=leader, prev="0" * 64, base="b" * 64, result="c" * 64, time=0.0,
        entries=({},) * len(anns), credit=tuple(units.values()),
    )  # fmt: skip
    return Held(roster, anns)


def test_establishment_needs_k_rounds_of_credit_from_the_leaders_that_listed_it_up_to_three():
    young = {r: held(r, "org", {"a": 64, "s": 0}) for r in (1, 2)}
    assert credit.established(young, 2) == {pid("a")}  # one leader in the window: the organizer's is enough
    grown = {
        **young,
        3: held(3, "a", {"a": 64, "b": 64}),
        4: held(4, "c", {"a": 64, "b": 64, "c": 64, "s": 0}),
        5: held(5, "b", {"a": 64, "b": 64, "c": 64, "s": 0}),
    }
    # c: credited by both leaders that listed it; s: listed by 2, credited never
    assert credit.established(grown, 2) == {pid("a"), pid("b"), pid("c")}
    two = {r: held(r, ("x", "y", "z")[r % 2], {"b": 64}) for r in (1, 2)} | {3: held(3, "z", {"c": 64, "b": 0})}
    assert pid("b") not in credit.established(two, 2)  # listed by the window's 3 leaders, credited by 2
    # one roster of another leader left v out; the organizer alone leads after it: v's credit is
    # from every leader that listed it (the run would otherwise stay young until that roster leaves the window)
    left_out = {
        1: held(1, "org", {"v": 64, "w": 64}),
        2: held(2, "w", {"w": 64}),
        3: held(3, "org", {"v": 64, "w": 64}),
    }
    assert credit.established(left_out, 2) == {pid("v"), pid("w")}
    half = {r: held(r, "org", {"slow": 32}) for r in range(1, 4)}
    assert not credit.established(half, 2) and credit.established({**half, 4: held(4, "org", {"slow": 32})}, 2)
    none = {1: replace_credit(held(1, "org", {"a": 64}), ())}
    assert credit.weights(none).units == {}  # a roster without credit credits nobody


def replace_credit(h: Held, units: tuple) -> Held:
    return Held(replace(h.roster, credit=units), h.announcements)


def test_credit_on_the_wire_is_one_small_integer_per_entry():
    h = held(1, "org", {"a": 64, "b": 0})
    wire = h.roster.to_wire()
    assert wire["credit"] == [64, 0] and Roster.from_wire(wire).credit == (64, 0)
    assert "credit" not in replace(h.roster, credit=()).to_wire()  # absent: the bytes of a roster before it
    for bad in ([64], [65, 0], [True, 0], [-1, 0], [1.0, 0]):
        with pytest.raises(ProtocolError, match="credit"):
            Roster.from_wire({**wire, "credit": bad})


def test_a_v3_roster_credits_exactly_its_established_authors_token_shares():
    h = held(5, "a", {"a": 64, "b": 64, "s": 64})
    v3 = replace(h.roster, finals=b"\0" * 32)
    with pytest.raises(ProtocolError, match="v3 roster"):
        credit.check(v3, h.announcements, {pid("a"), pid("b")})  # s is new: v3 rounds establish nobody
    credit.check(replace(v3, credit=(64, 64, 0)), h.announcements, {pid("a"), pid("b")})
    credit.check(replace(h.roster, credit=(0, 0, 0)), h.announcements, set())  # a v2 roster's: its appliers'
    with pytest.raises(ProtocolError, match="not sealed and receipted"):  # but only sealed entries (protocol 18)
        credit.check(h.roster, h.announcements, set())


def test_a_reader_takes_credit_that_is_its_own_past_float_rounding_or_nobodys():
    assert credit.wrong([64, 0], [64, 0], [64, 0], ["a", "b"]) is None
    assert credit.wrong([64, 64], [64, 0], [64, 64], ["a", "b"]) is None  # b sits on the threshold
    assert "credits b 64/64, we compute 0/64" in credit.wrong([64, 64], [64, 0], [64, 0], ["a", "b"])
    assert "credits a 0/64, we compute 64/64" in credit.wrong([0, 64], [64, 64], [64, 64], ["a", "b"])  # protocol 17
    assert "of its 2 entries" in credit.wrong([], [64, 0], [64, 0], ["a", "b"])
    assert credit.wrong([0, 0], [64, 0], [64, 0], ["a", "b"]) is None  # nobody's: a synced leader's


def test_a_leader_that_synced_credits_nothing_and_a_member_that_kept_every_round_applies_its_roster():
    """A leader that resynced lacks the rounds before that fresh parts are measured against: it
    credits nothing rather than what members would refuse (in CI the organizer of a young run,
    its only leader, resynced, credited a peer the others did not, and the run stalled for good)."""
    leader, member = applier("leader", io.StringIO(), RUN), applier("member", io.StringIO(), RUN)
    payloads = aligned_updates(member, seed=4, n=3)
    whole = roster_of(leader, payloads, ["Qma", "Qmb", "Qmc"])
    assert whole.roster.credit == (64, 64, 64)
    leader.state.round = 4  # as if synced at round 4: rounds 2-4 are not its own
    assert leader.credit_round(payloads, list(whole.announcements)) == [0, 0, 0]
    synced = AcceptedRoster({}, replace(whole.roster, credit=(0, 0, 0)), whole.announcements)
    assert member.apply_round(synced, payloads) and member.crediting.refused == 0


def test_every_applier_recomputes_a_rosters_credit_and_refuses_one_that_credits_junk():
    """DiLoCo (the default strategy) through the real codec: 3 updates on one direction and a zero
    update. The honest leader credits the 3; a roster crediting the zero update is refused by a
    member, with scoring off (the default) as on. The roster is sealed and receipted (protocol 18)."""
    ids = [new_key() for _ in range(5)]
    peers, keys = [p for _, p in ids[:4]], {p: k for k, p in ids[:4]} | {"leader": ids[4]}
    for robust in (RobustConfig(), RobustConfig(scoring=True)):
        run = replace(RUN, robust=robust)
        leader, member = applier("leader", io.StringIO(), run), applier("member", io.StringIO(), run)
        payloads = aligned_updates(member, seed=3, n=3)
        payloads.append(member.strategy.codec.encode([torch.zeros_like(p) for p in member.state.params]))
        honest = roster_of(leader, payloads, peers, keys=keys)
        assert honest.roster.credit == (64, 64, 64, 0)
        lying = AcceptedRoster({}, replace(honest.roster, credit=(64,) * 4), honest.announcements)
        assert not member.apply_round(lying, payloads)
        assert member.apply_round(honest, payloads) and member.crediting.refused == 1
        assert 1 in member.crediting.kept  # the round's directions: the next rounds' span


def aligned_updates(member, *, seed: int, n: int) -> list[bytes]:
    """`n` encoded updates on one shared direction, each with its own noise (honest peers' shape)."""
    gen = torch.Generator().manual_seed(seed)
    common = [torch.randn(p.shape, generator=gen) for p in member.state.params]
    return [
        member.strategy.codec.encode([0.01 * (c + 0.5 * torch.randn(c.shape, generator=gen)) for c in common])
        for _ in range(n)
    ]
