"""The node's v3 hook (node/round/v3.py Scatter, by duck typing): one member's part in a v3 round
over the exchange (node/scatter/member.py Member, and leader.py Leader when it leads), from a call
the round protocol checked.

The round protocol may not import node/scatter, nor this room node/round: node/peer/wiring.py
hands this object to RoundProtocol. The Round comes from the
call alone (node/scatter/roster.py scatter_round: members, the call's reachable ones, beacon,
attempt, keys), so every member places the same grid. While a round runs, and after it until the
next one replaces it, the exchange serves its Member's ops (`serve`: Exchange.set_scatter), so a
slower member can still fetch the final parts we own once our own gather is done.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from node.config import RunConfig
from node.scatter import chunks
from node.scatter.grid import AUDITORS, ESCALATE, RsaKeys, may_own, scatter_threshold, uses_scatter
from node.scatter.leader import Leader
from node.scatter.member import Member, ScatterNet, Timeouts
from node.scatter.roster import reachable, scatter_round
from node.scatter.traffic import PAUSE
from protocol.errors import ProtocolError
from protocol.messages import UpdateEnvelope
from protocol.records import Heartbeat

log = logging.getLogger("swarmtrain.scatter")

SETTLE = 1.0
"""Seconds a member waits between taking the call (and serving its Member) and sending its
chunks: members read the call up to a DHT poll (0.25 s) and a read apart, and a chunk sent to an
owner not serving the round yet is refused unread (node/p2p/streams.py) and left out."""


class Ran(NamedTuple):
    """One member's v3 round, as it ended for it (what node/round/v3.py reads)."""

    aggregate: torch.Tensor
    """The flat aggregate it gathered, in model order: what it applies."""
    finals: bytes
    """Each final part's SHA-256 (32 bytes), in task order, as its owner's receipt listed it."""
    caught: tuple[tuple[str, str], ...]
    """Owners convicted, with their fraud proof's SHA-256: the leader's, or the one a member checked."""
    passed: tuple[str, ...] = ()
    """Owners passed over for withholding, then senders silent when asked for their chunk (the
    leader's word; a member's is empty): each gets a strike (grid.may_own)."""


class NodeScatter:
    """v3 rounds of a run, from `threshold` members on (0: none, the hook does nothing)."""

    def __init__(
        self,
        *,
        net: ScatterNet,
        serve: Callable[[object, int], None],
        key,
        strategy,
        threshold: int,
        timeouts: Timeouts,
        settle: float = SETTLE,
    ):
        """net: dials members (node/p2p/roundnet.py RealNet.call); serve(handler, limit): installs
        the round's Member.answer (Exchange.set_scatter); key: our RSA identity; strategy: the
        run's (its codec decodes our update and sets the wire, run_wire; its aggregator is the
        owners' rule)."""
        self.net, self.serve, self.key, self.strategy = Dialer(net), serve, key, strategy
        self.threshold, self.timeouts, self.settle = threshold, timeouts, settle
        self.wire = run_wire(strategy.codec) if threshold else chunks.INT8

    def uses(self, members: int) -> bool:
        return uses_scatter(members, self.threshold)

    def reachable(self, members: list[str], peers: dict[str, Heartbeat]) -> set[str]:
        return reachable(members, peers)

    def owners(self, reach: set[str], passed: dict[str, int], round_no: int) -> set[str]:
        return may_own(reach, passed, round_no) or reach  # a struck swarm still needs owners

    def run(self, call, update: bytes, leads: bool, stop: threading.Event | None = None) -> Ran:
        """Our part in the round of `call` (node/round/ledger.py AcceptedRoster holding a Call),
        with our announced update envelope; `leads`: the Leader too. Raises ProtocolError,
        TimeoutError, OSError or ValueError when the round fails for us; TimeoutError as soon as
        `stop` is set (we are leaving: the member's and leader's threads end with the process)."""
        c, codec = call.roster, self.strategy.codec
        flat = own_flat(codec, self.wire, UpdateEnvelope.decode(update).payload)
        rnd = scatter_round(
            call.envelope, c, call.announcements, set(c.reach), flat.numel(), self.strategy.agg, self.wire
        )
        keys = RsaKeys(self.key)
        mine = next(a for a in call.announcements if a.peer == keys.peer)
        member = Member(rnd, flat, keys, self.net, c.leader, timeouts=self.timeouts, base=c.base, tokens=mine.tokens)
        leader = None
        if leads:  # its own copy of the Round: the board's state is the leader's, members apply it
            own = dataclasses.replace(rnd, replaced={}, caught=set(), fixed={}, signers={})
            leader = Leader(own, keys, member, auditors=AUDITORS, escalate=ESCALATE)
        self.serve(member.answer, chunks.most_message_bytes(flat.numel()))
        time.sleep(self.settle)  # every member that polls for the call serves its Member before chunks fly
        failed: list[Exception] = []
        thread = None
        if leader is not None:
            thread = threading.Thread(target=_catching(leader.run, failed), name="v3-leader", daemon=True)
            thread.start()
        aggregate = model_order(codec, self.wire, unless_stopped(member.run, stop))
        if thread is not None:
            thread.join(self.timeouts.round)
            if failed or thread.is_alive():
                raise ProtocolError(f"leading the v3 round failed: {failed[0] if failed else 'it did not end'}")
        finals = b"".join(bytes.fromhex(h) for h in member.finals)
        if leader is None:
            return Ran(aggregate, finals, tuple((p, member.checked.get(p, "")) for p in sorted(rnd.caught)))
        caught = tuple((p, leader.proofs[p]) for p in dict.fromkeys(leader.caught))
        return Ran(aggregate, finals, caught, tuple(dict.fromkeys(leader.withheld + leader.silent)))


def run_wire(codec) -> chunks.Wire:
    """The wire a run's v3 rounds carry its updates on: chunks.wire_for its codec, at the wire's
    defaults (the settings measured to hold quality): dense updates as int8 chunks, 1-bit ones as
    signs (4-bit results), top-k ones sparse. Every member, leader and auditor derives it from the
    run's codec alone, so all cut, encode and check pieces alike; changing a default changes the
    wire (protocol/version.py)."""
    return chunks.wire_for(codec)


def own_flat(codec, wire: chunks.Wire, payload: bytes) -> torch.Tensor:
    """Our announced update laid out as `wire` cuts it: the decoded values in model order (a
    1-bit payload decodes to +-d/2 a block, which the sign wire's 1-bit pieces re-encode exactly:
    its chunks are the payload's own blocks), or for the sparse wire each tensor's chunks in order."""
    if isinstance(wire, chunks.SparseWire):
        return chunks.sparse_flat(codec, codec.unpack(payload))
    return torch.cat([t.reshape(-1) for t in codec.decode(payload)])


def model_order(codec, wire: chunks.Wire, gathered: torch.Tensor) -> torch.Tensor:
    """The gathered aggregate in model order (what apply_aggregate takes)."""
    if isinstance(wire, chunks.SparseWire):
        return chunks.flat(chunks.sparse_unflat(codec, gathered))
    return gathered


def unless_stopped(fn: Callable[[], torch.Tensor], stop: threading.Event | None) -> torch.Tensor:
    """fn() in a thread of its own, given up (TimeoutError) once `stop` is set: a member's waits
    are bounded by the round's phases (minutes), far past the seconds a leaving peer may take."""
    if stop is None:
        return fn()
    out: list = []
    done = threading.Thread(target=_catching(lambda: out.append(fn()), out), name="v3-member", daemon=True)
    done.start()
    while done.is_alive():
        done.join(PAUSE)
        if stop.is_set() and done.is_alive():
            raise TimeoutError("leaving: our part in the v3 round is given up")
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


def _catching(fn: Callable[[], None], failed: list) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception as e:  # reported by the caller, which fails the round
            failed.append(e)

    return run


def make_scatter(
    run: RunConfig, *, net: ScatterNet, serve: Callable[[object, int], None], key, strategy
) -> NodeScatter:
    """The run's v3 hook, whose waits follow the run's: an owner waits up to collect_timeout for
    its inputs, a member gives its round up after round_timeout. Its threshold is 0 (no round is
    v3) unless the run is diloco on a dense or 1-bit wire (scatter_threshold) and scatter_min_peers > 0."""
    s = run.strategy
    threshold = scatter_threshold(run.swarm.scatter_min_peers, s.name, s.wire_dtype, s.wire_share)
    threshold = threshold if hasattr(strategy, "apply_aggregate") else 0
    swarm = run.swarm
    timeouts = Timeouts(phase=swarm.collect_timeout, call=swarm.collect_timeout, round=swarm.round_timeout)
    return NodeScatter(net=net, serve=serve, key=key, strategy=strategy, threshold=threshold, timeouts=timeouts)


ASKED_AGAIN = ("inputs", "final", "proof", "verdict")
"""Ops asked once more when the stream broke off: reads of what a member serves unchanged, and
a verdict (the leader keeps one per auditor and task). On loopback under load a stream now and
then ends short of its answer; a lost `inputs` or `verdict` left the leader waiting two phases
for a verdict that never came (node/scatter/leader.py), a lost `final` failed our round."""


class Dialer:
    """A ScatterNet whose every failure is one Member handles (a stream closed mid-answer is an
    EOFError from asyncio, not an OSError): the member retries or replaces, never crashes."""

    def __init__(self, net: ScatterNet):
        self.net, self.me = net, getattr(net, "me", "")

    def call(self, peer: str, message, timeout: float) -> bytes:
        again = message.op in ASKED_AGAIN
        while True:
            try:
                return self.net.call(peer, message, timeout)
            except EOFError as e:
                if not again:
                    raise OSError(f"{peer[:16]} closed the stream: {e}") from None
                log.info("v3 %s to %s: the stream broke off (%s); asking again", message.op, peer[:16], e)
                again = False
