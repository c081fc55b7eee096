"""Getting announced updates: each one's exact bytes, held here or fetched from its sources in turn.

An update's size and SHA-256 are pinned by its owner's signed announcement, so a copy from
anyone (a relay, the leader) is as good as the owner's: a copy that is not the owner's bytes is
refused, and one that is is kept here (and so relayed on) as soon as it arrives. The leader
fetches each update from its owner; the other peers from the sources relay.sources gives
(docs/protocol.md, "Upload once").

Every update of a run has one exact size (its codec's payload is fixed, and so is the
envelope around it: UpdateShape), so an announcement of any other size is refused before a
byte is asked for: a peer cannot make the leader and every member read up to max_update_mb.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

from node.config import SwarmConfig
from node.round.net import RoundNet
from protocol import signed
from protocol.errors import ProtocolError
from protocol.kinds.sealed import Receipt
from protocol.messages import ReceiptAnswer, Request, UpdateEnvelope
from protocol.records import Announcement

ATTEMPTS = 3  # sources asked per update: its relay, its owner, the leader (relay.sources)
# One batch of fetches may take FETCH_FLOOR s plus its largest update at FETCH_RATE bytes/s (1 Mbit/s,
# a slow home uplink), never more than collect_timeout: a source that accepts and never answers
# (an announcer that does not serve, a relay that withholds) costs that, not the whole collect.
FETCH_FLOOR, FETCH_RATE = 5.0, 125_000.0
# A relay that let a fetch of ours time out is asked after the owner and the leader for 2 rounds,
# and twice as many each time it does so again when asked again, up to this many: a withholding
# relay (it accepts and never answers) costs each member a bound at rounds 1, 4, 9, 18, then one
# in 17, not one a round; an honest relay a crowd kept busy for a round is passed over for 2.
WITHHELD_ROUNDS = 16


class Strikes(NamedTuple):
    """A relay's timeouts on us (UpdateFetcher.withheld)."""

    round: int
    """The last round a fetch of ours from it timed out."""
    times: int
    """How many times in a row, each soon after it was asked again."""

    def rounds(self) -> int:
        """How many rounds after `round` it is asked last: 2, 4, 8, 16, 16..."""
        return min(WITHHELD_ROUNDS, 2**self.times)

    def passed_over(self, round_no: int) -> bool:
        return 0 <= round_no - self.round <= self.rounds()


class UpdateShape(NamedTuple):
    """What every update of the run is on the wire: UpdateEnvelope(run, round, peer, codec, payload)."""

    codec: str
    """The codec's name, as the envelope carries it."""
    payload_bytes: int
    """The codec's exact encoded size (codec.encoded_size())."""


def envelope_bytes(run: str, round_no: int, peer: str, shape: UpdateShape) -> int:
    """The exact length of UpdateEnvelope(...).encode() for a payload of shape.payload_bytes:
    the map with an empty payload (a 2-byte bin header), less that header, plus the payload's
    own msgpack bin header (2, 3 or 5 bytes) and its bytes. tests/test_beacon.py pins it
    against real encodings."""
    empty = UpdateEnvelope(run=run, round=round_no, peer=peer, codec=shape.codec, payload=b"").encode()
    n = shape.payload_bytes
    return len(empty) - 2 + (2 if n < 2**8 else 3 if n < 2**16 else 5) + n


class FetchJob(NamedTuple):
    """One request of an attempt: which announced update, and whom it is asked from."""

    index: int
    """Position of the update in the announcements being fetched."""
    source: str
    """The peer asked for it."""


def pinned(ann: Announcement, blob: bytes) -> bool:
    """`blob` is the owner's bytes: the size and SHA-256 its signed announcement pins."""
    return len(blob) == ann.nbytes and hashlib.sha256(blob).hexdigest() == ann.sha256


class UpdateFetcher:
    """This peer's side of moving updates: fetch, check, keep."""

    def __init__(
        self,
        net: RoundNet,
        run_id: str,
        cfg: SwarmConfig,
        validate: Callable[[bytes], None],
        shape: UpdateShape | None = None,
    ):
        self.net, self.run_id, self.cfg = net, run_id, cfg
        self.validate = validate
        """Raises ProtocolError if an update payload cannot be applied (Hooks.validate)."""
        self.shape = shape
        """The run's update shape; None (tests of other rules) checks sizes against max_bytes only."""
        self.fetched: dict[str, int] = {}
        """Peer -> the last round whose update of theirs this peer fetched whole, as leader (from
        the owner) or gathering (down its relay tree): first-hand evidence against `unserved`
        listings (node/round/trust/marks.slow_to_me)."""
        self.withheld: dict[str, Strikes] = {}
        """Relay -> when a fetch of ours from it last timed out, and how many times in a row
        (`order`). First-hand and local: no rule, no wire; passing over an honest relay costs its
        owner one more copy, never the update."""

    def note(self, round_no: int, anns: list[Announcement], results: list) -> None:
        """Record the updates of `anns` fetched whole (`results`, as fetch returns them); at most
        4,096 peers are remembered, the most recently fetched."""
        for a, got in zip(anns, results):
            if not isinstance(got, Exception):
                self.fetched[a.peer] = max(round_no, self.fetched.get(a.peer, 0))
        if len(self.fetched) > 4096:  # a crowd of one-off announcers: keep the newest
            self.fetched = dict(sorted(self.fetched.items(), key=lambda kv: kv[1])[-2048:])

    def wrong_size(self, ann: Announcement) -> ProtocolError | None:
        """Why `ann` cannot be an update of this run (None: its size is the exact one)."""
        if self.shape is None:
            return None
        want = envelope_bytes(self.run_id, ann.round, ann.peer, self.shape)
        if ann.nbytes == want:
            return None
        return ProtocolError(f"announces {ann.nbytes} bytes; every update of this run is {want}")

    def fetch(
        self,
        anns: list[Announcement],
        round_no: int,
        sources: Callable[[Announcement], list[str]],
        limit: float | None = None,
        seal: Callable[[Announcement], dict | None] = lambda a: None,
        released: Callable[[Announcement], str] = lambda a: "",
    ) -> list[bytes | Exception]:
        """Each announced update's verified envelope bytes (held, else fetched from its sources in
        turn); `limit` caps each batch's seconds below the usual bound (node/round/trust/marks.py);
        `seal(a)`: the leader's seal each request presents (protocol 18: node/round/trust/gate.py);
        `released(a)`: a member's, after the roster: the body hash of the seal the roster lists it under."""
        results: list[bytes | Exception] = []
        for a in anns:
            held = self.net.held_update(round_no, a.peer)
            results.append(ProtocolError("not held") if held is None else (self.check(a, held) or held))
        refused = {i for i, a in enumerate(anns) if self.wrong_size(a) is not None}  # never asked for
        for i in refused:
            results[i] = self.wrong_size(anns[i])
        where = [self.order(a, sources(a), round_no) for a in anns]
        late: list[tuple[str, Announcement]] = []  # (relay, update) whose fetch timed out
        arrived = False  # whether our own link carried a copy in this call (then `late` is the relays')
        for attempt in range(ATTEMPTS):
            todo = [i for i, r in enumerate(results) if isinstance(r, Exception) and i not in refused]
            jobs = [FetchJob(i, src) for i in todo for src in where[i][attempt : attempt + 1] if src != self.net.me]
            if not jobs:
                break
            asked = [anns[job.index] for job in jobs]
            requests = [
                (
                    job.source,
                    Request(
                        op="update", run=self.run_id, round=round_no, peer=a.peer, seal=seal(a), released=released(a)
                    ),
                    a.nbytes,
                )
                for job, a in zip(jobs, asked)
            ]
            most = max(a.nbytes for a in asked)
            try:  # each copy is kept (and so relayed) as it arrives, not when the whole batch is in
                fetched = self.net.fetch_many(
                    requests,
                    timeout=min(self.cfg.collect_timeout, FETCH_FLOOR + most / FETCH_RATE, limit or float("inf")),
                    on_each=lambda k, b, asked=asked: self.keep(round_no, asked[k], b),
                )
            except Exception as e:  # the whole batch timed out or the transport is gone: nobody's fault
                fetched = [e] * len(jobs)
            else:
                late += [(j.source, a) for j, a, b in zip(jobs, asked, fetched) if isinstance(b, TimeoutError)]
                arrived = arrived or any(not isinstance(b, Exception) for b in fetched)
            for job, a, blob in zip(jobs, asked, fetched):
                results[job.index] = (blob if isinstance(blob, Exception) else self.check(a, blob)) or blob
        if arrived:  # nothing came from anyone: our own link (down, or a crowd's copies filling it), not theirs
            self.timed_out(round_no, late)
        return results

    def order(self, ann: Announcement, found: list[str], round_no: int) -> list[str]:
        """`found` (the sources relay.sources gives, in turn) with the relays passed over in
        `round_no` (Strikes.passed_over) moved after the owner and the leader."""
        late = [s for s in found if s != ann.peer and s in self.withheld and self.withheld[s].passed_over(round_no)]
        return [s for s in found if s not in late] + late

    def timed_out(self, round_no: int, relays: list[tuple[str, Announcement]]) -> None:
        """Remember the relays (not owners: `unserved` marks are for those) that let a fetch time out."""
        for source in dict.fromkeys(s for s, ann in relays if s != ann.peer):  # once a call, however many copies
            before = self.withheld.get(source)
            again = before is not None and round_no - before.round <= 2 * before.rounds()  # soon after its turn
            self.withheld[source] = Strikes(round_no, before.times + 1 if again else 1)
        if len(self.withheld) > 4096:  # a crowd of one-off relays: keep the newest
            self.withheld = dict(sorted(self.withheld.items(), key=lambda kv: kv[1].round)[-2048:])

    def receipts(self, owners: list[str], round_no: int, seal_env: dict) -> dict[str, ReceiptAnswer]:
        """Owner -> its answer for its update of `round_no` released under `seal_env` (protocol 18-19):
        those that came back with the owner's receipt of this run and round, either naming `seal_env`
        (`seal` None) or naming the seal the answer carries (the owner released first under it: the
        leader judges that evidence, node/round/lead.py). Owners whose answer failed are asked once
        more (the leader leaves out the entry of an owner that gives none), each time within
        FETCH_FLOOR seconds."""
        digest, got = signed.body_hash(seal_env), {}
        for _ in range(2):
            ask = [p for p in owners if p not in got]
            jobs = [
                (p, Request(op="receipt", run=self.run_id, round=round_no, peer=p, seal=seal_env), None) for p in ask
            ]
            if not jobs:
                break
            try:
                answers = self.net.fetch_many(jobs, timeout=FETCH_FLOOR)
            except Exception as e:  # the transport is gone: no receipts, no credit this round
                answers = [e] * len(jobs)
            for p, blob in zip(ask, answers):
                answer = self._receipt(p, blob, round_no, digest)
                if answer is not None:
                    got[p] = answer
        return got

    def _receipt(self, owner: str, blob: bytes | Exception, round_no: int, digest: str) -> ReceiptAnswer | None:
        try:
            answer = ReceiptAnswer.decode(blob)
            r = signed.open_record(answer.receipt, Receipt, signer=owner)
        except ProtocolError:
            return None
        if (r.run, r.round) != (self.run_id, round_no):
            return None
        if r.seal == digest:
            return ReceiptAnswer(receipt=answer.receipt)  # names our seal: any evidence is beside the point
        return answer if answer.seal is not None and signed.body_hash(answer.seal) == r.seal else None

    def keep(self, round_no: int, ann: Announcement, blob: bytes) -> None:
        """Hold (and serve) a fetched copy that is the owner's bytes. Run as each fetch ends: two
        relays waiting on each other's batches would otherwise each wait for the other's whole batch."""
        if pinned(ann, blob):
            self.net.keep_update(round_no, ann.peer, blob)

    def check(self, ann: Announcement, blob: bytes) -> Exception | None:
        """Why `blob` is not the announced update (None: it is, and its payload can be applied)."""
        if not pinned(ann, blob):
            return ProtocolError("size or SHA-256 differs from the signed announcement")
        wrong = self.wrong_size(ann)
        if wrong is not None:
            return wrong
        try:
            env = UpdateEnvelope.decode(blob)
            if env.run != self.run_id or env.peer != ann.peer or env.round != ann.round:
                return ProtocolError("envelope names another run, peer or round")
            self.validate(env.payload)
        except ProtocolError as e:
            return e
        return None
