"""Honest peers and Sybil identities on the in-memory network (bench/fakenet.py), driven through
the node's real round protocol, ledger and DHT validators; what `bench byzantine --sybil` plays.

An honest `Peer` holds a key, a FakeNet, a Ledger and a RoundProtocol, and a stand-in state: a
digest that each roster's payloads move on (fakenet.digest_of), so that rounds cost signatures
and hashes, not training. `play_round` runs one round as tests/test_round_protocol.py does:
every peer beats and announces, then each awaits the roster in leader-rank order (the fake
clock moves one second per look, so waits and attempts run in no wall time).
"""

from __future__ import annotations

import collections
import hashlib
import threading
from dataclasses import dataclass, field

from bench.fakenet import FakeDHT, FakeNet, digest_of, new_key
from node.config import SwarmConfig
from node.p2p.validators import RunValidator
from node.round import election
from node.round.hooks import Hooks, Outcome
from node.round.ledger import WINDOW, AcceptedRoster, Ledger
from node.round.protocol import RoundProtocol
from node.round.trust import credit
from protocol import keys, signed, signing
from protocol.records import Announcement, Heartbeat, Roster

BASE0 = "a" * 64
"""The round-0 state's digest (the genesis link's base)."""
ZERO = "0" * 64
"""The state the attackers want adopted (an all-zero model)."""
FAST = SwarmConfig(collect_timeout=5.0, round_timeout=40.0, heartbeat_ttl=8.0, leader_backoff=5.0, established_rounds=2)
"""tests/test_round_protocol.py's timings: short waits, so a round takes few fake-clock looks."""
MAX_BYTES = 1 << 20


class NoSleep(threading.Event):
    """The stop event await_roster polls with: the fake clock moves on by itself, nobody sleeps."""

    def wait(self, timeout=None):
        return self.is_set()


@dataclass
class Swarm:
    """One run on one fake DHT: its id, settings, and every identity's FakeNet by peer id."""

    run: str
    cfg: SwarmConfig = FAST
    dht: FakeDHT = field(default_factory=FakeDHT)
    registry: dict = field(default_factory=dict)

    def __post_init__(self):
        self.dht.validator = RunValidator(self.run, heartbeat_ttl=self.cfg.heartbeat_ttl, round_ttl=600.0)

    def peers(self, n: int, keys_: list | None = None) -> list[Peer]:
        return [Peer(self, None if keys_ is None else keys_[i]) for i in range(n)]


class Peer:
    """An honest peer (or a Sybil identity: the same parts, driven by the attack instead)."""

    def __init__(self, swarm: Swarm, key=None):
        self.swarm = swarm
        self.key, self.id = key or new_key()
        self.net = FakeNet(self.id, swarm.dht, swarm.registry)
        self.ledger = Ledger()
        self.net.ledger = self.ledger  # answers `ledger` requests (node/round/trust/catchup.py)
        self.digest, self.round = BASE0, 0
        hooks = Hooks(
            validate=lambda p: None, result=lambda payloads, tokens: Outcome(digest_of(payloads, self.digest))
        )
        self.proto = RoundProtocol(self.net, swarm.run, swarm.cfg, self.key, self.ledger, hooks, MAX_BYTES)

    def heartbeat(self, *, round_no: int | None = None) -> bool:
        hb = Heartbeat(
            run=self.swarm.run,
            peer=self.id,
            name="p",
            round=self.round + 1 if round_no is None else round_no,
            state_round=self.round,
            digest=self.digest,
            device="cpu",
            maddrs=(),
            time=self.net.now(),
        )
        return self.net.store(
            keys.peers_key(self.swarm.run), self.id, signed.seal(self.key, hb), self.swarm.cfg.heartbeat_ttl
        )

    def announce(self, payload: bytes) -> None:
        r = self.round + 1
        self.proto.announce(r, self.proto.envelope(r, "dense-float16", payload), tokens=100, base=self.digest)

    def finish(self, accepted: AcceptedRoster, payloads: list[bytes]) -> None:
        self.digest, self.round = accepted.roster.result, accepted.roster.round
        self.ledger.append(accepted)


def beat(peers: list[Peer]) -> None:
    """Fresh heartbeats, a second later (the DHT keeps a subkey's latest expiration)."""
    peers[0].swarm.dht.clock.t += 1
    for p in peers:
        p.heartbeat()


def play_round(peers: list[Peer], silent: list[Peer] = ()) -> AcceptedRoster:
    """One round: every peer (and every `silent` Sybil) beats, the peers announce, then each
    awaits the roster, those that may lead first in rank order (in a real swarm the others wait
    for them concurrently). Returns the roster they all took; raises if one took none."""
    swarm = peers[0].swarm
    swarm.dht.clock.t += 2  # new heartbeats expire later than the last ones
    for p in [*peers, *silent]:
        p.heartbeat()
    for p in peers:
        p.announce(f"update {p.id} {p.round}".encode())
    r = peers[0].round + 1
    knows = next(p for p in peers if p.proto.beacon(r) is not None)  # a joiner knows no beacon
    rank = election.ranking(knows.proto.beacon(r), 0, {p.id for p in peers}, tickets=knows.proto.tickets(r))

    def may_lead(p: Peer) -> bool:
        return p.id in (p.proto.candidates(p.proto.peers(), p.digest, p.round) or ())

    taken = {}
    for p in sorted(peers, key=lambda p: (not may_lead(p), rank.index(p.id))):
        accepted = p.proto.await_roster(r, p.digest, p.round, NoSleep())
        if accepted is None:
            raise RuntimeError(f"round {r}: peer {p.id[:8]} got no roster")
        taken[p.id] = (accepted, p.proto.gather(accepted))
    for p in peers:
        p.finish(*taken[p.id])
    if len({a.hash for a, _ in taken.values()}) != 1:
        raise RuntimeError(f"round {r}: honest peers took different rosters")
    return taken[peers[0].id][0]


def claim_head(crowd: list[Peer], round_no: int, digest: str) -> None:
    """Sybil heartbeats: each says it holds state `digest` after `round_no` (a hint, never a vote)."""
    for s in crowd:
        s.round, s.digest = round_no, digest
        s.heartbeat()


def invented_roster(crowd: list, round_no: int, digest: str = ZERO, *, run: str | None = None) -> dict:
    """A correctly signed roster at an invented round (random prev, base and result `digest`,
    Sybil entries claiming 10^9 tokens each), stored by its leader; every Sybil answers `ledger`
    requests with it. `crowd`: peers with a key, an id and a FakeNet (`run`: default the swarm's)."""
    run, leader, now = run or crowd[0].swarm.run, crowd[0], crowd[0].net.now()
    entries = tuple(
        signed.seal(
            s.key,
            Announcement(
                run=run, round=round_no, peer=s.id, nbytes=64, sha256="1" * 64, tokens=10**9, base=digest, time=now
            ),
        )
        for s in sorted(crowd, key=lambda s: s.id)
    )
    roster = Roster(
        run=run,
        round=round_no,
        leader=leader.id,
        prev=hashlib.sha256(b"nothing").hexdigest(),
        base=digest,
        result=digest,
        time=now,
        entries=entries,
        reveal=signing.sign_unique(leader.key, election.reveal_message(run, round_no)),
        beacon="2" * 64,
    )
    env = signed.seal(leader.key, roster)
    leader.net.store(keys.roster_key(run, round_no), leader.id, env, 600.0)
    for s in crowd:
        s.net.ledger_override = [env]
    return env


def credit_window(honest: list[str], sybils: list[str], rounds: int, run: str) -> dict[int, AcceptedRoster]:
    """WINDOW rosters led by the honest peers in turn, each crediting every honest peer UNITS and
    the Sybils whose `rounds` credited rounds (in a row, Sybil after Sybil, around the window) fall in it."""
    slots = collections.defaultdict(list)
    for i, s in enumerate(sybils):
        for j in range(rounds):
            slots[(i * rounds + j) % WINDOW + 1].append(s)
    out = {}
    for r in range(1, WINDOW + 1):
        peers = [*honest, *slots[r]]
        anns = tuple(
            Announcement(run=run, round=r, peer=p, nbytes=64, sha256="1" * 64, tokens=100, base=f"{r:064x}", time=0.0)
            for p in peers
        )
        roster = Roster(
            run=run,
            round=r,
            leader=honest[r % len(honest)],
            prev="0" * 64,
            base=f"{r:064x}",
            result=f"{r + 1:064x}",
            time=0.0,
            entries=({},) * len(anns),
            credit=(credit.UNITS,) * len(anns),
        )
        out[r] = AcceptedRoster({}, roster, anns)
    return out
