"""`swarmtrain audit`: check a run's signed round ledger from the run's genesis, and who contributed.

The anchor is the run's organizer-signed manifest (--run-id; a node keeps a copy beside its ledger,
else --initial-peers reads it from the swarm). Roster 1 must name prev = GENESIS and start from the
round-0 state the manifest builds; each later one the hash of the roster before and the state it
ended at; leaders must have been eligible as far as the chain shows. Rosters that do not start at
round 1 are refused. Token claims above one round's worth are flagged, never credited. The report
says what an audit cannot check. Exit 1 when the chain does not verify. Rosters come from a ledger
file, or with --initial-peers and no --ledger from the DHT, walking forward from round 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import msgpack

from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.outer import scoring
from node.peer import manifest as manifests
from node.peer.manifest import Anchor, anchor_of
from node.round.ledger import WINDOW, AcceptedRoster, Ledger, read_file, siblings
from node.round.trust import chain
from protocol import keys, signed
from protocol.errors import ProtocolError
from protocol.records import GENESIS

MAX_LIVE_ROUNDS = 4096  # a live walk ends where no roster links; rosters leave the DHT after minutes anyway
MAX_CHECKED_PER_ROUND = 4  # linking rosters of one round whose signatures a live walk checks, best rank first
REFUSED_FIX = (
    "audit the ledger of a node that trained the run from round 1 (the organizer's or an early volunteer's "
    "<data-dir>/<run>/ledger.jsonl), or the live swarm with --initial-peers while its rosters from round 1 are "
    "still in the DHT; a node that joined late or took the state from peers holds only part of the chain"
)


class Claim(NamedTuple):
    peer: str
    tokens: int
    flagged: bool
    """Above what one round can produce: shown, never credited."""


class Row(NamedTuple):
    round: int
    leader: str
    result: str
    claims: list[Claim]
    scores: dict[str, float]
    verified: bool
    """Linked to the genesis with every roster before it (credited only then)."""

    @property
    def credited(self) -> int:
        return sum(c.tokens for c in self.claims if not c.flagged) if self.verified else 0


class Examined(NamedTuple):
    accepted: AcceptedRoster | None
    """None: the roster's signatures or fields do not verify."""
    problems: list[str]
    swap: bool
    """A sibling of the chain's last roster (node.round.ledger.Ledger.swap), not a new round."""


class ChainCheck:
    """Rosters from the genesis, checked as a peer holding the whole chain checked them."""

    def __init__(self, anchor: Anchor):
        self.anchor = anchor
        self.chain: list[AcceptedRoster] = []
        self.young: set[int] = set()  # rounds before anybody was established: any live peer could lead

    def link(self) -> tuple[int, str, str]:
        """(round, prev, base) the next roster must name."""
        if not self.chain:
            return 1, GENESIS, self.anchor.base
        last = self.chain[-1]
        return last.roster.round + 1, last.hash, last.roster.result

    def examine(self, env: object) -> Examined:
        try:
            roster, anns = signed.open_roster(env, max_bytes=self.anchor.max_bytes)
        except ProtocolError as e:
            return Examined(None, [f"a roster does not verify: {e}"], False)
        this = AcceptedRoster(env, roster, tuple(anns))
        if self.chain and roster.round == self.chain[-1].roster.round and siblings(self.chain[-1], this):
            return Examined(this, self._rules(this, self.chain[:-1]), True)
        r, (want, prev, base) = roster.round, self.link()
        problems = [f"round {r}: a roster of run {roster.run[:40]!r}"] if roster.run != self.anchor.run_id else []
        if r != want:
            gap = f"rosters of rounds {want}-{r - 1} are missing" if r > want else "out of order"
            problems.append(f"round {r} follows round {want - 1}: {gap}")
        elif roster.prev != prev:
            what = "the genesis marker (000...)" if r == 1 else f"the hash of round {r - 1}'s roster ({prev[:12]})"
            problems.append(f"round {r}: names prev {roster.prev[:12]}, not {what}")
        elif roster.base != base:
            what = "the run's round-0 state, built from its manifest," if r == 1 else f"round {r - 1} ended at"
            problems.append(f"round {r}: starts from state {roster.base[:12]}; {what} {base[:12]}")
        return Examined(this, problems + self._rules(this, self.chain), False)

    def _rules(self, this: AcceptedRoster, before: list[AcceptedRoster]) -> list[str]:
        """The roster checks of node/round/protocol.py that the chain alone can decide."""
        r, leader = this.roster.round, this.roster.leader
        # what a peer's Ledger held when it checked this roster, asked what the peer asked
        window = Ledger(rosters={a.roster.round: a for a in before if r - WINDOW <= a.roster.round < r})
        window.seeds = {
            a.roster.round: a.roster.beacon for a in before[-2 * self.anchor.run.swarm.identity_epoch_rounds :]
        }
        rules = chain.ChainRules(
            run_id=self.anchor.run_id,
            established_rounds=self.anchor.run.swarm.established_rounds,
            max_bytes=self.anchor.max_bytes,
            organizer=self.anchor.organizer,
            bootstrap_peers=self.anchor.run.swarm.bootstrap_peers,
        )
        problems, need, established = [], rules.established_rounds, window.established(rules.established_rounds)
        young = chain.young(window, rules)  # led by the organizer alone, which the chain shows
        if not young and not established:
            self.young.add(r)  # bootstrap_peers = 0: nobody established yet, anyone live could lead
        problem = chain.leader_problem(leader, window, rules)  # the rule every peer checks a chain by
        if problem and young:
            problems.append(f"round {r}: {problem}")
        elif problem:
            problems.append(
                f"round {r}: leader {leader[:16]} was not established (named in >= {need} of the "
                f"{len(window.rosters)} rosters before) while {len(established)} peers were: the rules allow that "
                "only when none of them was live"
            )
        stray = [a.peer for a in this.announcements if a.base != this.roster.base]
        if stray:
            problems.append(f"round {r}: lists an update of {stray[0][:16]} made for another state")
        banned = scoring.banned(window.score_history(), self.anchor.run.robust)
        listed = sorted(banned & {a.peer for a in this.announcements})
        if listed:
            problems.append(f"round {r}: lists {listed[0][:16]}, banned by the scores of the rosters before")
        return problems

    def add(self, examined: Examined) -> None:
        if examined.swap:
            self.chain[-1] = examined.accepted
        else:
            self.chain.append(examined.accepted)


@dataclass
class Audit:
    anchor: Anchor
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Why the chain does not verify (exit 1)."""
    flags: list[str] = field(default_factory=list)
    """Token claims shown but not credited."""
    unchecked: list[str] = field(default_factory=list)
    refused: str = ""
    """Why the rosters could not be audited at all (REFUSED_FIX says what to do)."""

    @property
    def verified(self) -> bool:
        return bool(self.rows) and not self.problems and not self.refused

    def credit(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for row in self.rows:
            for c in row.claims if row.verified else ():
                mine = out.setdefault(c.peer, {"rounds": 0, "tokens": 0})
                mine["rounds"] += 1
                mine["tokens"] += 0 if c.flagged else c.tokens
        return out


def audit_chain(envelopes: list[dict], anchor: Anchor, notes: tuple[str, ...] = ()) -> Audit:
    """Check rosters given in round order (a ledger file's, sibling swaps included) from the genesis."""
    audit, check = Audit(anchor), ChainCheck(anchor)
    broken = False
    for env in envelopes:
        examined = check.examine(env)
        audit.problems += examined.problems
        if examined.accepted is None:
            broken = True
            continue
        roster = examined.accepted.roster
        claims = [Claim(a.peer, a.tokens, a.tokens > anchor.max_tokens) for a in examined.accepted.announcements]
        audit.flags += [
            f"round {roster.round}: {c.peer[:16]} claims {c.tokens:,} tokens; one round of this run produces at "
            f"most {anchor.max_tokens:,} (batch_size x ctx x most inner steps, x2 for a missed round carried)"
            for c in claims
            if c.flagged
        ]
        ok = not broken and not examined.problems
        row = Row(roster.round, roster.leader, roster.result, claims, dict(roster.scores), ok)
        if examined.swap:
            audit.rows[-1] = row
        else:
            audit.rows.append(row)
        check.add(examined)
        broken = not ok
    first = audit.rows[0].round if audit.rows else 0
    if first != 1:
        where = f"start at round {first}, not at" if first else "hold no roster that verifies, so nothing links to"
        return Audit(anchor, refused=f"the rosters {where} the run's genesis (round 1) and its manifest")
    audit.unchecked = [
        "liveness: the leader and each listed peer needed a live signed heartbeat, and a leader not established "
        "is valid only while no established peer was live; heartbeats are not kept, so neither is checked",
        *(_young(check.young) if check.young else ()),
        "the updates: the audit holds no update bytes, so each result state is its leader's word "
        "(the peers that applied the roster recomputed it)",
        "finality: protocol v2 has none, so a chain one party built from this genesis verifies as well; "
        "compare the last state with the live peers' (swarmtrain monitor)",
        "token claims within the bound: each peer's own word",
        *notes,
    ]
    return audit


def _young(rounds: set[int]) -> tuple[str]:
    first, last, n = min(rounds), max(rounds), len(rounds)
    span = f"round {first}" if n == 1 else f"{n} rounds from {first} to {last}"
    return (f"the leaders of the {span}: nobody was established yet, so any live peer could lead",)


def run_audit(cfg: NodeConfig, ledger_path: str | None, *, as_json: bool = False) -> int:
    live = not ledger_path and bool(cfg.initial_peers)
    run_id = cfg.run_id or ("" if live or ledger_path else _only_run(cfg.data_dir))
    if not run_id:
        raise SwarmtrainError(
            "the audit needs the run id: it checks the rosters from that run's genesis",
            "pass --run-id RUN (the organizer's join line names it)",
        )
    found = None if live else manifests.read_copy(Path(cfg.data_dir) / run_id, run_id)
    notes: tuple[str, ...] = ()
    if found is not None:
        anchor, envelopes = anchor_of(found), _from_file(cfg, ledger_path, run_id)
    elif not cfg.initial_peers:
        raise SwarmtrainError(
            f"no copy of run {run_id}'s manifest in {Path(cfg.data_dir) / run_id}: the audit anchors on it",
            "pass --initial-peers MADDR to read it from the swarm (add --ledger FILE to audit a file)",
        )
    else:
        from node.p2p.addresses import initial_peers
        from node.p2p.dht import Swarm

        peers = initial_peers(cfg.initial_peers, cfg.initial_peers_file, cfg.startup_timeout)
        identity = cfg.identity or str(Path(cfg.data_dir) / "audit.key")
        swarm = Swarm.start(replace(cfg, identity=identity), peers, client_mode=True)
        try:
            anchor = anchor_of(manifests.fetch(swarm, run_id, cfg.startup_timeout))
            envelopes, notes = chain_in_dht(swarm, anchor) if live else (_from_file(cfg, ledger_path, run_id), ())
        finally:
            swarm.shutdown()
        if live:
            notes += ("rounds after the last one here: no roster links to it in the DHT (not led yet, or expired)",)
    audit = audit_chain(envelopes, anchor, notes)
    print(json.dumps(_as_dict(audit), indent=2) if as_json else _as_text(audit))
    return 0 if audit.verified else 1


def _only_run(data_dir: str) -> str:
    found = sorted(Path(data_dir).glob("*/ledger.jsonl"))
    if len(found) > 1:
        raise SwarmtrainError(f"{data_dir} holds ledgers of several runs", "choose one with --run-id RUN_ID")
    return found[0].parent.name if found else ""


def _from_file(cfg: NodeConfig, ledger_path: str | None, run_id: str) -> list[dict]:
    path = Path(ledger_path) if ledger_path else Path(cfg.data_dir) / run_id / "ledger.jsonl"
    if not path.is_file():
        raise SwarmtrainError(
            f"no ledger at {path}", "pass --ledger FILE, or --data-dir of a node that trained the run"
        )
    try:
        return [line.envelope for line in sorted(read_file(path), key=lambda line: line.round)]
    except ProtocolError as e:
        raise SwarmtrainError(str(e), "the file is damaged; audit another node's ledger or the live swarm") from None


def _names(env: object) -> tuple[str, str]:
    """A roster's (prev, base), read without checking anything: the cheap filter before signatures."""
    body = env.get("body") if isinstance(env, dict) else None
    if not isinstance(body, bytes) or len(body) > signed.MAX_BODY["roster"]:
        return "", ""
    try:
        d = msgpack.unpackb(body, raw=False)
        return (d["prev"], d["base"]) if isinstance(d["prev"], str) and isinstance(d["base"], str) else ("", "")
    except Exception:  # garbage: msgpack raises several types, and d may be anything
        return "", ""


def chain_in_dht(swarm, anchor: Anchor) -> tuple[list[dict], tuple[str, ...]]:
    """The rosters in the DHT from round 1 forward: per round those that pass the chain's rules
    after one that passed in the round before; where several pass, the one the next round follows."""
    check, follows, forks = ChainCheck(anchor), {GENESIS: None}, []
    for r in range(1, MAX_LIVE_ROUNDS + 1):
        passed: dict[str, AcceptedRoster] = {}
        stored = swarm.get_subkeys(keys.roster_key(anchor.run_id, r))
        links = {(h, a.roster.result if a else anchor.base) for h, a in follows.items()}  # (prev, base) to name
        linking = [(str(k), v, n[0]) for k, v in stored.items() if (n := _names(v)) in links]
        for leader, env, prev in sorted(linking, key=lambda x: x[0])[:MAX_CHECKED_PER_ROUND]:
            if follows[prev] is not None:
                check.chain[-1] = follows[prev]  # the roster of round r - 1 that this one follows
            examined = check.examine(env)
            if examined.accepted and examined.accepted.roster.leader == leader and not examined.problems:
                passed[examined.accepted.hash] = examined.accepted
        if not passed:
            break
        first = next(iter(passed.values()))
        if any(not siblings(first, other) for other in passed.values()):
            forks.append(r)
        if follows.get(first.roster.prev) is not None:
            check.chain[-1] = follows[first.roster.prev]
        check.chain.append(first)
        follows = passed
    notes = [f"rounds {forks}: several rosters pass the rules (a fork); the audit follows one"] if forks else []
    return [a.envelope for a in check.chain], tuple(notes)


def _as_dict(audit: Audit) -> dict:
    return {
        "run": audit.anchor.run_id,
        "genesis": audit.anchor.base,
        "organizer": audit.anchor.organizer,
        "rounds": [
            {**row._asdict(), "claims": [c._asdict() for c in row.claims], "tokens": row.credited} for row in audit.rows
        ],
        "credit": audit.credit(),
        "problems": audit.problems,
        "flagged": audit.flags,
        "not_checked": audit.unchecked,
        "refused": audit.refused or None,
        "fix": REFUSED_FIX if audit.refused else None,
        "verified": audit.verified,
    }


def _as_text(audit: Audit) -> str:
    a = audit.anchor
    lines = [f"run {a.run_id}: genesis state {a.base[:12]} (round 0, from the manifest), organizer {a.organizer[:16]}"]
    if audit.refused:
        return "\n".join([*lines, f"REFUSED: {audit.refused}", f"  - fix: {REFUSED_FIX}"])
    for row in audit.rows:
        who = ", ".join(f"{c.peer[:12]}:{c.tokens}{' (flagged)' if c.flagged else ''}" for c in row.claims)
        mark = "" if row.verified else "  NOT VERIFIED"
        lines.append(
            f"round {row.round:>6}  leader {row.leader[:12]}  state {row.result[:12]}  "
            f"tokens {row.credited:>9,}  {who}{mark}"
        )
    lines += [f"credit {p[:16]}: {c['rounds']} rounds, {c['tokens']:,} tokens" for p, c in audit.credit().items()]
    lines += [f"PROBLEM: {p}" for p in audit.problems] + [f"FLAGGED: {f}" for f in audit.flags]
    lines += [f"not checked: {u}" for u in audit.unchecked]
    last = audit.rows[-1].round if audit.rows else 0
    lines.append(
        f"{len(audit.rows)} rosters from the genesis to round {last}: chain, signatures and leaders verified"
        if audit.verified
        else f"{len(audit.rows)} rosters, {len(audit.problems)} problems: NOT verified"
    )
    return "\n".join(lines)
