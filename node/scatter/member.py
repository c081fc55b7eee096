"""One member's part in a v3 round over the network (docs/protocol.md "v3"): the code each peer
runs, where node/scatter/round.py runs every member at once on a simulated bus.

A member, from the round's Round (grid, rule, who committed) and its own update:
  1 chunks   sends chunk j with its signed commitment to owner j of its group (it dials);
  2 level 1  as an owner, waits for its task's inputs (at most `phase` s), keeps those an auditor
             would accept (short of a quorum, it names the senders it lacks to the leader and
             waits for each to be forwarded or silent), reduces, signs its receipt and sends it
             to the leader; then follows the leader's board (node/scatter/leader.py): tasks that
             changed hands get its input again, chunks an owner named missing go to the leader,
             the audits dealt to it it runs, and 'done' ends the level;
  3 parts    as a level-1 owner whose receipt stands, sends part k of its result, with that
             receipt, to part owner k of its column;
  4 level 2  as 2, over the parts;
  5 gather   fetches every final part from its owner with the owner's receipt, and checks the
             part's digest against the receipt the leader fixed.
Every connection is dialled by the member that gives or asks (senders, auditors and gatherers
dial owners, everyone the leader; both are reachable: grid.place): nobody dials a member behind
NAT. Every wait has a deadline; a member that has had no board from the leader for `phase`, or no
news on it for 2.5 x `phase` (Timeouts.stall: a leader that answers polls but never moves its
board on), or whose board convicts an owner with no proof that checks (Framed), gives up (LeaderSilent).
`Member.answer` serves the ops (protocol/kinds/scatter.py Message) other members call.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from node.scatter import chunks
from node.scatter.audit import Input, Round, answer_task, audit, check_input, is_garble, open_receipt, sealed_chunks
from node.scatter.grid import assign_auditors
from node.scatter.roster import LEADER_OPS, apply_board, board_seed, inputs_of, newly_caught, news, proves, tasks_of
from node.scatter.traffic import PAUSE, Behaviour, Framed, LeaderSilent, ScatterNet, Timeouts
from protocol.errors import ProtocolError
from protocol.kinds.board import Board
from protocol.kinds.scatter import Message, bitmap, task_name

log = logging.getLogger("swarmtrain.scatter")


class Member:
    """One member of one v3 round (its keys, its update, its copy of the Round)."""

    def __init__(self, rnd: Round, update: torch.Tensor, keys, net: ScatterNet, leader: str, **options):
        """options: timeouts (Timeouts), behaviour (Behaviour: a simulated deviation), base and
        tokens (the commitment's)."""
        self.rnd, self.update, self.keys, self.net, self.leader = rnd, update, keys, net, leader
        self.me = keys.peer
        self.timeouts: Timeouts = options.get("timeouts", Timeouts())
        self.act: Behaviour = options.get("behaviour", Behaviour())
        self.base, self.tokens = options.get("base", "0" * 64), options.get("tokens", 1)
        self.lead = None  # the Leader whose ops this member serves, if it leads
        self.cond = threading.Condition()
        self.received: dict[tuple, dict[int, dict[str, Input]]] = {}  # task -> sender's place -> caller -> input
        self.used: dict[tuple, list[Input | None]] = {}  # what each task I answered reduced
        self.receipts: dict[tuple, dict] = {}
        self.outputs: dict[tuple, list[bytes]] = {}
        self.mine: dict[tuple, tuple] = {}  # (task, my place) -> (envelope, piece, note or None) I send
        self.sent_to: dict[tuple, str] = {}  # (task, my place) -> the owner I last sent it to
        self.answered: set[tuple] = set()
        self.deadline = 0.0
        self.heard = 0.0  # when the leader's board last answered us (or the round began)
        self.finals: list[str] = []  # each final part's SHA-256 as gathered, in task order (the roster lists them)
        self.checked: dict[str, str] = {}  # caught owner -> SHA-256 of the proof of its lie we checked
        self.first: dict[tuple, float] = {}  # task -> when we first saw it ours (its inputs' phase starts)
        self.claims: dict[tuple, tuple[int, ...]] = {}  # task -> the places we named missing (op `missing`)
        self.told: set[tuple] = set()  # tasks whose owner named us missing and we answered the leader

    # ------------------------------------------------------------------ the round, as this member
    def run(self) -> torch.Tensor:
        """This member's round: the flat aggregate (raises ProtocolError or TimeoutError)."""
        self.heard = time.monotonic()
        self.deadline = self.heard + self.timeouts.round
        self.send_chunks()
        self.level(1)
        self.send_parts()
        self.level(2)
        return self.gather()

    def call(self, peer: str, message: Message, extra: float = 0.0) -> bytes:
        if peer == self.me:  # no connection to ourselves
            return (self.lead if message.op in LEADER_OPS else self).answer(self.me, message)
        return self.net.call(peer, message, self.timeouts.call + extra)

    def message(self, op: str, task: tuple = (1, 0, 0), **fields) -> Message:
        rnd = self.rnd
        return Message(
            op=op, run=rnd.run, round=rnd.round, attempt=rnd.attempt, level=task[0], a=task[1], b=task[2], **fields
        )

    def send_chunks(self) -> None:
        rnd = self.rnd
        sent = sealed_chunks(rnd, self.keys, self.update, base=self.base, tokens=self.tokens, garble=self.act.garble)
        g = rnd.grid.group_of(self.me)
        place = rnd.grid.groups[g].index(self.me)
        if self.act.silent:
            return
        self.mine = {((1, g, j), place): (i.envelope, i.data, i.note) for j, i in enumerate(sent)}
        self.push_inputs()

    def push_inputs(self) -> None:
        """Send each piece of mine to its task's current owner, unless that owner has it already."""
        for (task, place), (envelope, data, note) in self.mine.items():
            owner = self.rnd.owner(*task)
            if self.sent_to.get((task, place)) == owner:
                continue
            self.sent_to[(task, place)] = owner  # one try per owner: a silent one is replaced by the leader
            op = "chunk" if task[0] == 1 else "part"
            try:
                self.call(owner, self.message(op, task, index=place, envelope=envelope, data=data, note=note))
            except (ProtocolError, TimeoutError, OSError) as e:
                log.info("round %d: %s of task %s to %s failed: %s", self.rnd.round, op, task_name(task), owner[:16], e)

    def level(self, level: int) -> None:
        """Follow the leader's board for `level` until it says done, doing what it asks of me."""
        version, shown, moved = -1, set(), time.monotonic()  # moved: when the board last showed news
        while True:
            self.answer_tasks(level)
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"round {self.rnd.round}: level {level} did not end in time")
            try:
                reply = self.call(
                    self.leader, self.message("board", (level, 0, 0), index=version + 1), self.timeouts.phase
                )
                board = Board.decode(reply)
            except (ProtocolError, TimeoutError, OSError) as e:
                self.silent(time.monotonic() - self.heard, "no board", e)
                log.info("round %d: no board of level %d yet: %s", self.rnd.round, level, e)
                time.sleep(PAUSE)
                continue
            self.heard = time.monotonic()
            if board.level != level or board.version <= version or news(board) in shown:
                self.silent(self.heard - moved, "no news on the board", None, self.timeouts.stall)
                time.sleep(PAUSE)  # a leader that answers at once with nothing new is not polled flat out
                version = max(version, board.version) if board.level == level else version
                continue
            version, moved = board.version, self.heard
            shown.add(news(board))
            self.check_caught(board)
            apply_board(self.rnd, board)
            self.push_inputs()
            self.answer_asks(board)
            if board.stage == "audit":
                self.audit_dealt(board)
            elif board.stage == "done":
                return

    def silent(self, waited: float, what: str, cause: Exception | None, bound: float = 0.0) -> None:
        """Give the round up (LeaderSilent) if the leader has sent `what` for `bound` (default: phase)."""
        if waited >= (bound or self.timeouts.phase):  # a dead or stalling leader: every member alike
            raise LeaderSilent(f"round {self.rnd.round}: {what} from the leader for {waited:.0f} s: {cause or ''}")

    def check_caught(self, board: Board) -> None:
        """Each owner the board newly convicts, by the proof the leader serves (else Framed)."""
        for owner, task, digest in newly_caught(self.rnd, board):
            try:
                served = self.call(self.leader, self.message("proof", task, data=bytes.fromhex(digest)))
            except (ProtocolError, TimeoutError, OSError) as e:
                raise Framed(f"round {self.rnd.round}: no proof that {owner[:16]} lied: {e}") from None
            if not proves(self.rnd, owner, task, digest, served):
                raise Framed(f"round {self.rnd.round}: the proof that {owner[:16]} lied does not check")
            self.checked[owner] = digest

    def answer_asks(self, board: Board) -> None:
        """Hand the leader each chunk of mine whose owner named me missing (op `here`), once a task:
        it forwards it to the owner, where I would otherwise be silent (in no quorum)."""
        for (task, place), (envelope, data, note) in self.mine.items():
            if task[0] == 1 and task not in self.told and place in board.asked.get(task_name(task), ()):
                self.told.add(task)
                try:
                    self.call(
                        self.leader, self.message("here", task, index=place, envelope=envelope, data=data, note=note)
                    )
                except (ProtocolError, TimeoutError, OSError) as e:
                    log.info(
                        "round %d: the leader did not take my chunk for %s: %s", self.rnd.round, task_name(task), e
                    )

    # ------------------------------------------------------------------ as an owner
    def answer_tasks(self, level: int) -> None:
        rnd, now = self.rnd, time.monotonic()
        mine = [t for t in tasks_of(rnd, level) if t not in self.answered and rnd.owner(*t) == self.me]
        for task in (t for t in mine if task_name(t) not in rnd.fixed):
            self.first.setdefault(task, now)  # every task's phase runs from now, not after the one before
            if self.act.withhold:
                self.answered.add(task)
                continue
            if task in self.claims and not self.settled(task):
                continue  # the leader is asking the senders we named: it forwards their chunks or drops them
            inputs = self.collect(task, wait=task not in self.claims)
            if task not in self.claims and self.claim(task, inputs):
                continue
            self.answered.add(task)
            try:
                receipt, outputs = answer_task(self.rnd, self.keys, task, inputs, lie=self.act.lie)
            except ProtocolError as e:
                log.info("round %d: cannot answer task %s: %s", self.rnd.round, task_name(task), e)
                continue
            with self.cond:
                self.receipts[task], self.outputs[task], self.used[task] = receipt, outputs, inputs
            try:
                self.call(self.leader, self.message("receipt", task, envelope=receipt))
            except (ProtocolError, TimeoutError, OSError) as e:
                log.info("round %d: the leader did not take my receipt of %s: %s", self.rnd.round, task_name(task), e)

    def claim(self, task: tuple, inputs: list[Input | None]) -> bool:
        """Short of a quorum, name the senders we lack to the leader (op `missing`), who asks them."""
        rnd, senders = self.rnd, self.rnd.senders(*task)
        named = [i for i, (p, item) in enumerate(zip(senders, inputs)) if item is None and rnd.counts(p)]
        if task[0] != 1 or sum(i is not None for i in inputs) >= rnd.quorum(*task) and not self.act.names:
            return False
        flags = [(i in named or p in self.act.names) and p != self.me for i, p in enumerate(senders)]
        try:
            self.call(self.leader, self.message("missing", task, data=bitmap(flags)))
        except (ProtocolError, TimeoutError, OSError) as e:
            log.info("round %d: the leader did not take my claim on %s: %s", rnd.round, task_name(task), e)
            return False
        self.claims[task] = tuple(i for i, f in enumerate(flags) if f)
        return True

    def settled(self, task: tuple) -> bool:
        """Whether each sender we named has its chunk here (forwarded) or was dropped (silent, caught)."""
        got, senders = self.received.get(task, {}), self.rnd.senders(*task)
        with self.cond:
            return all(senders[i] in got.get(i, {}) or not self.rnd.counts(senders[i]) for i in self.claims[task])

    def collect(self, task: tuple, wait: bool = True) -> list[Input | None]:
        """The task's inputs, in its senders' order: each as its sender vouched for it, or None
        (not in by the phase's end, or not checking)."""
        senders = self.rnd.senders(*task)

        def arrived() -> list[Input | None]:
            got = self.received.get(task, {})
            return [got.get(i, {}).get(p) for i, p in enumerate(senders)]

        with self.cond:
            end = self.first.get(task, time.monotonic()) + self.timeouts.phase
            self.cond.wait_for(lambda: all(arrived()), timeout=max(0.0, end - time.monotonic()) if wait else 0)
            items = arrived()
        return [self.accepted(task, i, p, item) for i, (p, item) in enumerate(zip(senders, items))]

    def accepted(self, task: tuple, place: int, sender: str, item: Input | None) -> Input | None:
        """An input as its auditor will accept it (else it is left out of the receipt); a chunk
        whose signed note contradicts its commitment is reported to the leader, who convicts its
        sender (before our receipt reaches it: the sender then counts toward no quorum)."""
        if item is None:
            return None
        try:
            check_input(self.rnd, task, place, sender, item)
            return item
        except ProtocolError as e:
            log.info("round %d: left out %s's input to %s: %s", self.rnd.round, sender[:16], task_name(task), e)
        if task[0] == 1 and is_garble(self.rnd, sender, task[2], item.envelope, item.note):
            try:
                self.call(
                    self.leader, self.message("garble", task, index=place, envelope=item.envelope, note=item.note)
                )
            except (ProtocolError, TimeoutError, OSError) as e:
                log.info("round %d: the leader did not take my garble report: %s", self.rnd.round, e)
        return None

    def send_parts(self) -> None:
        rnd = self.rnd
        self.mine, self.sent_to = {}, {}
        for _, g, j in (t for t in tasks_of(rnd, 1) if rnd.owner(*t) == self.me and t in self.receipts):
            for k in range(rnd.grid.n_groups):
                self.mine[((2, j, k), g)] = (self.receipts[(1, g, j)], self.outputs[(1, g, j)][k], None)
        self.push_inputs()

    # ------------------------------------------------------------------ as an auditor
    def audit_dealt(self, board: Board) -> None:
        rnd = self.rnd
        seed = board_seed(rnd, board, self.leader)
        tasks = tasks_of(rnd, board.level)
        dealt = assign_auditors(
            seed, {task_name(t) + board.tag: rnd.owner(*t) for t in tasks}, rnd.grid.members(), board.count
        )
        for task in tasks:
            if self.me in dealt[task_name(task) + board.tag] and rnd.owner(*task) != self.me:
                self.audit_one(task, board.tag)

    def audit_one(self, task: tuple, tag: str) -> None:
        try:
            served = Message.decode(self.call(self.rnd.owner(*task), self.message("inputs", task)))
            proof = audit(self.rnd, served.envelope, *task, list(inputs_of(served)))
        except (ProtocolError, TimeoutError, OSError) as e:
            log.info("round %d: could not audit %s: %s", self.rnd.round, task_name(task), e)
            return
        if proof is None:
            verdict = self.message("verdict", task, tag=tag)
        else:
            log.warning("round %d: the owner of %s lied; sending the proof", self.rnd.round, task_name(task))
            proof_inputs = tuple(None if i is None else (i.envelope, i.data) for i in proof.inputs)
            verdict = self.message("verdict", task, tag=tag, index=1, envelope=proof.receipt, inputs=proof_inputs)
        try:
            self.call(self.leader, verdict)
        except (ProtocolError, TimeoutError, OSError) as e:
            log.info("round %d: the leader did not take my verdict on %s: %s", self.rnd.round, task_name(task), e)

    # ------------------------------------------------------------------ the gather
    def gather(self) -> torch.Tensor:
        rnd = self.rnd
        final = torch.zeros(rnd.total)
        for _, j, k in tasks_of(rnd, 2):
            served = Message.decode(self.call(rnd.owner(2, j, k), self.message("final", (2, j, k))))
            receipt = open_receipt(rnd, served.envelope, 2, j, k)
            if chunks.sha(served.data) != receipt.outputs[0]:
                raise ProtocolError(f"final part {j}/{k} is not the one its owner's receipt lists")
            span = rnd.part(j, k)
            final[span.start : span.end] = rnd.wire.decode_out(served.data, span, 2)
            self.finals.append(receipt.outputs[0])
        return final

    # ------------------------------------------------------------------ what this member serves
    def answer(self, caller: str, msg: Message) -> bytes:
        """The payload for `caller`'s request; raises ProtocolError to refuse (with the reason)."""
        rnd = self.rnd
        if (msg.run, msg.round, msg.attempt) != (rnd.run, rnd.round, rnd.attempt):
            raise ProtocolError("not this round's attempt")
        if msg.op in LEADER_OPS:
            if self.lead is None:
                raise ProtocolError("this member does not lead the round")
            return self.lead.answer(caller, msg)
        if not rnd.in_range(*msg.task) or caller not in rnd.grid.members():
            raise ProtocolError(f"no task {task_name(msg.task)} for {caller[:16]} in this round")
        if msg.op in ("chunk", "part"):
            return self.take(caller, msg)
        with self.cond:
            receipt, used, outputs = self.receipts.get(msg.task), self.used.get(msg.task), self.outputs.get(msg.task)
        if receipt is None or self.act.withhold:
            raise ProtocolError(f"I hold no answer to task {task_name(msg.task)}")
        if msg.op == "inputs":
            served = tuple(None if i is None else (i.envelope, i.data) for i in used)
            return self.message("inputs", msg.task, envelope=receipt, inputs=served).encode()
        if msg.task[0] != 2:
            raise ProtocolError("final parts are level 2's")
        return self.message("final", msg.task, envelope=receipt, data=outputs[0]).encode()

    def take(self, caller: str, msg: Message) -> bytes:
        """Keep an input for a task (checked when the task is answered: level 2's vouching receipts
        may be fixed only later). One per sender's place and caller: nobody fills another's place."""
        grid, (level, a, _) = self.rnd.grid, msg.task
        if level == 1 and caller == self.leader and msg.op == "chunk" and msg.index < len(grid.groups[a]):
            caller = grid.groups[a][msg.index]  # forwarded by the leader: it was named missing (still its signatures)
        if level == 1 and (a >= grid.n_groups or caller not in grid.groups[a] or msg.op != "chunk"):
            raise ProtocolError("a chunk from outside the task's group")
        place = grid.groups[a].index(caller) if level == 1 else msg.index
        if (level == 2 and (place >= grid.n_groups or msg.op != "part")) or msg.envelope is None:
            raise ProtocolError("a part must name its group and carry its receipt")
        with self.cond:
            self.received.setdefault(msg.task, {}).setdefault(place, {})[caller] = Input(
                msg.envelope, msg.data, msg.note
            )
            self.cond.notify_all()
        return b""
