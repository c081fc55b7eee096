"""From a signed roster to the v3 round every member runs alike (docs/protocol.md "v3"), and the
leader's board as every member takes it into that round (node/scatter/leader.py publishes it).

Pure helpers for the node (the round protocol decides with grid.uses_scatter): which of a
roster's members are reachable (may own chunks), and the Round (grid, rule, keys) each member
builds from the roster alone, so every peer derives the same one. Running it
(node/scatter/member.py Member, leader.py Leader) over the exchange (node/p2p/roundnet.py
RealNet.call) is the round protocol's, and not wired yet (docs/protocol.md "Not built yet").
"""

from __future__ import annotations

import dataclasses
import hashlib

from node.outer.aggregate import Aggregator
from node.scatter.audit import FraudProof, Input, Round, audit_seed, is_fraud, is_garble
from node.scatter.chunks import INT8, Wire
from node.scatter.grid import RsaChecker, place
from protocol import maddrs as addresses
from protocol.errors import ProtocolError
from protocol.kinds.board import Board
from protocol.kinds.scatter import Message, draw_message, task_name, task_of
from protocol.records import Announcement, Heartbeat, Roster


def reachable(members: list[str], peers: dict[str, Heartbeat]) -> set[str]:
    """The members others can dial (a public address or a relay in their signed heartbeat:
    protocol/maddrs.py dialable); where none is, but every member announces only loopback or
    private addresses (one machine or one private network: tests, a demo, a lab's cluster), all
    of them: else no v3 round of theirs could have an owner (a swarm of homes behind NAT with no
    reachable member has none either way). A member without a heartbeat here owns nothing. The
    leader's call lists them (`reach`)."""
    known = {p: peers[p].maddrs for p in members if p in peers}
    out = {p for p, m in known.items() if addresses.dialable(m)}
    if not out and known and all(addresses.kind_of(list(m)) in ("loopback", "private") for m in known.values()):
        return set(known)
    return out


def scatter_round(
    envelope: dict,
    roster: Roster,
    announcements: tuple[Announcement, ...],
    reach: set[str],
    total: int,
    agg: Aggregator,
    wire: Wire = INT8,
) -> Round:
    """The v3 Round of this roster (its signed `envelope`, opened, and its announcements opened,
    as node/round/ledger.py AcceptedRoster holds them): its members placed under its beacon and
    attempt (the unground beacon: no leader chose the grid), updates of `total` values reduced
    with `agg` on the run's `wire` (node/scatter/runner.py run_wire), and the members' and
    leader's keys from the envelopes the roster carries (a board's draw is checked against the
    leader's). Raises ValueError when no member is reachable."""
    members = [a.peer for a in announcements]
    keys = {a.peer: env["key"] for a, env in zip(announcements, roster.entries) if isinstance(env, dict)}
    keys[roster.leader] = envelope["key"]
    grid = place(members, reach & set(members), roster.beacon, roster.attempt)
    return Round(
        run=roster.run,
        round=roster.round,
        attempt=roster.attempt,
        grid=grid,
        total=total,
        agg=agg,
        checker=RsaChecker(keys),
        committed=set(members),
        wire=wire,
    )


LEADER_OPS = ("receipt", "board", "verdict", "proof", "garble", "missing", "here")
"""The ops a member serves only as its round's leader (Member.answer hands them to its Leader)."""


def tasks_of(rnd: Round, level: int) -> list[tuple[int, int, int]]:
    grid = rnd.grid
    if level == 1:
        return [(1, g, j) for g in range(grid.n_groups) for j in range(grid.chunks)]
    return [(2, j, k) for j in range(grid.chunks) for k in range(grid.n_groups)]


def apply_board(rnd: Round, board: Board) -> None:
    """The leader's word on the level, taken as every member takes it."""
    rnd.replaced, rnd.caught, rnd.silent = dict(board.replaced), set(board.caught), set(board.silent)
    for task in tasks_of(rnd, board.level):
        name = task_name(task)
        if name in board.fixed:
            rnd.fixed[name], rnd.signers[name] = board.fixed[name], board.signers[name]
        else:
            rnd.unfix(name)


def board_seed(rnd: Round, board: Board, leader: str) -> str:
    """The audit seed of the board's level (raises ProtocolError if the leader's draw does not check).
    It stays the one drawn when the level's receipts were first fixed, through re-audits."""
    digest = board.digest
    message = draw_message(rnd.run, rnd.round, rnd.attempt, board.level, digest)
    if not rnd.checker.unique_ok(board.draw, message, leader, {}):
        raise ProtocolError("the leader's draw of the audit seed does not check")
    return audit_seed(rnd.grid.seed, digest, board.draw)


def news(board: Board) -> tuple:
    """What a board says, as a key its level's earlier boards must not have shown: a leader
    publishes a new one with every version (a new stage or audit draw `tag`, one more task passed
    over, one more owner caught, one more sender asked or silent), so a version that repeats one
    moves the round nowhere (Member.level counts only news as the leader's progress)."""
    asked = sum(map(len, board.asked.values()))
    return board.stage, board.tag, sum(board.replaced.values()), len(board.caught), asked, len(board.silent)


def newly_caught(rnd: Round, board: Board) -> list[tuple[str, tuple, str]]:
    """(owner, task, proof's SHA-256) for each owner the board convicts that `rnd` has not yet."""
    return [(p, task_of(board.proofs[p][0]), board.proofs[p][1]) for p in board.caught if p not in rnd.caught]


def proves(rnd: Round, owner: str, task: tuple, digest: str, served: bytes) -> bool:
    """Whether `served` (what the leader answered to op `proof`) is the verdict the board pinned
    and shows that `owner` lied on `task`: checked against `rnd` as the previous board left it,
    with the task's receipt taken as `owner`'s (a proof stands on the owner's signature alone: an
    honest owner never signs a receipt that its signed inputs do not give). One task's reduce."""
    if hashlib.sha256(served).hexdigest() != digest or not rnd.in_range(*task):
        return False
    try:
        verdict = Message.decode(served)
    except ProtocolError:
        return False
    if verdict.op == "garble":  # a sender's note against its commitment: `owner` is the sender
        return verdict.task == task and garbler(rnd, verdict) == owner
    if (verdict.op, verdict.index, verdict.task) != ("verdict", 1, task) or verdict.envelope is None:
        return False
    as_owner = dataclasses.replace(rnd, signers={**rnd.signers, task_name(task): owner})
    return is_fraud(as_owner, FraudProof(verdict.envelope, *task, inputs_of(verdict)))


def inputs_of(msg: Message) -> tuple[Input | None, ...]:
    """The signed inputs a message carries (an owner's `inputs` answer, an auditor's verdict)."""
    return tuple(None if i is None else Input(*i) for i in msg.inputs)


def garbler(rnd: Round, msg: Message) -> str | None:
    """The sender a `garble` report proves sent garbage (the `index`-th member of group a, whose
    note of chunk b contradicts its commitment: audit.is_garble), or None."""
    level, g, j = msg.task
    group = rnd.grid.groups[g] if level == 1 and rnd.in_range(*msg.task) else ()
    sender = group[msg.index] if msg.index < len(group) else None
    return sender if sender is not None and is_garble(rnd, sender, j, msg.envelope, msg.note) else None
