"""Catching up with the swarm through the verified chain (chain.py), never through heartbeats alone.

A peer that joins, missed a round, or sees established peers on another state asks a peer that
holds that head for the rosters leading to it (the `ledger` RPC), finds where they meet its own
ledger (the genesis for a joiner), verifies them link by link, and moves only when
  * they extend its chain and a quorum of the peers established on that chain holds the head
    (votes.needed), or
  * they fork from its chain and chain.prefer chooses their branch.
Heads that no established peer holds are asked last (a joiner knows nobody yet and asks every
head, most holders first), and at most MOST_DONORS donors are asked per look, so a crowd of
lying hints costs a bounded number of requests; heads and donors that failed are not asked again.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import msgpack

from node.round import chain, votes
from node.round.chain import ChainRules, Link
from node.round.ledger import WINDOW, AcceptedRoster, Ledger
from node.round.net import RoundNet
from protocol.errors import ProtocolError
from protocol.messages import Request
from protocol.records import GENESIS, Heartbeat

log = logging.getLogger("swarmtrain.sync")
LEDGER_TIMEOUT = 10.0  # seconds for one `ledger` answer (up to 4 MiB of rosters)
MOST_DONORS = 6  # donors asked in one look for a better head
FORGET_FAILED = 256  # heads and donors remembered as failed or passed over


class Head(NamedTuple):
    """A state of the run as a chain head: the round it ends and the digest of its result."""

    round: int
    digest: str


class Target(NamedTuple):
    """A head worth moving to, with the verified rosters that lead there from our ledger."""

    head: Head
    ancestor: int
    """Our ledger's round the rosters follow (0: the genesis)."""
    rosters: tuple[AcceptedRoster, ...]
    donors: tuple[str, ...]
    """Live peers whose heartbeats say they hold the head: where to download the state."""
    fork: bool
    """The rosters leave our chain (chain.prefer chose them) instead of extending it."""


class Catchup:
    """Finds and verifies a better head for one peer (its ledger; RoundNet for DHT and RPC)."""

    def __init__(self, net: RoundNet, ledger: Ledger, rules: ChainRules, start: Link):
        self.net, self.ledger, self.rules, self.start = net, ledger, rules, start
        self.failed_heads: set[Head] = set()
        self.failed_donors: set[str] = set()
        self.passed: set[Head] = set()  # heads that verified and that we chose not to move to

    def eligible(self) -> set[str]:
        return chain.eligible(self.ledger, self.rules.established_rounds)

    def hints(self, peers: dict[str, Heartbeat], mine: Head) -> dict[Head, list[str]]:
        """Heads other live peers point at, except ours, heads on our own chain (a peer behind
        us), heads that failed and heads we verified and passed over."""
        out: dict[Head, list[str]] = {}
        skip = self.failed_heads | self.passed | {mine}
        for p, hb in sorted(peers.items()):
            head = Head(hb.state_round, hb.digest)
            if p != self.net.me and head not in skip and not self.behind(head):
                out.setdefault(head, []).append(p)
        return out

    def behind(self, head: Head) -> bool:
        held = self.ledger.rosters.get(head.round)
        return held is not None and held.roster.result == head.digest

    def worth_a_look(self, peers: dict[str, Heartbeat], mine: Head) -> bool:
        """Does a peer the chain established point at a head off our chain: another state of our
        round or an earlier one (a fork), or one two or more rounds ahead (one ahead is most
        likely the round in flight)? Then plan() has something to verify."""
        known = self.eligible()
        return any(
            p in known and (head.round != mine.round + 1)
            for head, holders in self.hints(peers, mine).items()
            for p in holders
        )

    def plan(self, peers: dict[str, Heartbeat], mine: Head) -> Target | None:
        """The head to move to, verified and chosen by the rules above; None: stay."""
        hints, known = self.hints(peers, mine), self.eligible() if self.ledger.rosters else set()
        order = sorted(hints, key=lambda h: (-len(set(hints[h]) & known), -len(hints[h]), -h.round, h.digest))
        asked = 0
        for head in order:
            for donor in [d for d in hints[head] if d not in self.failed_donors][:2]:
                if asked >= MOST_DONORS:
                    return None
                asked += 1
                target = self.branch_of(donor, head, hints[head])
                if target is not None and self.acceptable(target, peers, mine):
                    return target
                if target is not None:
                    self._remember(self.passed, head)
                    return None
                self._remember(self.failed_donors, donor)
                self._remember(self.failed_heads, head)
        return None

    @staticmethod
    def _remember(found: set, item) -> None:
        if len(found) >= FORGET_FAILED:  # a flood cannot grow it without bound
            found.clear()
        found.add(item)

    def moved(self) -> None:
        """We took a head: the heads we passed over are judged afresh from our new place."""
        self.passed.clear()

    def acceptable(self, target: Target, peers: dict[str, Heartbeat], mine: Head) -> bool:
        k = self.rules.established_rounds
        before = Ledger(rosters={r: a for r, a in self.ledger.rosters.items() if r <= target.ancestor})
        holders = {p for p, hb in peers.items() if Head(hb.state_round, hb.digest) == target.head}
        if not target.fork:  # a quorum of the peers established on the extended chain holds the head
            ahead = Ledger(rosters={**before.rosters, **{a.roster.round: a for a in target.rosters[-WINDOW:]}})
            voters = (set(peers) & chain.eligible(ahead, k)) - {self.net.me}
            return 0 < len(holders & voters) >= votes.needed(len(voters))
        ours = [self.ledger.rosters[r] for r in sorted(self.ledger.rosters) if r > target.ancestor]
        mine_held = {p for p, hb in peers.items() if Head(hb.state_round, hb.digest) == mine} | {self.net.me}
        return chain.prefer(ours, list(target.rosters), chain.eligible(before, k), (mine_held, holders))

    # ------------------------------------------------------------------------ rosters by RPC
    def branch_of(self, donor: str, head: Head, holders: list[str]) -> Target | None:
        """The donor's rosters from where they meet our ledger to `head`, verified; None when they
        do not verify, do not meet our chain, or do not end at the head."""
        ours = sorted(self.ledger.rosters)
        for first in dict.fromkeys([max(ours[-1] - 2, ours[0]) if ours else 1, ours[0] if ours else 1]):
            try:
                envs = self.rosters(donor, first, head.round)
            except (ProtocolError, OSError, TimeoutError) as e:
                log.info("ledger from %s: %s", donor[:16], e)
                return None
            met = self.meet(envs, first)
            if met is None:
                continue
            at, link = met
            window = Ledger(rosters={r: a for r, a in self.ledger.rosters.items() if r < link.round})
            verified = chain.verify(envs[at:], link, window, self.rules)
            if verified.problem:
                log.info("ledger from %s does not verify: %s", donor[:16], verified.problem)
                return None
            end = verified.rosters[-1].roster if verified.rosters else None
            if end is None or (end.round, end.result) != head:
                return None
            ancestor = link.round - 1
            fork = bool(ours) and ancestor < ours[-1]
            return Target(head, ancestor, tuple(verified.rosters), tuple(holders), fork)
        return None

    def meet(self, envs: list[dict], first: int) -> tuple[int, Link] | None:
        """(index into envs, its link) of the last roster that continues one of ours (or the genesis)."""
        for i in range(len(envs) - 1, -1, -1):
            r = first + i
            prev = _peek(envs[i], "prev")
            mine = self.ledger.rosters.get(r - 1)
            if mine is not None and mine.hash == prev:
                return i, chain.after(mine)
            if r == 1 and prev == GENESIS:
                return i, self.start
        return None

    def rosters(self, donor: str, first: int, last: int) -> list[dict]:
        """The donor's roster envelopes of rounds first..last (`ledger` RPC, as many calls as needed)."""
        out: list[dict] = []
        while first + len(out) <= last:
            request = Request(op="ledger", run=self.rules.run_id, round=first + len(out))
            (answer,) = self.net.fetch_many([(donor, request, None)], timeout=LEDGER_TIMEOUT)
            if isinstance(answer, Exception):
                raise answer
            batch = decode_rosters(answer)
            rounds = [_peek(env, "round") for env in batch]
            if rounds != list(range(first + len(out), first + len(out) + len(batch))):
                raise ProtocolError(
                    f"ledger answer: rounds {rounds[:3]}... for a request from round {first + len(out)}"
                )
            if not batch:
                break
            out += batch
        return out[: last - first + 1]


def decode_rosters(payload: bytes) -> list[dict]:
    """A `ledger` answer: a msgpack list of signed roster envelopes; ProtocolError otherwise."""
    try:
        batch = msgpack.unpackb(payload, raw=False)
    except Exception as e:
        raise ProtocolError(f"ledger answer: not msgpack ({type(e).__name__})") from None
    if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
        raise ProtocolError("ledger answer: expected a list of signed rosters")
    return batch


def _peek(env: dict, name: str):
    """A field of a roster envelope's body, unchecked (chain.verify checks the signature later)."""
    try:
        return msgpack.unpackb(env["body"], raw=False)[name]
    except Exception:
        return None
