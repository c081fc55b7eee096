"""Catching up with the swarm through the verified chain (chain.py), never through heartbeats alone.

A peer that joins, missed a round, or sees established peers on another state asks a peer that
holds that head for the rosters leading to it (the `ledger` RPC: reader.py), finds where they meet its own
ledger (the genesis for a joiner), verifies them link by link, and moves only when
  * they extend its chain and a quorum of the peers established on that chain holds the head
    (votes.carried: by credit), or
  * they fork from its chain and chain.prefer chooses their branch.
Heads that no established peer holds are asked last, and at most MOST_DONORS donors are asked
per look, so a crowd of lying hints costs a bounded number of requests; a donor that failed for a
head is not asked for it again. A joiner knows nobody yet: while the organizer's witness is live
it first asks the witness for the chain to the witness's head (pin_chain) and takes that head
from the peers holding it, or learns from that chain whose heads to ask first; with the organizer
offline it asks first the holders whose heartbeat carries an admission proof (protocol 11) that it
checked (`paid`: stamped, then solved for seed(0), the only seed a joiner knows; at most MOST_PROOFS
scrypt evaluations a look, in a private draw, remembered with failures by Admission), most paid
holders first, and a paid donor whose head it did not take loses that rank (`spent`); then every
other head, most holders first. A crowd of fresh heads spends a look per MOST_DONORS solved proofs
(or per MOST_PROOFS stamps that hide the honest proofs from the draw), not per 6 free keys.

Checkpoints (node/round/trust/anchor.py): a chain whose roster of a round the organizer checkpointed is
another one (the checkpoint we hold, or one another verified head's chain carries) is refused,
and a joiner whose organizer is offline compares the heads of one look and takes the one whose
chain carries the newest checkpoint (the first in the order above among equals): a crowd's chain
from the genesis carries none, and loses to the swarm's once the run is past its first checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from typing import NamedTuple

from node.round.ledger import WINDOW, AcceptedRoster, Ledger
from node.round.net import RoundNet
from node.round.trust import anchor, chain, votes
from node.round.trust.chain import ChainRules, Link
from node.round.trust.reader import RosterReader
from protocol import keys, signed
from protocol.admission import work
from protocol.errors import ProtocolError
from protocol.kinds.checkpoint import Checkpoint
from protocol.records import Heartbeat

log = logging.getLogger("swarmtrain.sync")
MOST_DONORS = 6  # donors asked in one look for a better head
FORGET_FAILED = 256  # (donor, head) failures and heads passed over that are remembered
MOST_PROOFS = 6  # heartbeat proofs a joiner checks by scrypt in one look (each ~0.1 s at the defaults)


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

    def __init__(self, net: RoundNet, ledger: Ledger, rules: ChainRules, start: Link, organizer: str = ""):
        """`organizer`: the peer id that signed the run's manifest; its heartbeat's head pins the
        chain a joiner may take (node/peer/witness.py). Empty: no pin."""
        self.net, self.ledger, self.rules, self.start, self.organizer = net, ledger, rules, start, organizer
        self.reader = RosterReader(net, ledger, rules, start)  # donors' rosters by the `ledger` RPC
        # (donor, head) pairs that failed: that donor is not asked for that head again, but is for
        # the next one (an honest peer may have been unable once: starting, or just frozen)
        self.failed: OrderedDict[tuple[str, Head], None] = OrderedDict()
        self.passed: OrderedDict[Head, None] = OrderedDict()  # heads that verified and that we chose not to take
        self.spent: OrderedDict[str, None] = OrderedDict()  # paid donors asked whose head we did not take
        self.salt = os.urandom(16)  # our draw of which heartbeat proofs to check: no key can buy a place in it

    def eligible(self) -> set[str]:
        return chain.eligible(self.ledger, self.rules.established_rounds)

    def hints(self, peers: dict[str, Heartbeat], mine: Head) -> dict[Head, list[str]]:
        """Heads other live peers point at, except ours, heads on our own chain (a peer behind
        us) and heads we verified and passed over; a holder that failed us for a head is not
        counted for it."""
        out: dict[Head, list[str]] = {}
        for p, hb in sorted(peers.items()):
            head = Head(hb.state_round, hb.digest)
            skip = head == mine or head in self.passed or (p, head) in self.failed  # it failed us for this head
            witness = p == self.organizer and not hb.active  # the organizer's witness holds no state
            if p != self.net.me and not witness and not skip and not self.behind(head):
                out.setdefault(head, []).append(p)
        return out

    def behind(self, head: Head) -> bool:
        held = self.ledger.rosters.get(head.round)
        return held is not None and held.roster.result == head.digest

    def worth_a_look(self, peers: dict[str, Heartbeat], mine: Head) -> bool:
        """Does a peer the chain established point at a head off our chain: another state of our
        round or an earlier one (a fork), or one two or more rounds ahead (one ahead is most
        likely the round in flight)? Then plan() has something to verify."""
        # a trigger, not a vote: any peer our window names (after a stretch alone the peers that
        # trained with us are no longer 'established'); an empty ledger: anyone
        known = self.eligible() | set(self.ledger.appearances())
        return self.off_the_witness(peers, mine) or any(
            (not known or p in known) and head.round != mine.round + 1
            for head, holders in self.hints(peers, mine).items()
            for p in holders
        )

    def off_the_witness(self, peers: dict[str, Heartbeat], mine: Head) -> bool:
        """Is the organizer's witness head on another branch than ours (our roster of its round has
        another result), or two or more rounds past us? Peers that started together and split at
        the genesis know nobody on the other branch, so no known peer's head would ever prompt a
        look; the witness's does (plan() then moves only onto the branch through it)."""
        hb = self.witness(peers)
        if hb is None or hb.active or hb.state_round == 0:
            return False
        held = self.ledger.rosters.get(hb.state_round)
        return hb.state_round >= mine.round + 2 or (held is not None and held.roster.result != hb.digest)

    def plan(self, peers: dict[str, Heartbeat], mine: Head) -> Target | None:
        """The head to move to, verified and chosen by the rules above; None: stay."""
        hints, known = self.hints(peers, mine), self.eligible() if self.ledger.rosters else set()
        pin = self.pin_chain(peers, hints)
        if pin is not None:  # a joiner: the witness's chain says whom the swarm established
            if pin.donors and self.acceptable(pin, peers, mine):
                return pin
            known = chain.eligible(
                Ledger(rosters={a.roster.round: a for a in pin.rosters[-WINDOW:]}), self.rules.established_rounds
            )
        paid = self.paid(peers) if self.compares(peers) else set()
        order = sorted(
            hints,
            key=lambda h: (-len(set(hints[h]) & known), -len(set(hints[h]) & paid), -len(hints[h]), -h.round, h.digest),
        )
        asked, found = [], []  # found: acceptable targets, compared by their checkpoints (unpinned joiners)
        pairs = [(h, d) for h in order for d in hints[h]]  # paid holders first; then the rest, as before protocol 11
        target = self.ask([(h, d) for h, d in pairs if d in paid], hints, peers, mine, asked, found)
        target = target or self.ask([x for x in pairs if x[1] not in paid], hints, peers, mine, asked, found)
        target = target or self.newest_anchored(found)
        taken = target.head if target is not None else None
        for head, donor in asked:
            if donor is not None and donor in paid and head != taken:
                self._remember(self.spent, donor)  # its proof bought it one ask of ours, not one a look
        return target

    def ask(self, pairs, hints, peers, mine, asked: list, found: list) -> Target | None:
        """Ask (head, donor) `pairs` in order: at most 2 donors a head (the first that did not fail
        us for it) and MOST_DONORS a look, both counted in `asked`, which plan()'s two passes share.
        A head is done once one of its donors verified it. Returns a target to take, or None."""
        for head, donor in pairs:
            if (donor, head) in self.failed or (head, None) in asked or sum(h == head for h, _ in asked) >= 2:
                continue
            if sum(d is not None for _, d in asked) >= MOST_DONORS:
                break
            asked.append((head, donor))
            target = self.branch_of(donor, head, hints[head])
            if target is not None and self.acceptable(target, peers, mine):
                if not self.compares(peers):
                    return target
                found.append(target)
                asked.append((head, None))  # done: not asked again this look (no ask counted)
                continue
            if target is not None:  # verified, not taken: the next head may be (a quorum may still come)
                log.info("head %d %s: verified, not taken", head.round, head.digest[:12])
                if target.fork or not self.pinned(target, peers):
                    self._remember(self.passed, head)
                asked.append((head, None))
                continue
            log.info("head %d %s: no verified chain from %s", head.round, head.digest[:12], donor[:16])
            self._remember(self.failed, (donor, head))
        return None

    def paid(self, peers: dict[str, Heartbeat]) -> set[str]:
        """Live peers, less the `spent`, whose heartbeat proof (`work`) we found valid for seed(0),
        the only seed a joiner knows (later epochs' proofs: unchecked). A stamp (one hash) first;
        then at most MOST_PROOFS evaluations a look, of stamped proofs in our private draw, each
        remembered, failures too (Admission.valid). A run without admission work: none."""
        admission = self.rules.admission
        if admission.puzzle is None:
            return set()
        out, unchecked = set(), []
        for p, key in self.keys_of(peers).items():
            proof = work.Proof(*peers[p].work)
            if p in self.spent or proof.epoch != 0 or not admission.puzzle.stamped(key, proof):
                continue
            known = admission.remembered(p, peers[p].work)
            if known is None:
                unchecked.append((hashlib.sha256(self.salt + p.encode()).digest(), p, key))
            elif known:
                out.add(p)
        for _, p, key in sorted(unchecked)[:MOST_PROOFS]:
            if admission.valid(p, key, peers[p].work):
                out.add(p)
        return out

    def keys_of(self, peers: dict[str, Heartbeat]) -> dict[str, bytes]:
        """The key (DER) of each of `peers` whose heartbeat carries a proof: from the DHT's signed copies."""
        out = {}
        for p, env in self.net.get_subkeys(keys.peers_key(self.rules.run_id)).items():
            hb = peers.get(p)
            if p == self.net.me or hb is None or not hb.work or not isinstance(env, dict):
                continue
            try:
                if signed.open_record(env, Heartbeat, signer=p).work == hb.work:
                    out[p] = env["key"]
            except ProtocolError:
                continue
        return out

    def pin_chain(self, peers: dict[str, Heartbeat], hints: dict[Head, list[str]]) -> Target | None:
        """A joiner's first ask, while the organizer's witness is live and has a head: its chain
        to that head (`ledger` RPC), verified like any donor's, as a target whose donors hold the
        head. Not counted against MOST_DONORS, which a crowd of fresh heads (an order keys can
        buy) could spend; its chain also names the established peers whose heads plan() asks
        first once the swarm is past the witness. None: not a joiner, no such head, no chain."""
        hb = self.witness(peers)
        if self.ledger.rosters or hb is None or hb.active or hb.state_round == 0:
            return None
        head = Head(hb.state_round, hb.digest)
        target = self.branch_of(self.organizer, head, hints.get(head, []))
        if target is None:
            log.warning("the organizer's chain to round %d did not verify: asking the swarm's heads", head.round)
        return target

    def witness(self, peers: dict[str, Heartbeat]) -> Heartbeat | None:
        """The organizer's heartbeat among `peers` (its witness's, when inactive), if any."""
        return peers.get(self.organizer) if self.organizer else None

    def compares(self, peers: dict[str, Heartbeat]) -> bool:
        """Does this look compare heads by their checkpoints? A joiner's (empty ledger) whose
        organizer is offline: nothing else tells it the swarm's chain from a crowd's."""
        hb = self.witness(peers)
        return not self.ledger.rosters and (hb is None or hb.active)

    def newest_anchored(self, found: list[Target]) -> Target | None:
        """Of acceptable targets, the first whose chain carries the newest checkpoint; the others'
        chains carry an older one or none, or contradict it (their roster of its round is another)."""
        if not found:
            return None
        rules = self.rules
        carried = [anchor.carried(list(t.rosters), organizer=rules.organizer, run_id=rules.run_id) for t in found]
        best = max(range(len(found)), key=lambda i: (carried[i].round if carried[i] else -1, -i))
        for i, target in enumerate(found):
            if i != best:
                why = anchor.contradiction(list(target.rosters), carried[best]) or "carries an older checkpoint or none"
                log.warning("head %d %s: passed over: %s", target.head.round, target.head.digest[:12], why)
        return found[best]

    def held(self) -> Checkpoint | None:
        """The organizer checkpoint our anchor file holds."""
        return self.ledger.anchor.checkpoint if self.ledger.anchor else None

    @staticmethod
    def _remember(found: OrderedDict, item) -> None:
        found[item] = None
        found.move_to_end(item)
        while len(found) > FORGET_FAILED:  # the oldest go first: a flood cannot grow it, nor wipe it at once
            found.popitem(last=False)

    def moved(self) -> None:
        """We took a head: the heads we passed over are judged afresh from our new place."""
        self.passed.clear()

    def acceptable(self, target: Target, peers: dict[str, Heartbeat], mine: Head) -> bool:
        """Extensions need a quorum of voters: live peers established on the chain we already
        hold (a joiner, or a peer none of whose known peers is live, takes those established on
        the rosters it verified, the only ones it has). Forks need chain.prefer among the peers
        established at the common ancestor, and never move on an empty set (a fork from the
        genesis, whose tie-break hash its author could grind)."""
        if not self.pinned(target, peers):
            return False
        k = self.rules.established_rounds
        before = Ledger(rosters={r: a for r, a in self.ledger.rosters.items() if r <= target.ancestor})
        holders = {p for p, hb in peers.items() if Head(hb.state_round, hb.digest) == target.head}
        if not target.fork:
            ahead = Ledger(rosters={**before.rosters, **{a.roster.round: a for a in target.rosters[-WINDOW:]}})
            live = set(peers) - {self.net.me}
            voters = chain.voters(before, k, live) or chain.voters(ahead, k, live)  # peer -> its tickets
            vouch = (holders | self.built_on(target.rosters[-1], ahead)) & set(voters)
            return votes.carried(vouch, voters)
        among = chain.voters(before, k)
        ours = [self.ledger.rosters[r] for r in sorted(self.ledger.rosters) if r > target.ancestor]
        mine_held = {p for p, hb in peers.items() if Head(hb.state_round, hb.digest) == mine} | {self.net.me}
        if not among:  # a fork in the young prefix (from the genesis): only the organizer's head tells
            return self.through_pin(target, peers) is True
        return chain.prefer(ours, list(target.rosters), among, (mine_held, holders))

    def pinned(self, target: Target, peers: dict[str, Heartbeat]) -> bool:
        """A peer with an empty ledger (a joiner) takes only a head whose chain passes through
        the organizer's head, while the organizer is live: it could not tell the swarm's chain
        from one a crowd grew from the genesis. Members judge by their own ledger."""
        return bool(self.ledger.rosters) or self.through_pin(target, peers) is not False

    def through_pin(self, target: Target, peers: dict[str, Heartbeat]) -> bool | None:
        """Do the target's rosters pass through the head the organizer's witness heartbeats?
        None when there is no organizer's head to tell (none, not live); False while a live
        witness has taken no roster yet (it lags a young run by a few rounds): a crowd's chain
        from the genesis must not slip in before the witness has a head (wait for it)."""
        hb = self.witness(peers)
        if hb is None or hb.active:
            return None
        if hb.state_round == 0:
            return False
        return any((a.roster.round, a.roster.result) == (hb.state_round, hb.digest) for a in target.rosters)

    def built_on(self, head: AcceptedRoster, window: Ledger) -> set[str]:
        """Peers whose signed rosters or updates of the next round build on `head` (the DHT's
        rosters that verify after it): they vouch for it although their heartbeat says later."""
        out: set[str] = set()
        link = chain.after(head)
        for env in self.net.get_subkeys(keys.roster_key(self.rules.run_id, link.round)).values():
            try:
                out |= chain.attesters([chain.check(env, link, window, self.rules)])
            except (ProtocolError, KeyError, TypeError):
                continue
        return out

    # ------------------------------------------------------------------------ rosters by RPC
    def branch_of(self, donor: str, head: Head, holders: list[str]) -> Target | None:
        """The donor's rosters from where they meet our ledger to `head`, verified; None when they
        do not verify, do not meet our chain, or do not end at the head."""
        ours = sorted(self.ledger.rosters)
        # a head past ours most likely extends our last rosters: ask from there first; a head at or
        # behind ours is a fork, which may leave our chain anywhere in the window: ask from its start
        near = [max(ours[-1] - 2, ours[0])] if ours and head.round > ours[-1] else []
        for first in dict.fromkeys([*near, ours[0]] if ours else [1]):
            try:
                rosters = self.reader.walk(donor, first, head.round)
            except Exception as e:  # noqa: BLE001 -- whatever a peer or its stream does, it is that donor's failure
                log.warning("ledger from %s: %s", donor[:16], e)
                return None
            if rosters is None:
                log.info("ledger from %s from round %d meets none of our rosters", donor[:16], first)
                continue
            end = rosters[-1].roster if rosters else None
            if end is None or (end.round, end.result) != head:
                log.info("ledger from %s ends at round %s, not at the head", donor[:16], end and end.round)
                return None
            held = self.held()
            why = anchor.contradiction(rosters, held)
            if not ours and held is not None and head.round < held.round:
                why = f"it ends before round {held.round}, which the organizer checkpointed"
            if why:
                log.warning("ledger from %s: refused: %s", donor[:16], why)
                return None
            ancestor = rosters[0].roster.round - 1
            return Target(head, ancestor, tuple(rosters), tuple(holders), bool(ours) and ancestor < ours[-1])
        return None
