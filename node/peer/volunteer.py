"""A volunteer node: join a run, train, exchange updates each round, leave cleanly.

`train()` is the main loop and reads top to bottom; everything it calls is plain torch
(trainer.py) or one step of the round protocol (rounds.py).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import msgpack
import torch

from node import __version__

from node.peer import checkpoint

from node.train import data

from node.peer import manifest as manifests

from node.outer import scoring
from node.outer.aggregate import Weights, token_weights
from node.p2p.addresses import initial_peers, shareable
from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.p2p.exchange import Exchange
from node.watch.dashboard.server import NoStatusServer, StatusServer
from node.watch.metrics import NodeMetrics
from node.train.model import build_run_model, trainable
from node.outer.overlap import Start, make_overlap
from node.train.privacy import make_privacy
from node.watch.progress import Reporter
from node.watch.report import TIMELINE, History, RoundReport
from node.p2p.roundnet import RealNet
from node.p2p.validators import guard_run
from node.round import votes
from node.round.ledger import Ledger
from node.train.window import ComputeWindow
from node.round.protocol import Accepted, Hooks, NonFinite, RoundFailed, RoundProtocol, round_record_ttl
from node.outer.state import SwarmState
from node.watch.status import StatusBoard
from node.outer.strategies import make_strategy
from node.p2p.dht import HeartbeatPublisher, Swarm, dht_time, read_peers
from node.p2p.telemetry import MetricsPublisher, load_identity_key, read_metrics, reachability
from node.train.trainer import InnerTrainer, evaluate_bpb
from protocol.messages import Request
from protocol.records import Heartbeat

log = logging.getLogger("swarmtrain.volunteer")
SCORE_BATCH = 4  # sequences in the shared scoring batch: a forward pass per update, on the leader only


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


def node_name(peer_id: str) -> str:
    """A short, stable, pronounceable name derived from the peer id."""
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fi", "go", "hu", "ja", "pe", "zu"]
    h = int.from_bytes(peer_id.encode()[-8:], "big")
    return "-".join("".join(syll[(h >> (4 * (i * 2 + j))) & 15] for j in range(2)) for i in range(2))


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
        self.score_tokens = (data.val_tokens(corpus, self.run.data, tokenizer) if self.run.robust.scoring
                             else None)  # the batch all peers share for scoring updates
        self.ckpt = checkpoint.checkpoint_path(cfg.data_dir, self.run_id)
        self.ledger = Ledger.load(Path(cfg.data_dir) / self.run_id / "ledger.jsonl")
        self.rounds = RoundProtocol(RealNet(self.swarm, self.exchange), self.run_id, self.run.swarm, self.key,
                                    self.ledger, self.round_hooks(), self.max_bytes)
        self._preview: tuple[str, SwarmState] | None = None  # the leader's applied copy, reused
        self.overlap = make_overlap(self.run.strategy.overlap, self.strategy.local_optimizer)  # where each round's training starts
        self.start: Start | None = None  # ... this round's: what the update is measured from
        self.inflight: InFlight | None = None  # the round announced and not yet applied
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="round")  # overlap: awaits rosters behind compute
        stack.callback(self.pool.shutdown, wait=False, cancel_futures=True)
        self.state = self.template
        self.heartbeat: HeartbeatPublisher | None = None
        self.stack = stack
        self.history = History()
        self.params = self.built.trainable_params  # what is exchanged (the dense-equivalent reference)
        self.metrics.info.info({"peer_id": self.me, "name": self.name, "version": __version__, "device": str(self.device),
                                "run_id": self.run_id, "strategy": self.run.strategy.name})
        self.status = StatusBoard(peer=self.me, name=self.name, run_id=self.run_id, strategy=self.run.strategy.name,
                                  device=str(self.device), version=__version__)
        self.status.set_model(trainable=self.built.trainable_params, total=self.built.total_params)
        self.metrics.params_trainable.set(self.built.trainable_params)
        self.metrics.params_total.set(self.built.total_params)

        def spent(eps: float) -> None:
            self.metrics.privacy_epsilon.set(eps)
            self.status.set_privacy(epsilon=eps, delta=self.run.privacy.delta)
        self.privacy = make_privacy(self.run.privacy, local_optimizer=self.strategy.local_optimizer, on_epsilon=spent)
        self.page = (StatusServer(cfg.status_host, cfg.status_port, self.status.snapshot, self.metrics.exposition)
                     if cfg.status_port >= 0 else NoStatusServer())
        stack.callback(self.page.close)
        self.publisher = MetricsPublisher(self.swarm, self.run_id, self.key)
        stack.callback(self.publisher.close)

    # ----------------------------------------------------------------------------- main loop
    def train(self, stop: threading.Event) -> None:
        self.state, how = self.initial_state(stop)
        self.joined_round, self.joined_at = self.state.round, time.monotonic()
        self.start_heartbeat()
        self.out.event("joined", peer=self.me, name=self.name, run=self.run_id, round=self.state.round,
                       state=how, device=str(self.device), digest=self.state.digest[:16], status_url=self.page.url,
                       maddr=self.maddr)
        while not stop.is_set() and not self.reached_max():
            if self.outvoted():
                self.settle(stop)                                  # (overlap) the round in flight first
                self.resync(stop, force=True)                      # our state differs from the swarm's
            r = self.state.round + 1 + (self.inflight is not None)  # overlap: the round after the one in flight
            self.heartbeat.update(round=r, state_round=self.state.round, digest=self.state.digest)
            t0 = time.monotonic()
            with self.phase("compute"):
                trained = self.inner_steps(r, stop)                # plain torch: H steps, or a window's worth
            if trained is None:
                break                                              # stopped mid-round: keep the last round
            t1 = time.monotonic()
            self.settle(stop)                                      # overlap: the round in flight, if still in flight
            with self.phase("encode"):
                self.privacy.before_update(self.start.base, self.trainer.model)  # DP: clip + noise (off: nothing)
                self.worker_before = copy.deepcopy(self.worker) if self.overlap.carries else None  # to restore if missed
                update = self.strategy.make_update(self.start.base, self.worker, self.trainer.model)
            self.send(update, *trained, t0, t1, stop)              # announce; the roster is awaited (overlap: behind)
            if not self.overlap.enabled:
                self.settle(stop)                                  # apply it: same bits on every peer
        self.settle(stop)                                          # a last round in flight (max_rounds reached)
        self.leave(stop)

    # --------------------------------------------------------------------------- the pieces
    def phase(self, name: str):
        return self.metrics.step_seconds.labels(name).time()

    def round_hooks(self) -> Hooks:
        """The strategy's side of the round; with [robust] scoring, the leader scores every update
        and every peer derives the same bans from the scores in the ledger's rosters."""
        robust = self.run.robust
        if not robust.scoring:
            return Hooks(validate=self.strategy.check, preview=self.preview)
        return Hooks(validate=self.strategy.check, preview=self.preview, score=self.score_round,
                     banned=lambda ledger: scoring.banned(ledger.score_history(), robust))

    def score_round(self, payloads: list[bytes], tokens: list[int]) -> list[float]:
        """As leader: each update's loss change on a batch every peer can draw (held-out bytes,
        seeded by the round), applied alone to the round's state."""
        gen = data.batch_generator(self.run.train.seed, "shared-score-batch", self.state.round + 1)
        x, y = data.windows(self.score_tokens, SCORE_BATCH, self.run.model.ctx, gen)
        loss_of = scoring.shared_batch_loss(self.scratch, x.to(self.device), y.to(self.device))
        return scoring.score_updates(self.strategy, self.state, payloads, loss_of, weights=self.weights(tokens))

    def tokens_of(self, steps: int) -> int:
        return steps * self.run.train.batch_size * self.run.model.ctx

    def weights(self, tokens: list[int]) -> Weights:
        """Each contribution's weight in the aggregate: its signed tokens over a full H-step round's."""
        return token_weights(tokens, self.tokens_of(self.strategy.inner_steps), self.run.robust.weight_cap)

    def preview(self, payloads: list[bytes], tokens: list[int]) -> str:
        """As leader: the digest after applying these payloads, on a copy (kept for our own apply)."""
        state = copy.deepcopy(self.state)
        self.strategy.apply(state, payloads, self.weights(tokens))
        if not all(torch.isfinite(p).all() for p in state.params):
            raise NonFinite("the state is not finite after this round")
        self._preview = (state.digest, state)
        return state.digest

    def apply_round(self, acc: Accepted, payloads: list[bytes]) -> bool:
        """Apply the roster; refuse (keep our state) if the result is not finite or not the digest
        the leader published: our state was not the swarm's, or someone lied."""
        if self._preview is not None and self._preview[0] == acc.roster.result and acc.roster.leader == self.me:
            state = self._preview[1]
        else:
            state = copy.deepcopy(self.state)
            self.strategy.apply(state, payloads, self.weights([a.tokens for a in acc.announcements]))
        self._preview = None
        if not all(torch.isfinite(p).all() for p in state.params) or state.digest != acc.roster.result:
            self.metrics.rounds.labels("failed").inc()
            self.out.event("round_refused", round=acc.roster.round, leader=acc.roster.leader[:16],
                           reason="the result is not finite or differs from the roster's digest")
            return False
        self.state = state
        try:
            self.ledger.append(acc)
        except Exception as e:  # a chain gap after a sync; the ledger restarts there
            log.warning("ledger: %s", e)
        return True

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
            self.publish_round(RoundReport(round=r, result="failed" if roster else "timeout",
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
            self.heartbeat.update(round=r, state_round=state_round, digest=base)
        with self.phase("communicate"):
            tokens = self.tokens_of(steps + self.start.carried_steps)  # a missed round's work counts once more
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
            applied = payloads is not None and self.apply_round(roster, payloads)  # same bits on every peer
        if not applied or all(a.peer != self.me for a in roster.announcements):
            self.carry_over(flight)
        if applied:
            self.finish_round(roster, flight.loss, flight.steps, train_s=flight.t1 - flight.t0,
                              exchange_s=time.monotonic() - waited_from)
        else:
            self.resync(stop)
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
        self.history.trained(self.tokens_of(len(losses)), time.monotonic() - started)  # forward, backward, step
        return sum(losses) / len(losses), len(losses)

    def finish_round(self, acc: Accepted, loss: float, steps: int, *, train_s: float, exchange_s: float) -> None:
        blob = self.state.to_bytes(self.run_id)  # serialised once: served to joiners and saved
        self.exchange.set_state(blob)
        checkpoint.save(self.ckpt, blob)
        peers = len(acc.announcements)
        bpb = self.evaluate() if self.val is not None else None  # (after exchange_s: not exchange time)
        self.publish_round(RoundReport(
            round=self.state.round, result="ok" if any(a.peer == self.me for a in acc.announcements) else "skipped",
            peers=peers, steps=steps, tokens=self.tokens_of(steps), samples=steps * self.run.train.batch_size,
            loss=loss, val_bpb=bpb, train_s=train_s, exchange_s=exchange_s,
            sent=self.exchange.sent["update"], received=self.exchange.received["update"],
            relayed=self.exchange.relayed_bytes, dense=self.metrics.dense_equivalent(self.params, peers, steps),
            digest=self.state.digest, local_step=self.trainer.steps))
        self.manifest_keeper.tick()

    @functools.cached_property
    def scratch(self) -> torch.nn.Module:
        """A model to evaluate and score states on: a copy when the trainer's own must keep its
        trained weights meanwhile (overlap trains on; a missed round's progress is read from it
        after the leader scored), else the trainer's own (the next round reloads it)."""
        keep = self.overlap.enabled or self.run.robust.scoring
        return copy.deepcopy(self.trainer.model) if keep else self.trainer.model

    def evaluate(self) -> float:
        for p, src in zip(trainable(self.scratch), self.state.params):
            p.data.copy_(src)
        return evaluate_bpb(self.scratch, *self.val, self.device)

    def publish_round(self, report: RoundReport) -> None:
        """One round's outcome to every sink: metrics, page and signed record, summary, terminal."""
        self.metrics.round_done(report)
        self.status.round_done(report)
        self.history.add(report)
        peers = read_peers(self.swarm, self.run_id)
        self.metrics.peers_alive.set(len(peers | {self.me: None}))
        self.publish_status(peers)
        if report.completed:
            self.out.event("round", **report.line())

    def publish_status(self, peers: dict[str, Heartbeat] | None = None) -> None:
        """Refresh the page's peer table and publish our signed metrics record for monitors."""
        peers = read_peers(self.swarm, self.run_id) if peers is None else peers
        self.status.peers_seen(peers, self.state.round, read_metrics(self.swarm, self.run_id))
        self.publisher.publish(self.status.record(local_step=self.trainer.steps, now=dht_time(),
                                                  reachability=self.reach))

    def reached_max(self) -> bool:
        return bool(self.cfg.max_rounds) and self.state.round + (self.inflight is not None) >= self.cfg.max_rounds

    def start_heartbeat(self) -> None:
        maddrs = shareable(self.swarm.visible_maddrs())
        self.reach = reachability(maddrs)
        self.maddr = maddrs[0] if maddrs else ""  # others may join through us
        first = Heartbeat(run=self.run_id, peer=self.me, name=self.name[:64], round=self.state.round + 1,
                          state_round=self.state.round, digest=self.state.digest, device=str(self.device),
                          maddrs=tuple(maddrs[:16]), time=dht_time())
        self.exchange.set_state(self.state.to_bytes(self.run_id))
        self.heartbeat = HeartbeatPublisher(self.swarm, self.run_id, first, interval=self.run.swarm.heartbeat_interval,
                                            ttl=self.run.swarm.heartbeat_ttl, key=self.key)
        self.stack.callback(self.heartbeat.close)
        self.manifest_keeper = manifests.ManifestKeeper(self.swarm, self.manifest_envelope)
        self.manifest_keeper.tick()  # one more copy now, in case the bootstrap peer goes

    def initial_state(self, stop: threading.Event) -> tuple[SwarmState, str]:
        """Our checkpoint, or the swarm's state if it is ahead, or round 0."""
        local = checkpoint.load(self.ckpt, run_id=self.run_id, template=self.template)
        ahead = max((hb.state_round for hb in self.others(stop).values()), default=0)
        if ahead > (local.round if local else 0):
            state = self.fetch_state(stop)
            if state is not None:
                self.ledger.restart(state.round, state.digest)
                return state, "from_peers"
        return (local, "checkpoint") if local else (self.template, "initial")

    def others(self, stop: threading.Event, reads: int = 3) -> dict:
        """The other peers' heartbeats, read again (1 s apart) while none shows: a node that just
        joined the DHT may not reach every replica on its first lookup."""
        for _ in range(reads):
            found = {p: hb for p, hb in read_peers(self.swarm, self.run_id).items() if p != self.me}
            if found or stop.wait(1.0):
                break
        return found

    def voters(self) -> dict:
        """Live signed peers that appear in the rosters we know: only they vouch for states.
        Without other peers in our ledger (a new joiner, or a peer that went on alone), the rosters
        still in the DHT name them: a ledger of our own rounds alone must not hide the swarm."""
        peers = read_peers(self.swarm, self.run_id, ttl=self.run.swarm.heartbeat_ttl)
        members = self.ledger.members() - {self.me}
        if not members:
            rounds = {hb.state_round for p, hb in peers.items() if p != self.me}
            members = self.rounds.members_in_dht(sorted(rounds)[-3:])
        return votes.voters(peers, members, self.me)

    def outvoted(self) -> bool:
        """True when enough voters hold another state of our round, and more than hold ours."""
        voters = self.voters()
        return (votes.outvoted(voters, self.state.round, self.state.digest)
                or votes.fork_target(voters, self.state.round, self.state.digest) is not None)

    def resync(self, stop: threading.Event, force: bool = False) -> None:
        state = self.fetch_state(stop, same_round=force)
        if state is not None and (state.round > self.state.round or (force and state.digest != self.state.digest)):
            self.history.syncs["resync"] += 1
            self.adopt(state)

    def adopt(self, state: SwarmState) -> None:
        """Train on from a state taken from peers; our ledger's old rosters no longer lead to it."""
        self.state = state
        self.ledger.restart(state.round, state.digest)
        self.exchange.set_state(state.to_bytes(self.run_id))

    def fetch_state(self, stop: threading.Event, attempts: int = 6, same_round: bool = False) -> SwarmState | None:
        """Download a state that a majority of voters vouch for, never older than ours."""
        for _ in range(attempts):
            if stop.is_set():
                return None
            voters = self.voters()
            wanted = [(r, d) for r, d, _ in votes.vouched_states(voters)
                      if votes.acceptable(voters, r, d, self.state.round, same_round=same_round)
                      and d != self.state.digest]
            fork = votes.fork_target(voters, self.state.round, self.state.digest)
            wanted += [fork] if fork and same_round else []  # a split swarm converging (see votes.py)
            for rnd, digest in wanted[:1]:
                for donor in sorted(p for p, hb in voters.items() if hb.digest == digest):
                    state = self._download_state(donor, rnd)
                    if state is not None and state.digest == digest and state.round == rnd:
                        self.history.syncs["ok"] += 1
                        self.metrics.state_syncs.labels("ok").inc()
                        self.out.event("state_synced", round=state.round, donor=donor[:16],
                                       vouchers=sum(hb.digest == digest for hb in voters.values()))
                        return state
            self.history.syncs["unverified"] += 1
            self.metrics.state_syncs.labels("unverified").inc()
            stop.wait(1.0)
        return None

    @functools.cached_property
    def state_len_without_round(self) -> int:
        """A state container's length less its round number's msgpack bytes (nothing else varies)."""
        return len(self.template.to_bytes(self.run_id)) - len(msgpack.packb(self.template.round))

    def _download_state(self, donor: str, round_no: int) -> SwarmState | None:
        """The donor's state, read only if its length is exactly that of a state of round `round_no`."""
        self.out.event("state_fetch", donor=donor[:16], round=round_no)
        try:
            blob = self.exchange.fetch(donor, Request(op="state", run=self.run_id), timeout=60,
                                       expect=self.state_len_without_round + len(msgpack.packb(round_no)))
            return SwarmState.from_bytes(blob, run_id=self.run_id, template=self.template)
        except Exception as e:  # refused, unreachable, timed out or malformed: try the next donor
            self.metrics.state_syncs.labels("failed").inc()
            self.out.event("state_fetch_failed", donor=donor[:16], reason=f"{type(e).__name__}: {e}")
            return None

    def leave(self, stop: threading.Event) -> None:
        """Serve our updates until the other peers are past the last round we announced (or
        applied), then go: a roster may already name our update. This runs after the first
        Ctrl+C too (a second one aborts), for at most collect_timeout."""
        if self.heartbeat is None:
            return
        self.heartbeat.update(active=False, state_round=self.state.round, digest=self.state.digest)
        last = max(self.state.round, self.rounds.last_announced)
        deadline = time.monotonic() + self.run.swarm.collect_timeout
        while time.monotonic() < deadline:
            behind = [p for p, hb in read_peers(self.swarm, self.run_id).items()
                      if p != self.me and hb.active and hb.state_round < last]
            if not behind:
                break
            time.sleep(0.5)  # not stop.wait: stop is already set when a user asked us to leave

    def summary(self) -> dict:
        return {"peer": self.me, "name": self.name, "run_id": self.run_id, "rounds_completed": self.state.round,
                "joined_round": getattr(self, "joined_round", None), "digest": self.state.digest,
                "bytes_sent": self.exchange.sent["update"], "bytes_received": self.exchange.received["update"],
                "relay_bytes_sent": self.exchange.relayed_bytes,  # of bytes_sent: others' updates passed on
                "state_bytes_sent": self.exchange.sent["state"], "state_bytes_received": self.exchange.received["state"],
                "update_bytes_per_peer": self.strategy.codec.encoded_size(),
                # what the codec says those updates weigh: payloads served (own and relayed) / fetched x size
                "codec_bytes_sent": self.exchange.served["update"] * self.strategy.codec.encoded_size(),
                "codec_bytes_received": self.exchange.fetched["update"] * self.strategy.codec.encoded_size(), "rounds_contributed": self.history.contributed,
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
                     + (f"; status page {node.page.url}" if node.page.url else ""))
        try:
            node.train(stop)
        finally:
            result = node.summary()
            if cfg.result_json:
                Path(cfg.result_json).write_text(json.dumps(result, indent=2))
        reporter.event("left", round=node.state.round, digest=node.state.digest[:16])
    return result
