"""The owner gate of sealed rounds (protocol 18, docs/protocol.md "Sealed rounds").

Whoever holds a round's update serves it, before that round has a roster here, only to a leader
whose turn has come and that sealed the announcements it takes (protocol/kinds/sealed.py); so no
payload of the round is seen before its credited set is fixed. A round-r update is served

  (a) to anyone once this node accepted or published a roster of round r (or later), or
  (b) on a request that presents a seal which verifies, names this run and round r and lists the
      update's announcement, and either its signer is the requester and may lead round r now by
      this node's own election view (`LeadView`: the candidates' turns as node/round/protocol.py
      ranks them, young runs' organizer only), or this node already released the update under that
      very seal (a member fetching after the roster, before our own roster read caught up).

Before (a), only our own update is served (a copy we hold, as a leader before it publishes, is not).
Anything else is refused with "sealed: ...". The owner signs one Receipt a round, naming the first
seal it released its update under (asked by the leader with a `receipt` request). Asked under a
later seal it released under, it answers with that receipt and the first seal (protocol 19,
protocol/messages.py ReceiptAnswer): the round went out before that leader's seal, and the leader
keeps our entry (its roster then credits nobody) rather than leaving us out as a withholder. When
the roster we accept is led by a leader that hid a seal we released under (sealed.hides), our next
announcements carry that seal as evidence (protocol 21, `took`, `evidence`); so does a roster that
lists our entry and credits someone while we released first under another key's seal (protocol 22).

The gate runs on the exchange's thread (node/p2p/exchange.py) and in FakeNet's calls: the round
protocol replaces the view whole (`set_view`), and the rest is under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from node.config import SwarmConfig
from node.round import election
from node.round.trust import omission, sealed
from protocol import signed
from protocol.errors import ProtocolError
from protocol.kinds.sealed import Receipt, Seal, SealHead
from protocol.messages import ReceiptAnswer
from protocol.records import CLAIM_ROUNDS, Announcement, Roster

KEEP = 4  # rounds of releases remembered (the exchange keeps updates 4 rounds)


class LeadView(NamedTuple):
    """Who may lead round `round` on this node's clock: what RoundProtocol ranks candidates by."""

    round: int
    beacon: str
    turns: frozenset[str]
    marked: frozenset[str]
    tickets: Mapping[str, int]
    opened: float
    """When (monotonic) this node opened the round: its attempts' clock."""
    cfg: SwarmConfig

    def may_lead(self, peer: str, now: float) -> bool:
        """Whether `peer`'s turn has come in this attempt or an earlier one: a leader whose turn
        came late in its attempt fetches into the next, and readers take its roster then too
        (election.check_turn: a slot's turn, once come, stays)."""
        if peer not in self.turns:
            return False
        elapsed = now - self.opened
        for attempt in range(election.attempt_at(elapsed, self.cfg) + 1):
            slot = election.slot_of(self.beacon, attempt, set(self.turns), peer, set(self.marked), self.tickets)
            if election.may_lead(slot, elapsed, self.cfg):
                return True
        return False

    def came(self, now: float) -> set[str]:
        """The candidates whose turn has come by `now` in this attempt or an earlier one (`may_lead`)."""
        elapsed, out = now - self.opened, set()
        for attempt in range(election.attempt_at(elapsed, self.cfg) + 1):
            order = election.ranking(self.beacon, attempt, set(self.turns), set(self.marked), self.tickets)
            ranks = range(min(election.ATTEMPT_RANKS, len(order)))
            out |= {order[k] for k in ranks if election.may_lead(election.Slot(attempt, k), elapsed, self.cfg)}
        return out


def opening(local: float, start: float | None, signed_at: float, cap: float) -> float:
    """When this node dates a round's opening on its monotonic clock (its attempts' clock and the
    gate's `LeadView.opened`): `local`, when it opened the round itself, moved earlier by how late
    it started the round (`start`: when it took the roster before, or the state of that round from
    peers) after that roster was signed (`signed_at`: its signed time mapped onto our clock), at
    most `cap` seconds and never before `signed_at`. A joiner that took the state 11 s after the
    others took the roster then dates the round as they do, and serves a rank-1 leader whose turn
    came on their clocks; a roster dated in the past (its leader's word) buys at most `cap`.
    None: no start known (a round whose roster before we never held): `local`."""
    if start is None:
        return local
    return local - min(max(0.0, start - signed_at), cap, max(0.0, local - signed_at))


class First(NamedTuple):
    """The first seal we released our update of a round under, and our receipt naming it."""

    digest: str
    seal: dict
    """Its envelope: evidence of that release for a later leader (Gate.answer)."""
    receipt: dict | None


class Gate:
    """This node's side of the barrier: what it may serve, and the receipts it signs."""

    def __init__(self, run_id: str, me: str, key, clock: Callable[[], float], now: Callable[[], float]):
        self.run_id, self.me, self.key, self.clock, self.now = run_id, me, key, clock, now
        self.view: LeadView | None = None  # replaced whole (set_view): read without the lock
        self.open_through = 0  # the newest round this node accepted or published a roster of
        self.own: dict[int, str] = {}  # round -> the body hash of our own announcement
        self.released: dict[int, dict[str, dict]] = {}  # round -> body hash -> a seal we released our update under
        self.hidden: dict[int, dict] = {}  # round -> evidence about a seal we released under (protocol 21-23)
        self.first: dict[int, First] = {}  # round -> the first seal we released under, our receipt
        self.refused = 0
        self.came: dict[int, frozenset[str]] = {}  # round -> whose turn came in our views (`candidates`)
        self._lock = threading.Lock()

    def set_view(self, view: LeadView) -> None:
        old, self.view = self.view, view
        if old is not None:  # a key whose turn came there stays (it may leave the turns: a dead rank 0)
            came = old.came(self.clock() + omission.AHEAD)
            with self._lock:
                self.came[old.round] = self.came.get(old.round, frozenset()) | came

    def show(
        self,
        round_no: int,
        beacon: str | None,
        turns: set[str] | None,
        marked: Callable[[int], set[str]],
        tickets: Callable[[int], Mapping[str, int]],
        opened: float,
        cfg: SwarmConfig,
    ) -> None:
        """Serve by this election view of `round_no` from now on (RoundProtocol's, as it ranks the
        round's candidates: `marked` and `tickets` of the round, `opened` from `opening`); none
        while we know no beacon (we hold not the roster before) or no candidate."""
        if beacon is not None and turns:
            marks = frozenset(marked(round_no))
            self.set_view(LeadView(round_no, beacon, frozenset(turns), marks, tickets(round_no), opened, cfg))

    def candidates(self, round_no: int) -> frozenset[str]:
        """Every key whose turn to lead `round_no` came in our views since we opened it, by our clock
        within omission.AHEAD (an owner's clock may be ahead of ours): one an owner may have released
        its update to first, and that may since have gone (a rank 0 served, then dead, leaves the
        turns as its heartbeat lapses). Evidence of an owner's first release under such a key's seal
        keeps the owner (protocol 19, sealed.released_before). Not every key named a candidate: an
        owner's evidence is its word, and a Sybil owner showing a seal that it or a fellow crowd key
        signed, whose turn had not come, made every honest rank-0 roster listing it credit nobody
        (tests/test_sybil_attacks_8.py); an honest owner's gate releases to no such seal."""
        view = self.view
        now = view.came(self.clock() + omission.AHEAD) if view is not None and view.round == round_no else set()
        with self._lock:
            return self.came.get(round_no, frozenset()) | now

    def announced(self, round_no: int, envelope: dict) -> None:
        with self._lock:
            self.own[round_no] = signed.body_hash(envelope)
            for table in (self.own, self.released, self.first, self.came):
                for r in [r for r in table if r <= round_no - KEEP]:
                    del table[r]

    def took(self, roster: Roster, anns: Sequence[Announcement]) -> None:
        """We accepted `roster` (its announcements `anns`): a seal of its leader we released our
        update under that it hides (sealed.hides), or, when it lists our entry and credits someone,
        the first seal we released under when another key signed it (sealed.leaks: the round went
        out before its seals[0]), is evidence our next announcements carry, until a roster holds our
        entry carrying it (then every reader has it: sealed.hiding, credit.leaked). Another key's
        entry carrying the same head does not stop us (protocol 24): `leaks` counts each carrier for
        its own entry only (tests/test_sybil_attacks_9.py)."""
        with self._lock:  # only our own carrying counts: `leaks` counts each carrier for its own entry
            carried = {signed.body_hash(a.hidden["head"]) for a in anns if a.hidden is not None and a.peer == self.me}
            self.hidden = {r: e for r, e in self.hidden.items() if signed.body_hash(e["head"]) not in carried}
            own = self.own.get(roster.round)  # the entry our evidence proves listed (its Merkle path)
            found = self._evidence(roster, own) if own is not None else None
            if found is not None and signed.body_hash(found["head"]) not in carried:
                self.hidden.setdefault(roster.round, found)

    def _evidence(self, roster: Roster, own: str) -> dict | None:
        """What `took` carries of `roster` (our announcement of its round hashes to `own`); under the lock."""
        for env in self.released.get(roster.round, {}).values():
            seal = signed.open_record(env, Seal)  # opened on release: no RSA
            if own in seal.announcements and sealed.hides(roster, SealHead.of(seal)):  # not: we announced again
                return signed.evidence(env, own)
        first = self.first.get(roster.round)
        if first is None or not any(roster.credit) or all(signed.body_hash(e) != own for e in roster.entries):
            return None
        if own not in signed.open_record(first.seal, Seal).announcements:
            return None  # released an earlier announcement of the round: no path proves this one
        ev = signed.evidence(first.seal, own)
        return ev if sealed.leaks(roster, self.me, own, signed.open_evidence(ev)) else None  # protocol 22

    def evidence(self, round_no: int) -> dict | None:
        """The evidence our announcement of `round_no` carries (`hidden`): of the oldest of the
        CLAIM_ROUNDS rounds before it whose roster hid a seal we released under; None: nothing."""
        with self._lock:
            self.hidden = {r: e for r, e in self.hidden.items() if round_no - CLAIM_ROUNDS <= r < round_no}
            return self.hidden[min(self.hidden)] if self.hidden else None

    def opened(self, round_no: int) -> None:
        """A roster of `round_no` was accepted or published here: its updates are no secret now."""
        self.open_through = max(self.open_through, round_no)

    def refusal(
        self, round_no: int, peer: str, requester: str, seal_env: dict | None, released: str = ""
    ) -> str | None:
        """Why the update of `peer` for `round_no` is not served to `requester` (None: it is).
        `released`: instead of a seal, the body hash of one we released our update under (a member
        fetching after the roster, which lists that seal)."""
        if round_no <= self.open_through:
            return None
        why = self._why(round_no, peer, requester, seal_env, released)
        self.refused += why is not None
        return why

    def _why(self, round_no: int, peer: str, requester: str, seal_env: dict | None, released: str) -> str | None:
        if seal_env is None and released and peer == self.me:
            with self._lock:
                if released in self.released.get(round_no, {}):
                    return None
            return "sealed: we released our update under no seal of that hash"
        if seal_env is None:
            return f"sealed: round {round_no} has no roster here yet, and the request presents no seal"
        if peer != self.me:
            return "sealed: a copy is served only after its roster"
        try:
            seal = signed.open_record(seal_env, Seal)
        except ProtocolError as e:
            return f"sealed: the seal does not verify ({e})"
        digest = signed.body_hash(seal_env)
        with self._lock:
            own, released = self.own.get(round_no), self.released.setdefault(round_no, {})
            if (seal.run, seal.round) != (self.run_id, round_no) or own not in seal.announcements:
                return "sealed: the seal is not of this round or does not list the update"
            if digest in released:
                return None
            if seal.leader != requester:
                return "sealed: the seal is not the requester's"
            view = self.view
            if view is None or view.round != round_no or not view.may_lead(requester, self.clock()):
                return "sealed: the requester's turn to lead has not come here"
            released[digest] = seal_env
            self.first.setdefault(round_no, First(digest, seal_env, None))
        return None

    def receipt(self, round_no: int, seal_env: dict) -> tuple[dict | None, str]:
        """Our signed receipt for our update of `round_no` released under `seal_env` (the first
        seal we released it under this round), or None and why not."""
        digest = signed.body_hash(seal_env)
        with self._lock:
            first = self.first.get(round_no)
            if first is None or first.digest != digest:
                return None, "sealed: no receipt: our update was not first released under that seal"
            return self._signed(round_no, first), ""

    def _signed(self, round_no: int, first: First) -> dict:
        """Our one receipt of `round_no`, naming `first` (signed once; under the lock)."""
        if first.receipt is None:
            r = Receipt(run=self.run_id, round=round_no, owner=self.me, seal=first.digest, time=self.now())
            self.first[round_no] = first = first._replace(receipt=signed.seal(self.key, r))
        return first.receipt

    def answer(self, round_no: int, seal_env: dict) -> tuple[bytes | None, str]:
        """The `receipt` op's payload for a leader asking under `seal_env` (protocol/messages.py
        ReceiptAnswer), or None and why not: our receipt when that seal is the first we released our
        update under; when we released under it after another seal, our receipt (naming the first)
        and the first seal, as evidence; else nothing (we never released under it)."""
        digest = signed.body_hash(seal_env)
        with self._lock:
            first = self.first.get(round_no)
            if first is None or digest not in self.released.get(round_no, {}):
                return None, "sealed: no receipt: our update was not released under that seal"
            evidence = None if first.digest == digest else first.seal
            return ReceiptAnswer(receipt=self._signed(round_no, first), seal=evidence).encode(), ""

    def own_receipt(self, round_no: int, seal_env: dict) -> dict:
        """As leader: our receipt for our own update under our own seal (we release it to ourselves)."""
        with self._lock:
            self.released.setdefault(round_no, {})[signed.body_hash(seal_env)] = seal_env
            self.first.setdefault(round_no, First(signed.body_hash(seal_env), seal_env, None))
        got, why = self.receipt(round_no, seal_env)
        if got is None:
            raise ProtocolError(why)
        return got
