"""The organizer's witness: a member of the run that leads its young rounds and applies every round,
but trains nothing.

The bootstrap peer is the organizer: its key signed the manifest, so the run id commits to it.
While the run is young (fewer than `[swarm] bootstrap_peers` peers other than the organizer are
established on the chain: node/round/trust/chain.py, `young`) the organizer is the only
candidate, and every peer refuses another leader's roster. So the witness holds the run's state
and runs the volunteer's round code (node/round/protocol.py, node/peer/applier.py) without a
trainer: it opens a round when the round's first update is announced (it has none of its own to
time it by), leads it where the election says it does (a young run: always, in slot (0, 0),
without waiting for an update of its own: `RoundProtocol(trains=False)`), lists every valid
update it fetched (it has no interest in censoring), and applies the roster as every member
does. A round it could not follow is caught up as a volunteer does (node/peer/sync.py: the
verified chain, a donor's state), and its state is saved after each round, so that a restarted
organizer leads on from where it stopped. While the run is young and the organizer offline, no
round is led.

Once the run is grown it is no candidate (it is never named in a roster, so never established)
and follows the chain without the state (`follow_chain`): it cannot apply a v3 round (the
aggregate goes to the round's members only), and applying a v2 one would cost it every update
for nothing it needs. Each look it takes the rosters its catch-up verifies from its ledger
(chain.check link by link, a quorum of the established peers holding the head, fork choice:
node/round/trust/catchup.py) into its ledger, and names that head in its heartbeat: no state is
downloaded. Its state and saved checkpoint file stay at the last round it applied. Should the run
become young again on its ledger (its established peers gone from the window), it takes the
state at its ledger's head from a peer holding it (StateSync.fetch_head) before it leads.

Its heartbeat, inactive (it announces nothing: no leader waits for it), names its head: a
joiner knows no established peer yet, so it takes only a head whose chain passes through the
organizer's (Catchup's pin), and a chain a Sybil crowd grew from the genesis is refused while
the organizer is online. It serves the chain it applied (the `ledger` RPC).

For the organizer offline, the witness signs a checkpoint every `checkpoint_rounds` rounds of its
chain (node/round/trust/anchor.py), names it in its heartbeat (`cp`) and serves it (the
`checkpoint` RPC); leaders carry it in their rosters, and every peer keeps it as its anchor.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from node.config import RunConfig
from node.outer.state import SwarmState
from node.p2p.dht import WITNESS_DEVICE, HeartbeatPublisher, Swarm, dht_time
from node.p2p.exchange import Exchange
from node.p2p.roundnet import RealNet
from node.peer import checkpoint
from node.peer.applier import Applier
from node.peer.sync import StateSync
from node.round.fetch import UpdateShape
from node.round.ledger import Ledger
from node.round.protocol import RoundFailed, RoundProtocol
from node.round.trust import chain
from node.round.trust.anchor import FILENAME, Anchor
from node.round.trust.catchup import Catchup, Head
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import History
from protocol import keys
from protocol.kinds.checkpoint import checkpoint_hash
from protocol.records import Heartbeat

log = logging.getLogger("swarmtrain.witness")
LOOK_EVERY = 1.0  # seconds between two looks for a better head while no round is open


class Witness:
    """Applies the run's rounds as a member that does not train, leads them while the run is young,
    and publishes its head as the organizer."""

    def __init__(
        self,
        swarm: Swarm,
        *,
        run_id: str,
        key,
        run: RunConfig,
        model: torch.nn.Module,
        strategy,
        score_tokens: torch.Tensor | None,
        data_dir: Path,
        out: Reporter,
    ):
        """`model` and `strategy`: the run's round-0 model and outer strategy, as a volunteer
        builds them; `score_tokens`: the shared scoring batch ([robust] scoring; else None)."""
        cfg = run.swarm
        self.swarm, self.run_id, self.cfg, self.me, self.key = swarm, run_id, cfg, swarm.peer_id, key
        self.ledger = Ledger.load(data_dir / run_id / "ledger.jsonl", epoch_rounds=cfg.identity_epoch_rounds)
        self.anchor = self.ledger.anchor = Anchor.load(data_dir / run_id / FILENAME, run_id=run_id, organizer=self.me)
        max_bytes, metrics = int(cfg.max_update_mb * 2**20), NodeMetrics()
        self.exchange = Exchange(swarm.dht, run_id, max_bytes=max_bytes, me=self.me, on_bytes=metrics.on_bytes)
        self.exchange.set_ledger(self.ledger.envelopes_from)
        self.exchange.set_checkpoint(lambda c: self.anchor.envelope if c == self.anchor.round else None)
        template = SwarmState.initial(model, strategy.outer_buffers)
        self.applier = Applier(
            template,
            run=run,
            strategy=strategy,
            ledger=self.ledger,
            metrics=metrics,
            out=out,
            me=self.me,
            device=torch.device("cpu"),
            model=model,
            overlap=False,
            score_tokens=score_tokens,
        )
        self.rounds = RoundProtocol(
            RealNet(swarm, self.exchange),
            run_id,
            cfg,
            key,
            self.ledger,
            self.applier.hooks(),
            max_bytes,
            update_shape=UpdateShape(codec=strategy.codec.name, payload_bytes=strategy.codec.encoded_size()),
            admission=chain.admission_of(run_id, cfg, self.me),  # the rules every peer checks a chain by
            organizer=self.me,
            trains=False,
        )
        self.rounds.builder.carry = lambda r: self.anchor.carry(r, self.ledger)  # we sign it: no fetch
        self.sync = StateSync(  # no pin: we are the pin
            self.applier,
            swarm=swarm,
            run_id=run_id,
            me=self.me,
            cfg=cfg,
            ledger=self.ledger,
            rounds=self.rounds,
            exchange=self.exchange,
            template=template,
            ckpt=checkpoint.checkpoint_path(str(data_dir), run_id),
            metrics=metrics,
            history=History(),
            out=out,
        )
        self.saved = (0, template.digest)  # the state our checkpoint file holds
        self.heartbeat = HeartbeatPublisher(
            swarm,
            run_id,
            Heartbeat(
                run=run_id,
                peer=self.me,
                name="organizer",
                round=1,
                state_round=0,
                digest=template.digest,
                device=WITNESS_DEVICE,
                maddrs=(),
                time=dht_time(),
                active=False,
                cp=self.pointer(),
            ),
            interval=cfg.heartbeat_interval,
            ttl=cfg.heartbeat_ttl,
            key=key,
        )

    @property
    def state(self) -> SwarmState:
        return self.applier.state

    def follow(self, stop: threading.Event) -> None:
        """Take our saved state (or the swarm's, if ahead), then apply round after round until `stop`."""
        try:
            self.applier.state, how = self.sync.initial_state(stop)
            log.info("witness: starting from round %d (%s)", self.state.round, how)
            self.moved()
        except Exception as e:  # noqa: BLE001 -- a DHT hiccup must not end the organizer's peer
            log.warning("witness: %s: %s", type(e).__name__, e)
        while not stop.is_set():
            try:
                self.step(stop)
            except Exception as e:  # noqa: BLE001 -- as above; the next step looks again
                log.warning("witness: %s: %s", type(e).__name__, e)
                stop.wait(LOOK_EVERY)

    def step(self, stop: threading.Event) -> None:
        """One round: in a grown run, follow the chain without the state; in a young one, take the
        state at our ledger's head if we followed without it, then catch up if the swarm's
        established peers hold a head off our chain, else await the next round's roster (leading
        it when the election says so) and apply it."""
        if not self.rounds.young():  # others lead: a v3 round's aggregate is its members' only
            if follow_chain(self.sync.catchup, self.ledger, self.sync.live()):
                self.moved()
            else:
                stop.wait(LOOK_EVERY)
            return
        if self.head() != self.sync.head:  # young again: we lead on the state, which we lack
            synced = self.sync.fetch_head(stop, self.ledger.rosters[self.head().round])
            if synced is None:
                stop.wait(LOOK_EVERY)
                return
            self.sync.adopt(synced)
            self.moved()
        if self.sync.outvoted():
            self.sync.resync(stop, force=True)
            self.moved()
        state = self.state
        r = state.round + 1
        if not self.opened(r, state.digest):
            stop.wait(LOOK_EVERY)
            return
        accepted = self.rounds.await_roster(r, state.digest, state.round, stop)
        if stop.is_set():
            return
        try:
            if accepted is None:
                raise RoundFailed(f"no roster for round {r} within {self.cfg.round_timeout:.0f} s")
            applied = self.applier.apply_round(accepted, self.rounds.gather(accepted))
        except RoundFailed as e:
            log.warning("witness: %s", e)
            applied = False
        if not applied:
            if accepted is not None:
                self.rounds.failed.add((r, accepted.roster.leader))
            self.sync.resync(stop)  # a head off our chain, if the swarm has one
        self.moved()

    def head(self) -> Head:
        """The head we name: our ledger's (state or not: see follow_chain)."""
        return chain_head(self.ledger, self.sync.head)

    def opened(self, round_no: int, base: str) -> bool:
        """Has round `round_no` begun: an update of it announced on our state, or a roster of it
        stored? The witness trains nothing, so a round's first update is what opens it (a volunteer
        opens it when it announces); opened earlier, the attempts of the election (counted from
        when a peer first awaited the round) would run on before anyone trained, and members
        would refuse our roster as one of an attempt whose turn has not come."""
        if self.rounds.net.get_subkeys(keys.roster_key(self.run_id, round_no)):
            return True
        return bool(self.rounds.builder.announcements(round_no, base))

    def moved(self) -> None:
        """Our state or chain moved: save the state, name the head in our heartbeat, sign a due checkpoint."""
        state = self.state
        if state.round > 0 and (state.round, state.digest) != self.saved:  # a restarted organizer leads on
            checkpoint.save(self.sync.ckpt, state.to_bytes(self.run_id))
            self.saved = (state.round, state.digest)
        if self.anchor.sign_due(self.key, self.ledger, every=self.cfg.checkpoint_rounds, now=dht_time()):
            self.heartbeat.update(cp=self.pointer())
        head = self.head()  # the pin joiners take (Catchup.pin_chain): our verified chain's head
        self.heartbeat.update(round=head.round + 1, state_round=head.round, digest=head.digest)
        held = "" if head == self.sync.head else f", our state is round {state.round}'s"
        log.info("witness: round %d, %s (young run: %s%s)", head.round, head.digest[:12], self.rounds.young(), held)

    def pointer(self) -> tuple:
        """Our heartbeat's `cp`: (round, body hash) of our newest checkpoint; () before the first."""
        return (self.anchor.round, checkpoint_hash(self.anchor.envelope)) if self.anchor.envelope else ()

    def close(self) -> None:
        self.heartbeat.close()
        self.exchange.close()


def chain_head(ledger: Ledger, state: Head) -> Head:
    """The head of our verified chain: our ledger's last roster, unless our state is past it (a
    roster the ledger could not chain on is logged, the state is right); at round 0, the state."""
    last = max(ledger.rosters, default=0)
    if last < state.round or not last:
        return state
    return Head(last, ledger.rosters[last].roster.result)


def follow_chain(catchup: Catchup, ledger: Ledger, peers: dict) -> bool:
    """Extend our ledger, without the state, to the head catch-up verifies and takes from its head
    (a quorum of the established live `peers` holding it, or fork choice): only the `ledger` RPC
    is asked, never the state. Whether the ledger moved."""
    target = catchup.plan(peers, chain_head(ledger, Head(0, catchup.start.base)))
    if target is None or not target.rosters:
        return False
    ledger.extend(target.ancestor, list(target.rosters))
    catchup.moved()
    return True
