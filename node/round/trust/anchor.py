"""The organizer's checkpoints as an anchor that outlives the organizer (trust model step 2).

Every K rounds (`checkpoint_rounds`) the organizer's witness signs a checkpoint of a round c of
the chain it verified (protocol/kinds/checkpoint.py) and heartbeats `cp: [c, hash]`; leaders fetch it
(the `checkpoint` RPC) and embed it in their rosters of rounds c+1..c+CARRY_ROUNDS. A peer that
verifies such a roster checks the checkpoint: signed by the organizer, and naming the roster of
round c of the chain being verified (`check_embedded`). Every peer keeps the newest one it saw in
`<data-dir>/<run>/anchor.msgpack` (Anchor), and catch-up (node/round/trust/catchup.py) refuses a chain
whose roster of round c is another one, and lets a joiner whose organizer is offline prefer the
head whose chain holds the newest checkpoint. A crowd of fresh identities cannot sign one, so
its chain grown from the genesis loses to the swarm's once the run is past its first checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack

from protocol.errors import ProtocolError
from protocol.kinds.checkpoint import Checkpoint, checkpoint_hash, open_checkpoint, seal_checkpoint
from protocol.messages import Request

if TYPE_CHECKING:
    from node.round.ledger import AcceptedRoster, Ledger
    from node.round.net import RoundNet

log = logging.getLogger("swarmtrain.anchor")
CARRY_ROUNDS = 4  # rosters after round c that carry checkpoint c (a leader that missed one, the next)
FETCH_TIMEOUT = 2.0  # seconds for one `checkpoint` answer (under 2 KiB)
FILENAME = "anchor.msgpack"


def check_embedded(envelope: object, round_no: int, window: Ledger, *, organizer: str, run_id: str) -> Checkpoint:
    """The checkpoint roster `round_no` carries, if the organizer signed it and it names the
    roster of its round on the chain being verified (`window`: the rosters before round_no).
    Raises ProtocolError; with no organizer known nothing can be checked, and nothing is."""
    cp = open_checkpoint(envelope, organizer=organizer, run_id=run_id)
    if not 0 < round_no - cp.round <= CARRY_ROUNDS:
        raise ProtocolError(f"carries checkpoint {cp.round}, not of the {CARRY_ROUNDS} rounds before {round_no}")
    held = window.rosters.get(cp.round)
    if held is None or held.hash != cp.roster or held.roster.result != cp.result:
        raise ProtocolError(f"carries checkpoint {cp.round} of another chain than the one it extends")
    return cp


def carried(rosters: list[AcceptedRoster], *, organizer: str, run_id: str) -> Checkpoint | None:
    """The newest checkpoint the (verified) rosters carry."""
    newest = None
    for a in rosters:
        if a.roster.checkpoint is None or not organizer:
            continue
        try:
            cp = open_checkpoint(a.roster.checkpoint, organizer=organizer, run_id=run_id)
        except ProtocolError:
            continue  # chain.check refused such rosters; nothing to count
        if newest is None or cp.round > newest.round:
            newest = cp
    return newest


def contradiction(rosters: list[AcceptedRoster], cp: Checkpoint | None) -> str:
    """Why `rosters` contradict checkpoint `cp` (their roster of its round is another one); ''."""
    for a in rosters:
        if cp is not None and a.roster.round == cp.round and a.hash != cp.roster:
            return f"its roster of round {cp.round} is {a.hash[:12]}, the organizer's checkpoint says {cp.roster[:12]}"
    return ""


class Anchor:
    """The newest organizer checkpoint this peer saw, kept in a file across restarts."""

    def __init__(self, path: Path | None, *, run_id: str, organizer: str):
        self.path, self.run_id, self.organizer = path, run_id, organizer
        self.envelope: dict | None = None
        self.checkpoint: Checkpoint | None = None

    @classmethod
    def load(cls, path: Path | None, *, run_id: str, organizer: str) -> Anchor:
        """Our anchor file (none, or one that does not open: no anchor, said in the log)."""
        anchor = cls(path, run_id=run_id, organizer=organizer)
        if path is not None and path.is_file():
            try:
                anchor.keep(msgpack.unpackb(path.read_bytes(), raw=False), save=False)
            except Exception as e:  # noqa: BLE001 -- a torn or foreign file: start without it
                log.warning("anchor file %s: %s: %s; starting without it", path, type(e).__name__, e)
        return anchor

    @property
    def round(self) -> int:
        return self.checkpoint.round if self.checkpoint else 0

    def keep(self, envelope: object, *, save: bool = True) -> bool:
        """Hold `envelope` if it is an organizer checkpoint newer than ours; raises ProtocolError
        when it is not the organizer's."""
        cp = open_checkpoint(envelope, organizer=self.organizer, run_id=self.run_id)
        if self.checkpoint is not None and cp.round == self.checkpoint.round and cp.roster != self.checkpoint.roster:
            log.warning("the organizer signed two checkpoints of round %d: it equivocated", cp.round)
        if self.checkpoint is not None and cp.round <= self.checkpoint.round:
            return False
        self.envelope, self.checkpoint = envelope, cp
        if save and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            part = self.path.with_suffix(".part")
            part.write_bytes(msgpack.packb(envelope, use_bin_type=True))
            os.replace(part, self.path)  # a crash leaves the old anchor or the new one, never half
        log.info("anchor: checkpoint of round %d (roster %s)", cp.round, cp.roster[:12])
        return True

    def keep_carried(self, accepted: AcceptedRoster) -> None:
        """A roster we verified and took: keep the checkpoint it carries, if newer."""
        if accepted.roster.checkpoint is None or not self.organizer:
            return
        try:
            self.keep(accepted.roster.checkpoint)
        except ProtocolError as e:
            log.warning("round %d carries a checkpoint we cannot keep: %s", accepted.roster.round, e)

    def sign_due(self, key, ledger: Ledger, *, every: int, now: float) -> bool:
        """The organizer's witness: sign a checkpoint of the newest multiple of `every` its verified
        chain (`ledger`) holds, if newer than ours, and keep it; True when it did."""
        c = max(ledger.rosters, default=0) // every * every if every else 0
        held = ledger.rosters.get(c)
        if c <= self.round or held is None:
            return False
        cp = Checkpoint(run=self.run_id, round=c, roster=held.hash, result=held.roster.result, time=now)
        return self.keep(seal_checkpoint(key, cp))

    def carry(self, round_no: int, ledger: Ledger, net: RoundNet | None = None, peers: dict | None = None):
        """What our roster of `round_no` embeds: our checkpoint if round_no is within CARRY_ROUNDS
        after it and our chain holds its roster. `peers`: live heartbeats; a newer checkpoint the
        organizer's names (`cp`) is fetched from it first (once: afterwards we hold it)."""
        hb = (peers or {}).get(self.organizer)
        pointer = hb.cp if hb is not None else ()
        if pointer and net is not None and pointer[0] > self.round and 0 < round_no - pointer[0] <= CARRY_ROUNDS:
            self.fetch(net, pointer)
        cp = self.checkpoint
        if cp is None or not 0 < round_no - cp.round <= CARRY_ROUNDS:
            return None
        held = ledger.rosters.get(cp.round)
        if held is None or held.hash != cp.roster:
            log.warning("round %d: our chain does not hold checkpoint %d's roster: not carried", round_no, cp.round)
            return None
        return self.envelope

    def fetch(self, net: RoundNet, pointer: tuple) -> None:
        """Ask the organizer for the checkpoint its heartbeat names; a bad answer is logged, dropped."""
        request = Request(op="checkpoint", run=self.run_id, round=pointer[0])
        (answer,) = net.fetch_many([(self.organizer, request, None)], timeout=FETCH_TIMEOUT)
        try:
            if isinstance(answer, Exception):
                raise answer
            envelope = decode_checkpoint(answer)
            if checkpoint_hash(envelope) != pointer[1]:
                raise ProtocolError("not the checkpoint the organizer's heartbeat names")
            self.keep(envelope)
        except Exception as e:  # noqa: BLE001 -- whatever the answer is, we lead on without it
            log.warning("checkpoint %d from the organizer: %s: %s", pointer[0], type(e).__name__, e)


def decode_checkpoint(payload: object) -> dict:
    """A `checkpoint` answer: the msgpack of one signed envelope; ProtocolError otherwise."""
    try:
        envelope = msgpack.unpackb(payload, raw=False, max_array_len=16, max_map_len=16)
    except Exception as e:
        raise ProtocolError(f"checkpoint answer: not msgpack ({type(e).__name__})") from None
    if not isinstance(envelope, dict) or not all(isinstance(envelope.get(k), bytes) for k in ("body", "key", "sig")):
        raise ProtocolError("checkpoint answer: expected a signed envelope")
    return envelope
