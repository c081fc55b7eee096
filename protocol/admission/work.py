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

Epoch seeds: the design draws seed(e) from the chain's beacon every `epoch_rounds` rounds, so
proofs cannot be stockpiled before their epoch. Built here is epoch 0 only, seeded by the run id:
a proof can be computed once the manifest is public, before the run starts (a departure the
docs state; the beacon seeds need the checkpoints of step 2 to be checkable by joiners).

Pure: hashlib only. `scrypt` is this module's name for hashlib.scrypt, so tests count calls.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
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

    @property
    def expected(self) -> int:
        """Mean evaluations a search takes."""
        return 2**self.bits

    @property
    def stamp_expected(self) -> int:
        """Mean SHA-256 hashes a stamp takes."""
        return 2**self.stamp_bits

    def seed(self, epoch: int) -> bytes:
        """Epoch 0's seed: SHA-256 of the run id (later epochs are not built: see the module doc)."""
        if epoch != 0:
            raise ValueError(f"epoch {epoch}: only epoch 0 (seeded by the run id) is built")
        return hashlib.sha256(self.run_id.encode()).digest()

    def input(self, key_der: bytes, epoch: int) -> bytes:
        """What a nonce is appended to: the run, the epoch's seed and the key, each named."""
        return PREFIX + self.run_id.encode() + b"\0" + self.seed(epoch) + b"\0" + hashlib.sha256(key_der).digest()

    def evaluate(self, head: bytes, nonce: bytes) -> bytes:
        """One scrypt evaluation (the cost: ~0.1 s and 16 MiB at n 2^14, r 8)."""
        n = 2**self.n_log2
        memory = 128 * self.r * n
        return scrypt(head + nonce, salt=self.run_id.encode(), n=n, r=self.r, p=1, dklen=32, maxmem=2 * memory + 2**20)

    def stamped(self, key_der: bytes, proof: Proof) -> bool:
        """Does `proof` carry a stamp for its key and nonce in this run? One SHA-256, no scrypt."""
        if proof.epoch != 0 or not _sized(proof.nonce, NONCE_BYTES) or not _sized(proof.stamp, STAMP_BYTES):
            return False
        return leading_zero_bits(self._stamp_hash(key_der, proof)) >= self.stamp_bits

    def solved(self, key_der: bytes, proof: Proof) -> bool:
        """Is `proof`'s nonce a solution for `key_der`, its stamp aside? One evaluation (none for a
        malformed proof)."""
        if proof.epoch != 0 or not _sized(proof.nonce, NONCE_BYTES):
            return False
        return leading_zero_bits(self.evaluate(self.input(key_der, proof.epoch), proof.nonce)) >= self.bits

    def valid(self, key_der: bytes, proof: Proof) -> bool:
        """Does `proof` admit `key_der` to this run? The stamp first (one hash), then the nonce (one
        evaluation, only for a stamped proof)."""
        if self.bits <= 0:
            return True
        return self.stamped(key_der, proof) and self.solved(key_der, proof)

    def solve(
        self,
        key_der: bytes,
        stop: threading.Event,
        progress: Callable[[int, int, str], None] | None = None,
        first: int | None = None,
    ) -> Proof | None:
        """Search nonces from `first` (default: random) until one is valid, then its stamp; None
        when `stop` is set first (checked per evaluation). `progress(done, expected, what)` is
        called every PROGRESS_EVERY evaluations, then as the stamp goes (Puzzle.stamp)."""
        head = self.input(key_der, 0)
        start = int.from_bytes(os.urandom(NONCE_BYTES), "big") if first is None else first
        done = 0
        while not stop.is_set():
            nonce = ((start + done) % 2 ** (8 * NONCE_BYTES)).to_bytes(NONCE_BYTES, "big")
            done += 1
            if self.bits <= 0 or leading_zero_bits(self.evaluate(head, nonce)) >= self.bits:
                return self.stamp(key_der, Proof(0, nonce), stop, progress)
            if progress is not None and done % PROGRESS_EVERY == 0:
                progress(done, self.expected, "scrypt evaluations")
        return None

    def stamp(
        self,
        key_der: bytes,
        proof: Proof,
        stop: threading.Event,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> Proof | None:
        """`proof` with a stamp for its key and nonce: counters from 0, ~stamp_expected hashes
        (seconds of a core at the defaults); None when `stop` is set first (checked every
        STAMP_PROGRESS_EVERY hashes, when `progress` is called too)."""
        head = hashlib.sha256(self._stamp_head(key_der, proof))  # copied per counter: 0.4 us a hash, not 0.6
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

    def _stamp_head(self, key_der: bytes, proof: Proof) -> bytes:
        return STAMP_PREFIX + self.seed(proof.epoch) + hashlib.sha256(key_der).digest() + proof.nonce

    def _stamp_hash(self, key_der: bytes, proof: Proof) -> bytes:
        return hashlib.sha256(self._stamp_head(key_der, proof) + proof.stamp).digest()


def leading_zero_bits(digest: bytes) -> int:
    """How many bits at the start of `digest` are zero."""
    value = int.from_bytes(digest, "big")
    return 8 * len(digest) - value.bit_length()


def _sized(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size
