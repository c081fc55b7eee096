"""An in-memory DHT and transport implementing RoundNet, for testing the round protocol and its
attacks without processes. The DHT applies the real RunValidator to every store, and keeps per
(key, subkey) the value with the latest expiration, as hivemind does.

It lives in bench/ so that `bench byzantine --sybil` runs on it too (bench may not import
tests/); tests/fakes.py re-exports it for the tests."""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
from cryptography.hazmat.primitives.asymmetric import rsa

from protocol import signing
from protocol.errors import ProtocolError


def new_key() -> tuple[rsa.RSAPrivateKey, str]:
    # hivemind's key shape, the only one signed records accept (protocol/signing.py)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, signing.peer_id_of(signing.public_der(key))


def sealed_roster(roster, keys: dict[str, Any], *, listed: Any = None, receipted: Any = None):
    """`roster` (a hand-built protocol/records.py Roster) sealed as a protocol-18 leader seals its
    own (docs/protocol.md "Sealed rounds"): seals[0] signed by its leader's key, listing the body
    hashes of its entries (or of `listed`: announcement envelopes), and one Receipt naming that
    seal per entry, signed by its author's key (or only those authors in `receipted`). `keys`:
    peer id -> private key (leader and authors). Entries that are not signed announcements (some
    tests' placeholders) are listed, never receipted."""
    from dataclasses import replace

    from node.round.trust.sealed import signed_seal
    from protocol import signed
    from protocol.kinds.sealed import Receipt
    from protocol.records import Announcement

    seal_env = signed_seal(
        keys[roster.leader],
        run=roster.run,
        round_no=roster.round,
        base=roster.base,
        leader=roster.leader,
        time=roster.time,
        envelopes=roster.entries if listed is None else listed,
    )
    digest, receipts = signed.body_hash(seal_env), []
    for e in roster.entries:
        try:
            author = signed.open_record(e, Announcement).peer
        except ProtocolError:
            continue
        if author in keys and (receipted is None or author in receipted):
            receipt = Receipt(run=roster.run, round=roster.round, owner=author, seal=digest, time=roster.time)
            receipts.append(signed.seal(keys[author], receipt))
    return replace(roster, seals=(seal_env,), receipts=tuple(receipts))


@dataclass
class FakeClock:
    t: float = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeDHT:
    clock: FakeClock = field(default_factory=FakeClock)
    validator: Any = None
    """A RunValidator (or None: store anything, as a hostile storing node would)."""
    data: dict[str, dict[str, tuple[Any, float]]] = field(default_factory=dict)
    stalls: set[str] = field(default_factory=set)
    """Peers that accept every request and never answer: a batch of fetches that asks one moves
    the clock on by the batch's timeout (its requests run at once), and those requests fail."""

    def store(self, key: str, subkey: Any, value: Any, expiration: float) -> bool:
        if self.validator is not None and not self.valid(key, subkey, value, expiration):
            return False
        current = self.data.setdefault(key, {}).get(subkey)
        if current is not None and current[1] >= expiration:
            return False
        self.data[key][subkey] = (value, expiration)
        return True

    def valid(self, key: str, subkey: Any, value: Any, expiration: float) -> bool:
        from hivemind.dht.routing import DHTID
        from hivemind.utils.serializer import MSGPackSerializer as S

        return self.validator.check(
            DHTID.generate(source=key).to_bytes(), S.dumps(subkey), S.dumps(value), expiration, self.clock()
        )

    def get(self, key: str) -> dict[str, Any]:
        now = self.clock()
        return {sk: v for sk, (v, exp) in self.data.get(key, {}).items() if exp >= now}


def in_step(owner, awaiting: list) -> None:
    """`owner`'s gate (protocol 18, node/round/trust/gate.py) while another peer awaits the round
    here: in a swarm every peer follows the chain and awaits the roster at the same time as the
    peer that does here (`awaiting[0]`), so its gate sees whose turn it is as that peer does: its
    view and its round clock. (Here peers await one after another, a peer that only announces reads
    no roster, so knows no beacon, and the fakes' clocks tick on each net's own looks: a waiting
    owner's gate would still be at its round's start, or the round it last took.)"""
    gate = owner.proto.gate
    unstepped = getattr(gate, "unstepped", gate.refusal)

    def refusal(round_no: int, peer: str, requester: str, seal_env: dict | None, released: str = "") -> str | None:
        if not awaiting:
            return unstepped(round_no, peer, requester, seal_env, released)
        own = gate.view, gate.clock
        gate.view, gate.clock = awaiting[0].proto.gate.view, awaiting[0].net.monotonic
        try:
            return unstepped(round_no, peer, requester, seal_env, released)
        finally:
            gate.view, gate.clock = own

    gate.unstepped, gate.refusal = unstepped, refusal


class AnyTurn(NamedTuple):
    """A gate view (node/round/trust/gate.py LeadView) in which every sealing requester's turn has come."""

    round: int

    def may_lead(self, peer: str, now: float) -> bool:
        return True


def ungated(*peers) -> None:
    """For tests that are not about protocol 18's owner gate (tests/test_sealed_rounds.py is): each
    peer's gate serves any leader that presents a seal listing its update, whoever and whenever;
    the seal and receipt rules still hold. (A test that builds a roster by hand, outside any
    await, has no turn for the owners to judge.)"""
    for owner in peers:
        gate = owner.proto.gate
        unstepped = getattr(gate, "unstepped", gate.refusal)

        def refusal(round_no, peer, requester, seal_env, released="", gate=gate, unstepped=unstepped):
            own = gate.view
            gate.view = AnyTurn(round_no)
            try:
                return unstepped(round_no, peer, requester, seal_env, released)
            finally:
                gate.view = own

        gate.unstepped, gate.refusal = unstepped, refusal


class FakeNet:
    """One peer's RoundNet: the shared FakeDHT, and fetches answered by other FakeNets' held updates."""

    registry: dict[str, FakeNet]

    def __init__(self, me: str, dht: FakeDHT, registry: dict[str, FakeNet]):
        self.me, self.dht, self.registry = me, dht, registry
        self.updates: dict[tuple[int, str], bytes] = {}
        self.serve_override: dict[tuple[int, str], bytes] = {}  # what a lying peer answers instead
        self.asked: list[tuple[int, str]] = []  # (round, owner) of each update request to this peer
        self.requests: list[tuple[str, int]] = []  # (op, round) of every request to this peer
        self.timeouts: list[float] = []  # the timeout of each batch of fetches this peer made
        self.ledger = None  # a Ledger whose rosters `ledger` requests are answered from
        self.ledger_override: list | None = None  # what a lying peer answers `ledger` requests with
        self.checkpoints: dict[int, object] = {}  # round -> the `checkpoint` answer (the organizer's)
        self.ticks = itertools.count()
        self.gate = None  # protocol 18's owner gate (set_gate); None: updates are served unsealed
        registry[me] = self

    def store(self, key: str, subkey: str, value: Any, ttl: float) -> bool:
        return self.dht.store(key, subkey, value, self.dht.clock() + ttl)

    def get_subkeys(self, key: str) -> dict[str, Any]:
        return self.dht.get(key)

    def fetch_many(self, jobs, timeout: float, on_each=None) -> list:
        self.timeouts.append(timeout)
        if any(peer in self.dht.stalls for peer, _, _ in jobs):
            self.dht.clock.t += timeout
        out = []
        for peer, request, expect in jobs:
            if peer in self.dht.stalls:
                out.append(TimeoutError(f"{peer[:8]} did not answer in {timeout:.1f} s"))
                continue
            other = self.registry.get(peer)
            if other is not None:
                other.requests.append((request.op, request.round))
                if request.op == "update":
                    other.asked.append((request.round, request.peer))
            sealed = None if other is None else other.sealed(request, self.me)
            if sealed is not None:  # protocol 18's owner gate, as the exchange applies it
                out.append(ProtocolError(f"peer refused: {sealed}"))
                continue
            blob = None if other is None else other.answer(request)
            if blob is None:
                out.append(ProtocolError(f"peer refused: no update of {request.peer[:8]}"))
            elif expect is not None and len(blob) != expect:
                out.append(ProtocolError(f"response carries {len(blob)} bytes, {expect} were announced"))
            else:
                out.append(blob)
                if on_each is not None:
                    on_each(len(out) - 1, blob)
        return out

    def set_gate(self, gate) -> None:
        self.gate = gate  # node/round/trust/gate.py: what RoundProtocol wires into the exchange

    def sealed(self, request, requester: str) -> str | None:
        """Why the owner gate refuses `request` (None: it does not), as node/p2p/streams.py `_sealed`."""
        if request.op not in ("update", "receipt") or self.gate is None:
            return None
        if request.op == "receipt":
            return None if request.peer == self.me else "sealed: receipts are signed by their owner only"
        return self.gate.refusal(request.round, request.peer, requester, request.seal, request.released)

    def answer(self, request) -> bytes | None:
        if request.op == "receipt":
            return self.gate.answer(request.round, request.seal)[0]  # a ReceiptAnswer, as node/p2p/streams.py
        if request.op == "ledger":
            rosters = self.ledger_override
            if rosters is None and self.ledger is not None:
                rosters = self.ledger.envelopes_from(request.round)
            return msgpack.packb(rosters, use_bin_type=True) if rosters else None
        if request.op == "checkpoint":
            found = self.checkpoints.get(request.round)
            return None if found is None else msgpack.packb(found, use_bin_type=True)
        return self.serve(request.round, request.peer)

    def serve(self, round_no: int, peer: str) -> bytes | None:
        return self.serve_override.get((round_no, peer), self.updates.get((round_no, peer)))

    def keep_update(self, round_no: int, peer: str, blob: bytes) -> None:
        self.updates[(round_no, peer)] = blob

    def held_update(self, round_no: int, peer: str) -> bytes | None:
        return self.updates.get((round_no, peer))

    def now(self) -> float:
        return self.dht.clock()

    def monotonic(self) -> float:
        return self.dht.clock() + next(self.ticks)  # each look at the clock moves one second on


def digest_of(payloads: list[bytes], base: str) -> str:
    """A stand-in state transition for tests: the next digest is a hash of the base and the payloads."""
    h = hashlib.sha256(base.encode())
    for p in payloads:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


class ScatterBus:
    """In-memory transport for v3 members (node/scatter/member.py ScatterNet): a call runs the
    callee's `answer` in the caller's thread, through the wire encoding both ways, and counts the
    bytes (pieces and records apart, as `bench scale` does). Peers in `down` never answer."""

    def __init__(self):
        from node.scatter.traffic import Traffic

        self.handlers: dict[str, Any] = {}
        self.traffic = Traffic()
        self.down: set[str] = set()
        self.dialled: set[str] = set()  # every peer some call went to (a peer behind NAT must not be)
        self.lock = threading.Lock()

    def net(self, me: str) -> BusNet:
        return BusNet(self, me)


class BusNet:
    def __init__(self, bus: ScatterBus, me: str):
        self.bus, self.me = bus, me

    def call(self, peer: str, message, timeout: float) -> bytes:
        from protocol.kinds.scatter import Message

        handler = self.bus.handlers.get(peer)
        if handler is None or peer in self.bus.down:
            raise TimeoutError(f"{peer[:8]} did not answer in {timeout:.1f} s")
        request = message.encode()
        with self.bus.lock:
            self.bus.dialled.add(peer)
            self.bus.traffic.send(self.me, peer, message.data_bytes(), len(request) - message.data_bytes())
        reply = handler.answer(self.me, Message.decode(request))
        data = Message.decode(reply).data_bytes() if message.op in ("inputs", "final", "proof") else 0
        with self.bus.lock:
            self.bus.traffic.send(peer, self.me, data, len(reply) - data)
        return reply
