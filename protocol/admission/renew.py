"""Our next epoch's admission proof, solved in the background (work.py: epochs).

A proof of epoch e counts in epochs e and e + 1. Once round e x epoch_rounds is on our chain (its
beacon is seed(e)) and our proof is older, a thread solves epoch e's; our announcements switch to
it when it is ready, so the old one covers the search (a whole epoch) and no round is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from protocol.admission import work
from protocol.admission.rule import Admission

SAY_EVERY = 15.0  # seconds between two progress lines


class Renewal:
    """Keeps `admission.proof` (ours, for `key_der`) of the chain's current epoch."""

    def __init__(
        self,
        admission: Admission,
        key_der: bytes,
        stop: threading.Event,
        say: Callable[[str], None],
        keep: Callable[[work.Proof], None] = lambda proof: None,
    ):
        self.admission, self.key_der, self.stop, self.say, self.keep = admission, key_der, stop, say, keep
        self.solving: int | None = None  # the epoch a thread is solving
        self.thread: threading.Thread | None = None

    def due(self, round_no: int, beacon_of: Callable[[int], str | None]) -> bool:
        """Called as round `round_no` opens (`beacon_of`: our chain's beacons): start solving its
        epoch's proof if ours is older and the seed is known. True: a solve was started."""
        puzzle, proof = self.admission.puzzle, self.admission.proof
        if puzzle is None or not proof or self.stop.is_set():
            return False  # no work, or exempt (the organizer announces none)
        epoch = puzzle.epoch_of(round_no)
        if proof[0] >= epoch or self.solving is not None and self.solving >= epoch:
            return False
        beacon = beacon_of(epoch * puzzle.epoch_rounds)
        if beacon is None:
            return False  # a round whose beacon we do not hold (we synced past it): the next epoch's then
        self.solving = epoch
        self.thread = threading.Thread(
            target=self._solve, args=(puzzle, epoch, bytes.fromhex(beacon)), name="admission-renewal", daemon=True
        )
        self.thread.start()
        return True

    def _solve(self, puzzle: work.Puzzle, epoch: int, seed: bytes) -> None:
        t0 = last = time.monotonic()
        self.say(f"admission work: solving our proof of epoch {epoch} in the background (Ctrl+C stops)")

        def progress(done: int, expected: int, what: str) -> None:
            nonlocal last
            if time.monotonic() - last >= SAY_EVERY:
                last = time.monotonic()
                self.say(f"admission work, epoch {epoch}: {done} of ~{expected} {what} ({last - t0:.0f} s)")

        found = puzzle.solve(self.key_der, self.stop, progress, epoch=epoch, seed=seed)
        if found is None:
            return  # stopped
        if not self.admission.proof or self.admission.proof[0] < epoch:
            self.admission.proof = tuple(found)  # one assignment: the next announcement carries it
        self.keep(found)
        self.say(f"admission work: our proof of epoch {epoch} is ready ({time.monotonic() - t0:.0f} s), announced now")

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
