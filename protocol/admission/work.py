"""An identity costs work: a memory-hard proof bound to the run and the key (docs/trust-model.md, step 7).

A proof is an 8-byte nonce such that scrypt(puzzle input | nonce) starts with `bits` zero bits.
The input names the run id, the epoch's seed and SHA-256 of the author's DER public key, so a
proof is worth one identity in one run, never another key's or another run's. Finding one takes
2^bits evaluations on average (geometric: 5% of searches take 3x the mean); checking one takes
one. Each evaluation needs 128 x r x 2^n_log2 bytes of memory (16 MiB at n 2^14, r 8), so a GPU
buys bandwidth, not thousands of cores' worth: PoW is flood control and ban cost, not the Sybil
bound (the chain's credit is).

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
NONCE_BYTES = 8
PROGRESS_EVERY = 64  # evaluations between two progress calls while solving


class Proof(NamedTuple):
    """What an announcement carries as `work`: [epoch, nonce]."""

    epoch: int
    nonce: bytes


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

    @property
    def expected(self) -> int:
        """Mean evaluations a search takes."""
        return 2**self.bits

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

    def valid(self, key_der: bytes, proof: Proof) -> bool:
        """Does `proof` admit `key_der` to this run? One evaluation (none for a malformed proof)."""
        if self.bits <= 0:
            return True
        if proof.epoch != 0 or not isinstance(proof.nonce, bytes) or len(proof.nonce) != NONCE_BYTES:
            return False
        return leading_zero_bits(self.evaluate(self.input(key_der, proof.epoch), proof.nonce)) >= self.bits

    def solve(
        self,
        key_der: bytes,
        stop: threading.Event,
        progress: Callable[[int], None] | None = None,
        first: int | None = None,
    ) -> Proof | None:
        """Search nonces from `first` (default: random) until one is valid; None when `stop` is set
        first (checked per evaluation). `progress(evaluations done)` is called every PROGRESS_EVERY
        evaluations."""
        head = self.input(key_der, 0)
        start = int.from_bytes(os.urandom(NONCE_BYTES), "big") if first is None else first
        done = 0
        while not stop.is_set():
            nonce = ((start + done) % 2 ** (8 * NONCE_BYTES)).to_bytes(NONCE_BYTES, "big")
            done += 1
            if self.bits <= 0 or leading_zero_bits(self.evaluate(head, nonce)) >= self.bits:
                return Proof(0, nonce)
            if progress is not None and done % PROGRESS_EVERY == 0:
                progress(done)
        return None


def leading_zero_bits(digest: bytes) -> int:
    """How many bits at the start of `digest` are zero."""
    value = int.from_bytes(digest, "big")
    return 8 * len(digest) - value.bit_length()
