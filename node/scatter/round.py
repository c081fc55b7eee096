"""One v3 round over a message bus that counts bytes: the reduce-scatter, audits, the gather.

Phases (each one round trip on the network; `Outcome.phases` counts them, replacements included):
  1 chunks   every member sends chunk j of its update, with its signed commitment and its signed
             note of the chunk, to owner j of its group; the owner checks them (a bad chunk is left
             out of its receipt; one whose note contradicts the commitment convicts its sender)
  2 level 1  owners reduce and publish signed receipts; the leader fixes them (one per task) and
             signs the set's digest uniquely; auditors dealt from that fetch each task's signed
             inputs from its owner and recompute it
  3 parts    level-1 owners send part k of their result, with their receipt, to part owner k
  4 level 2  as 2, over the groups' parts
  5 gather   part owners send final parts to chunk j's column, which sends them on to its
             group; receivers check each against its level-2 receipt's digest (a forwarder that
             alters one is bypassed: the part is fetched from its owner)
An owner that does not answer in its phase is replaced by its backup (senders send again: one
more phase); a liar an auditor catches is replaced and banned, its task recomputed by the backup
from the proof's inputs. Data (chunks, parts, audit inputs, proofs) and records (commitments,
receipts, the round's final digests in the roster) are counted apart.
"""

from __future__ import annotations

import hashlib

import torch

from node.scatter import chunks
from node.scatter.audit import (
    FraudProof,
    Input,
    Round,
    answer_task,
    audit_seed,
    check_chunk,
    is_garble,
    open_receipt,
    sealed_chunks,
)
from node.scatter.grid import AUDITORS, ESCALATE, SPOT_COVER, assign_auditors, audit_shares, second_auditor
from node.scatter.traffic import Behaviour, Bus, Outcome, Traffic, size_of
from protocol.errors import ProtocolError
from protocol.kinds.scatter import draw_message, set_digest, task_name

MOST_REPLACEMENTS = 8  # owners one task may go through in a round before the round fails


class ScatterRound(Bus):
    """Runs one round for every member at once (the members' own code, the bus simulated)."""

    def __init__(
        self, rnd: Round, updates: dict, keys, leader: str, *, behaviour=None, auditors=AUDITORS, escalate=ESCALATE
    ):
        self.rnd, self.keys, self.leader = rnd, keys, leader
        self.auditors, self.escalate = auditors, escalate  # auditors per task; more after a conviction
        self.cover = SPOT_COVER  # >0: the first auditors spot-check shares of the blocks (grid.SPOT_COVER)
        self.updates: dict[str, torch.Tensor] = updates
        self.behaviour: dict[str, Behaviour] = behaviour or {}
        self.traffic, self.phases = Traffic(), 0
        self.inputs: dict[tuple, list[Input | None]] = {}  # what each task's owner received
        self.used: dict[tuple, list[Input | None]] = {}  # what it reduced (its receipt's inputs)
        self.receipts: dict[tuple, dict] = {}
        self.outputs: dict[tuple, list[bytes]] = {}
        self.caught: list[str] = []
        self.seeds: dict[int, str] = {}
        self.withheld: list[str] = []
        self.missed: list[str] = []
        self.silent: list[str] = []
        self.passed_auditors: set[str] = set()  # auditors whose claim a second auditor contradicted
        self.sent: dict[str, list[Input]] = {}
        self.asked = False  # a claim this level: the leader waits up to a phase for the senders it asks

    def act(self, peer: str) -> Behaviour:
        return self.behaviour.get(peer, Behaviour())

    def run(self) -> Outcome:
        self.send_chunks()
        self.reduce_level(1)
        self.send_parts()
        self.reduce_level(2)
        final = self.gather()
        return Outcome(
            final, self.phases, self.caught, self.withheld, self.missed, self.traffic, self.receipts, self.silent
        )

    # ---------------------------------------------------------------- phase 1: chunks to owners
    def send_chunks(self) -> None:
        rnd, grid = self.rnd, self.rnd.grid
        sent = {
            p: sealed_chunks(rnd, self.keys[p], u, base="0" * 64, tokens=1, garble=self.act(p).garble)
            for p, u in self.updates.items()
        }
        if self.rnd.committed is None:
            self.rnd.committed = set(sent)  # the leader lists every commitment it received (a silent one's too)
        self.sent = sent = {p: c for p, c in sent.items() if not self.act(p).silent}
        for g, group in enumerate(grid.groups):
            for j in range(grid.chunks):
                for p in (p for p in group if p in sent):
                    item = sent[p][j]
                    self.deliver(p, rnd.owner(1, g, j), len(item.data), size_of(item.envelope) + size_of(item.note))
                self.inputs[(1, g, j)] = [self.accepted(p, j, sent[p][j] if p in sent else None) for p in group]
        self.phases += 1

    def accepted(self, sender: str, j: int, item: Input | None) -> Input | None:
        """The owner keeps an input only as its auditor will accept it: committed to by its sender
        for this round, and decodable (else it is left out of the receipt). A chunk whose signed
        note contradicts its commitment goes to the leader as proof (both envelopes): the sender
        is caught, and counts toward no quorum from then on."""
        if item is None:
            return None
        try:
            check_chunk(self.rnd, sender, j, item)
            return Input(item.envelope, item.data)
        except ProtocolError:
            pass
        if is_garble(self.rnd, sender, j, item.envelope, item.note):
            owner = self.rnd.owner(1, self.rnd.grid.group_of(sender), j)
            self.deliver(owner, self.leader, 0, size_of(item.envelope) + size_of(item.note))
            if sender not in self.rnd.caught:
                self.caught.append(sender)
                self.rnd.caught.add(sender)
        return None

    # ---------------------------------------------------------------- phases 2 and 4: owners, audits
    def tasks(self, level: int) -> list[tuple[int, int, int]]:
        grid = self.rnd.grid
        if level == 1:
            return [(1, g, j) for g in range(grid.n_groups) for j in range(grid.chunks)]
        return [(2, j, k) for j in range(grid.chunks) for k in range(grid.n_groups)]

    def reduce_level(self, level: int) -> None:
        tasks, self.asked = self.tasks(level), False
        if any(self.act(self.rnd.owner(*t)).withhold for t in tasks):
            self.phases += 1  # senders wait out the phase, then send to the backups
        for task in tasks:
            self.answer(task)
        self.phases += self.asked
        self.publish_receipts(level)
        seed = self.fix(level)
        caught = len(self.caught)
        self.audit_all(tasks, seed, "", self.auditors, self.cover)
        if len(self.caught) > caught and self.escalate:
            # a liar in the round: its fellows may be lying too, so every task of the level gets
            # `escalate` more auditors before anything is applied (one more phase, in such rounds only)
            self.audit_all(tasks, seed, "/again", self.escalate)
            self.phases += 1
        self.phases += 1

    def audit_all(self, tasks: list[tuple], seed: str, tag: str, count: int, cover: int = 0) -> None:
        names = {task_name(t) + tag: self.rnd.owner(*t) for t in tasks}
        drawn = assign_auditors(seed, names, self.rnd.grid.members(), count)
        for task in tasks:
            self.audit_task(task, drawn[task_name(task) + tag], cover)

    def fix(self, level: int) -> str:
        """The leader fixes the level's receipts (one per task: another one its owner signed is
        refused everywhere) and signs the set's digest uniquely; the audit seed follows."""
        tasks = self.tasks(level)
        fixed = {task_name(t): chunks.sha(self.receipts[t]["body"]) for t in tasks}
        self.rnd.fixed.update(fixed)
        self.rnd.signers.update({task_name(t): self.rnd.owner(*t) for t in tasks})
        digest = set_digest(fixed)
        draw = self.keys[self.leader].unique(
            draw_message(self.rnd.run, self.rnd.round, self.rnd.attempt, level, digest)
        )
        for p in self.rnd.grid.members():
            self.deliver(self.leader, p, 0, 40 * len(tasks) + len(draw))
        self.seeds[level] = audit_seed(self.rnd.grid.seed, digest, draw)
        return self.seeds[level]

    def refix(self, task: tuple) -> None:
        """A task that changed hands after the level was fixed: the new receipt stands for it
        (the leader's roster says so, with the reason)."""
        name = task_name(task)
        self.rnd.signers[name] = self.rnd.owner(*task)
        self.rnd.fixed[name] = chunks.sha(self.receipts[task]["body"])

    def answer(self, task: tuple) -> None:
        """The task's current owner answers; backups take over from owners that withhold or
        whose receipt leaves out a majority of the inputs (refused by everyone: open_receipt)."""
        for _ in range(MOST_REPLACEMENTS):
            owner = self.rnd.owner(*task)
            if not self.act(owner).withhold:
                try:
                    self.claim(task)
                    self.compute(task)
                    open_receipt(self.rnd, self.receipts[task], *task)
                    return
                except ProtocolError:
                    pass
            self.pass_over(task)
        raise ProtocolError(f"task {task}: {MOST_REPLACEMENTS} owners in a row did not answer")

    def claim(self, task: tuple) -> None:
        """An owner short of its quorum names the senders it lacks (op `missing`); the leader asks
        each: one that hands it its chunk has it forwarded to the owner, one that does not is
        silent (in no quorum this round). The owner cannot drop a sender that answers for itself."""
        owner, items, senders = self.rnd.owner(*task), self.inputs[task], self.rnd.senders(*task)
        named = [i for i, p in enumerate(senders) if items[i] is None and self.rnd.counts(p)]
        named += [i for i, p in enumerate(senders) if p in self.act(owner).names and i not in named]
        short = sum(i is not None for i in items) < self.rnd.quorum(*task)
        if task[0] != 1 or not named or not (short or self.act(owner).names):
            return
        self.asked = True
        self.deliver(owner, self.leader, 0, 64)
        for i in named:
            sender, item = senders[i], self.sent.get(senders[i], [None] * (task[2] + 1))[task[2]]
            if item is None:
                self.silent += [sender] if sender not in self.rnd.silent else []
                self.rnd.silent.add(sender)
                continue
            self.deliver(sender, self.leader, len(item.data), size_of(item.envelope) + size_of(item.note))
            self.deliver(self.leader, owner, len(item.data), size_of(item.envelope) + size_of(item.note))
            items[i] = self.accepted(sender, task[2], item)

    def pass_over(self, task: tuple) -> None:
        """The owner withheld (or kept its parts, or its inputs did not check): the backup gets them."""
        self.withheld.append(self.rnd.owner(*task))
        self.replace(task)
        self.resend(task)

    def replace(self, task: tuple) -> None:
        name = task_name(task)
        self.rnd.unfix(name)
        self.rnd.replaced[name] = self.rnd.replaced.get(name, 0) + 1

    def compute(self, task: tuple) -> None:
        """The current owner reduces its inputs and signs its receipt (a liar signs a lie)."""
        owner, rnd = self.rnd.owner(*task), self.rnd
        inputs = self.inputs[task]
        if self.act(owner).censor:
            kept = {p for p in rnd.senders(*task) if p == owner or self.act(p).collude or self.act(p).censor}
            inputs = [i if p in kept else None for p, i in zip(rnd.senders(*task), inputs)]
        lie, blocks = self.act(owner).lie, self.act(owner).lie_blocks
        self.receipts[task], self.outputs[task] = answer_task(
            rnd, self.keys[owner], task, inputs, lie=lie, lie_blocks=blocks
        )
        self.used[task] = inputs

    def output_sizes(self, task: tuple) -> list[int]:
        return self.rnd.output_sizes(*task)

    def audit_task(self, task: tuple, auditors: list[str], cover: int = 0) -> None:
        for _ in range(MOST_REPLACEMENTS):
            owner, lied = self.rnd.owner(*task), False
            dealt = [a for a in auditors if a != owner]  # spot audits: the i-th checks shares[i]
            shares = audit_shares(self.seeds[task[0]], task_name(task), len(dealt), len(self.rnd.blocks(*task)), cover)
            for auditor, share in ((self.second(task, a, self.passed_auditors), s) for a, s in zip(dealt, shares)):
                share = share if cover else None
                auditor = self.claimed(task, owner, auditor, share)
                if auditor == owner:  # a second auditor agreed: passed over like a withholder
                    self.pass_over(task)
                    self.compute(task)
                    self.refix(task)
                    break
                if auditor is None:
                    continue
                proof = self.check(task, share)
                lied = lied or proof is not None
                if proof is not None and not (self.act(auditor).collude and self.act(owner).collude):
                    self.convict(task, owner, auditor, proof)
                    break
            else:
                if lied:  # every auditor that saw the lie covered it: the wrong output goes on
                    self.missed.append(task_name(task))
                return
        raise ProtocolError(f"task {task}: {MOST_REPLACEMENTS} owners in a row lied")

    def second(self, task: tuple, auditor: str | None, gone: set[str]) -> str | None:
        """The auditor itself, or if it is `gone`, the task's second auditor (grid.second_auditor)."""
        if auditor is None or auditor not in gone:
            return auditor
        seed, members = self.seeds[task[0]], self.rnd.grid.members()
        return second_auditor(seed, task_name(task), self.rnd.owner(*task), members, gone | {auditor})

    def claimed(self, task: tuple, owner: str, auditor: str | None, share=None) -> str | None:
        """The auditor fetches the inputs (`share`: of those blocks). A claim that they do not check
        only marks the task: a second auditor fetches them too; if it agrees, the owner is passed
        over (returned), else the claimant audits no more this round and the second in its place."""
        self.fetch(task, owner, auditor, share)
        if auditor is None or not (self.act(owner).serve_bad or self.act(auditor).claim_bad):
            return auditor
        self.deliver(auditor, self.leader, 0, 64)
        second = self.second(task, auditor, self.passed_auditors | {auditor})
        self.fetch(task, owner, second, share)
        if second is None or self.act(owner).serve_bad or self.act(second).claim_bad:
            return owner
        self.passed_auditors.add(auditor)
        return second

    def convict(self, task: tuple, owner: str, auditor: str, proof: FraudProof) -> None:
        """The proof goes to the backup, who checks it and recomputes the task from its inputs;
        the leader gets its digest and the backup's new receipt (the roster names both: any peer
        may fetch the proof and check it). The liar owns nothing more and is banned."""
        name = task_name(task)
        self.caught.append(owner)
        self.rnd.caught.add(owner)
        self.rnd.unfix(name)
        if name in self.missed:  # covered by colluders first, caught by the escalated audits
            self.missed.remove(name)
        backup = self.rnd.owner(*task)
        size = sum(len(i.data) for i in proof.inputs if i is not None)
        records = size_of(proof.receipt) + sum(size_of(i.envelope) for i in proof.inputs if i is not None)
        self.deliver(auditor, backup, size, records)
        self.deliver(auditor, self.leader, 0, 64)
        self.compute(task)
        self.refix(task)

    # ---------------------------------------------------------------- phase 3: parts to level 2
    def send_parts(self) -> None:
        rnd, grid = self.rnd, self.rnd.grid
        self.pass_over_keepers()
        for j in range(grid.chunks):
            for k in range(grid.n_groups):
                items = []
                for g in range(grid.n_groups):
                    src = rnd.owner(1, g, j)
                    data = self.outputs[(1, g, j)][k]
                    items.append(Input(self.receipts[(1, g, j)], data))
                    self.deliver(src, rnd.owner(2, j, k), len(data), size_of(self.receipts[(1, g, j)]))
                self.inputs[(2, j, k)] = items
        self.phases += 1

    def stands(self, task: tuple) -> bool:
        """Whether the receipt a level-1 owner hands on with its parts is the fixed one."""
        try:
            open_receipt(self.rnd, self.receipts[task], *task)
            return True
        except ProtocolError:
            return False

    def pass_over_keepers(self) -> None:
        """A level-1 owner that does not send its parts is passed over like a withholder: its
        backup gets the inputs again, recomputes, is audited, and sends the parts (one phase)."""
        keepers = [t for t in self.tasks(1) if self.act(self.rnd.owner(*t)).keep_parts or not self.stands(t)]
        for task in keepers:
            self.pass_over(task)
            self.answer(task)
            self.refix(task)
            self.audit_all([task], self.seeds[1], "/again", 1)
        self.phases += bool(keepers)

    # ---------------------------------------------------------------- phase 5: the gather
    def gather(self) -> torch.Tensor:
        rnd, grid = self.rnd, self.rnd.grid
        final = torch.zeros(rnd.total)
        digests = 32 * len(self.tasks(2))  # the roster's list of final part digests, read by all
        for p in grid.members():
            self.deliver(self.leader, p, 0, digests)
        for j in range(grid.chunks):
            for k in range(grid.n_groups):
                owner, data = rnd.owner(2, j, k), self.outputs[(2, j, k)][0]
                span = rnd.part(j, k)
                final[span.start : span.end] = rnd.wire.decode_out(data, span, 2)
                self.spread(j, owner, data)
        self.phases += 1
        return final


def seed_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
