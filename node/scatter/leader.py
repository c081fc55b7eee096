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
  missing  an owner short of its quorum names the senders it lacks (once per task and owner);
           the board asks them (`asked`), each hands the leader its chunk (op `here`), which the
           leader checks and forwards to the owner, who must then include it; a sender that gives
           nothing that checks within a phase is `silent`: it counts toward no quorum this round
           (and gets a strike, as a withholding owner does). The owner cannot drop an honest sender:
           the sender answers for itself;
  done     the level's receipts stand: level-1 owners send their parts on, or members gather.
Members fetch the board by long poll (the leader answers when it has a newer version, or after
`phase`), so no one dials a member. Every wait has a deadline, the leader's too: each version it
publishes says something new (`news`) and follows the last within 2 x `phase`, so a member
whose board shows nothing new for longer (Timeouts.stall) has a leader that stalls its round,
and gives it up as it does a silent one. Members take the board by node/scatter/roster.py's functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time

from node.scatter import chunks
from node.scatter.audit import FraudProof, Input, Round, audit_seed, check_chunk, is_fraud, open_receipt
from node.scatter.grid import AUDITORS, ESCALATE, assign_auditors
from node.scatter.roster import garbler, inputs_of, tasks_of
from node.scatter.round import MOST_REPLACEMENTS
from protocol.errors import ProtocolError
from protocol.kinds.board import Board
from protocol.kinds.scatter import Message, draw_message, flags_of, set_digest, task_name, task_of

log = logging.getLogger("swarmtrain.scatter")


@dataclasses.dataclass
class Claim:
    """An owner's word that it lacks the inputs of the senders at `places` of its task's group."""

    name: str
    owner: str
    places: tuple[int, ...]
    since: float
    open: bool = True

    def answered(self, chunks: dict) -> bool:
        return all((self.name, p) in chunks for p in self.places)


def asked_of(claims, names: set[str]) -> dict[str, tuple[int, ...]]:
    """The board's `asked`: per task of the level, every place any of its claims named."""
    out: dict[str, set[int]] = {}
    for c in (c for c in claims if c.name in names):
        out.setdefault(c.name, set()).update(c.places)
    return {n: tuple(sorted(p)) for n, p in out.items()}


class Leader:
    """Leads one v3 round; `member` (the leader's own node/scatter/member.py Member) serves its
    ops to the other members."""

    def __init__(self, rnd: Round, keys, member, *, auditors: int = AUDITORS, escalate: int = ESCALATE):
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
        self.member = member
        self.claims: dict[tuple[str, str], Claim] = {}  # (task name, owner) -> its claim of missing senders
        self.chunks: dict[tuple[str, int], Input] = {}  # (task name, place) -> the chunk its sender handed us
        self.silent: list[str] = []  # senders asked that handed us nothing that checks, in order

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
            self.await_receipts(tasks)
            with self.cond:
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

    def await_receipts(self, tasks: list[tuple]) -> None:
        """Until every task stands, or 2 x `phase` have passed with no claim open and none settled
        in the last phase (its owner answers after it); claims are settled as they fall due."""
        phase, end = self.timeouts.phase, time.monotonic() + 2 * self.timeouts.phase
        while True:
            with self.cond:
                wake = min((c.since + phase for c in self.claims.values() if c.open), default=end)
                self.cond.wait_for(
                    lambda: all(map(self.stands, tasks)) or self.due(), timeout=max(0.0, wake - time.monotonic())
                )
                ready = self.due()
                if not ready and (all(map(self.stands, tasks)) or time.monotonic() >= end):
                    if not any(c.open for c in self.claims.values()):
                        return
            if ready:
                self.settle(ready)
                end = max(end, time.monotonic() + phase)

    def due(self) -> list[Claim]:
        """Open claims every named sender answered, or that are a phase old."""
        now, phase = time.monotonic(), self.timeouts.phase
        return [c for c in self.claims.values() if c.open and (c.since + phase <= now or c.answered(self.chunks))]

    def claim(self, owner: str, msg: Message) -> None:
        """An owner's claim that it lacks the senders at the places `data` marks: they are asked."""
        rnd, name = self.rnd, task_name(msg.task)
        if msg.level != 1 or owner != rnd.owner(*msg.task) or name in rnd.fixed or (name, owner) in self.claims:
            raise ProtocolError(f"no claim on task {name} from {owner[:16]}: not its owner, or once only")
        group = rnd.grid.groups[msg.a]
        named = tuple(i for i, f in enumerate(flags_of(msg.data, len(group))) if f and rnd.counts(group[i]))
        if not named or owner in (group[i] for i in named):
            raise ProtocolError(f"a claim on task {name} that names no sender counted, or its owner")
        self.claims[(name, owner)] = Claim(name, owner, named, time.monotonic())
        self.republish(1)

    def take_chunk(self, sender: str, msg: Message) -> None:
        """A named sender's chunk (op `here`), kept if it checks, for the claims that asked it."""
        name, group = task_name(msg.task), self.rnd.grid.groups[msg.a] if self.rnd.in_range(*msg.task) else ()
        asked = any(c.name == name and msg.index in c.places for c in self.claims.values())
        if msg.level != 1 or not asked or msg.index >= len(group) or group[msg.index] != sender:
            raise ProtocolError(f"{sender[:16]} was not asked for its input to task {name}")
        item = Input(msg.envelope or {}, msg.data, msg.note)
        check_chunk(self.rnd, sender, msg.b, item)
        self.chunks[(name, msg.index)] = item

    def settle(self, claims: list[Claim]) -> None:
        """Each named sender that answered has its chunk forwarded to the owner (which must then
        include it); one that did not is silent. The board is published again after the forwards."""
        rnd, forwards = self.rnd, []
        with self.cond:
            for c in claims:
                c.open, group = False, rnd.grid.groups[task_of(c.name)[1]]
                for place in c.places:
                    item = self.chunks.get((c.name, place))
                    if item is not None:
                        forwards.append((c, place, item))
                    elif group[place] not in rnd.silent:
                        rnd.silent.add(group[place])
                        self.silent.append(group[place])
        for c, place, item in forwards:
            fields = dict(index=place, envelope=item.envelope, data=item.data, note=item.note)
            try:
                self.member.call(c.owner, self.member.message("chunk", task_of(c.name), **fields))
            except (ProtocolError, TimeoutError, OSError) as e:
                log.info("round %d: could not forward a chunk to %s: %s", rnd.round, c.owner[:16], e)
        self.republish(1)

    def republish(self, level: int) -> None:
        stage, tag, count = self.stage.get(level, ("", "", 0))
        if stage:
            self.publish(level, stage, tag=tag, count=count)

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
                if is_fraud(rnd, FraudProof(verdict.envelope, *task, inputs_of(verdict))):
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
            if self.stage.get(msg.level, ("",))[0] == "collect":
                self.republish(msg.level)

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
                asked=asked_of(self.claims.values(), names),
                silent=tuple(sorted(rnd.silent)),
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
                receipt = open_receipt(rnd, msg.envelope, *msg.task)  # its current owner's, for this task
                claim = self.claims.get((name, caller))
                flags = flags_of(receipt.included, len(rnd.senders(*msg.task)))
                if claim is not None and any(not flags[i] for i in claim.places if (name, i) in self.chunks):
                    raise ProtocolError(f"a receipt of {name} that leaves out an input we forwarded")
                self.pending[name] = msg.envelope
            elif msg.op == "verdict":
                self.verdicts[(name + msg.tag, caller)] = msg
            elif msg.op == "garble":
                self.convict_sender(msg)
            elif msg.op == "missing":
                self.claim(caller, msg)
            elif msg.op == "here":
                self.take_chunk(caller, msg)
            elif msg.op == "proof":
                served = self.convictions.get(msg.data.hex())
                if served is None or Message.decode(served).task != msg.task:
                    raise ProtocolError(f"no conviction on task {name} with that proof")
                return served
            else:
                raise ProtocolError(f"the leader does not serve {msg.op}")
            self.cond.notify_all()
        return b""
