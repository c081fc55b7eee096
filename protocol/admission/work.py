"""An identity costs work: a memory-hard proof bound to the run and the key (docs/trust-model.md, step 7).

A proof is an 8-byte nonce such that scrypt(puzzle input | nonce) starts with `bits` zero bits.
The input names the run id, the epoch's seed and SHA-256 of the author's DER public key, so a
proof is worth one identity in one run, never another key's or another run's. Finding one takes
2^bits evaluations on average (geometric: 5% of searches take 3x the mean); checking one takes
one. Each evaluation needs 128 x r x 2^n_log2 bytes of memory (16 MiB at n 2^14, r 8), so a GPU
buys bandwidth, not thousands of cores' worth: PoW is flood control and ban cost, not the Sybil
bound (the chain's credit is).

A proof also carries a stamp: an 8-byte counter such that SHA-256(the epoch's seed | SHA-256 of
the key | nonce | stamp) starts with `stamp_bits` zero bits (2^stamp_bits hashes to find, seconds
of a core at the defaults; one hash to check). It is checked before the nonce's scrypt evaluation,
so a junk nonce takes a leader's check (rule.py) only if its author paid for a stamp on that key
and nonce; a free one costs the checker one hash.

Epochs (protocol 9): round r is of epoch r // epoch_rounds. seed(0) is SHA-256 of the run id;
seed(e), e >= 1, is the chain's beacon of round e x epoch_rounds (the beacon that roster is ranked
under, known once roster e x epoch_rounds - 1 is), so no proof of epoch e can be computed before
then. A proof of epoch e counts for entries of rounds of epochs e and e + 1: a peer starts its
epoch-e proof when round e x epoch_rounds is on its chain, and its epoch-(e-1) proof counts until
round (e + 1) x epoch_rounds. Who knows which seed is the caller's chain (`seeds`: epoch -> seed).

Pure: hashlib only. `scrypt` is this module's name for hashlib.scrypt, so tests count calls.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

scrypt = hashlib.scrypt  # every evaluation goes through this name (tests patch it to count)

PREFIX = b"swarmtrain-work-v1\0"
STAMP_PREFIX = b"swarmtrain-stamp-v1\0"
NONCE_BYTES = STAMP_BYTES = 8
PROGRESS_EVERY = 64  # evaluations between two progress calls while solving
STAMP_PROGRESS_EVERY = 2**18  # stamp hashes between two progress calls (and `stop` checks): ~0.1 s


class Proof(NamedTuple):
    """What an announcement carries as `work`: [epoch, nonce, stamp]."""

    epoch: int
    nonce: bytes
    stamp: bytes = b""
    """The SHA-256 stamp on (seed, key, nonce) (Puzzle.stamped); b"": none (a proof saved before stamps)."""


@dataclass(frozen=True, kw_only=True)
class Puzzle:
    """One run's admission puzzle ([swarm] identity_work_*, in the manifest, hence the run id)."""

    run_id: str
    bits: int
    """Leading zero bits a proof's scrypt output must have (0: no work asked)."""
    n_log2: int
    """scrypt's cost n as a power of two (memory and time per evaluation grow as 2^n_log2)."""
    r: int
    """scrypt's block size (memory per evaluation: 128 x r x 2^n_log2 bytes)."""
    stamp_bits: int
    """Leading zero bits a proof's SHA-256 stamp must have (0: any 8 bytes)."""
    epoch_rounds: int = 1024
    """Rounds of an epoch ([swarm] identity_epoch_rounds): a proof counts in its epoch and the next."""

    @property
    def expected(self) -> int:
        """Mean evaluations a search takes."""
        return 2**self.bits

    @property
    def stamp_expected(self) -> int:
        """Mean SHA-256 hashes a stamp takes."""
        return 2**self.stamp_bits

    def first_seed(self) -> bytes:
        """seed(0): SHA-256 of the run id (public with the manifest)."""
        return hashlib.sha256(self.run_id.encode()).digest()

    def epoch_of(self, round_no: int) -> int:
        """The epoch of round `round_no`."""
        return round_no // self.epoch_rounds

    def window(self, round_no: int) -> tuple[int, ...]:
        """The epochs whose proofs count for an entry of round `round_no`: its own and the one before."""
        e = self.epoch_of(round_no)
        return (e - 1, e) if e else (0,)

    def seeds(self, round_no: int, beacon_of: Callable[[int], str | None]) -> dict[int, bytes]:
        """epoch -> seed of `window(round_no)`, as far as `beacon_of` (round -> the chain's beacon
        of that round, hex, or None where the caller cannot tell) knows them."""
        out = {}
        for e in self.window(round_no):
            beacon = beacon_of(e * self.epoch_rounds) if e else None
            if e == 0 or beacon:  # None or "": a beacon the caller cannot tell
                out[e] = self.first_seed() if e == 0 else bytes.fromhex(beacon)
        return out

    def input(self, key_der: bytes, seed: bytes) -> bytes:
        """What a nonce is appended to: the run, the epoch's seed and the key, each named."""
        return PREFIX + self.run_id.encode() + b"\0" + seed + b"\0" + hashlib.sha256(key_der).digest()

    def evaluate(self, head: bytes, nonce: bytes) -> bytes:
        """One scrypt evaluation (the cost: ~0.1 s and 16 MiB at n 2^14, r 8)."""
        n = 2**self.n_log2
        memory = 128 * self.r * n
        return scrypt(head + nonce, salt=self.run_id.encode(), n=n, r=self.r, p=1, dklen=32, maxmem=2 * memory + 2**20)

    def seed_of(self, proof: Proof, seeds: Mapping[int, bytes] | None) -> bytes | None:
        """The seed `proof`'s epoch names, from `seeds` (None: epoch 0's only); None if unknown."""
        if not isinstance(proof.epoch, int) or isinstance(proof.epoch, bool):
            return None
        return (seeds if seeds is not None else {0: self.first_seed()}).get(proof.epoch)

    def stamped(self, key_der: bytes, proof: Proof, seeds: Mapping[int, bytes] | None = None) -> bool:
        """Does `proof` carry a stamp for its key and nonce in this run, under its epoch's seed of
        `seeds` (False if unknown)? One SHA-256, no scrypt."""
        seed = self.seed_of(proof, seeds)
        if seed is None or not _sized(proof.nonce, NONCE_BYTES) or not _sized(proof.stamp, STAMP_BYTES):
            return False
        return leading_zero_bits(self._stamp_hash(key_der, proof, seed)) >= self.stamp_bits

    def solved(self, key_der: bytes, proof: Proof, seeds: Mapping[int, bytes] | None = None) -> bool:
        """Is `proof`'s nonce a solution for `key_der` under its epoch's seed, its stamp aside? One
        evaluation (none for a malformed proof or an unknown seed: False)."""
        seed = self.seed_of(proof, seeds)
        if seed is None or not _sized(proof.nonce, NONCE_BYTES):
            return False
        return leading_zero_bits(self.evaluate(self.input(key_der, seed), proof.nonce)) >= self.bits

    def valid(self, key_der: bytes, proof: Proof, seeds: Mapping[int, bytes] | None = None) -> bool:
        """Does `proof` admit `key_der` to this run? The stamp first (one hash), then the nonce (one
        evaluation, only for a stamped proof)."""
        if self.bits <= 0:
            return True
        return self.stamped(key_der, proof, seeds) and self.solved(key_der, proof, seeds)

    def solve(
        self,
        key_der: bytes,
        stop: threading.Event,
        progress: Callable[[int, int, str], None] | None = None,
        first: int | None = None,
        epoch: int = 0,
        seed: bytes | None = None,
    ) -> Proof | None:
        """Search nonces from `first` (default: random) until one is valid for `epoch` (whose
        `seed` the caller's chain gives; None: epoch 0's), then its stamp; None when `stop` is set
        first (checked per evaluation). `progress(done, expected, what)` is called every
        PROGRESS_EVERY evaluations, then as the stamp goes (Puzzle.stamp)."""
        seed = self.first_seed() if seed is None else seed
        head = self.input(key_der, seed)
        start = int.from_bytes(os.urandom(NONCE_BYTES), "big") if first is None else first
        done = 0
        while not stop.is_set():
            nonce = ((start + done) % 2 ** (8 * NONCE_BYTES)).to_bytes(NONCE_BYTES, "big")
            done += 1
            if self.bits <= 0 or leading_zero_bits(self.evaluate(head, nonce)) >= self.bits:
                return self.stamp(key_der, Proof(epoch, nonce), stop, progress, seed=seed)
            if progress is not None and done % PROGRESS_EVERY == 0:
                progress(done, self.expected, "scrypt evaluations")
        return None

    def stamp(
        self,
        key_der: bytes,
        proof: Proof,
        stop: threading.Event,
        progress: Callable[[int, int, str], None] | None = None,
        seed: bytes | None = None,
    ) -> Proof | None:
        """`proof` with a stamp for its key and nonce under `seed` (None: epoch 0's): counters from
        0, ~stamp_expected hashes (seconds of a core at the defaults); None when `stop` is set
        first (checked every STAMP_PROGRESS_EVERY hashes, when `progress` is called too)."""
        seed = self.first_seed() if seed is None else seed
        head = hashlib.sha256(self._stamp_head(key_der, proof, seed))  # copied per counter: 0.4 us a hash, not 0.6
        done = 0
        while not stop.is_set():
            for counter in range(done, done + STAMP_PROGRESS_EVERY):
                h = head.copy()
                h.update(counter.to_bytes(STAMP_BYTES, "big"))
                if leading_zero_bits(h.digest()) >= self.stamp_bits:
                    return Proof(proof.epoch, proof.nonce, counter.to_bytes(STAMP_BYTES, "big"))
            done += STAMP_PROGRESS_EVERY
            if progress is not None:
                progress(done, self.stamp_expected, "stamp hashes")
        return None

    def _stamp_head(self, key_der: bytes, proof: Proof, seed: bytes) -> bytes:
        return STAMP_PREFIX + seed + hashlib.sha256(key_der).digest() + proof.nonce

    def _stamp_hash(self, key_der: bytes, proof: Proof, seed: bytes) -> bytes:
        return hashlib.sha256(self._stamp_head(key_der, proof, seed) + proof.stamp).digest()


def leading_zero_bits(digest: bytes) -> int:
    """How many bits at the start of `digest` are zero."""
    value = int.from_bytes(digest, "big")
    return 8 * len(digest) - value.bit_length()


def _sized(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size
