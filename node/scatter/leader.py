"""The leader's part in a v3 round over the network: the board every member follows.

For each level the leader (a reachable member: election.candidates) takes the owners' receipts,
and says on its board, version by version (protocol/kinds/scatter.py Board), what stands:
  collect  until every task has a receipt from its current owner; a task still without one when
           2 x `phase` has passed changes hands (its owner withheld: `replaced`), and its senders
           send to the backup;
  audit    once every task stands, the receipts are fixed (one per task) and the leader signs
           their digest uniquely (`draw`): the audit seed follows, and with it who audits what
           (grid.assign_auditors, which every member runs alike). Auditors send it their verdicts;
           a fraud proof that checks (audit.is_fraud, from the signatures alone) bans the liar for
           the round and its task goes to the backup (collect again), and then every task of the
           level gets `escalate` more auditors (a liar's fellows may be lying too). The board pins
           the proof's SHA-256 (`proofs`), the leader serves it (op `proof`, until the next round
           replaces its Member), and every member checks it before it takes the board (`proves`):
           a leader that lists an honest owner as caught is given up on as a silent one;
  garble   at any stage, an owner's report of a sender whose signed chunk note contradicts its
           commitment (audit.is_garble) convicts the sender like a liar (`caught`, the report
           pinned in `proofs`); it counts toward no quorum, and a collecting board is re-published;
  done     the level's receipts stand: level-1 owners send their parts on, or members gather.
Members fetch the board by long poll (the leader answers when it has a newer version, or after
`phase`), so no one dials a member. Every wait has a deadline, the leader's too: each version it
publishes says something new (`news`) and follows the last within 2 x `phase`, so a member
whose board shows nothing new for longer (Timeouts.stall) has a leader that stalls its round,
and gives it up as it does a silent one. Members take the board by this module's functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading

from node.scatter import chunks
from node.scatter.audit import FraudProof, Input, Round, audit_seed, is_fraud, is_garble, open_receipt
from node.scatter.grid import assign_auditors
from node.scatter.round import MOST_REPLACEMENTS
from protocol.errors import ProtocolError
from protocol.kinds.board import Board
from protocol.kinds.scatter import Message, draw_message, set_digest, task_name, task_of

LEADER_OPS = ("receipt", "board", "verdict", "proof", "garble")
"""The ops a member serves only as its round's leader (Member.answer hands them to its Leader)."""


def tasks_of(rnd: Round, level: int) -> list[tuple[int, int, int]]:
    grid = rnd.grid
    if level == 1:
        return [(1, g, j) for g in range(grid.n_groups) for j in range(grid.chunks)]
    return [(2, j, k) for j in range(grid.chunks) for k in range(grid.n_groups)]


def apply_board(rnd: Round, board: Board) -> None:
    """The leader's word on the level, taken as every member takes it."""
    rnd.replaced, rnd.caught = dict(board.replaced), set(board.caught)
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
    over, one more owner caught), so a version that repeats one moves the round nowhere
    (Member.level counts only news as the leader's progress)."""
    return board.stage, board.tag, sum(board.replaced.values()), len(board.caught)


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
    inputs = tuple(None if i is None else Input(*i) for i in verdict.inputs)
    return is_fraud(as_owner, FraudProof(verdict.envelope, *task, inputs))


def garbler(rnd: Round, msg: Message) -> str | None:
    """The sender a `garble` report proves sent garbage (the `index`-th member of group a, whose
    note of chunk b contradicts its commitment: audit.is_garble), or None."""
    level, g, j = msg.task
    group = rnd.grid.groups[g] if level == 1 and rnd.in_range(*msg.task) else ()
    sender = group[msg.index] if msg.index < len(group) else None
    return sender if sender is not None and is_garble(rnd, sender, j, msg.envelope, msg.note) else None


class Leader:
    """Leads one v3 round; `member` (the leader's own node/scatter/member.py Member) serves its
    ops to the other members."""

    def __init__(self, rnd: Round, keys, member, *, auditors: int = 1, escalate: int = 3):
        self.rnd, self.keys, self.auditors, self.escalate = rnd, keys, auditors, escalate
        self.timeouts = member.timeouts
        member.lead = self
        self.cond = threading.Condition()
        self.boards: dict[int, Board] = {}
        self.version = 0
        self.pending: dict[str, dict] = {}  # task name -> the receipt its current owner sent
        self.verdicts: dict[tuple[str, str], Message] = {}  # (task name + tag, auditor) -> its verdict
        self.digests: dict[int, str] = {}
        self.draws: dict[int, bytes] = {}
        self.seeds: dict[int, str] = {}
        self.withheld: list[str] = []
        self.caught: list[str] = []  # in the order convicted
        self.proofs: dict[str, str] = {}  # convicted owner -> SHA-256 of the verdict (fraud proof) it fell by
        self.tasks: dict[str, str] = {}  # convicted owner -> the task it fell on
        self.convictions: dict[str, bytes] = {}  # a verdict's SHA-256 -> its bytes (op `proof` serves them)
        self.stage: dict[int, tuple[str, str, int]] = {}  # level -> (stage, tag, count) last published

    def run(self) -> None:
        for level in (1, 2):
            self.lead_level(level)

    def lead_level(self, level: int) -> None:
        tasks = tasks_of(self.rnd, level)
        self.collect(level, tasks)
        self.fix(level)
        convicted = self.audit_round(level, "", self.auditors)
        for again in range(1, MOST_REPLACEMENTS + 1):
            if not convicted:
                self.publish(level, "done")
                return
            self.collect(level, convicted)
            convicted = self.audit_round(level, f"/again{again}", self.escalate)
        raise ProtocolError(f"level {level}: {MOST_REPLACEMENTS} audits in a row convicted an owner")

    def stands(self, task: tuple) -> bool:
        try:
            open_receipt(self.rnd, self.pending.get(task_name(task)), *task)
            return True
        except ProtocolError:
            return False

    def collect(self, level: int, tasks: list[tuple]) -> None:
        """Until each task has a receipt of its current owner; then those receipts stand."""
        with self.cond:
            for task in tasks:
                self.rnd.unfix(task_name(task))
        for _ in range(MOST_REPLACEMENTS):
            self.publish(level, "collect")
            with self.cond:
                self.cond.wait_for(lambda: all(map(self.stands, tasks)), timeout=2 * self.timeouts.phase)
                missing = [t for t in tasks if not self.stands(t)]
                if not missing:
                    owners = {task_name(t): self.rnd.owner(*t) for t in tasks}
                    for name, owner in owners.items():
                        self.rnd.fixed[name] = chunks.sha(self.pending[name]["body"])
                        self.rnd.signers[name] = owner
                    return
                for task in missing:  # withheld: the backup takes the task, its senders send again
                    name = task_name(task)
                    self.withheld.append(self.rnd.owner(*task))
                    self.rnd.replaced[name] = self.rnd.replaced.get(name, 0) + 1
                    self.pending.pop(name, None)
        raise ProtocolError(f"level {level}: {MOST_REPLACEMENTS} owners in a row did not answer")

    def fix(self, level: int) -> None:
        """The level's receipts are fixed: the leader signs their digest once (sign_unique)."""
        rnd = self.rnd
        with self.cond:
            digest = set_digest({task_name(t): rnd.fixed[task_name(t)] for t in tasks_of(rnd, level)})
            self.digests[level] = digest
            self.draws[level] = self.keys.unique(draw_message(rnd.run, rnd.round, rnd.attempt, level, digest))
            self.seeds[level] = audit_seed(rnd.grid.seed, digest, self.draws[level])

    def audit_round(self, level: int, tag: str, count: int) -> list[tuple]:
        """Deal `count` auditors to every task of the level, wait for their verdicts, and convict
        the owners whose fraud proofs check. Returns the tasks that change hands."""
        rnd = self.rnd
        with self.cond:
            names = {task_name(t) + tag: rnd.owner(*t) for t in tasks_of(rnd, level)}
            dealt = assign_auditors(self.seeds[level], names, rnd.grid.members(), count)
            expected = {(n, a) for n, chosen in dealt.items() for a in chosen if a != names[n]}
        self.publish(level, "audit", tag=tag, count=count)
        convicted = []
        with self.cond:
            self.cond.wait_for(lambda: expected <= set(self.verdicts), timeout=2 * self.timeouts.phase)
            for (name, _), verdict in list(self.verdicts.items()):
                task = verdict.task
                if name not in names or verdict.index != 1 or task in convicted:
                    continue
                inputs = tuple(None if i is None else Input(*i) for i in verdict.inputs)
                if is_fraud(rnd, FraudProof(verdict.envelope, *task, inputs)):
                    self.convict(rnd.owner(*task), task, verdict.encode())
                    convicted.append(task)
            for task in convicted:
                rnd.unfix(task_name(task))
        return convicted

    def convict(self, peer: str, task: tuple, served: bytes) -> None:
        """`peer` is caught on `task` by the proof `served` (a verdict or a garble report)."""
        digest = hashlib.sha256(served).hexdigest()
        self.caught.append(peer)
        self.proofs[peer], self.tasks[peer], self.convictions[digest] = digest, task_name(task), served
        self.rnd.caught.add(peer)

    def convict_sender(self, msg: Message) -> None:
        """A garble report: the sender is caught (it counts toward no quorum from now on); a level
        still collecting has its board published again at once, so members drop it too."""
        sender = garbler(self.rnd, msg)
        if sender is None:
            raise ProtocolError(f"no proof that a sender of task {task_name(msg.task)} sent garbage")
        if sender not in self.rnd.caught:
            self.convict(sender, msg.task, msg.encode())
            stage, tag, count = self.stage.get(msg.level, ("", "", 0))
            if stage == "collect":
                self.publish(msg.level, stage, tag=tag, count=count)

    def publish(self, level: int, stage: str, *, tag: str = "", count: int = 0) -> None:
        rnd = self.rnd
        with self.cond:
            self.stage[level] = (stage, tag, count)
            self.version += 1
            names = {task_name(t) for t in tasks_of(rnd, level)}
            fixed = {n: h for n, h in rnd.fixed.items() if n in names}
            self.boards[level] = Board(
                level=level,
                version=self.version,
                stage=stage,
                replaced=dict(rnd.replaced),
                caught=tuple(sorted(rnd.caught)),
                fixed=fixed,
                signers={n: rnd.signers[n] for n in fixed},
                digest=self.digests.get(level, ""),
                draw=self.draws.get(level, b""),
                tag=tag,
                count=count,
                proofs={p: (self.tasks[p], self.proofs[p]) for p in rnd.caught},
            )
            self.cond.notify_all()

    def answer(self, caller: str, msg: Message) -> bytes:
        """The leader's ops: a receipt (kept if it is its task's current owner's), a verdict, a
        board poll (answered when the level's board is at least version `index`, or after `phase`),
        a proof (the verdict a conviction stands on, by its SHA-256)."""
        rnd, name = self.rnd, task_name(msg.task)
        if msg.op == "board":
            with self.cond:
                self.cond.wait_for(
                    lambda: msg.level in self.boards and self.boards[msg.level].version >= msg.index,
                    timeout=self.timeouts.phase,
                )
                board = self.boards.get(msg.level)
            if board is None:
                raise ProtocolError(f"no board of level {msg.level} yet")
            return board.encode()
        with self.cond:
            if caller not in rnd.grid.members():
                raise ProtocolError("not a member of this round")
            if msg.op == "receipt":
                if name in rnd.fixed:
                    raise ProtocolError(f"task {name} has a receipt that stands")
                open_receipt(rnd, msg.envelope, *msg.task)  # its current owner's, for this task
                self.pending[name] = msg.envelope
            elif msg.op == "verdict":
                self.verdicts[(name + msg.tag, caller)] = msg
            elif msg.op == "garble":
                self.convict_sender(msg)
            elif msg.op == "proof":
                served = self.convictions.get(msg.data.hex())
                if served is None or Message.decode(served).task != msg.task:
                    raise ProtocolError(f"no conviction on task {name} with that proof")
                return served
            else:
                raise ProtocolError(f"the leader does not serve {msg.op}")
            self.cond.notify_all()
        return b""
