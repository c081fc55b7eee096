"""The verified chain: a state is taken from others only at the end of rosters checked link by
link from a trusted anchor, and two branches are chosen between by the established peers.

The anchor is the run's genesis (roster 1 names prev = GENESIS, starts from the round-0 state
the manifest builds and is ranked under beacon(1) = SHA-256(run id)) or a roster this peer
applied itself (its ledger). Each later roster must name the hash of the one before (`prev`),
start from its result (`base`), carry the beacon that follows from its leader's reveal, be led
by a peer established on the chain before it (established_rounds rounds' credit in the rosters
of the window, credit.py) and list no peer the chain's scores ban. While the run is young (fewer than
`bootstrap_peers` peers other than the organizer are established) only the organizer leads:
`leader_problem` is that rule for every reader, members, joiners, the witness and the audit. What a
heartbeat says (its state_round and digest) only points at a chain head: a hint, never a vote.

Fork choice: of two verified branches after a common ancestor k, the one whose attesters (the
leaders and authors of its rosters, and the live peers holding its head) hold more of the
tickets of the peers established at k (`voters`: each its whole rounds of credit in the window,
1 to 64; protocol 16, one each before); ties go to the smaller hash of the branch's first
roster. Every honest peer computes the same answer, and identities the chain never established
weigh nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from node.config import SwarmConfig
from node.round import election
from node.round.ledger import WINDOW, AcceptedRoster, Ledger
from node.round.trust import anchor, credit, marks, omission
from protocol import signed
from protocol.admission import work
from protocol.admission.rule import DISABLED, Admission
from protocol.errors import ProtocolError
from protocol.records import GENESIS, Announcement, Roster


class Link(NamedTuple):
    """What roster `round` must name to continue a chain."""

    round: int
    prev: str
    """The hash of the roster before (GENESIS for round 1)."""
    base: str
    """The state it must start from: the result of the roster before (round 1: the round-0 state)."""
    beacon: str
    """The beacon it must be ranked under (node/round/election.py)."""


def genesis(run_id: str, base: str) -> Link:
    """Round 1's link: `base` is the digest of the round-0 state the run's manifest builds."""
    return Link(1, GENESIS, base, election.first_beacon(run_id))


def after(accepted: AcceptedRoster) -> Link:
    """What the roster after `accepted` must name."""
    r = accepted.roster
    return Link(r.round + 1, accepted.hash, r.result, election.next_beacon(r.beacon, r.reveal))


@dataclass(frozen=True, kw_only=True)
class ChainRules:
    """The run's rules a roster is checked by when it is read as part of a chain."""

    run_id: str
    """Rosters of other runs are refused."""
    established_rounds: int
    """Full rounds of credit in the window a peer needs to lead ([swarm] established_rounds; credit.py)."""
    max_bytes: int
    """The largest update an announcement may name."""
    banned: Callable[[Ledger], set[str]] = field(default=lambda window: set())
    """Peers the window's scores ban (Hooks.banned): a roster listing one is refused."""
    organizer: str = ""
    """The peer id the manifest names: the only key a checkpoint a roster carries may be signed by
    (node/round/trust/anchor.py). Empty: carried checkpoints are not checked, nor used."""
    admission: Admission = DISABLED
    """Proofs of work of authors new to the chain, and how many a roster may list (protocol/admission/rule.py)."""
    bootstrap_peers: int = 0
    """[swarm] bootstrap_peers: while fewer peers than this other than `organizer` are established,
    only the organizer leads (`young`). 0, or no organizer: anyone while nobody is established."""
    collect_timeout: float = 0.0
    """The run's [swarm] collect_timeout, which caps a roster's cutoff floor (omission.py); 0: no floor checked."""


def admission_of(run_id: str, cfg: SwarmConfig, organizer: str) -> Admission:
    """The run's admission rule ([swarm] identity_work_*: in the manifest, hence the run id), the
    same for every peer that checks a chain: members, joiners and the organizer's witness."""
    puzzle = work.Puzzle(
        run_id=run_id,
        bits=cfg.identity_work_bits,
        n_log2=cfg.identity_work_n_log2,
        r=cfg.identity_work_r,
        stamp_bits=cfg.identity_stamp_bits,
        epoch_rounds=cfg.identity_epoch_rounds,
    )
    return Admission(puzzle, organizer=organizer)


def check(env: object, link: Link, window: Ledger, rules: ChainRules) -> AcceptedRoster:
    """`env` as the roster at `link`, given the rosters before it (`window`); raises ProtocolError."""
    roster, anns = signed.open_roster(env, max_bytes=rules.max_bytes)
    if roster.run != rules.run_id or roster.round != link.round:
        raise ProtocolError(f"a roster of round {roster.round} of run {roster.run[:16]}, not round {link.round}")
    if roster.prev != link.prev:
        raise ProtocolError(f"names prev {roster.prev[:12]}, the chain has {link.prev[:12]}")
    if roster.base != link.base:
        raise ProtocolError(f"starts from state {roster.base[:12]}, the chain ended at {link.base[:12]}")
    if roster.beacon != link.beacon:
        raise ProtocolError(f"claims beacon {roster.beacon[:12]}, the chain gives {link.beacon[:12]}")
    tickets = window.tickets(roster.round, rules.established_rounds)  # rank keys' weights (election.py)
    whole = window.holds_window(roster.round)  # else our tickets are not the swarm's: no skip judged by rank
    marks.check(roster, {a.peer for a in anns}, tickets if whole else None)  # skip and unserved lists (marks.py)
    election.check_reveal(roster, env["key"])
    problem = leader_problem(roster.leader, window, rules)
    if problem:
        raise ProtocolError(problem)
    check_entries(roster, anns, window, rules)
    if rules.collect_timeout:
        omission.check_cutoff(roster, window.rosters, rules.collect_timeout)
    if roster.checkpoint is not None and rules.organizer:
        anchor.check_embedded(roster.checkpoint, roster.round, window, organizer=rules.organizer, run_id=rules.run_id)
    return AcceptedRoster(env, roster, tuple(anns))


def young(window: Ledger, rules: ChainRules) -> bool:
    """Is the run young after `window` (the rosters before the round)? Fewer than
    `rules.bootstrap_peers` peers other than the organizer are established on it. Only the
    organizer leads then (design step 2, docs/trust-model.md): its rosters list every valid
    update it fetched, so no crowd that came first can keep the honest peers out of the rosters
    that establish them, as a Sybil leader could by listing only its own. A window that lacks
    rosters (a peer that synced) counts less credit, so it errs towards young: such a peer
    refuses another leader's roster and resyncs, it never takes one the rule refuses."""
    if not rules.bootstrap_peers or not rules.organizer:
        return False
    return len(window.established(rules.established_rounds) - {rules.organizer}) < rules.bootstrap_peers


def leader_problem(leader: str, window: Ledger, rules: ChainRules) -> str:
    """Why `leader` may not lead the roster after `window` ("": it may): in a young run anyone but
    the organizer; later, a peer the window does not establish (anyone while nobody is, which
    only a run without an organizer's young run, bootstrap_peers = 0, reaches)."""
    if young(window, rules):
        if leader == rules.organizer:
            return ""
        return f"its leader {leader[:16]} is not the organizer, the only leader of a young run (bootstrap_peers)"
    leaders = window.established(rules.established_rounds)
    if leaders and leader not in leaders:
        return f"its leader {leader[:16]} was not established on the chain before it"
    return ""


def check_entries(roster: Roster, anns: list[Announcement], window: Ledger, rules: ChainRules) -> None:
    """The entries' own rules, given the rosters before (`window`): every update made for the
    roster's base, no author the window's scores ban, new authors admitted, the proofs it lists
    as `failed` failing (protocol/admission), and what the chain decides of its credit (credit.py)."""
    if any(a.base != roster.base for a in anns):
        raise ProtocolError("lists an update made for another state")
    credit.check(roster, anns, window.established(rules.established_rounds) if credit.is_v3(roster) else set())
    banned = rules.banned(window) & {a.peer for a in anns}
    if banned:
        raise ProtocolError(f"lists {sorted(banned)[0][:16]}, banned by the chain's scores")
    known, whole = window.authors_before(roster.round, rules.admission.lookback)
    proven = window.proofs_before(roster.round, rules.admission.lookback)  # (peer, epoch): who renews
    seeds = rules.admission.seeds(roster.round, roster.beacon, window.beacon_of)  # those the window tells
    rules.admission.check(roster, anns, known, whole, max_bytes=rules.max_bytes, proven=proven, seeds=seeds)


class Verified(NamedTuple):
    """Rosters that verified in a row from a link, and why the walk stopped early, if it did."""

    rosters: list[AcceptedRoster]
    problem: str
    """Empty when every roster given verified."""


def verify(envelopes: Iterable[object], start: Link, window: Ledger, rules: ChainRules) -> Verified:
    """Check rosters in round order from `start` (`window`: the rosters before it)."""
    work = window.window(dict(window.rosters))
    out: list[AcceptedRoster] = []
    link = start
    for env in envelopes:
        try:
            accepted = check(env, link, work, rules)
        except (ProtocolError, KeyError, TypeError) as e:
            return Verified(out, f"round {link.round}: {e}")
        out.append(accepted)
        work.rosters[link.round] = accepted
        work.keep_seed(accepted)
        work.rosters.pop(link.round - WINDOW, None)
        link = after(accepted)
    return Verified(out, "")


def eligible(window: Ledger, established_rounds: int) -> set[str]:
    """Whose attestation counts after `window`: its established peers, or (a young run, nobody
    established yet) every peer its rosters credit."""
    return window.established(established_rounds) or credit.credited(window.rosters)


def voters(window: Ledger, established_rounds: int, live: set[str] | None = None) -> dict[str, int]:
    """`eligible` peers after `window` (of `live`, when given), each with its vote: its tickets,
    whole rounds of credit in the window (credit.tickets: at least 1, at most 64). So a crowd of
    keys with 2 credited rounds each weighs 2 a key beside an honest peer's 64, not 1 to 1."""
    tickets = window.tickets(max(window.rosters, default=0) + 1, established_rounds)
    return {p: tickets.get(p, 1) for p in eligible(window, established_rounds) if live is None or p in live}


def attesters(branch: list[AcceptedRoster]) -> set[str]:
    """Peers that built on a branch: its leaders and the authors of its updates."""
    return {a.roster.leader for a in branch} | {x.peer for a in branch for x in a.announcements}


def weight(branch: list[AcceptedRoster], holders: set[str], among: Mapping[str, int]) -> int:
    """The votes of `among` (peer -> its tickets, `voters`) that attest `branch` (by a roster or
    update, or by holding its head)."""
    return sum(among.get(p, 0) for p in attesters(branch) | holders)


def prefer(
    ours: list[AcceptedRoster],
    theirs: list[AcceptedRoster],
    among: Mapping[str, int],
    holders: tuple[set[str], set[str]],
) -> bool:
    """Move from our branch to theirs (both after one common ancestor, `among` the peers eligible
    there with their votes, `voters`; `holders`: live peers holding each head)? More weight wins,
    then the smaller hash of the first roster after the ancestor. Theirs must be non-empty; ours empty means we stand at
    the ancestor, and any verified extension is preferred."""
    if not ours:
        return True
    mine, other = weight(ours, holders[0], among), weight(theirs, holders[1], among)
    return other > mine or (other == mine and theirs[0].hash < ours[0].hash)
