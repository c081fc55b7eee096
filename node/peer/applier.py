"""Applying a round to the state this peer holds: the leader's result digest, scores and credit, every peer's apply.

The round protocol's hooks (node/round/protocol.py Hooks) target this object, not the whole
node: all they need is the state, the strategy, what weighs updates and a model to score them on.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from node.config import RunConfig
from node.outer import scoring, useful
from node.outer.aggregate import Weights, token_weights
from node.outer.state import SwarmState, shaped
from node.round.hooks import Hooks, NonFinite, Outcome
from node.round.ledger import AcceptedRoster, Ledger
from node.round.trust import credit, sealed
from node.round.trust.credit import Held
from node.round.v3 import Aggregate
from node.train import data
from node.train.model import trainable
from node.train.trainer import evaluate_bpb
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from protocol.records import Announcement

log = logging.getLogger("swarmtrain.volunteer")
SCORE_BATCH = 4  # sequences in the shared scoring batch: a forward pass per update, on every peer
SCORE_TOLERANCE = 1e-2  # nats, and the same share of the score: another machine's float rounding, not a lie


class Preview(NamedTuple):
    """The leader's applied copy of a round, kept so that its own apply need not redo it."""

    digest: str
    state: SwarmState


class Assessed(NamedTuple):
    """What we credit a round's entries (node/round/trust/credit.py units, entry order)."""

    units: list[int]
    low: list[int]
    """With the usefulness threshold a hair higher: what a reader's float rounding may give."""
    high: list[int]
    """... and a hair lower."""
    whole: bool
    """We hold the directions of every entry of the rounds before that the rule leaves out: our
    credit is every whole peer's. A peer that synced holds none for SPAN_ROUNDS rounds."""
    dirs: torch.Tensor
    """The entries' sampled directions, kept for the next rounds' fresh parts."""


class Crediting:
    """Design step 4 as one peer does it: the credit of a roster it leads, its check of a roster
    it applies, and the directions of the rounds it applied (node/outer/useful.py: a fresh part
    leaves their span out). Only v2 rounds: a v3 round's credit is the chain's (credit.carried)."""

    def __init__(self, strategy, nominal: int, weigh: Callable[[list[int]], object] = lambda tokens: None):
        self.strategy, self.nominal, self.weigh = strategy, nominal, weigh
        self.kept: dict[int, tuple[str, torch.Tensor]] = {}  # round -> (its result, its entries' directions)
        self.refused = 0  # rosters whose credit we refused

    def assess(
        self, round_no: int, params, payloads: list[bytes], anns: list[Announcement], chain: Mapping[int, Held]
    ) -> Assessed:
        """Our credit for round `round_no`'s entries, given the rosters before it (`chain`)."""
        tokens, times = [a.tokens for a in anns], [a.time for a in anns]
        dirs = useful.directions(self.strategy, params, payloads, self.weigh(tokens))
        before, whole = self.span(round_no, chain)
        cosines = useful.fresh_cosines(dirs, payloads, useful.span(before), self.standing(round_no, chain, anns))
        threshold = useful.cosine_of(self.strategy)

        def units(t: float) -> list[int]:
            return credit.token_units(tokens, useful.judged(payloads, times, dirs, cosines, t), self.nominal)

        eps = useful.EPSILON
        return Assessed(units(threshold), units(threshold + eps), units(threshold - eps), whole, dirs)

    @staticmethod
    def standing(round_no: int, chain: Mapping[int, Held], anns: list[Announcement]) -> list[float]:
        """Each entry's author's credit units in the rosters of the SPAN_ROUNDS rounds before: its
        weight in the others' sum (useful.fresh_cosines). A whole reader holds those rosters, the
        same on every peer of the chain, so every such reader weighs alike."""
        rounds = range(max(1, round_no - useful.SPAN_ROUNDS), round_no)
        units = credit.weights({q: chain[q] for q in rounds if q in chain}).units
        return [float(units.get(a.peer, 0)) for a in anns]

    def span(self, round_no: int, chain: Mapping[int, Held]) -> tuple[list[torch.Tensor], bool]:
        """The kept directions of the v2 rounds among the SPAN_ROUNDS before `round_no` (v3 rounds:
        nobody holds their updates), and whether we kept each of those the chain holds."""
        out, whole = [], True
        for q in range(max(1, round_no - useful.SPAN_ROUNDS), round_no):
            held, kept = chain.get(q), self.kept.get(q)
            if held is not None and credit.is_v3(held.roster):
                continue
            if held is None or kept is None or kept[0] != held.roster.result:
                whole = False
                continue
            out.append(kept[1])
        return out, whole

    def remember(self, round_no: int, result: str, dirs: torch.Tensor) -> None:
        self.kept[round_no] = (result, dirs.to(torch.float32))  # the same rounding on every peer
        for old in [q for q in self.kept if q <= round_no - useful.SPAN_ROUNDS]:
            del self.kept[old]

    def check(self, accepted: AcceptedRoster, assessed: Assessed) -> str | None:
        """Why the roster's credit is not ours (None: it is, or we cannot tell: not whole)."""
        if not assessed.whole:
            return None
        peers = [a.peer for a in accepted.announcements]
        allowed = sealed.creditable(accepted.roster, accepted.announcements)  # protocol 18
        low, high = sealed.masked(assessed.low, allowed), sealed.masked(assessed.high, allowed)
        wrong = credit.wrong(accepted.roster.credit, low, high, peers)
        self.refused += wrong is not None
        return wrong


class Applier:
    """The state this peer holds, and how a round's updates change it."""

    def __init__(
        self,
        state: SwarmState,
        *,
        run: RunConfig,
        strategy,
        ledger: Ledger,
        metrics: NodeMetrics,
        out: Reporter,
        me: str,
        device: torch.device,
        model: torch.nn.Module,
        overlap: bool,
        score_tokens: torch.Tensor | None,
        step_tokens: int = 0,
        nominal_step_tokens: int = 0,
    ):
        self.state = state  # the swarm's state as this peer holds it: what the next round applies to
        self.run, self.strategy, self.ledger, self.metrics, self.out, self.me = run, strategy, ledger, metrics, out, me
        self.device = device
        self.model = model  # the trainer's: scratch copies it, or borrows it (see scratch)
        self.overlap = overlap  # the trainer's model keeps training while a round is applied
        self.score_tokens = score_tokens  # the batch all peers share for scoring updates (None: no scoring)
        self._preview: Preview | None = None  # the leader's applied copy, reused
        # tokens one inner step of ours trains on, and of the run's reference peer (round weights);
        # a model brought from Python declares both (swarmtrain API), the CLI's are batch x ctx
        self.step_tokens = step_tokens or run.train.batch_size * run.model.ctx
        self.nominal_step_tokens = nominal_step_tokens or run.train.batch_size * run.model.ctx
        nominal = strategy.inner_steps * self.nominal_step_tokens  # a full round's tokens
        self.crediting = Crediting(strategy, nominal, self.weights)
        self._assessed: tuple[tuple, Assessed] | None = None  # the leader's, kept for its apply

    def hooks(self) -> Hooks:
        """The strategy's side of the round; with [robust] scoring, the leader scores every update
        and every peer derives the same bans from the scores in the ledger's rosters."""
        robust = self.run.robust
        aggregate = self.aggregate_result if hasattr(self.strategy, "apply_aggregate") else None
        if not robust.scoring:
            return Hooks(
                validate=self.strategy.check, result=self.roster_result, aggregate=aggregate, credit=self.credit_round
            )
        return Hooks(
            validate=self.strategy.check,
            result=self.roster_result,
            aggregate=aggregate,
            credit=self.credit_round,
            score=self.score_round,
            banned=lambda ledger: scoring.banned(ledger.score_history(), robust),
        )

    def score_round(self, payloads: list[bytes], tokens: list[int]) -> list[float]:
        """As leader: each update's loss change on a batch every peer can draw (held-out bytes,
        seeded by the round), applied alone to the round's state."""
        gen = data.batch_generator(self.run.train.seed, "shared-score-batch", self.state.round + 1)
        x, y = data.windows(self.score_tokens, SCORE_BATCH, self.run.model.ctx, gen)
        loss_of = scoring.shared_batch_loss(self.scratch, x.to(self.device), y.to(self.device))
        return scoring.score_updates(self.strategy, self.state, payloads, loss_of, weights=self.weights(tokens))

    def credit_round(self, payloads: list[bytes], anns: list[Announcement]) -> list[int]:
        """As leader: each entry's credit (node/round/trust/credit.py units), from our state and chain."""
        assessed = self.assess(payloads, anns)
        if not assessed.whole:  # we synced lately: a fresh part we cannot measure is not credited
            log.info("round %d: we lack the rounds before (we synced): crediting nothing", self.state.round + 1)
            return [0] * len(anns)
        return assessed.units

    def assess(self, payloads: list[bytes], anns: list[Announcement]) -> Assessed:
        key = (self.state.round, tuple(payloads))  # the same bytes judged from another state are judged again
        if self._assessed is None or self._assessed[0] != key:
            got = self.crediting.assess(self.state.round + 1, self.state.params, payloads, anns, self.ledger.rosters)
            self._assessed = (key, got)
        return self._assessed[1]

    def refuse(self, accepted: AcceptedRoster, reason: str) -> bool:
        self.metrics.rounds.labels("failed").inc()
        self.out.event("round_refused", round=accepted.roster.round, leader=accepted.roster.leader[:16], reason=reason)
        return False

    def wrong_score(self, accepted: AcceptedRoster, payloads: list[bytes] | Aggregate) -> str | None:
        """Why the roster's scores are not what we compute for its updates (None: they are, or the
        run does not score, or we led it). Scores make flags and flags make bans, so a leader
        that scores an honest update WORST must have its roster refused, not its word kept.
        Costs every peer what it costs the leader: a preview and a forward per update."""
        roster = accepted.roster
        if isinstance(payloads, Aggregate):  # a v3 leader has no updates to score
            return "a v3 roster carries scores" if roster.scores else None
        if not roster.scores or self.score_tokens is None or roster.leader == self.me:
            return None
        ours = self.score_round(payloads, [a.tokens for a in accepted.announcements])
        for (peer, theirs), mine in zip(roster.scores, ours):
            if abs(theirs - mine) > SCORE_TOLERANCE + SCORE_TOLERANCE * abs(mine):
                return f"scores {peer[:16]} {theirs:.4g}, we compute {mine:.4g}"
        return None

    def tokens_of(self, steps: int) -> int:
        """The tokens `steps` of our inner steps trained on (what our announcements sign for)."""
        return steps * self.step_tokens

    def weights(self, tokens: list[int]) -> Weights:
        """Each contribution's weight in the aggregate: its signed tokens over a full H-step round's
        of the run's reference peer (the same number on every peer)."""
        nominal = self.strategy.inner_steps * self.nominal_step_tokens
        return token_weights(tokens, nominal, self.run.robust.weight_cap)

    def roster_result(self, payloads: list[bytes], tokens: list[int]) -> Outcome:
        """As leader: the digests after applying these payloads, on a copy (kept for our own apply)."""
        state = copy.deepcopy(self.state)
        self.strategy.apply(state, payloads, self.weights(tokens))
        return self.previewed(state)

    def aggregate_result(self, flat) -> Outcome:
        """As a v3 leader: the digests after applying the round's aggregate, on a copy (kept)."""
        state = copy.deepcopy(self.state)
        self.strategy.apply_aggregate(state, flat)
        return self.previewed(state)

    @torch.no_grad()
    def take_back(self, worker, update: bytes, payloads) -> None:
        """After a v3 round that applied our `update`: a strategy that `takes_back` (sparseloco:
        the sparse wire re-sparsifies the aggregate) puts what the aggregate dropped of it back
        into our error buffer (`worker`), as `bench quality` measured it. Others: nothing."""
        if isinstance(payloads, Aggregate) and getattr(self.strategy, "takes_back", False):
            self.strategy.take_back(worker, update, shaped(payloads.flat, self.state.params))

    def previewed(self, state: SwarmState) -> Outcome:
        if not all(torch.isfinite(p).all() for p in state.params):
            raise NonFinite("the state is not finite after this round")
        outcome = Outcome(*state.digests())
        self._preview = Preview(outcome.digest, state)
        return outcome

    def apply_round(self, accepted: AcceptedRoster, payloads: list[bytes] | Aggregate) -> bool:
        """Apply the roster (a v3 roster: the aggregate we gathered in its round); refuse (keep our
        state) if the result is not finite or not the digests the leader published (`result`, and
        `full` when the roster has one): our state was not the swarm's, or someone lied. A wrong
        `full` would let a donor serve other outer buffers than the swarm's (node/peer/sync.py
        checks a donor's state against it)."""
        if (
            self._preview is not None
            and self._preview.digest == accepted.roster.result
            and accepted.roster.leader == self.me
        ):
            state = self._preview.state
        else:
            state = copy.deepcopy(self.state)
            if isinstance(payloads, Aggregate):  # v3: every member gathered the same aggregate
                self.strategy.apply_aggregate(state, payloads.flat)
            else:
                self.strategy.apply(state, payloads, self.weights([a.tokens for a in accepted.announcements]))
        self._preview = None
        plain, full = state.digests()
        if not all(torch.isfinite(p).all() for p in state.params) or plain != accepted.roster.result:
            return self.refuse(accepted, "the result is not finite or differs from the roster's digest")
        if full != accepted.roster.full:  # none at all: a leader that would let a donor
            # serve other buffers with the head's parameters (every protocol-4 leader writes it)
            return self.refuse(accepted, "the outer buffers differ from the roster's full digest (or it has none)")
        wrong = self.wrong_score(accepted, payloads)
        if wrong is not None:  # a leader's word is not a flag: every peer recomputes what it applies
            return self.refuse(accepted, wrong)
        assessed = None if isinstance(payloads, Aggregate) else self.assess(payloads, list(accepted.announcements))
        ours = assessed is None or accepted.roster.leader == self.me  # v3: the chain checks it (credit.carried)
        wrong = None if ours else self.crediting.check(accepted, assessed)
        self._assessed = None
        if wrong is not None:  # credit makes establishment: a leader that credits its friends is refused
            return self.refuse(accepted, wrong)
        if assessed is not None:
            self.crediting.remember(accepted.roster.round, accepted.roster.result, assessed.dirs)
        self.state = state
        try:
            self.ledger.append(accepted)
        except Exception as e:  # a roster our ledger cannot chain on (it is logged; the state is right)
            log.warning("ledger: %s", e)
        return True

    @functools.cached_property
    def scratch(self) -> torch.nn.Module:
        """A model to evaluate and score states on: a copy when the trainer's own must keep its
        trained weights meanwhile (overlap trains on; a missed round's progress is read from it
        after the leader scored), else the trainer's own (the next round reloads it)."""
        keep = self.overlap or self.run.robust.scoring
        return copy.deepcopy(self.model) if keep else self.model

    def evaluate(self, val: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Bits per byte of the state we hold on `val` (data.val_set's)."""
        for p, src in zip(trainable(self.scratch), self.state.params):
            p.data.copy_(src)
        return evaluate_bpb(self.scratch, *val, self.device)
