"""Leading a round: collect the signed announcements, fetch and check their updates, sign the roster.

When to lead (the election, the waits) is node/round/protocol.py's; this module builds the
roster once it is our turn. The leader lists only updates it fetched whole and checked, and
leaves out any that, applied alone, make the state non-finite; the roster's result is the
state after applying the rest in roster order (Hooks.result), which every peer recomputes.
The roster also carries the leader's place in the election (node/round/election.py): its
unique reveal of the round, the beacon the round was ranked under and the attempt it leads in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import NamedTuple

from node.config import SwarmConfig
from node.round import election
from node.round.fetch import UpdateFetcher
from node.round.hooks import Hooks, NonFinite
from node.round.ledger import AcceptedRoster, Ledger
from node.round.net import RoundNet
from node.round.trust import credit, marks, sealed
from protocol import keys, signed, signing
from protocol.admission.rule import DISABLED, Admission, listed_failed
from protocol.errors import ProtocolError
from protocol.kinds.sealed import Seal
from protocol.messages import UpdateEnvelope
from protocol.records import Announcement, Heartbeat, Roster

log = logging.getLogger("swarmtrain.rounds")
NO_RECEIPT = ProtocolError("served its update but gave no receipt naming our seal (protocol 18)")


class SignedAnnouncement(NamedTuple):
    """An update's announcement as stored in the DHT, and opened."""

    envelope: dict
    announcement: Announcement


class Contribution(NamedTuple):
    """An update the leader fetched and may list in its roster."""

    envelope: dict
    """Its signed announcement, as the roster lists it."""
    announcement: Announcement
    blob: bytes
    """The update's envelope bytes (what the announcement pins)."""


class Picked(NamedTuple):
    """The announcements a leader lists (RosterBuilder.pick)."""

    announcements: list[SignedAnnouncement]
    at_least: int
    """How many the roster needs at least (fewer where admission holds newcomers back)."""
    announced: frozenset[str] = frozenset()
    """Every author the read found (listed or not): the second read looks for others."""
    known: frozenset[str] = frozenset()
    """Authors the chain already knows (not newcomers, whom admission's share limits)."""
    failed: tuple[dict, ...] = ()
    """Signed announcements whose stamped proof failed our check, for the roster's `failed` (Admission.failures)."""


class RosterBuilder:
    """The leader's side of a round."""

    def __init__(
        self,
        net: RoundNet,
        run_id: str,
        key,
        hooks: Hooks,
        updates: UpdateFetcher,
        max_bytes: int,
        admission: Admission = DISABLED,
        ledger: Ledger | None = None,
    ):
        self.net, self.run_id, self.key, self.hooks, self.updates = net, run_id, key, hooks, updates
        self.me = net.me
        self.max_bytes = max_bytes
        self.carry: Callable[[int], dict | None] = lambda round_no: None  # the checkpoint a roster embeds
        self.admission = admission  # whose proofs of work we check, and how many a roster (protocol/admission/rule.py)
        self.ledger = ledger if ledger is not None else Ledger()  # the chain that says who is new
        self.sealed = sealed.FirstSeals()  # (round, base) -> our first seal of it (protocol 18; a file: wiring)
        # (round, our seal's body hash) -> owner -> its receipt answer: final (an owner's first release
        # never changes), so a rebuild (too few updates yet) asks only the owners that gave none
        self.answers: dict[tuple[int, str], dict] = {}
        self.gate = None  # our owner gate (node/round/trust/gate.py): signs our own receipt

    def announcements(self, round_no: int, base: str) -> dict[str, SignedAnnouncement]:
        """The signed announcements of this round's updates that apply to state `base` (in a split
        swarm the other half's rounds carry the same numbers, on another state) and have the
        run's exact update size (UpdateFetcher.wrong_size: refused before any fetch)."""
        out = {}
        for peer, env in self.net.get_subkeys(keys.updates_key(self.run_id, round_no)).items():
            try:
                ann = signed.open_record(env, Announcement, signer=str(peer), max_bytes=self.max_bytes)
                wrong = self.updates.wrong_size(ann)
                if wrong is not None:
                    raise wrong
                if ann.run == self.run_id and ann.round == round_no and ann.base == base:
                    out[ann.peer] = SignedAnnouncement(env, ann)
            except ProtocolError as e:
                log.info("ignoring an announcement under %s: %s", str(peer)[:16], e)
        return out

    def build(
        self,
        round_no: int,
        base: str,
        prev: str,
        eligible: set[str],
        at_least: int,
        *,
        beacon: str,
        attempt: int,
        skip: tuple[str, ...] = (),
        slow: set[str] = frozenset(),
        picked: Picked | None = None,
        floor: float | None = None,
        candidates: Collection[str] = frozenset(),
    ) -> AcceptedRoster | None:
        """Our signed roster of the announced updates of `eligible` peers that we could fetch and
        check, chained on roster `prev`, led in `attempt` of the election under `beacon`, passing
        over the candidates in `skip`; None when fewer than `at_least` (and 1) are left. The
        updates of `slow` peers (twice unserved, node/round/trust/marks.py) are fetched last, briefly.
        `picked`: what `pick` gave for these arguments (not read again). The updates key is read
        again after the fetch; the roster's cutoff is then, at least `floor` (node/round/trust/
        omission.py: the chain's floor, which the caller waited for). `candidates`: whose turn
        came (with a gate, Gate.candidates): an owner released first to one keeps its entry (protocol 19)."""
        chosen = picked or self.pick(round_no, base, eligible, at_least, beacon=beacon, slow=slow)
        at_least = chosen.at_least
        # Protocol 18: seal what we take before any payload moves (a rebuild keeps the round's first seal)
        if (round_no, base) not in self.sealed:
            self.sealed[(round_no, base)] = self._seal(round_no, base, chosen.announcements)
        seal0 = self.sealed[(round_no, base)]
        listed = set(signed.open_record(seal0, Seal).announcements)
        picked = [s for s in chosen.announcements if signed.body_hash(s.envelope) in listed]
        rest = [s for s in chosen.announcements if signed.body_hash(s.envelope) not in listed]
        blobs = self._fetch(picked, round_no, slow, seal0)
        # One sealed entry without its owner's receipt makes the roster credit nobody (sealed.py):
        # ask now, and leave out (as unserved) whoever served its update but gave no receipt, so an
        # owner withholding it costs its own entry only. A roster of a later rank or attempt credits
        # nobody anyway: there an owner first released to an earlier candidate keeps its entry. (A
        # builder wired to no gate of ours is an unsealed test harness: RoundProtocol always wires one.)
        # Protocol 19: an owner that shows it released first under another candidate's seal is kept
        # (the round leaked before our seal: the roster credits nobody), not left out.
        served = [s for s, b in zip(picked, blobs) if not isinstance(b, Exception)]
        receipts, leaked = self._receipts(round_no, seal0, served, candidates)
        if self.gate is not None and not skip and attempt == 0:
            blobs = [
                b if isinstance(b, Exception) or s.announcement.peer in {*receipts, *leaked, self.me} else NO_RECEIPT
                for s, b in zip(picked, blobs)
            ]
        # The second read (design step 5): what came while we fetched. Known authors only (a
        # newcomer counts against the roster's share); the cutoff is after this last read.
        again = {
            p: s for p, s in self.announcements(round_no, base).items() if p in eligible and p not in chosen.announced
        }
        known = chosen.known | {self.admission.organizer}
        extra = set(again) if self.admission.puzzle is None else set(again) & known
        cutoff = max(self.net.now(), floor or 0.0)
        seals = (seal0,)
        if extra or rest:  # fetched under a second seal: aggregated, never credited (sealed.creditable)
            more = rest + [again[p] for p in sorted(extra)]
            seals = (seal0, self._seal(round_no, base, more, after=signed.body_hash(seal0)))  # names seal0: protocol 21
            blobs, picked = [*blobs, *self._fetch(more, round_no, slow, seals[1])], [*picked, *more]
            order = sorted(range(len(picked)), key=lambda i: picked[i].announcement.peer)
            picked, blobs = [picked[i] for i in order], [blobs[i] for i in order]
        good = [
            Contribution(s.envelope, s.announcement, blob)
            for s, blob in zip(picked, blobs)
            if not isinstance(blob, Exception)
        ]
        for s, blob in zip(picked, blobs):
            if isinstance(blob, Exception):
                log.warning("round %d: leaving out %s: %s", round_no, s.announcement.peer[:16], blob)
        fetched = good
        good = self._drop_non_finite(round_no, good)
        refused = {c.announcement.peer for c in fetched} - {c.announcement.peer for c in good}
        if len(good) < max(1, at_least):  # min_peers counts the updates we could fetch, not announcements
            return None
        payloads = [UpdateEnvelope.decode(c.blob).payload for c in good]
        tokens = [c.announcement.tokens for c in good]
        scores = self.hooks.score(payloads, tokens) if self.hooks.score else []
        outcome = self.hooks.result(payloads, tokens)
        anns = [c.announcement for c in good]
        units = self.hooks.credit(payloads, anns) if self.hooks.credit else credit.token_units(tokens)
        owners = [c.announcement.peer for c in good if signed.body_hash(c.envelope) in listed]
        roster = Roster(
            run=self.run_id,
            round=round_no,
            leader=self.me,
            prev=prev,
            base=base,
            result=outcome.digest,
            time=max(self.net.now(), cutoff),
            entries=tuple(c.envelope for c in good),
            scores=tuple((c.announcement.peer, float(s)) for c, s in zip(good, scores)),
            reveal=signing.sign_unique(self.key, election.reveal_message(self.run_id, round_no)),
            beacon=beacon,
            attempt=attempt,
            skip=skip,
            unserved=marks.unserved_list(  # also what we fetched and refused: its author was heard
                [s.announcement.peer for s, b in zip(picked, blobs) if isinstance(b, Exception)] + sorted(refused)
            ),
            checkpoint=self.carry(round_no),
            full=outcome.full,
            cutoff=cutoff,
            failed=chosen.failed,
            seals=seals,
            receipts=tuple(receipts[p] for p in owners if p in receipts),
        )
        roster = replace(roster, credit=tuple(sealed.masked(units, sealed.creditable(roster, anns))))
        return AcceptedRoster(signed.seal(self.key, roster), roster, tuple(anns))

    def _seal(self, round_no: int, base: str, taken: list[SignedAnnouncement], after: str = "") -> dict:
        """Our signed seal of the announcements `taken` (protocol/kinds/sealed.py); `after`: our first
        seal's body hash, on a later seal (a seal naming no seal in our roster is evidence against us)."""
        for table in (self.sealed, self.answers):
            for key in [k for k in table if k[0] < round_no - 2]:
                del table[key]
        return sealed.signed_seal(
            self.key,
            run=self.run_id,
            round_no=round_no,
            base=base,
            leader=self.me,
            time=self.net.now(),
            envelopes=[s.envelope for s in taken],
            after=after,
        )

    def _receipts(
        self, round_no: int, seal0: dict, served: list[SignedAnnouncement], candidates: Collection[str]
    ) -> tuple[dict[str, dict], set[str]]:
        """Of the owners that `served` under `seal0`: owner -> its receipt naming `seal0` (ours signed
        here), and the owners that showed they released first under another candidate's seal."""
        others = {s.announcement.peer: s.envelope for s in served if s.announcement.peer != self.me}
        kept = self.answers.setdefault((round_no, signed.body_hash(seal0)), {})
        kept.update(self.updates.receipts([p for p in others if p not in kept], round_no, seal0))
        answers = {p: kept[p] for p in others if p in kept}
        out = {p: a.receipt for p, a in answers.items() if a.seal is None}
        ours = signed.open_record(seal0, Seal)
        if self.gate is not None:  # a key whose turn came in our views of the round, only (Gate.candidates)
            candidates = self.gate.candidates(round_no)
        shown = {p for p, a in answers.items() if a.seal is not None}  # a first seal not ours
        leaked = {p for p in shown if sealed.released_before(answers[p].seal, ours, others[p], candidates)}
        if leaked:
            log.warning("round %d: %d owners released first to another leader: we credit nobody", round_no, len(leaked))
        for p in shown - leaked:  # left out below
            log.warning("round %d: %s showed a first seal of no candidate of the round here", round_no, p[:16])
        if self.me in {s.announcement.peer for s in served} and self.gate is not None:
            try:
                out[self.me] = self.gate.own_receipt(round_no, seal0)
            except ProtocolError as e:  # our update went first to another leader's seal
                log.info("round %d: no receipt of our own update: %s", round_no, e)
        return out, leaked

    def pick(
        self, round_no: int, base: str, eligible: set[str], at_least: int, *, beacon: str, slow: set[str] = frozenset()
    ) -> Picked:
        """The announcements of `eligible` peers a roster may list (admission's share of newcomers
        included), by peer id, and how many of them it needs at least; with the proofs that failed
        our check and that no roster of our window lists yet (every leader skips those)."""
        announced = self.announcements(round_no, base)
        candidates = {p: s for p, s in announced.items() if p in eligible}
        known, _ = self.ledger.authors_before(round_no, self.admission.lookback)  # fewer if we lack rosters: stricter
        listed = listed_failed((a.roster for a in self.ledger.rosters.values()), self.max_bytes)
        proven = self.ledger.proofs_before(round_no, self.admission.lookback)
        seeds = self.admission.seeds(round_no, beacon, self.ledger.beacon_of)  # a seed we cannot tell: none listed
        admitted = self.admission.admit(
            candidates, known, beacon, last=slow, leader=self.me, listed=listed, proven=proven, seeds=seeds
        )
        if len(admitted) < len(candidates):  # newcomers over the roster's share wait: min_peers cannot count them
            at_least = min(at_least, len(admitted))
        failed = self.admission.failures(candidates, admitted, listed, seeds)
        chosen = [announced[p] for p in sorted(admitted)]
        return Picked(chosen, at_least, frozenset(announced), frozenset(known), failed)

    def _fetch(
        self, picked: list[SignedAnnouncement], round_no: int, slow: set[str], seal: dict
    ) -> list[bytes | Exception]:
        """`picked`'s updates from their owners, in order: the usual peers in one batch, then the
        slow ones with marks.SLOW_FETCH seconds, so a peer that does not serve delays nobody's."""
        out: dict[int, bytes | Exception] = {}
        for batch, limit in ((False, None), (True, marks.SLOW_FETCH)):
            where = [i for i, s in enumerate(picked) if (s.announcement.peer in slow) == batch]
            anns = [picked[i].announcement for i in where]
            owners = lambda a: [a.peer]  # noqa: E731
            got = self.updates.fetch(anns, round_no, sources=owners, limit=limit, seal=lambda a: seal) if anns else []
            self.updates.note(round_no, anns, got)  # from the owner itself: first-hand (marks.slow_to_me)
            out.update(zip(where, got))
        return [out[i] for i in range(len(picked))]

    def _drop_non_finite(self, round_no: int, good: list[Contribution]) -> list[Contribution]:
        """Leave out the updates that, applied alone, make the state non-finite."""
        if not good:  # every fetch failed: no roster this attempt (the caller counts too few)
            return good
        try:
            self.hooks.result(
                [UpdateEnvelope.decode(c.blob).payload for c in good], [c.announcement.tokens for c in good]
            )
            return good
        except NonFinite:
            pass
        kept = []
        for c in good:
            try:
                self.hooks.result([UpdateEnvelope.decode(c.blob).payload], [c.announcement.tokens])
                kept.append(c)
            except NonFinite:
                log.warning(
                    "round %d: leaving out %s: its update makes the state non-finite",
                    round_no,
                    c.announcement.peer[:16],
                )
        return kept


GRACE, GRACE_FLOOR = 0.25, 2.0  # the extra wait for peers the chain did not establish (collected)


def expected(peers: dict[str, Heartbeat], round_no: int, last: set[str]) -> set[str]:
    """Whose update a leader waits for: live, active peers on this round, and the members of
    the last round still finishing it (their heartbeat says r-1 while they fetch its updates)."""
    return {
        p
        for p, hb in peers.items()
        if hb.active
        and (hb.round == round_no or hb.state_round == round_no - 1 or (hb.round == round_no - 1 and p in last))
    }


def collected(
    expected: set[str], core: set[str], announced: set[str], waited: float, marks: dict[str, float], cfg: SwarmConfig
) -> bool:
    """Has the leader waited long enough? For every expected peer, up to collect_timeout; but
    once the `core` (last round's members, or the peers the chain established) has announced, others
    get GRACE of the time spent so far (at least GRACE_FLOOR s): a crowd of silent heartbeats
    costs a round a quarter, not its collect_timeout. In a windowed run (round_seconds unset or
    > 0) the same grace starts once most of the core is in: the round closes on the median peer,
    and a late or frozen one's update waits for the next round. `marks` keeps when each was so."""
    if expected <= announced or waited >= cfg.collect_timeout:
        return True
    done = False  # a young run (nobody established: everyone is core) waits until one applies
    if core != expected and core <= announced:
        done = _after_grace(marks, "core", waited)
    if cfg.round_seconds != 0 and len(core) >= 3 and 2 * len(core & announced) > len(core):
        done = _after_grace(marks, "most", waited) or done
    return done


def _after_grace(marks: dict[str, float], what: str, waited: float) -> bool:
    since = marks.setdefault(what, waited)
    return waited >= since + max(GRACE_FLOOR, GRACE * since)
