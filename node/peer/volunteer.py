"""A volunteer node: join a run, train, exchange updates each round, leave cleanly.

`Peer` holds the loop as three steps (`begin`, `stepped` after each inner step, `end`), so that
the CLI's loop (`Volunteer.train`) and a user's own loop (driver.py, the swarmtrain API) run the
same rounds; everything they call is plain torch
(node/train/trainer.py), one step of the round protocol (node/round/protocol.py), applying a
round (applier.py), state sync (sync.py), our heartbeat (presence.py) or publishing what
happened (reporting.py).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from node.config import NodeConfig
from node.outer.overlap import Start
from node.p2p.reach import judge
from node.peer import checkpoint
from node.peer.reporting import summary
from node.peer.wiring import NodeParts, keep_proof, proof_path
from node.round.ledger import AcceptedRoster
from node.round.protocol import RoundFailed
from node.train import data
from node.train.device import hold_mmap_threshold, mmap_threshold_for, release_freed_memory
from node.train.window import ComputeWindow, Timing, sized_window
from node.watch.progress import Reporter
from protocol import signing
from protocol.admission.renew import Renewal


@dataclass(frozen=True)
class InFlight:
    """A round we announced an update for, whose roster and payloads are awaited."""

    round: int
    loss: float | None
    steps: int
    t0: float
    t1: float
    result: Future  # -> (roster or None, payloads or None)
    start: Start  # where its training started
    update: bytes = b""  # the payload we announced (a v3 round on the sparse wire hands it back: take_back)


def _done(fn) -> Future:
    """fn() run here, as a finished future (without overlap, rounds are awaited in place)."""
    future: Future = Future()
    future.set_result(fn())
    return future


@dataclass
class Training:
    """The round being trained: its number, when it began, its compute window, the steps so far."""

    round: int
    t0: float
    window: ComputeWindow
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float | None:
        """Mean loss of the steps that reported one (None: the trainer reports none)."""
        return sum(self.losses) / len(self.losses) if self.losses else None


class Peer(NodeParts):
    """A running node's rounds, driven one inner step at a time: `begin`, then `stepped` after
    each inner step (at the end of the compute window it sends the round's update and opens the
    next round), then `end`. The CLI's loop (Volunteer.train, below) and the Python API
    (driver.py, under a user's own loop) drive the same methods."""

    renewal: Renewal | None = None  # our next epoch's admission proof, solved in the background (begin)

    def __init__(self, cfg: NodeConfig, stack: ExitStack, reporter: Reporter):
        super().__init__(cfg, stack, reporter)
        self.start: Start | None = None  # where this round's training started: what the update is measured from
        self.inflight: InFlight | None = None  # the round announced and not yet applied
        self.reach = judge([])  # whether peers can dial us: 'unknown' until our addresses are (start_heartbeat)
        self.training: Training | None = None  # the round being trained
        self.step_s = 0.0  # seconds per inner step in our last round (0: none yet)
        self.exchange_s = 0.0  # seconds from announcing our last update to having its round (0: none yet)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="round")  # overlap: awaits rosters behind compute
        stack.callback(self.pool.shutdown, wait=False, cancel_futures=True)

    # ----------------------------------------------------------------------------- the loop
    def begin(self, stop: threading.Event) -> bool:
        """Take the swarm's state (or our checkpoint), say we are here, open the first round.
        False: nothing to train (stopped, or max_rounds already reached)."""
        self.applier.state, how = self.sync.initial_state(stop)  # the chain first: its epoch's proof, next
        if not self.obtain_proof(stop):  # our announcements count only with a proof of work
            return False
        der = signing.public_der(self.key)
        kept = proof_path(
            self.cfg.data_dir, self.run_id, der
        )  # and with one of the chain's epoch: renewed in the background
        self.renewal = Renewal(self.rounds.admission, der, stop, self.out.say, keep=functools.partial(keep_proof, kept))
        self.joined_round, self.joined_at = self.state.round, time.monotonic()
        self.start_heartbeat()
        self.out.event(
            "joined",
            peer=self.me,
            name=self.name,
            run=self.run_id,
            round=self.state.round,
            state=how,
            device=str(self.device),
            digest=self.state.digest[:16],
            status_url=self.reports.page.url,
            maddr=self.maddr,
            reach=self.reach.kind,
        )
        if self.reach.reachable is False and self.reach.kind != "loopback":  # a swarm on one machine needs no advice
            self.out.say(f"{self.reach.summary}.\n  {self.reach.meaning}\n  To be reachable: {self.reach.fix}.")
        return self.open_round(stop)

    def open_round(self, stop: threading.Event) -> bool:
        """Load where the next round's training starts into the model. False: stop here."""
        if stop.is_set() or self.reached_max():
            return False
        if self.sync.outvoted():
            self.settle(stop)  # (overlap) the round in flight first
            self.sync.resync(stop, force=True)  # our state differs from the swarm's
            if self.reached_max():  # the swarm's state may be the last round's: never train past it
                return False
        self.sync.fill_window()  # a window that lacks rosters judges no skip mark as the swarm does
        r = self.state.round + 1 + (self.inflight is not None)  # overlap: the round after the one in flight
        if self.renewal is not None:
            self.renewal.due(r, self.ledger.beacon_of)  # our next epoch's proof, once its seed is on our chain
        self.presence.heartbeat.update(
            round=r,
            state_round=self.state.round,
            digest=self.state.digest,
            step_s=self.step_s,
            exchange_s=self.exchange_s,
        )
        t0 = time.monotonic()
        # the swarm's state, or with overlap that plus our progress in flight
        self.start = self.overlap.start(self.state, self.trainer.params, in_flight=self.inflight is not None)
        self.trainer.load_params(self.start.params)
        window = ComputeWindow(
            self.run.swarm,
            self.strategy.inner_steps,
            windowed=self.strategy.local_optimizer,
            sized=self.sized_window(),
            carried=self.start.carried_steps,
        )
        opened = self.ledger.rosters.get(self.state.round)
        if opened is not None and self.inflight is None:  # (with one in flight: anchored when it lands)
            window.anchor(opened.roster.time)
        self.training = Training(round=r, t0=t0, window=window)
        self.round_opened(r)
        return True

    def sized_window(self) -> float:
        """A run without round_seconds: the window from the step times live peers publish."""
        if self.run.swarm.round_seconds is not None or not self.strategy.local_optimizer:
            return 0.0
        published = [Timing(hb.step_s, hb.exchange_s) for p, hb in self.sync.live().items() if p != self.me]
        return sized_window(self.strategy.inner_steps, Timing(self.step_s, self.exchange_s), published)

    def round_opened(self, r: int) -> None:
        """Called as round r's training starts (the CLI draws its batches for round r)."""

    def stepped(self, loss: float | None, stop: threading.Event) -> bool:
        """After one inner step (H steps, or a compute window's worth, make a round): apply a
        round in flight that came in (overlap); at the round's end encode and announce its update,
        apply it (without overlap), and open the next round. False: stop here."""
        tr = self.training
        tr.steps += 1
        if loss is not None:
            tr.losses.append(loss)
        if self.inflight is not None and self.inflight.result.done():
            self.settle(stop)  # overlap: apply the round in flight now, and go on from its state
        if tr.window.another(tr.steps):
            return True
        t1 = time.monotonic()
        self.step_s = (t1 - tr.t0) / tr.steps  # what we publish: peers size their windows from it
        self.phase("compute").observe(t1 - tr.t0)  # plain torch: H steps, or a window's worth
        self.history.trained(self.applier.tokens_of(tr.steps), t1 - tr.t0)  # forward, backward, step
        self.settle(stop)  # overlap: the round in flight, if still in flight
        if stop.is_set() or self.reached_max():  # a resync (settle) took the last round's state: no round after it
            return False
        with self.phase("encode").time():
            self.privacy.before_update(self.start.base, self.trainer.model)  # DP: clip + noise (off: nothing)
            # the error feedback before this update, to restore if the round misses it
            self.worker_before = copy.deepcopy(self.worker) if self.overlap.carries else None
            update = self.strategy.make_update(self.start.base, self.worker, self.trainer.model)
        self.send(update, tr.loss, tr.steps, tr.t0, t1, stop)  # announce; the roster is awaited (overlap: behind)
        if not self.overlap.enabled:
            self.settle(stop)  # apply it: same bits on every peer
        return self.open_round(stop)

    def end(self, stop: threading.Event) -> None:
        """Leave: a last round in flight is applied unless stopped (an unfinished round is dropped:
        the checkpoint holds the last finished one), then the heartbeat is withdrawn."""
        self.settle(stop)
        self.presence.leave(self.state, last=max(self.state.round, self.rounds.last_announced))

    # --------------------------------------------------------------------------- the pieces
    def phase(self, name: str):
        return self.metrics.step_seconds.labels(name)

    def gather_or_fail(self, r: int, roster, stop: threading.Event) -> list[bytes] | None:
        """The round's payloads, or None (counted and reported) when this peer cannot have them."""
        if stop.is_set():
            return None
        try:
            if roster is None:
                raise RoundFailed(f"no roster for round {r} within {self.run.swarm.round_timeout:.0f} s")
            return self.rounds.gather(roster)
        except RoundFailed as e:
            self.out.event("round_failed", round=r, reason=str(e))
            self.reports.round_failed(r, roster, self.exchange, self.state.digest)
            return None

    def send(self, update: bytes, loss: float | None, steps: int, t0: float, t1: float, stop: threading.Event) -> None:
        """Announce our update for the round after our state, and await its roster and payloads:
        here, or (overlap) in the background while the next round computes."""
        r, base, state_round = self.state.round + 1, self.state.digest, self.state.round
        if self.overlap.enabled:  # the round in flight was just settled: say where we are now
            self.presence.heartbeat.update(round=r, state_round=state_round, digest=base)
        with self.phase("communicate").time():
            tokens = self.applier.tokens_of(steps + self.start.carried_steps)  # a missed round's work counts once more
            self.rounds.announce(r, self.rounds.envelope(r, self.strategy.codec.name, update), tokens, base)
            collect = functools.partial(self.collect, r, base, state_round, stop)
            future = self.pool.submit(collect) if self.overlap.enabled else _done(collect)
        self.inflight = InFlight(r, loss, steps, t0, t1, result=future, start=self.start, update=update)

    def collect(self, r: int, base: str, state_round: int, stop: threading.Event):
        roster = self.rounds.await_roster(r, base, state_round, stop)  # an elected leader's
        return roster, self.gather_or_fail(r, roster, stop)

    def settle(self, stop: threading.Event) -> None:
        """Apply the round in flight, if any (or resync when it failed for us)."""
        flight, self.inflight = self.inflight, None
        if flight is None:
            return
        waited_from = time.monotonic() if self.overlap.enabled else flight.t1  # overlap: only the wait shows
        self.exchange_s = time.monotonic() - flight.t1  # the whole exchange, hidden or not: windows cover it
        with self.phase("communicate").time() if self.overlap.enabled else contextlib.nullcontext():
            roster, payloads = flight.result.result()
        if stop.is_set():
            return
        with self.phase("apply").time():
            applied = payloads is not None and self.applier.apply_round(roster, payloads)  # same bits on every peer
        if not applied or all(a.peer != self.me for a in roster.announcements):
            self.carry_over(flight)
        else:  # our update is in the round applied
            self.applier.take_back(self.worker, flight.update, payloads)
        if applied and self.overlap.enabled and self.training is not None:
            self.training.window.anchor(roster.roster.time)  # the round we train now ends with the swarm's
        if applied:
            self.finish_round(
                roster,
                flight.loss,
                flight.steps,
                train_s=flight.t1 - flight.t0,
                exchange_s=time.monotonic() - waited_from,
            )
        else:
            if payloads is not None:  # gathered but refused (result or scores): retry the round without it
                self.rounds.failed.add((roster.roster.round, roster.roster.leader))
            self.sync.resync(stop)
        if self.overlap.enabled and self.start is not None:  # the round we train now goes on from this state
            self.start = self.overlap.rebase(self.start, self.state, self.trainer.params)
            self.trainer.load_params(self.start.params)
        if self.overlap.enabled:  # (without overlap open_round publishes this next, one store a round)
            # say which state we hold and serve now: this falls mid-round, and a joiner that asked
            # for the state of our last heartbeat would be sent one round later
            self.presence.heartbeat.update(
                round=self.state.round + 1, state_round=self.state.round, digest=self.state.digest
            )

    def carry_over(self, flight: InFlight) -> None:
        """Our update of this round was not applied: fold its work into the next round (with
        the error feedback as it was before that update, so nothing counts twice)."""
        if self.overlap.missed(flight.start, self.trainer.params, flight.steps):
            self.worker = self.worker_before
            self.out.event("carried_over", round=flight.round, steps=flight.steps)

    def finish_round(
        self, accepted: AcceptedRoster, loss: float | None, steps: int, *, train_s: float, exchange_s: float
    ) -> None:
        self.exchange.set_known({a.peer for a in accepted.announcements})  # served first, whatever the crowd
        checkpoint.save(self.ckpt, self.state.to_bytes(self.run_id))
        self.exchange.set_state(self.ckpt)  # served from the file: no second copy of the state held
        bpb = self.evaluate()  # (after exchange_s: not exchange time)
        self.reports.round_done(
            accepted, self.exchange, steps=steps, loss=loss, val_bpb=bpb, train_s=train_s, exchange_s=exchange_s
        )
        self.presence.manifest_keeper.tick()
        release_freed_memory()  # what the round's end freed (payloads, copies, the blob's building)

    def reached_max(self) -> bool:
        return bool(self.cfg.max_rounds) and self.state.round + (self.inflight is not None) >= self.cfg.max_rounds

    def start_heartbeat(self) -> None:
        """Serve our state, then tell the swarm we are here (heartbeat, and a copy of the manifest)."""
        self.exchange.set_state(self.state.to_bytes(self.run_id))
        maddrs = self.presence.start(self.state)
        # whether peers can dial us at them: to the page, our metrics record and (begin) the terminal
        self.reach = judge(maddrs, port=self.cfg.port)
        self.reports.reachable(self.reach)
        self.maddr = maddrs[0] if maddrs else ""  # others may join through us


class Volunteer(Peer):
    """The CLI's volunteer: the run's model and inner trainer on our shard of the run's corpus."""

    def train(self, stop: threading.Event) -> None:
        going = self.begin(stop)
        while going and not stop.is_set():  # stopped mid-round: the round is dropped
            x, y = data.windows(self.tokens, self.run.train.batch_size, self.run.model.ctx, self.batches)
            t = time.monotonic()
            loss = self.trainer.step(x, y, apply=self.strategy.local_optimizer)
            if self.cfg.slowdown > 1:  # stand in for a slower machine (tests, benchmarks)
                stop.wait((self.cfg.slowdown - 1) * (time.monotonic() - t))
            going = self.stepped(loss, stop)
        self.end(stop)

    def round_opened(self, r: int) -> None:
        self.batches = data.batch_generator(self.run.train.seed, self.me, r)  # drawn by (seed, peer, round)


def run_volunteer(cfg: NodeConfig, stop: threading.Event, reporter: Reporter) -> dict:
    hold_mmap_threshold()  # before the node allocates its state: see its docstring
    with ExitStack() as stack:
        node = Volunteer(cfg, stack, reporter)
        params = node.template.params  # a larger model's step tensors stay in the heap (its docstring)
        hold_mmap_threshold(mmap_threshold_for(sum(p.numel() * p.element_size() for p in params)))
        reporter.say(
            f"peer {node.me} ({node.name}) joined run {node.run_id}; training on {node.device}"
            + (f"; status page {node.reports.page.url}" if node.reports.page.url else "")
        )
        try:
            node.train(stop)
        finally:
            result = summary(node)
            if cfg.result_json:
                Path(cfg.result_json).write_text(json.dumps(result, indent=2))
        reporter.event("left", round=node.state.round, digest=node.state.digest[:16])
    return result
