"""A node's parts, built and connected once: the DHT and identity, the run and its model, the
exchange, the trainer and data, the round protocol and what it applies, presence, state sync and
reporting. The volunteer's loop (volunteer.py) runs over them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import torch

from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.outer.overlap import make_overlap
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.p2p.addresses import initial_peers
from node.p2p.dht import Swarm
from node.p2p.exchange import Exchange
from node.p2p.identity import load_identity_key, writable_dir
from node.p2p.limits import Budgets
from node.p2p.roundnet import RealNet
from node.p2p.validators import guard_run
from node.peer import checkpoint
from node.peer import manifest as manifests
from node.peer.applier import Applier
from node.peer.presence import Presence
from node.peer.reporting import Reports, node_name
from node.peer.sync import StateSync
from node.round.fetch import UpdateShape
from node.round.ledger import Ledger
from node.round.protocol import RoundProtocol, round_record_ttl
from node.round.trust import chain
from node.round.trust.anchor import FILENAME as ANCHOR_FILE
from node.round.trust.anchor import Anchor
from node.round.trust.sealed import SEALS_FILE, FirstSeals
from node.scatter.runner import make_scatter
from node.train import data
from node.train.device import pick_device
from node.train.model import BuiltModel, build_run_model, trainable
from node.train.privacy import make_privacy
from node.train.trainer import InnerTrainer
from node.train.window import ComputeWindow
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import History
from protocol.admission import work
from protocol.signing import public_der

PROOF_SAY_EVERY = 15.0  # seconds between two progress lines while we solve our admission proof


class LoadedData(NamedTuple):
    """What a peer trains and evaluates on."""

    tokens: object
    """Our shard of the training tokens (None: the peer brings its own data)."""
    val: object
    """The held-out set, or None (not evaluated)."""
    score: object
    """The batch all peers share for scoring updates, or None (no scoring)."""


class NodeParts:
    """The pieces of a running node; the loop is Peer's (volunteer.py)."""

    def __init__(self, cfg: NodeConfig, stack: ExitStack, reporter: Reporter):
        writable_dir(cfg.data_dir)  # before waiting for peers: a bad --data-dir is said at once
        if cfg.result_json:  # written when the node leaves: say now, not after training, that it cannot be
            writable_dir(str(Path(cfg.result_json).expanduser().absolute().parent), "--result-json")
        peers = initial_peers(cfg.initial_peers, cfg.initial_peers_file, cfg.startup_timeout)
        if not peers and not cfg.new_swarm:
            raise SwarmtrainError(
                "no initial peers given",
                "pass --initial-peers MADDR (printed by `swarmtrain bootstrap`), set "
                "SWARMTRAIN_INITIAL_PEERS, or start a swarm of your own with `swarmtrain bootstrap --run run.toml`",
            )
        self.cfg, self.out = cfg, reporter
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.swarm = Swarm.start(cfg, peers)
        stack.callback(self.swarm.shutdown)
        self.me = self.swarm.peer_id
        self.name = cfg.name or node_name(self.me)
        self.run_id, self.manifest, self.manifest_envelope = self.find_run()
        self.run, corpus = manifests.accept(self.run_id, self.manifest, cfg)  # cfg: where our copies of its files are
        manifests.keep_copy(Path(cfg.data_dir) / self.run_id, self.manifest_envelope)  # `swarmtrain audit`'s anchor
        self.key = load_identity_key(self.swarm.identity_path)  # signs every record we write
        guard_run(
            self.swarm,
            self.run_id,
            heartbeat_ttl=self.run.swarm.heartbeat_ttl,
            round_ttl=round_record_ttl(self.run.swarm),
        )
        self.built = self.build_model()  # refuses other weights, naming the fix
        model = self.built.model  # the swarm trains trainable(model): all of it, or only LoRA adapters
        self.strategy = make_strategy(
            self.run.strategy, [tuple(p.shape) for p in trainable(model)], self.run.train, robust=self.run.robust
        )
        self.worker = self.strategy.new_worker()  # this peer's private buffers (error feedback)
        self.max_bytes = int(self.run.swarm.max_update_mb * 2**20)
        self.metrics = NodeMetrics()
        self.exchange = Exchange(
            self.swarm.dht,
            self.run_id,
            max_bytes=self.max_bytes,
            on_bytes=self.metrics.on_bytes,
            max_streams_per_peer=self.run.swarm.max_streams_per_peer,
            state_requests_per_minute=self.run.swarm.state_requests_per_minute,
            event_loop=cfg.event_loop,
            upload_limit=cfg.upload_limit_mbit * 1e6 / 8 or None,
            on_state_served=lambda peer, n: reporter.event("state_serving", peer=peer[:16], bytes=n),
            me=self.me,
            relay_wait=self.run.swarm.relay_wait,
            budgets=Budgets(
                inbound_streams=cfg.max_inbound_streams,
                state_uploads=cfg.max_state_uploads,
                held_bytes=int(cfg.max_fetch_mb_in_flight * 2**20),
            ),
        )
        stack.callback(self.exchange.close)
        self.template = SwarmState.initial(model, self.strategy.outer_buffers)
        self.trainer = self.make_trainer(model)
        ComputeWindow(self.run.swarm, self.strategy.inner_steps, windowed=True)  # bad [swarm] timing: refused now
        loaded = self.load_data(corpus)
        self.tokens, self.val, score_tokens = loaded.tokens, loaded.val, loaded.score
        self.ckpt = checkpoint.checkpoint_path(cfg.data_dir, self.run_id)
        ledger_path = Path(cfg.data_dir) / self.run_id / "ledger.jsonl"
        self.ledger = Ledger.load(ledger_path, epoch_rounds=self.run.swarm.identity_epoch_rounds)
        self.exchange.set_ledger(self.ledger.envelopes_from)  # joiners verify our chain from the genesis
        self.ledger.anchor = Anchor.load(  # the organizer's newest checkpoint: node/round/trust/anchor.py
            Path(cfg.data_dir) / self.run_id / ANCHOR_FILE, run_id=self.run_id, organizer=self.manifest["organizer"]
        )
        # where each round's training starts: the swarm's state, or (overlap) that plus our progress in flight
        self.overlap = make_overlap(self.run.strategy.overlap, self.strategy.local_optimizer)
        self.applier = Applier(
            self.template,
            run=self.run,
            strategy=self.strategy,
            ledger=self.ledger,
            metrics=self.metrics,
            out=reporter,
            me=self.me,
            device=self.device,
            model=model,
            overlap=self.overlap.enabled,
            score_tokens=score_tokens,
            **self.token_counts(),
        )
        net = RealNet(self.swarm, self.exchange)
        self.rounds = RoundProtocol(
            net,
            self.run_id,
            self.run.swarm,
            self.key,
            self.ledger,
            self.applier.hooks(),
            self.max_bytes,
            update_shape=UpdateShape(codec=self.strategy.codec.name, payload_bytes=self.strategy.codec.encoded_size()),
            admission=chain.admission_of(self.run_id, self.run.swarm, self.manifest["organizer"]),
            organizer=self.manifest["organizer"],  # a young run's only leader (chain.young)
            scatter=make_scatter(
                self.run, net=net, serve=self.exchange.set_scatter, key=self.key, strategy=self.strategy
            ),
        )
        # one first seal a round and base, across restarts (node/round/trust/sealed.py FirstSeals)
        self.rounds.builder.sealed = FirstSeals(Path(cfg.data_dir) / self.run_id / SEALS_FILE, me=self.me)
        anchor = self.ledger.anchor  # leaders embed its checkpoint in the rosters right after it
        self.rounds.builder.carry = lambda r: anchor.carry(r, self.ledger, self.rounds.net, self.rounds.table.last())
        self.history = History()
        self.presence = Presence(
            self.swarm,
            stack,
            run_id=self.run_id,
            me=self.me,
            name=self.name,
            device=self.device,
            cfg=self.run.swarm,
            key=self.key,
            manifest_envelope=self.manifest_envelope,
            work=lambda: self.rounds.admission.proof,  # set once solved or loaded (obtain_proof), renewed
        )
        self.sync = StateSync(
            self.applier,
            swarm=self.swarm,
            run_id=self.run_id,
            me=self.me,
            cfg=self.run.swarm,
            ledger=self.ledger,
            rounds=self.rounds,
            exchange=self.exchange,
            template=self.template,
            ckpt=self.ckpt,
            metrics=self.metrics,
            history=self.history,
            out=reporter,
            organizer=self.manifest["organizer"],
        )
        self.reports = Reports(
            cfg,
            stack,
            swarm=self.swarm,
            run_id=self.run_id,
            key=self.key,
            me=self.me,
            name=self.name,
            device=self.device,
            run=self.run,
            built=self.built,
            metrics=self.metrics,
            history=self.history,
            applier=self.applier,
            trainer=self.trainer,
            out=reporter,
        )
        self.privacy = make_privacy(
            self.run.privacy, local_optimizer=self.strategy.local_optimizer, on_epsilon=self.reports.spent
        )

    def obtain_proof(self, stop: threading.Event) -> bool:
        """Our admission proof (protocol/admission/work.py), saved under the run's data dir for
        this key if it counts on our chain, else solved once, for the newest epoch whose seed our
        chain holds (called after the sync: a late joiner's proof counts from its first round), in
        a background thread that `stop` (Ctrl+C) ends within one evaluation, saying how far it is
        (minutes of one core at the defaults). A kept proof without a stamp (saved before protocol
        5) is solved again. False: stopped. A run without work, and its organizer (exempt), need none."""
        admission, der = self.rounds.admission, public_der(self.key)
        puzzle = admission.puzzle
        if puzzle is None or admission.proof or self.me == self.manifest["organizer"]:
            return True
        path, head = proof_path(self.cfg.data_dir, self.run_id, der), max(self.ledger.rosters, default=0)
        seeds = admission.seeds(head, self.ledger.beacon_of(head) or "", self.ledger.beacon_of)  # our chain's
        saved = _saved_proof(path)
        if saved is not None and not saved.stamp:
            self.out.say(
                f"admission work: the proof kept in {path} has no stamp (saved before protocol 5): solving again"
            )
        elif saved is not None and puzzle.valid(der, saved, seeds):
            admission.proof = tuple(saved)  # of our chain's epoch or the one before (else renewed: open_round)
            return True
        epoch = max(seeds, default=0)  # our chain's newest (0: no roster yet, or its seed left with a checkpoint)
        done, found = [(0, puzzle.expected, "scrypt evaluations")], []
        solver = threading.Thread(
            target=lambda: found.append(
                puzzle.solve(der, stop, lambda *n: done.__setitem__(0, n), epoch=epoch, seed=seeds.get(epoch))
            ),
            name="admission-work",
            daemon=True,
        )
        t0 = time.monotonic()
        self.out.say(
            f"admission work: this run asks each new identity for a proof of work ({puzzle.bits} bits of "
            f"scrypt n=2^{puzzle.n_log2}, then a stamp of {puzzle.stamp_bits} bits of SHA-256), about "
            f"{puzzle.expected} evaluations and {puzzle.stamp_expected} hashes, for epoch {epoch} of our chain "
            "(renewed in the background each epoch). Ctrl+C stops."
        )
        solver.start()
        while solver.is_alive():
            solver.join(PROOF_SAY_EVERY)
            if solver.is_alive() and not stop.is_set():
                n, expected, what = done[0]
                self.out.say(f"admission work: {n} of ~{expected} {what} ({time.monotonic() - t0:.0f} s)")
        if not found or found[0] is None:
            return False
        admission.proof = tuple(found[0])
        keep_proof(path, found[0])
        self.out.say(f"admission work: done in {time.monotonic() - t0:.0f} s, kept in {path}")
        return True

    # ------------------------------------------------------------- what a peer brings: the CLI's
    # A peer driven from Python (node/peer/driver.py) brings its own model, optimizer and data:
    # it overrides these and shares everything else.
    def find_run(self) -> manifests.RunFound:
        """The run we were asked for, from the DHT."""
        return manifests.fetch(
            self.swarm, manifests.wanted_run(self.cfg), self.cfg.startup_timeout, sole_run=self.cfg.new_swarm
        )

    def build_model(self) -> BuiltModel:
        """The run's round-0 model, built from its manifest."""
        cfg = self.cfg
        return build_run_model(
            self.run, pretrained_dir=cfg.pretrained_dir, tokenizer_dir=cfg.tokenizer_dir, expect=self.manifest["model"]
        )

    def make_trainer(self, model: torch.nn.Module) -> InnerTrainer:
        return InnerTrainer(model, self.run.train, self.device)

    def load_data(self, corpus) -> LoadedData:
        """Our shard's tokens, the held-out set and the batch all peers share for scoring: tokenized
        once into memory-mapped files under <data_dir>/tokens (node/train/disk.py)."""
        run, tokenizer, cache = self.run, self.built.tokenizer, Path(self.cfg.data_dir) / "tokens"  # None: bytes
        tokens = data.train_tokens(corpus, run.data, data.shard_of_peer(self.me, run.data), tokenizer, cache)
        val = data.val_set(corpus, run.data, run.model.ctx, tokenizer, cache_dir=cache) if self.cfg.eval else None
        score = data.val_tokens(corpus, run.data, tokenizer, cache) if run.robust.scoring else None
        return LoadedData(tokens=tokens, val=val, score=score)

    def token_counts(self) -> dict:
        """Tokens per inner step, ours and the run's reference (Applier's; empty: batch_size x ctx)."""
        return {}

    def evaluate(self) -> float | None:
        """The held-out metric of the state we hold, reported after each round (None: not measured)."""
        return self.applier.evaluate(self.val) if self.val is not None else None

    @property
    def state(self) -> SwarmState:
        """The swarm's state as we hold it (the applier's: rounds and syncs replace it)."""
        return self.applier.state


def proof_path(data_dir: str, run_id: str, key_der: bytes) -> Path:
    """Where our admission proof for the run and key is kept."""
    return Path(data_dir) / run_id / f"work-{hashlib.sha256(key_der).hexdigest()[:16]}.json"


def keep_proof(path: Path, proof: work.Proof) -> None:
    """Save our proof (a restart announces it again while it counts: its epoch or the next)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"epoch": proof.epoch, "nonce": proof.nonce.hex(), "stamp": proof.stamp.hex()}))


def _saved_proof(path: Path) -> work.Proof | None:
    try:
        d = json.loads(path.read_text())
        return work.Proof(int(d["epoch"]), bytes.fromhex(d["nonce"]), bytes.fromhex(d.get("stamp", "")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # torn, foreign or not a JSON object
        return None
