"""`bench byzantine --sybil`'s flood row: what 1,000 Sybil records cost an honest peer that
awaits a roster (RoundProtocol.await_roster reads the peer table and the round's rosters every
POLL = 0.25 s).

4 honest peers play 3 rounds and await round 4. In the DHT: 10 valid Sybils, each with a signed
heartbeat, an announcement of round 4 and a self-led roster of round 4 listing the 10 (all valid
records), and the rest of the records as a hostile storing node would
return them: signed records filed under other ids, and junk, spread over the peers, updates and
roster keys. Measured with time.process_time() over one poll (PeerTable.read, the candidates,
read_roster) and over the leader's extra read (RosterBuilder.announcements), in three modes:
no flood; the flood standing (caches warm); the flood churned before every poll (every valid
record re-signed: a fresh PSS salt misses the verify cache; the junk replaced).
"""

from __future__ import annotations

import hashlib
import os
import time

from bench.byzantine.sybilnet import Peer, Swarm, play_round
from node.round import election
from node.round.protocol import POLL
from protocol import keys, signed, signing
from protocol.records import Announcement, Heartbeat, Roster

VALID = 10
"""Sybils whose records are valid (the rest of a flood is refused before any RSA check)."""


def flood(pool, records: int, polls: int) -> dict:
    swarm = Swarm(run="sybil-flood")
    keys_ = pool.take(4 + VALID)
    honest = [Peer(swarm, k) for k in keys_[:4]]
    for _ in range(3):
        play_round(honest)
    crowd = keys_[4:]
    reader = honest[0]
    modes = {"none": _measure(reader, polls, None)}
    attack = Flood(swarm, reader, crowd, records - 3 * VALID)
    attack.refresh(junk=True)
    modes["standing"] = _measure(reader, polls, None)
    modes["churned"] = _measure(reader, polls, attack)
    worst = max(m["poll_ms"] + m["leader_read_ms"] for m in modes.values())  # rank 0 reads both each poll
    return {
        "row": "flood",
        "case": f"{records} Sybil records, {VALID} of them valid Sybils",
        "records": records,
        "valid_sybils": VALID,
        "identity_share": round(VALID / (VALID + len(honest)), 3),
        "established_share": 0.0,
        "credit_share": 0.0,  # DHT records: no roster lists them
        "modes": modes,
        "worst_poll_ms": round(worst, 3),
        "worst_core_percent": round(100 * worst / 1000 / POLL, 2),
        "target": "< 5% of a core at 0.25 s polls",
        "met": 100 * worst / 1000 / POLL < 5,
    }


class Flood:
    """The records of the flood, written into the fake DHT as a hostile node would serve them."""

    def __init__(self, swarm: Swarm, reader: Peer, crowd: list, junk: int):
        self.swarm, self.reader, self.crowd, self.junk = swarm, reader, crowd, junk
        self.round = reader.round + 1
        self.subkeys = ["Qm" + os.urandom(16).hex() for _ in range(junk)]  # no key of these ids signs
        self.keys = [
            keys.peers_key(swarm.run),
            keys.updates_key(swarm.run, self.round),
            keys.roster_key(swarm.run, self.round),
        ]

    def refresh(self, junk: bool) -> None:
        """Re-sign every valid Sybil record (and, with `junk`, write the junk anew)."""
        run, r, now = self.swarm.run, self.round, self.swarm.dht.clock()
        base, prev = self.reader.digest, self.reader.ledger.prev_hash(r)
        anns = []
        for key, pid in sorted(self.crowd, key=lambda kp: kp[1]):  # a roster lists its entries by id
            hb = Heartbeat(
                run=run, peer=pid, name="s", round=r, state_round=r - 1, digest=base, device="cpu", maddrs=(), time=now
            )
            self._put(self.keys[0], pid, signed.seal(key, hb), now + self.swarm.cfg.heartbeat_ttl)
            ann = Announcement(run=run, round=r, peer=pid, nbytes=64, sha256="1" * 64, tokens=100, base=base, time=now)
            anns.append(signed.seal(key, ann))
            self._put(self.keys[1], pid, anns[-1], now + 600)
        for key, pid in self.crowd:
            roster = Roster(
                run=run,
                round=r,
                leader=pid,
                prev=prev,
                base=base,
                result=hashlib.sha256(pid.encode()).hexdigest(),
                time=now,
                entries=tuple(anns),
                reveal=signing.sign_unique(key, election.reveal_message(run, r)),
                beacon=self.reader.proto.beacon(r),
            )
            self._put(self.keys[2], pid, signed.seal(key, roster), now + 600)
        if junk:
            self._junk(now, anns)

    def _junk(self, now: float, anns: list[dict]) -> None:
        """Records filed under ids that did not sign them, and undecodable values, bypassing the
        validator (a hostile storing node answers with whatever it likes)."""
        signed_by_other = [self.swarm.dht.data[k][self.crowd[0][1]][0] for k in self.keys]
        for i, sub in enumerate(self.subkeys):  # the same 1,000 records, written anew
            key = self.keys[i % 3]
            value = signed_by_other[i % 3] if i % 2 else {"kind": "heartbeat", "body": os.urandom(300), "key": b"x"}
            self._put(key, sub, value, now + 600)

    def _put(self, key: str, subkey: str, value, expiration: float) -> None:
        """Written past the validator: the valid records would pass it, but in a node it runs in
        the DHT's own process, whose verify cache is not the reader's."""
        self.swarm.dht.data.setdefault(key, {})[subkey] = (value, expiration)


def _measure(reader: Peer, polls: int, churn: Flood | None) -> dict:
    """Per-poll CPU (ms) of what await_roster reads each POLL, and of the leader's extra read."""
    proto, r = reader.proto, reader.round + 1
    poll = lead = 0.0
    first = None
    for _ in range(polls):
        if churn is not None:
            churn.refresh(junk=True)
        t0 = time.process_time()
        peers = proto.peers()
        proto.seen.setdefault(r, set()).update(peers)
        cands = proto.candidates(peers, reader.digest, reader.round)
        turns = proto.candidates(peers, reader.digest, reader.round, ahead=1)
        proto.read_roster(r, reader.digest, cands, turns)
        t1 = time.process_time()
        proto.builder.announcements(r, reader.digest)
        t2 = time.process_time()
        first = t1 - t0 if first is None else first
        poll += t1 - t0
        lead += t2 - t1
    return {
        "first_poll_ms": round(1000 * first, 2),
        "poll_ms": round(1000 * poll / polls, 3),
        "leader_read_ms": round(1000 * lead / polls, 3),
        "core_percent": round(100 * poll / polls / POLL, 2),
        "peers_seen": len(proto.peers()),
    }
