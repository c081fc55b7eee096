"""Establishment from credited useful work, not appearances (issue 16, design step 4), played over
the fake network: 4 honest peers and 8 paid Sybils (admitted identities that announce in time, so
honest leaders must list them: omission claims) for 40 rounds, the organizer leading the young run.

The Sybils announce what costs nothing: 2 send zeros, 2 small noise, 2 exact copies of an honest
update (announced after it), 2 scaled-down mixes of the previous round's honest updates. Honest
updates are vectors that persist from round to round (cos ~0.9 between rounds, as DiLoCo's
pseudo-gradients do), so a stale mix points where the round goes. Counted by appearances in
rosters (protocol 13), all 8 Sybils were established after the young run's 2 rounds and led 26
of the 40 rounds; by credit (node/outer/useful.py, node/round/trust/credit.py; every applier
recomputes each roster's `credit`), none is and none leads, and the honest peers are."""

from __future__ import annotations

import math

import numpy as np
import torch

from node.round.hooks import Hooks
from node.round.ledger import Ledger
from node.round.trust import credit
from tests.test_young_run import YOUNG, YoungSwarm

DIM = 4096  # coordinates of a stand-in update
PERSIST = 0.9  # cosine between one round's common direction and the next's
SPREAD = 0.7  # each honest peer's own part (its data), against the common direction's 1
ROUNDS = 40


def vector(x: np.ndarray) -> bytes:
    return x.astype(np.float32).tobytes()


class Toy:
    """A stand-in strategy: an update is DIM float32s, its direction itself."""

    def direction(self, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        return [torch.from_numpy(np.frombuffer(payload, dtype=np.float32).copy()) / weight]


class Work:
    """The run's training, as the updates show it: a common direction that persists, each
    honest peer's update that direction plus its own part."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.common = self.unit()

    def unit(self) -> np.ndarray:
        x = self.rng.standard_normal(DIM)
        return x / np.linalg.norm(x)

    def next_round(self) -> None:
        self.common = PERSIST * self.common + math.sqrt(1 - PERSIST**2) * self.unit()

    def honest(self) -> np.ndarray:
        return 0.01 * (self.common + SPREAD * self.unit())


def sybil_payloads(work: Work, honest: list[bytes], previous: list[bytes]) -> list[bytes]:
    """What the 8 Sybils send this round, in order: zeros, noise, copies, stale mixes."""
    zeros = [vector(np.zeros(DIM))] * 2
    noise = [vector(0.001 * work.rng.standard_normal(DIM) / math.sqrt(DIM)) for _ in range(2)]
    copies = honest[:2]
    old = [np.frombuffer(p, dtype=np.float32) for p in previous or honest]
    mixes = []
    for _ in range(2):
        w = work.rng.random(len(old))
        mixes.append(vector(0.5 * sum(wi / w.sum() * x for wi, x in zip(w, old))))
    return zeros + noise + copies + mixes


def play_credited(s: YoungSwarm, work: Work, previous: list[bytes], judges: dict) -> list[bytes]:
    """One round: honest peers announce, then (a second later, as a copier must) the Sybils; the
    organizer or an established honest peer leads; everyone takes the roster and applies it."""
    s.beat()
    honest = [vector(work.honest()) for _ in s.honest]
    for p, payload in zip(s.honest, honest):
        p.announce(payload)
    s.dht.clock.t += 2  # the copies are announced after what they copy (signed times)
    for p, payload in zip(s.sybils, sybil_payloads(work, honest, previous)):
        p.announce(payload)
    r = s.honest[0].round + 1
    taken = s.take(r)
    for p in [s.organizer, *s.volunteers]:
        payloads = p.proto.gather(taken[p.id])
        judges[p.id].apply(taken[p.id], payloads, p.ledger)
        p.finish(taken[p.id], payloads)
    work.next_round()
    return honest


class Judge:
    """One peer's crediting as node/peer/applier.py does it (Crediting), over the stand-in updates:
    the hook it leads with, and its check and memory of each roster it applies."""

    def __init__(self, peer):
        from node.peer.applier import Crediting

        self.peer, self.crediting, self.refused = peer, Crediting(Toy(), nominal=100), []

    def hook(self, payloads: list[bytes], anns: list) -> list[int]:
        p = self.peer
        return self.crediting.assess(p.round + 1, [], payloads, anns, p.ledger.rosters).units

    def apply(self, accepted, payloads: list[bytes], ledger: Ledger) -> None:
        anns = list(accepted.announcements)
        assessed = self.crediting.assess(accepted.roster.round, [], payloads, anns, ledger.rosters)
        wrong = self.crediting.check(accepted, assessed) if accepted.roster.leader != self.peer.id else None
        if wrong is not None:
            self.refused.append(wrong)
        self.crediting.remember(accepted.roster.round, accepted.roster.result, assessed.dirs)


def credited_swarm() -> tuple[YoungSwarm, dict[str, Judge]]:
    """YoungSwarm's organizer, with 4 honest volunteers and 8 Sybils; each peer's hooks credit
    entries as node/peer/applier.py does, and each peer checks the rosters it applies."""
    s = YoungSwarm()
    s.honest += [s.member(YOUNG, s.organizer.id) for _ in range(2)]
    s.sybils += [s.member(YOUNG, s.organizer.id) for _ in range(4)]
    judges = {}
    for p in [s.organizer, *s.volunteers]:
        judge = judges[p.id] = Judge(p)
        p.proto.hooks = Hooks(validate=lambda x: None, result=p.result, credit=judge.hook)
        p.proto.builder.hooks = p.proto.hooks
    return s, judges


def test_sybils_that_do_no_useful_work_are_never_established_and_never_lead():
    s, judges = credited_swarm()
    work, previous, leaders = Work(), [], []
    for _ in range(ROUNDS):
        previous = play_credited(s, work, previous, judges)
        leaders.append(s.honest[0].ledger.rosters[s.honest[0].round].roster.leader)
    honest, sybils = {p.id for p in s.honest}, {p.id for p in s.sybils}
    for p in [s.organizer, *s.honest]:
        established = p.ledger.established(YOUNG.established_rounds)
        assert honest <= established, f"{len(honest - established)} honest peers are not established"
        assert not sybils & established, f"{len(sybils & established)} of 8 Sybils are established"
    assert not sybils & set(leaders) and leaders[:2] == [s.organizer.id] * 2  # the young run: 2 rounds
    weight = credit.weights(s.honest[0].ledger.rosters).units
    assert sum(weight[p] for p in sybils) < sum(weight.values()) / 3
    assert sum(weight[p] for p in sybils) <= 2 * credit.UNITS  # round 1's mixes: of that round's updates
    assert all(weight[p] == ROUNDS * credit.UNITS for p in honest)  # every honest update, every round
    assert all(not j.refused for j in judges.values())  # every applier agreed with every roster's credit
