"""A volunteer node: join a run, train, exchange updates each round, leave cleanly.

`train()` is the main loop and reads top to bottom; everything it calls is plain torch
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
from dataclasses import dataclass
from pathlib import Path

import torch

from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.outer.overlap import Start, make_overlap
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.p2p.addresses import initial_peers
from node.p2p.dht import Swarm
from node.p2p.exchange import Exchange
from node.p2p.identity import load_identity_key
from node.p2p.roundnet import RealNet
from node.p2p.telemetry import reachability
from node.p2p.validators import guard_run
from node.peer import checkpoint
from node.peer import manifest as manifests
from node.peer.applier import Applier
from node.peer.presence import Presence
from node.peer.reporting import Reports, node_name
from node.peer.sync import StateSync
from node.round.ledger import AcceptedRoster, Ledger
from node.round.protocol import RoundFailed, RoundProtocol, round_record_ttl
from node.train import data
from node.train.model import build_run_model, trainable
from node.train.privacy import make_privacy
from node.train.trainer import InnerTrainer
from node.train.window import ComputeWindow
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import TIMELINE, History, RoundReport


@dataclass(frozen=True)
class InFlight:
    """A round we announced an update for, whose roster and payloads are awaited."""
    round: int
    loss: float
    steps: int
    t0: float
    t1: float
    result: Future  # -> (roster or None, payloads or None)
    start: Start  # where its training started


def _done(fn) -> Future:
    """fn() run here, as a finished future (without overlap, rounds are awaited in place)."""
    future: Future = Future()
    future.set_result(fn())
    return future


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SwarmtrainError(f"device {name!r} asked for, but torch sees no CUDA GPU",
                              "use --device cpu, or install a CUDA build of torch")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SwarmtrainError(f"unknown device {name!r}", "use auto, cpu or cuda[:N]") from None


class Volunteer:
    """Holds the pieces of a running node; `train()` is the loop."""

    def __init__(self, cfg: NodeConfig, stack: ExitStack, reporter: Reporter):
        peers = initial_peers(cfg.initial_peers, cfg.initial_peers_file, cfg.startup_timeout)
        if not peers and not cfg.new_swarm:
            raise SwarmtrainError("no initial peers given",
                                  "pass --initial-peers MADDR (printed by `swarmtrain bootstrap`), set "
                                  "SWARMTRAIN_INITIAL_PEERS, or use --new-swarm to start a swarm of your own")
        self.cfg, self.out = cfg, reporter
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.swarm = Swarm.start(cfg, peers)
        stack.callback(self.swarm.shutdown)
        self.me = self.swarm.peer_id
        self.name = cfg.name or node_name(self.me)
        self.run_id, self.manifest, self.manifest_envelope = manifests.fetch(self.swarm, cfg.run_id,
                                                                             cfg.startup_timeout)
        self.run, corpus = manifests.accept(self.run_id, self.manifest, cfg)  # cfg: where our copies of its files are
        self.key = load_identity_key(self.swarm.identity_path)  # signs every record we write
        guard_run(self.swarm, self.run_id, heartbeat_ttl=self.run.swarm.heartbeat_ttl,
                  round_ttl=round_record_ttl(self.run.swarm))
        self.built = build_run_model(self.run, pretrained_dir=cfg.pretrained_dir, tokenizer_dir=cfg.tokenizer_dir,
                                     expect=self.manifest["model"])  # refuses other weights, naming the fix
        model = self.built.model  # the swarm trains trainable(model): all of it, or only LoRA adapters
        self.strategy = make_strategy(self.run.strategy, [tuple(p.shape) for p in trainable(model)], self.run.train,
                                      robust=self.run.robust)
        self.worker = self.strategy.new_worker()  # this peer's private buffers (error feedback)
        self.max_bytes = int(self.run.swarm.max_update_mb * 2**20)
        self.metrics = NodeMetrics()
        self.exchange = Exchange(self.swarm.dht, self.run_id, max_bytes=self.max_bytes, on_bytes=self.metrics.on_bytes,
                                 max_streams_per_peer=self.run.swarm.max_streams_per_peer,
                                 state_requests_per_minute=self.run.swarm.state_requests_per_minute,
                                 event_loop=cfg.event_loop, upload_limit=cfg.upload_limit_mbit * 1e6 / 8 or None,
                                 on_state_served=lambda peer, n: reporter.event("state_serving", peer=peer[:16],
                                                                                bytes=n),
                                 me=self.me, relay_wait=self.run.swarm.relay_wait)
        stack.callback(self.exchange.close)
        self.template = SwarmState.initial(model, self.strategy.outer_buffers)
        self.trainer = InnerTrainer(model, self.run.train, self.device)
        ComputeWindow(self.run.swarm, self.strategy.inner_steps, windowed=True)  # bad [swarm] timing: refused now
        tokenizer = self.built.tokenizer  # None: bytes
        self.tokens = data.train_tokens(corpus, self.run.data, data.shard_of_peer(self.me, self.run.data), tokenizer)
        self.val = data.val_set(corpus, self.run.data, self.run.model.ctx, tokenizer) if cfg.eval else None
        score_tokens = (data.val_tokens(corpus, self.run.data, tokenizer) if self.run.robust.scoring
                        else None)  # the batch all peers share for scoring updates
        self.ckpt = checkpoint.checkpoint_path(cfg.data_dir, self.run_id)
        self.ledger = Ledger.load(Path(cfg.data_dir) / self.run_id / "ledger.jsonl")
        # where each round's training starts: the swarm's state, or (overlap) that plus our progress in flight
        self.overlap = make_overlap(self.run.strategy.overlap, self.strategy.local_optimizer)
        self.applier = Applier(self.template, run=self.run, strategy=self.strategy, ledger=self.ledger,
                               metrics=self.metrics, out=reporter, me=self.me, device=self.device, model=model,
                               overlap=self.overlap.enabled, score_tokens=score_tokens)
        self.rounds = RoundProtocol(RealNet(self.swarm, self.exchange), self.run_id, self.run.swarm, self.key,
                                    self.ledger, self.applier.hooks(), self.max_bytes)
        self.start: Start | None = None  # where this round's training started: what the update is measured from
        self.inflight: InFlight | None = None  # the round announced and not yet applied
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="round")  # overlap: awaits rosters behind compute
        stack.callback(self.pool.shutdown, wait=False, cancel_futures=True)
        self.history = History()
        self.params = self.built.trainable_params  # what is exchanged (the dense-equivalent reference)
        self.presence = Presence(self.swarm, stack, run_id=self.run_id, me=self.me, name=self.name, device=self.device,
                                 cfg=self.run.swarm, key=self.key, manifest_envelope=self.manifest_envelope)
        self.sync = StateSync(self.applier, swarm=self.swarm, run_id=self.run_id, me=self.me, cfg=self.run.swarm,
                              ledger=self.ledger, rounds=self.rounds, exchange=self.exchange, template=self.template,
                              ckpt=self.ckpt, metrics=self.metrics, history=self.history, out=reporter)
        self.reports = Reports(cfg, stack, swarm=self.swarm, run_id=self.run_id, key=self.key, me=self.me,
                               name=self.name, device=self.device, run=self.run, built=self.built,
                               metrics=self.metrics, history=self.history, applier=self.applier,
                               trainer=self.trainer, out=reporter)
        self.privacy = make_privacy(self.run.privacy, local_optimizer=self.strategy.local_optimizer,
                                    on_epsilon=self.reports.spent)

    @property
    def state(self) -> SwarmState:
        """The swarm's state as we hold it (the applier's: rounds and syncs replace it)."""
        return self.applier.state

    # ----------------------------------------------------------------------------- main loop
    def train(self, stop: threading.Event) -> None:
        self.applier.state, how = self.sync.initial_state(stop)
        self.joined_round, self.joined_at = self.state.round, time.monotonic()
        self.start_heartbeat()
        self.out.event("joined", peer=self.me, name=self.name, run=self.run_id, round=self.state.round,
                       state=how, device=str(self.device), digest=self.state.digest[:16],
                       status_url=self.reports.page.url, maddr=self.maddr)
        while not stop.is_set() and not self.reached_max():
            if self.sync.outvoted():
                self.settle(stop)                                  # (overlap) the round in flight first
                self.sync.resync(stop, force=True)                 # our state differs from the swarm's
            r = self.state.round + 1 + (self.inflight is not None)  # overlap: the round after the one in flight
            self.presence.heartbeat.update(round=r, state_round=self.state.round, digest=self.state.digest)
            t0 = time.monotonic()
            with self.phase("compute"):
                trained = self.inner_steps(r, stop)                # plain torch: H steps, or a window's worth
            if trained is None:
                break                                              # stopped mid-round: keep the last round
            t1 = time.monotonic()
            self.settle(stop)                                      # overlap: the round in flight, if still in flight
            with self.phase("encode"):
                self.privacy.before_update(self.start.base, self.trainer.model)  # DP: clip + noise (off: nothing)
                # the error feedback before this update, to restore if the round misses it
                self.worker_before = copy.deepcopy(self.worker) if self.overlap.carries else None
                update = self.strategy.make_update(self.start.base, self.worker, self.trainer.model)
            self.send(update, *trained, t0, t1, stop)              # announce; the roster is awaited (overlap: behind)
            if not self.overlap.enabled:
                self.settle(stop)                                  # apply it: same bits on every peer
        self.settle(stop)                                          # a last round in flight (max_rounds reached)
        self.presence.leave(self.state, last=max(self.state.round, self.rounds.last_announced))

    # --------------------------------------------------------------------------- the pieces
    def phase(self, name: str):
        return self.metrics.step_seconds.labels(name).time()

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
            self.reports.publish_round(RoundReport(round=r, result="failed" if roster else "timeout",
                                           peers=len(roster.announcements) if roster else 0,
                                           sent=self.exchange.sent["update"], received=self.exchange.received["update"],
                                           relayed=self.exchange.relayed_bytes,
                                           digest=self.state.digest, local_step=self.trainer.steps))
            return None

    def send(self, update: bytes, loss: float, steps: int, t0: float, t1: float, stop: threading.Event) -> None:
        """Announce our update for the round after our state, and await its roster and payloads:
        here, or (overlap) in the background while the next round computes."""
        r, base, state_round = self.state.round + 1, self.state.digest, self.state.round
        if self.overlap.enabled:  # the round in flight was just settled: say where we are now
            self.presence.heartbeat.update(round=r, state_round=state_round, digest=base)
        with self.phase("communicate"):
            tokens = self.applier.tokens_of(steps + self.start.carried_steps)  # a missed round's work counts once more
            self.rounds.announce(r, self.rounds.envelope(r, self.strategy.codec.name, update), tokens, base)
            collect = functools.partial(self.collect, r, base, state_round, stop)
            future = self.pool.submit(collect) if self.overlap.enabled else _done(collect)
        self.inflight = InFlight(round=r, loss=loss, steps=steps, t0=t0, t1=t1, result=future, start=self.start)

    def collect(self, r: int, base: str, state_round: int, stop: threading.Event):
        roster = self.rounds.await_roster(r, base, state_round, stop)  # an elected leader's
        return roster, self.gather_or_fail(r, roster, stop)

    def settle(self, stop: threading.Event) -> None:
        """Apply the round in flight, if any (or resync when it failed for us)."""
        flight, self.inflight = self.inflight, None
        if flight is None:
            return
        waited_from = time.monotonic() if self.overlap.enabled else flight.t1  # overlap: only the wait shows
        with self.phase("communicate") if self.overlap.enabled else contextlib.nullcontext():
            roster, payloads = flight.result.result()
        if stop.is_set():
            return
        with self.phase("apply"):
            applied = payloads is not None and self.applier.apply_round(roster, payloads)  # same bits on every peer
        if not applied or all(a.peer != self.me for a in roster.announcements):
            self.carry_over(flight)
        if applied:
            self.finish_round(roster, flight.loss, flight.steps, train_s=flight.t1 - flight.t0,
                              exchange_s=time.monotonic() - waited_from)
        else:
            self.sync.resync(stop)
        if self.overlap.enabled and self.start is not None:  # the round we train now goes on from this state
            self.start = self.overlap.rebase(self.start, self.state, self.trainer.params)
            self.trainer.load_params(self.start.params)

    def carry_over(self, flight: InFlight) -> None:
        """Our update of this round was not applied: fold its work into the next round (with
        the error feedback as it was before that update, so nothing counts twice)."""
        if self.overlap.missed(flight.start, self.trainer.params, flight.steps):
            self.worker = self.worker_before
            self.out.event("carried_over", round=flight.round, steps=flight.steps)

    def inner_steps(self, r: int, stop: threading.Event) -> tuple[float, int] | None:
        """(mean loss, steps run) of this round's local training, from self.start (the swarm's
        state, or with overlap that plus our progress in flight); None when stopped."""
        self.start = self.overlap.start(self.state, self.trainer.params, in_flight=self.inflight is not None)
        self.trainer.load_params(self.start.params)
        gen = data.batch_generator(self.run.train.seed, self.me, r)
        window = ComputeWindow(self.run.swarm, self.strategy.inner_steps, windowed=self.strategy.local_optimizer)
        started, losses = time.monotonic(), []
        while window.another(len(losses)):
            if stop.is_set():
                return None
            x, y = data.windows(self.tokens, self.run.train.batch_size, self.run.model.ctx, gen)
            t = time.monotonic()
            losses.append(self.trainer.step(x, y, apply=self.strategy.local_optimizer))
            if self.inflight is not None and self.inflight.result.done():
                self.settle(stop)  # overlap: apply the round in flight now, and go on from its state
            if self.cfg.slowdown > 1:  # stand in for a slower machine (tests, benchmarks)
                stop.wait((self.cfg.slowdown - 1) * (time.monotonic() - t))
        self.history.trained(self.applier.tokens_of(len(losses)), time.monotonic() - started)  # forward, backward, step
        return sum(losses) / len(losses), len(losses)

    def finish_round(self, accepted: AcceptedRoster, loss: float, steps: int, *, train_s: float, exchange_s: float) -> None:
        blob = self.state.to_bytes(self.run_id)  # serialised once: served to joiners and saved
        self.exchange.set_state(blob)
        checkpoint.save(self.ckpt, blob)
        peers = len(accepted.announcements)
        bpb = self.applier.evaluate(self.val) if self.val is not None else None  # (after exchange_s: not exchange time)
        self.reports.publish_round(RoundReport(
            round=self.state.round, result="ok" if any(a.peer == self.me for a in accepted.announcements) else "skipped",
            peers=peers, steps=steps, tokens=self.applier.tokens_of(steps), samples=steps * self.run.train.batch_size,
            loss=loss, val_bpb=bpb, train_s=train_s, exchange_s=exchange_s,
            sent=self.exchange.sent["update"], received=self.exchange.received["update"],
            relayed=self.exchange.relayed_bytes, dense=self.metrics.dense_equivalent(self.params, peers, steps),
            digest=self.state.digest, local_step=self.trainer.steps))
        self.presence.manifest_keeper.tick()

    def reached_max(self) -> bool:
        return bool(self.cfg.max_rounds) and self.state.round + (self.inflight is not None) >= self.cfg.max_rounds

    def start_heartbeat(self) -> None:
        """Serve our state, then tell the swarm we are here (heartbeat, and a copy of the manifest)."""
        self.exchange.set_state(self.state.to_bytes(self.run_id))
        maddrs = self.presence.start(self.state)
        self.reports.reach = reachability(maddrs)
        self.maddr = maddrs[0] if maddrs else ""  # others may join through us

    def summary(self) -> dict:
        return {"peer": self.me, "name": self.name, "run_id": self.run_id, "rounds_completed": self.state.round,
                "joined_round": getattr(self, "joined_round", None), "digest": self.state.digest,
                "bytes_sent": self.exchange.sent["update"], "bytes_received": self.exchange.received["update"],
                "relay_bytes_sent": self.exchange.relayed_bytes,  # of bytes_sent: others' updates passed on
                "state_bytes_sent": self.exchange.sent["state"],
                "state_bytes_received": self.exchange.received["state"],
                "update_bytes_per_peer": self.strategy.codec.encoded_size(),
                # what the codec says those updates weigh: payloads served (own and relayed) / fetched x size
                "codec_bytes_sent": self.exchange.served["update"] * self.strategy.codec.encoded_size(),
                "codec_bytes_received": self.exchange.fetched["update"] * self.strategy.codec.encoded_size(),
                "rounds_contributed": self.history.contributed,
                "rounds_failed": self.history.failed, "val_bpb": self.history.val_bpb,
                "train_loss": self.history.loss, "strategy": self.run.strategy.name,
                "params_trainable": self.built.trainable_params, "params_total": self.built.total_params,
                "privacy": self.privacy.report(),
                "rounds_left_out": self.rounds.left_out, "ledger": str(self.ledger.path),
                "tokens_trained": self.history.tokens_trained,
                "tokens_contributed": self.history.tokens_contributed,
                "compute_seconds": round(self.history.compute_s, 3),
                "wall_seconds": round(time.monotonic() - getattr(self, "joined_at", time.monotonic()), 3),
                "timeline": self.history.timeline, "timeline_fields": TIMELINE,
                "val_bpb_timeline": self.history.bpb_timeline}


def run_volunteer(cfg: NodeConfig, stop: threading.Event, reporter: Reporter) -> dict:
    with ExitStack() as stack:
        node = Volunteer(cfg, stack, reporter)
        reporter.say(f"peer {node.me} ({node.name}) joined run {node.run_id}; training on {node.device}"
                     + (f"; status page {node.reports.page.url}" if node.reports.page.url else ""))
        try:
            node.train(stop)
        finally:
            result = node.summary()
            if cfg.result_json:
                Path(cfg.result_json).write_text(json.dumps(result, indent=2))
        reporter.event("left", round=node.state.round, digest=node.state.digest[:16])
    return result
