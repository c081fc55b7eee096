"""`bench byzantine --sybil`'s admission rows (trust design step 7, protocol/admission).

work        what one identity costs at the run defaults ([swarm] identity_work_*: 11 bits of
            scrypt n=2^14, r=8, then a stamp of identity_stamp_bits 24 of SHA-256): seconds of one
            core per evaluation, the mean of a search (2^bits evaluations), the stamp's mean
            (2^stamp_bits hashes at the measured rate), and `solves` searches timed whole
            (geometric: they vary ~x3).
work-flood  a leader facing `records` fresh keys whose announcements carry junk proofs with junk
            stamps (free): scrypt calls and CPU per roster (a stamp is checked first, with one
            hash). A junk proof takes a check only with a stamp on its key and nonce, and a key
            takes one leader's check in all (rosters list failures, protocol 7): `records` stamped
            keys cost their author `records` x 2^stamp_bits hashes and keep a newcomer out of at
            most ceil((records + 1) / 4) rosters (tests/test_sybil_attacks_2.py, _3.py; PoW is
            flood control, not a Sybil bound).
"""

from __future__ import annotations

import math
import statistics
import threading
import time

from node.config import SwarmConfig
from protocol.admission import work
from protocol.admission.rule import NEWCOMERS, Admission
from protocol.records import Announcement

RUN = "sybil-work-0123456789ab"


def defaults() -> work.Puzzle:
    s = SwarmConfig()
    return work.Puzzle(
        run_id=RUN,
        bits=s.identity_work_bits,
        n_log2=s.identity_work_n_log2,
        r=s.identity_work_r,
        stamp_bits=s.identity_stamp_bits,
    )


def stamp_seconds(puzzle: work.Puzzle, hashes: int = 2**20) -> float:
    """Mean seconds of one core a stamp takes: `hashes` tried (a stamp too hard to be found in
    them), timed, scaled to 2^stamp_bits."""
    hard = work.Puzzle(run_id=RUN, bits=puzzle.bits, n_log2=puzzle.n_log2, r=puzzle.r, stamp_bits=256)
    stop, seen = threading.Event(), []

    def progress(done: int, expected: int, what: str) -> None:
        seen.append(done)
        if done >= hashes:
            stop.set()

    t0 = time.process_time()
    hard.stamp(b"a key", work.Proof(0, bytes(8)), stop, progress)
    return (time.process_time() - t0) / seen[-1] * puzzle.stamp_expected


def cost(solves: int, evaluations: int = 20) -> dict:
    """Seconds of one core per evaluation and per identity at the defaults."""
    puzzle = defaults()
    head = puzzle.input(b"a key", puzzle.first_seed())
    t0 = time.process_time()
    for i in range(evaluations):
        puzzle.evaluate(head, i.to_bytes(8, "big"))
    per_eval = (time.process_time() - t0) / evaluations
    solved = []
    for i in range(solves):
        t0 = time.process_time()
        assert puzzle.solve(b"key %d" % i, threading.Event()) is not None
        solved.append(time.process_time() - t0)
    mean = per_eval * puzzle.expected
    return {
        "row": "work",
        "case": f"one identity: {puzzle.bits} bits of scrypt n=2^{puzzle.n_log2}, r={puzzle.r}, "
        f"a stamp of {puzzle.stamp_bits} bits",
        "identity_share": 0.0,
        "established_share": 0.0,
        "credit_share": None,  # one identity's cost: no credit involved
        "ms_per_evaluation": round(1000 * per_eval, 1),
        "memory_mib": 128 * puzzle.r * 2**puzzle.n_log2 / 2**20,
        "mean_core_seconds": round(mean, 1),
        "stamp_mean_core_seconds": round(stamp_seconds(puzzle), 1),
        "solves": len(solved),
        "solve_core_seconds": [round(s, 1) for s in solved],
        "median_solve_core_seconds": round(statistics.median(solved), 1) if solved else None,
        "target": "minutes of a core per identity (mean >= 30 s)",
        "met": mean >= 30,
    }


def flood(records: int, rosters: int = 10) -> dict:
    """A leader's admission over `records` junk proofs with junk stamps, roster after roster."""
    puzzle = defaults()
    calls = [0]
    real = work.scrypt

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    announced = {}
    for i in range(records):
        env, ann = _announcement(f"sybil{i:06d}", (0, i.to_bytes(8, "big"), bytes(8)))
        announced[ann.peer] = (env, ann)
    leader = Admission(puzzle)
    per_roster, cpu, lucky = [], [], set()
    work.scrypt = counted
    try:
        for r in range(1, rosters + 1):
            calls[0] = 0
            t0 = time.process_time()
            got = leader.admit(announced, set(), beacon=f"{r:064x}")
            cpu.append(time.process_time() - t0)
            per_roster.append(calls[0])
            lucky |= got  # a junk nonce is a valid proof 1 time in 2^bits: a lucky guess, admitted
    finally:
        work.scrypt = real
    most, stamp = max(per_roster), stamp_seconds(puzzle)
    return {
        "row": "work-flood",
        "case": f"{records} fresh keys with junk proofs and junk stamps, {rosters} rosters",
        "identity_share": round(records / (records + 1), 3),
        "established_share": 0.0,
        "credit_share": 0.0,  # fresh keys: no roster credits them
        "max_scrypt_calls_per_roster": most,
        "max_ms_per_roster": round(1000 * max(cpu), 1),
        "lucky_guesses_admitted": len(lucky),
        "attacker_hashes_per_check": puzzle.stamp_expected,  # a stamp on the key and nonce, one check in all
        "stamped_crowd_core_seconds": round(records * stamp, 1),  # to stamp `records` keys instead
        "most_rosters_a_stamped_crowd_holds_a_newcomer": math.ceil((records + 1) / NEWCOMERS),  # any number of leaders
        "target": f"<= {NEWCOMERS} scrypt calls per roster",
        "met": most <= NEWCOMERS,
    }


def _announcement(peer: str, proof: tuple) -> tuple[dict, Announcement]:
    ann = Announcement(
        run=RUN, round=1, peer=peer, nbytes=8, sha256="1" * 64, tokens=1, base="a" * 64, time=1.0, work=proof
    )
    return {"key": f"DER of {peer}".encode()}, ann
