"""`bench byzantine --sybil`'s rows at shares of verified contribution (issue 16, protocol 16):
power follows credit, so the issue's target ("with less than a third of the verified
contribution...") is judged at the attacker's share of the credit the chain holds.

Each row builds one window of WINDOW rosters (node/round/ledger.py) as the chain would hold it:
HONEST peers lead in turn and are credited a full round in every roster; each Sybil key is
credited a full round in `rounds` rosters of it, in a row, so by 2 or 3 leaders (established,
credit.established). The attacker's credit share is its keys' credit in that window over
everyone's (credit.weights). The rules are the node's own: tickets from Ledger.tickets, ranks
from election.ranking, skip lists from marks.passed_over, voters from chain.voters, quorums
from votes.carried and fork choice from chain.prefer; each row is played twice, "one ticket"
(every established key counts 1: the rule before protocol 16) and "tickets" (today's).
The window stays as built for the row's rounds: what the crowd's leading would earn it is what
honest peers verify its updates worth, which the row's credit already is.

  leaders   a crowd that leads when ranked first: its share of rounds (target: at most its credit
            share, within 3 standard errors of the rounds drawn), its longest run of rounds
  stall     10 silent, established, credited Sybils: failed attempts and late rounds (past a
            default round_timeout) in a row (target: 3 at most)
  capture   the crowd holds a head of its own: does its quorum carry it (a joiner or member
            extends to it), does fork choice move an honest member to it?
"""

from __future__ import annotations

import collections
import functools
import itertools
import math

from bench.byzantine.sybil_leaders import DEFAULTS, SILENT, elect, skipped
from bench.byzantine.sybilnet import credit_window
from node.round import election
from node.round.accepted import AcceptedRoster
from node.round.ledger import WINDOW, Ledger
from node.round.trust import chain, credit, marks, votes
from protocol import signed, signing
from protocol.records import Announcement, Roster

HONEST = 4
"""Honest peers, credited a full round in every roster of the window."""
K = 2
"""[swarm] established_rounds of these rows (the bench swarm's, sybilnet.FAST)."""
RULES = ("one ticket", "tickets")


class Setting:
    """One row's identities, window, credit share and (per rule) tickets."""

    def __init__(self, pool, sybils: int, rounds: int, run: str):
        keys = pool.take(HONEST + sybils)
        self.run, self.by_id = run, {pid: k for k, pid in keys}
        self.honest = [pid for _, pid in keys[:HONEST]]
        self.sybils = [pid for _, pid in keys[HONEST:]]
        self.window = Ledger(rosters=credit_window(self.honest, self.sybils, rounds, run))
        units = credit.weights(self.window.rosters).units
        self.credit_share = round(sum(units[s] for s in self.sybils) / sum(units.values()), 3)
        self.established = self.window.established(K)
        self.figures = {
            "sybils": sybils,
            "honest": HONEST,
            "credited_rounds_per_sybil": rounds,
            "sybils_established": len(self.established & set(self.sybils)),
            "identity_share": round(sybils / (sybils + HONEST), 3),
            "established_share": round(len(self.established & set(self.sybils)) / len(self.established), 3),
            "credit_share": self.credit_share,
        }

    def tickets(self, rule: str) -> dict[str, int]:
        """Peer -> its tickets under `rule`: today's (Ledger.tickets after the window), or 1 each."""
        if rule == "one ticket":
            return {p: 1 for p in self.established}
        return self.window.tickets(WINDOW + 1, K)

    def reveal(self, leader: str, r: int) -> bytes:
        return signing.sign_unique(self.by_id[leader], election.reveal_message(self.run, r))


def _row(name: str, case: str, setting: Setting, rule: str, **figures) -> dict:
    return {"row": name, "case": f"{case}, {rule}", "rule": rule, **setting.figures, **figures}


def _longest(flags: list[bool]) -> int:
    return max((len(list(g)) for k, g in itertools.groupby(flags) if k), default=0)


# ------------------------------------------------------------------------------------ leaders
def leaders(pool, sybils: int, rounds: int, n_rounds: int, rule: str) -> dict:
    """The crowd leads every round its key ranks first in attempt 0 (and publishes: a crowd that
    withholds is the stall row); beacon(r + 1) from the real reveal of round r's leader."""
    s = Setting(pool, sybils, rounds, f"sybil-leaders-{sybils}-{rounds}")
    tickets, everyone, crowd = s.tickets(rule), set(s.established), set(s.sybils)
    beacon, led = election.first_beacon(s.run), []
    for r in range(1, n_rounds + 1):
        leader = election.ranking(beacon, 0, everyone, tickets=tickets)[0]
        led.append(leader in crowd)
        beacon = election.next_beacon(beacon, s.reveal(leader, r))
    share = round(sum(led) / n_rounds, 3)
    c = s.credit_share
    bound = round(c + 3 * math.sqrt(c * (1 - c) / n_rounds), 3)  # 3 standard errors of n_rounds draws
    return _row(
        "leaders",
        f"{sybils} Sybil keys x {rounds} credited rounds, {HONEST} honest x {WINDOW}",
        s,
        rule,
        rounds=n_rounds,
        expected_share=round(sum(tickets[p] for p in crowd) / sum(tickets.values()), 3),
        sybil_led_share=share,
        most_sybil_led_in_a_row=_longest(led),
        bound=bound,
        target="leads at most its credit share (+ 3 standard errors)",
        met=share <= bound,
    )


# -------------------------------------------------------------------------------------- stall
def stall(pool, rounds: int, n_rounds: int, rule: str, tries: int) -> dict:
    """SILENT established, credited Sybils that never lead beside HONEST peers. Round 1 is ranked
    under the run id (of `tries`) whose beacon(1) puts the most of them first under `rule`'s
    tickets (the attacker's best luck); then `n_rounds` rounds follow the beacon chain with design
    step 8 (skip marks with the window's tickets, earlier attempts' first ranks ranked last)."""
    s = Setting(pool, SILENT, rounds, f"sybil-credit-stall-{rounds}")
    tickets, everyone, silent = s.tickets(rule), set(s.established), set(s.sybils)
    order = functools.partial(election.ranking, tickets=tickets)

    def silent_first(run: str) -> int:
        ranks = order(election.first_beacon(run), 0, everyone)
        return next(i for i, p in enumerate(ranks) if p not in silent)

    s.run = max((f"{s.run}-{i}" for i in range(tries)), key=silent_first)
    beacon, attempts, lists = election.first_beacon(s.run), [], collections.deque(maxlen=marks.MARK_WINDOW)
    for r in range(1, n_rounds + 1):
        counts = collections.Counter(p for skip in lists for p in skip)
        marked = {p for p, n in counts.items() if n >= marks.MARKS_TO_DROP}
        attempt, leader = elect(beacon, everyone, silent, marked, order=order)
        lists.append(skipped(beacon, attempt, leader, everyone, marked, tickets))
        attempts.append(attempt + 1)
        beacon = election.next_beacon(beacon, s.reveal(leader, r))
    fit = int(DEFAULTS.round_timeout // election.attempt_seconds(DEFAULTS))  # attempts within round_timeout
    late = [a > fit for a in attempts]
    failed = max(attempts) - 1  # a round's failed attempts in a row; its roster ends the run
    return _row(
        "stall",
        f"{SILENT} silent Sybils x {rounds} credited rounds, {HONEST} honest x {WINDOW}",
        s,
        rule,
        rounds=n_rounds,
        first_round_sybil_first_ranks=silent_first(s.run),
        mean_attempts=round(sum(attempts) / n_rounds, 3),
        rounds_with_a_failed_attempt=sum(a > 1 for a in attempts),
        most_failed_attempts_in_a_row=failed,
        rounds_past_round_timeout=sum(late),
        most_rounds_past_round_timeout_in_a_row=_longest(late),
        target="<= 3 failed attempts, <= 3 late rounds in a row",
        met=failed <= 3 and _longest(late) <= 3,
    )


# ------------------------------------------------------------------------------------ capture
def capture(pool, sybils: int, rounds: int, rule: str) -> dict:
    """After the window, the honest peers hold the head of their roster of round WINDOW + 1 and
    the crowd the head of its own (led by a Sybil, listing its keys). A peer extending its chain
    (a joiner, a member that missed the round: Catchup.acceptable) takes a head whose holders
    votes.carried among chain.voters; a member on the honest branch moves to the crowd's when
    chain.prefer says so (and one on the crowd's to the honest branch)."""
    s = Setting(pool, sybils, rounds, f"sybil-credit-capture-{sybils}-{rounds}")
    votes_of = chain.voters(s.window, K, live=set(s.established))
    if rule == "one ticket":
        votes_of = dict.fromkeys(votes_of, 1)
    honest, crowd = set(s.honest), set(s.sybils)
    ours, theirs = [_head(s, s.honest)], [_head(s, s.sybils)]
    sybil_carried = votes.carried(crowd & set(votes_of), votes_of)
    honest_carried = votes.carried(honest & set(votes_of), votes_of)
    moves = chain.prefer(ours, theirs, votes_of, (honest, crowd))
    back = chain.prefer(theirs, ours, votes_of, (crowd, honest))
    return _row(
        "capture",
        f"{sybils} Sybil keys x {rounds} credited rounds hold their own head",
        s,
        rule,
        sybil_votes=sum(votes_of.get(p, 0) for p in crowd),
        honest_votes=sum(votes_of.get(p, 0) for p in honest),
        sybil_head_carried=sybil_carried,
        honest_head_carried=honest_carried,
        fork_choice_moves_to_sybil_head=moves,
        fork_choice_moves_to_honest_head=back,
        adopted_non_honest=int(sybil_carried) + int(moves),
        target="nobody adopts the Sybil head; the honest head is carried",
        met=not sybil_carried and not moves and honest_carried and back,
    )


def _head(s: Setting, peers: list[str]) -> AcceptedRoster:
    """A signed roster of round WINDOW + 1 after the window, led by peers[0], listing `peers`."""
    r, last = WINDOW + 1, s.window.rosters[WINDOW]
    anns = tuple(
        Announcement(
            run=s.run, round=r, peer=p, nbytes=64, sha256="1" * 64, tokens=100, base=last.roster.result, time=0.0
        )
        for p in peers
    )
    result = "f" * 64 if peers == s.sybils else "e" * 64
    roster = Roster(
        run=s.run,
        round=r,
        leader=peers[0],
        prev="0" * 64,
        base=last.roster.result,
        result=result,
        time=0.0,
        entries=({},) * len(anns),
    )
    return AcceptedRoster(signed.seal(s.by_id[peers[0]], roster), roster, anns)
