"""The audit's chain walk: rosters from the run's genesis, each checked as a peer holding the whole
chain checked it (`ChainCheck`), read from a file or, forward from round 1, from the DHT
(`chain_in_dht`). node/commands/audit.py makes the report.
"""

from __future__ import annotations

from typing import NamedTuple

import msgpack

from node.outer import scoring
from node.peer.manifest import Anchor
from node.round.accepted import AcceptedRoster, siblings
from node.round.ledger import WINDOW, Ledger
from node.round.trust import chain, credit
from protocol import keys, signed
from protocol.errors import ProtocolError
from protocol.records import GENESIS

MAX_LIVE_ROUNDS = 4096  # a live walk ends where no roster links; rosters leave the DHT after minutes anyway
MAX_CHECKED_PER_ROUND = 4  # linking rosters of one round whose signatures a live walk checks, best rank first


class Examined(NamedTuple):
    accepted: AcceptedRoster | None
    """None: the roster's signatures or fields do not verify."""
    problems: list[str]
    swap: bool
    """A sibling of the chain's last roster (node.round.ledger.Ledger.swap), not a new round."""


class ChainCheck:
    """Rosters from the genesis, checked as a peer holding the whole chain checked them."""

    def __init__(self, anchor: Anchor):
        self.anchor = anchor
        self.chain: list[AcceptedRoster] = []
        self.epoch_rounds = anchor.run.swarm.identity_epoch_rounds
        self.seeds: dict[int, str] = {}  # round -> beacon of the chain's epoch-starting rosters, kept as they come
        self.young: set[int] = set()  # rounds before anybody was established: any live peer could lead

    def link(self) -> tuple[int, str, str]:
        """(round, prev, base) the next roster must name."""
        if not self.chain:
            return 1, GENESIS, self.anchor.base
        last = self.chain[-1]
        return last.roster.round + 1, last.hash, last.roster.result

    def examine(self, env: object) -> Examined:
        try:
            roster, anns = signed.open_roster(env, max_bytes=self.anchor.max_bytes)
        except ProtocolError as e:
            return Examined(None, [f"a roster does not verify: {e}"], False)
        this = AcceptedRoster(env, roster, tuple(anns))
        if self.chain and roster.round == self.chain[-1].roster.round and siblings(self.chain[-1], this):
            return Examined(this, self._rules(this, len(self.chain) - 1), True)
        r, (want, prev, base) = roster.round, self.link()
        problems = [f"round {r}: a roster of run {roster.run[:40]!r}"] if roster.run != self.anchor.run_id else []
        if r != want:
            gap = f"rosters of rounds {want}-{r - 1} are missing" if r > want else "out of order"
            problems.append(f"round {r} follows round {want - 1}: {gap}")
        elif roster.prev != prev:
            what = "the genesis marker (000...)" if r == 1 else f"the hash of round {r - 1}'s roster ({prev[:12]})"
            problems.append(f"round {r}: names prev {roster.prev[:12]}, not {what}")
        elif roster.base != base:
            what = "the run's round-0 state, built from its manifest," if r == 1 else f"round {r - 1} ended at"
            problems.append(f"round {r}: starts from state {roster.base[:12]}; {what} {base[:12]}")
        return Examined(this, problems + self._rules(this, len(self.chain)), False)

    def _rules(self, this: AcceptedRoster, before: int) -> list[str]:
        """The roster checks of node/round/protocol.py that the chain alone can decide, given the
        chain's first `before` rosters."""
        r, leader, e = this.roster.round, this.roster.leader, self.epoch_rounds
        # what a peer's Ledger held when it checked this roster, asked what the peer asked: the last
        # WINDOW rosters (a chain that links holds one a round) and the seeds of the epochs before
        held = self.chain[max(0, before - WINDOW) : before]
        rosters = {a.roster.round: a for a in held if r - WINDOW <= a.roster.round < r}
        starts = range(max(e, (r - 2 * e + e - 1) // e * e), r, e)  # the epoch-starting rounds in [r - 2e, r)
        seeds = {k: self.seeds[k] for k in starts if k in self.seeds}  # read by none below: no proof is audited
        window = Ledger(rosters=rosters, epoch_rounds=e, seeds=seeds)
        rules = chain.ChainRules(
            run_id=self.anchor.run_id,
            established_rounds=self.anchor.run.swarm.established_rounds,
            max_bytes=self.anchor.max_bytes,
            organizer=self.anchor.organizer,
            bootstrap_peers=self.anchor.run.swarm.bootstrap_peers,
        )
        problems, need, established = [], rules.established_rounds, window.established(rules.established_rounds)
        try:  # a v3 roster's credit is the chain's to decide (a v2 roster's, its appliers checked)
            credit.check(this.roster, this.announcements, established)
        except ProtocolError as e:
            problems.append(f"round {r}: {e}")
        young = chain.young(window, rules)  # led by the organizer alone, which the chain shows
        if not young and not established:
            self.young.add(r)  # bootstrap_peers = 0: nobody established yet, anyone live could lead
        problem = chain.leader_problem(leader, window, rules)  # the rule every peer checks a chain by
        if problem and young:
            problems.append(f"round {r}: {problem}")
        elif problem:
            problems.append(
                f"round {r}: leader {leader[:16]} was not established ({need} rounds' credit from "
                f"up to {credit.LEADERS} of the leaders that listed it in the {len(window.rosters)} rosters before) "
                f"while {len(established)} "
                "peers were: the rules allow that only when none of them was live"
            )
        stray = [a.peer for a in this.announcements if a.base != this.roster.base]
        if stray:
            problems.append(f"round {r}: lists an update of {stray[0][:16]} made for another state")
        banned = scoring.banned(window.score_history(), self.anchor.run.robust)
        listed = sorted(banned & {a.peer for a in this.announcements})
        if listed:
            problems.append(f"round {r}: lists {listed[0][:16]}, banned by the scores of the rosters before")
        return problems

    def add(self, examined: Examined) -> None:
        self.put(examined.accepted, last=examined.swap)

    def put(self, accepted: AcceptedRoster, *, last: bool = False) -> None:
        """Append `accepted` to the chain, or (`last`) put it in place of the chain's last roster (a
        sibling, or another roster of that round that the next one follows); keep its seed."""
        if last:
            self.chain[-1] = accepted
        else:
            self.chain.append(accepted)
        if accepted.roster.round % self.epoch_rounds == 0:  # one dict entry per epoch, not a map per roster
            self.seeds[accepted.roster.round] = accepted.roster.beacon


def _names(env: object) -> tuple[str, str]:
    """A roster's (prev, base), read without checking anything: the cheap filter before signatures."""
    body = env.get("body") if isinstance(env, dict) else None
    if not isinstance(body, bytes) or len(body) > signed.MAX_BODY["roster"]:
        return "", ""
    try:
        d = msgpack.unpackb(body, raw=False)
        return (d["prev"], d["base"]) if isinstance(d["prev"], str) and isinstance(d["base"], str) else ("", "")
    except Exception:  # garbage: msgpack raises several types, and d may be anything
        return "", ""


def chain_in_dht(swarm, anchor: Anchor) -> tuple[list[dict], tuple[str, ...]]:
    """The rosters in the DHT from round 1 forward: per round those that pass the chain's rules
    after one that passed in the round before; where several pass, the one the next round follows."""
    check, follows, forks = ChainCheck(anchor), {GENESIS: None}, []
    for r in range(1, MAX_LIVE_ROUNDS + 1):
        passed: dict[str, AcceptedRoster] = {}
        stored = swarm.get_subkeys(keys.roster_key(anchor.run_id, r))
        links = {(h, a.roster.result if a else anchor.base) for h, a in follows.items()}  # (prev, base) to name
        linking = [(str(k), v, n[0]) for k, v in stored.items() if (n := _names(v)) in links]
        for leader, env, prev in sorted(linking, key=lambda x: x[0])[:MAX_CHECKED_PER_ROUND]:
            if follows[prev] is not None:
                check.put(follows[prev], last=True)  # the roster of round r - 1 that this one follows
            examined = check.examine(env)
            if examined.accepted and examined.accepted.roster.leader == leader and not examined.problems:
                passed[examined.accepted.hash] = examined.accepted
        if not passed:
            break
        first = next(iter(passed.values()))
        if any(not siblings(first, other) for other in passed.values()):
            forks.append(r)
        if follows.get(first.roster.prev) is not None:
            check.put(follows[first.roster.prev], last=True)
        check.put(first)
        follows = passed
    notes = [f"rounds {forks}: several rosters pass the rules (a fork); the audit follows one"] if forks else []
    return [a.envelope for a in check.chain], tuple(notes)
