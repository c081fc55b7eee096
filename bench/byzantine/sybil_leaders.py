"""`bench byzantine --sybil`'s leadership rows: silent Sybils that hold the first ranks (stall),
and Sybil leaders that write WORST scores for an honest peer (framing by scores).

Both follow who leads over many rounds with the node's own election (node/round/election.py):
beacon(1) from the run id, each round's ranking per attempt, and beacon(r + 1) from the real
unique reveal (PKCS#1 v1.5) of the peer that led r. In attempt a, ranks 0-2 may lead, each after
the better ranks had their turn: the leader is the best-ranked of them that does lead. Playing
every round through RoundProtocol gives the same leader (the worst-case round of the stall row
is played so, as a check), at a hundred times the cost.

The stall rows rank with one ticket per identity (the rule before protocol 16, and the rule of a
run whose peers nobody credited yet), so their outcome follows the attacker's share of identities;
bench/byzantine/sybil_credit.py plays the same stall with the window's tickets, at credit shares.
The framing rows run both rules over a credit window (sybilnet.credit_window).
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import random
from dataclasses import replace

from bench.byzantine.sybilnet import BASE0, FAST, NoSleep, Peer, Swarm, credit_window
from node.config import RobustConfig, SwarmConfig
from node.outer.scoring import banned
from node.round import election
from node.round.ledger import WINDOW, Ledger, ScoredRound
from node.round.trust import credit, marks
from protocol import signing

SILENT = 10
"""Silent Sybil candidates in the stall rows (design step 3's test: ranks 0-9)."""
DEFAULTS = SwarmConfig()
"""Timings of a default run: attempt length and round_timeout say when a peer gives a round up."""


def worst_case_run(silent: set[str], everyone: set[str]) -> tuple[str, int]:
    """(run id, p): a run id whose beacon(1) ranks p of the silent Sybils first in attempt 0, the
    attacker's best luck, searched for as tests/test_beacon.py does. p is all of them (ranks 0-9)
    where that takes under SEARCH ids on average (C(n, p) / C(10, p)), else as many as does."""
    p = max(q for q in range(election.ATTEMPT_RANKS, len(silent) + 1) if _odds(len(everyone), len(silent), q) <= SEARCH)
    for i in itertools.count():
        run = f"sybil-stall-{i}"
        if set(election.ranking(election.first_beacon(run), 0, everyone)[:p]) <= silent:
            return run, p
    raise AssertionError("unreachable")


def _odds(n: int, k: int, p: int) -> float:
    """Run ids tried, on average, until p of k given peers of n rank first."""
    return math.comb(n, p) / math.comb(k, p)


SEARCH = 20_000
"""Run ids the worst-case search may try on average (a few seconds here)."""


def elect(
    beacon: str, everyone: set[str], silent: set[str], marked: set[str] = frozenset(), order=election.ranking
) -> tuple[int, str]:
    """(attempt, leader): the first attempt whose ranks 0..ATTEMPT_RANKS-1 hold a peer that leads
    (`marked`: skip-marked peers, ranked after the rest, node/round/trust/marks.py; `order`: the
    ranking rule, election.ranking or `reshuffled`, the rule before step 8)."""
    for attempt in itertools.count():
        firsts = order(beacon, attempt, everyone, marked)[: election.ATTEMPT_RANKS]
        leader = next((p for p in firsts if p not in silent), None)
        if leader is not None:
            return attempt, leader
    raise AssertionError("unreachable")


def reshuffled(beacon: str, attempt: int, peers: set[str], marked: set[str] = frozenset()) -> list[str]:
    """The ranking before step 8: each attempt a plain reshuffle by rank key (no marks, and the
    first ranks of earlier attempts are drawn again like any other)."""
    return sorted(peers, key=lambda p: election.rank_key(beacon, attempt, p))


def skipped(
    beacon: str, attempt: int, leader: str, everyone: set[str], marked: set[str], tickets=election.NO_TICKETS
) -> tuple[str, ...]:
    """The leader's `skip` list, as RoundProtocol._lead writes it (`tickets`: the window's)."""
    slot = election.slot_of(beacon, attempt, everyone, leader, marked, tickets)
    return marks.passed_over(beacon, slot, everyone, leader, marked, tickets)


def stall(pool, honest_n: int, rounds: int, step8: bool = True) -> dict:
    """10 silent, established Sybils beside `honest_n` honest peers. Round 1 is ranked under a
    beacon searched so that they hold ranks 0-9 of attempt 0 (or as many first ranks as a search
    finds), and played through the real
    RoundProtocol; then `rounds` rounds follow the beacon chain, each leader's `skip` list ranking
    the silent peers it passed over last once they hold MARKS_TO_DROP marks in MARK_WINDOW rounds,
    and each attempt ranking the first ranks of earlier ones last (`step8` False: the rule before,
    a plain reshuffle per attempt and no marks). Counted: attempts per round, the longest
    run of failed attempts, rounds whose roster came after a default round_timeout."""
    keys = pool.take(honest_n + SILENT)
    by_id = {signing.peer_id_of(signing.public_der(k)): k for k, _ in keys}
    honest_ids = {pid for _, pid in keys[:honest_n]}
    silent = {pid for _, pid in keys[honest_n:]}
    everyone = honest_ids | silent
    run, ranked_first = worst_case_run(silent, everyone)
    first = _played_first_round(run, keys, honest_n)
    beacon, attempts, lists = election.first_beacon(run), [], collections.deque(maxlen=marks.MARK_WINDOW)
    for r in range(1, rounds + 1):
        counts = collections.Counter(p for skip in lists for p in skip)
        marked = {p for p, n in counts.items() if n >= marks.MARKS_TO_DROP}
        if step8:
            attempt, leader = elect(beacon, everyone, silent, marked)
            lists.append(skipped(beacon, attempt, leader, everyone, marked))
        else:
            attempt, leader = elect(beacon, everyone, silent, order=reshuffled)
        attempts.append(attempt + 1)
        beacon = election.next_beacon(beacon, signing.sign_unique(by_id[leader], election.reveal_message(run, r)))
    longest = max(attempts) - 1  # a round's failed attempts in a row; its roster ends the run
    fit = int(DEFAULTS.round_timeout // election.attempt_seconds(DEFAULTS))  # attempts within round_timeout
    late = [a > fit for a in attempts]
    late_run = max((len(list(g)) for k, g in itertools.groupby(late) if k), default=0)
    return {
        "row": "stall",
        "case": f"{SILENT} silent Sybils, {honest_n} honest, {rounds} rounds, {'step 8' if step8 else 'before step 8'}",
        "step8": step8,
        "sybils": SILENT,
        "honest": honest_n,
        "identity_share": round(SILENT / len(everyone), 3),
        "established_share": round(SILENT / len(everyone), 3),
        "credit_share": None,  # one ticket per key: credit plays no part (sybil_credit.py: at credit shares)
        "rule": "one ticket",
        "worst_round_sybil_first_ranks": ranked_first,
        "worst_round_attempts": first["attempts"],
        "worst_round_fake_seconds": first["seconds"],
        "worst_round_same_roster": first["same_roster"],
        "rounds": rounds,
        "mean_attempts": round(sum(attempts) / rounds, 3),
        "max_attempts": max(attempts),
        "rounds_with_a_failed_attempt": sum(a > 1 for a in attempts),
        "most_failed_attempts_in_a_row": longest,
        "rounds_past_round_timeout": sum(late),
        "most_rounds_past_round_timeout_in_a_row": late_run,
        "target": "<= 3 failed attempts in a row",
        "met": longest <= 3 and first["same_roster"],
    }


def _played_first_round(run: str, keys: list, honest_n: int) -> dict:
    """The worst-case round through the real protocol: Sybils beat but never announce nor lead."""
    cfg = replace(FAST, round_timeout=10 * election.attempt_seconds(FAST))  # measure attempts, do not give up
    swarm = Swarm(run=run, cfg=cfg)
    peers = [Peer(swarm, key) for key in keys]
    honest, silent = peers[:honest_n], peers[honest_n:]
    swarm.dht.clock.t += 2
    for p in peers:
        p.heartbeat()
    for p in honest:
        p.announce(f"update {p.id}".encode())
    _, leader = elect(election.first_beacon(run), {p.id for p in peers}, {p.id for p in silent})
    order = sorted(honest, key=lambda p: p.id != leader)  # the leader first; the others then read its roster
    start = swarm.dht.clock()
    taken = [p.proto.await_roster(1, BASE0, 0, NoSleep()) for p in order]
    ok = all(a is not None for a in taken) and len({a.hash for a in taken}) == 1
    return {
        "attempts": taken[0].roster.attempt + 1 if taken[0] is not None else None,
        "seconds": round(order[0].net.monotonic() - start, 1),
        "same_roster": ok and taken[0].roster.leader == leader,
    }


def framing_by_scores(pool, sybils: int, honest_n: int, rounds: int, rule: str = "tickets", seed: int = 0) -> dict:
    """`sybils` established Sybils lead when the election picks them and then score one honest
    victim WORST (scores must name exactly the roster's entries, so they list it); honest
    leaders score everyone honestly (evenly spread scores that flag nobody: honest false flags,
    which would only help the attacker, are left out). Every honest peer recomputes the scores
    of a roster it applies and refuses a lying one, so the round is led again by the next
    attempt's first honest rank. A ban needs ban_after flags within score_window rounds from
    distinct_leaders different leaders (node/outer/scoring.py: banned). Counted: lying rosters
    refused, honest peers ever banned, and the round of the first ban. Ranks follow `rule`: the
    tickets of a window crediting each honest peer all its rosters and each Sybil as many (2 to
    WINDOW, in a row) as keep the crowd's credit under 30% (sybil_credit.py), or one ticket per
    key (the rule before protocol 16)."""
    keys = pool.take(honest_n + sybils)
    by_id = {pid: k for k, pid in keys}
    crowd = {pid for _, pid in keys[honest_n:]}  # each of its rosters scores an honest victim WORST: refused
    everyone = set(by_id)
    cfg, rng = RobustConfig(scoring=True), random.Random(seed)
    run = f"sybil-framing-{sybils}-{honest_n}"
    most = max(2, min(WINDOW, int(0.3 * WINDOW * honest_n / (0.7 * sybils))))  # rounds: share <= 30%
    window = Ledger(rosters=credit_window([pid for _, pid in keys[:honest_n]], sorted(crowd), most, run))
    units = credit.weights(window.rosters).units
    tickets = window.tickets(WINDOW + 1, 2) if rule == "tickets" else election.NO_TICKETS
    order = functools.partial(election.ranking, tickets=tickets)
    beacon, history, led, lies, ever, first_ban = election.first_beacon(run), [], 0, 0, set(), None
    for r in range(1, rounds + 1):
        _, leader = elect(beacon, everyone, set(), order=order)
        spread = rng.sample(range(len(everyone)), len(everyone))  # honest scores, evenly spread: nobody flagged
        scores = {p: -0.05 + 0.002 * i for p, i in zip(sorted(everyone), spread)}
        if leader in crowd:  # it scores the victim WORST; every honest peer recomputes the scores it
            led += 1  # applies (node/peer/applier.py: wrong_score), refuses the roster and redoes the
            lies += 1  # round, which the next attempt's first honest rank leads
            leader = next(p for p in order(beacon, 1, everyone) if p not in crowd)
        history.append(ScoredRound(r, leader, scores))
        now = banned(history[-cfg.score_window :], cfg) - crowd
        if now and first_ban is None:
            first_ban = r
        ever |= now
        beacon = election.next_beacon(beacon, signing.sign_unique(by_id[leader], election.reveal_message(run, r)))
    return {
        "row": "framing",
        "case": f"{sybils} Sybil leaders score a victim WORST, {honest_n} honest, {rule}",
        "rule": rule,
        "sybils": sybils,
        "honest": honest_n,
        "identity_share": round(sybils / len(everyone), 3),
        "established_share": round(sybils / len(everyone), 3),
        "credit_share": round(sum(units[p] for p in crowd) / sum(units.values()), 3),
        "rounds": rounds,
        "rounds_led_by_sybils": led,
        "lying_rosters_refused": lies,
        "honest_banned": len(ever),
        "first_ban_round": first_ban,
        "ban_rule": f"{cfg.ban_after} flags in {cfg.score_window} rounds from {cfg.distinct_leaders} leaders",
        "target": "0 honest banned",
        "met": not ever,
    }
