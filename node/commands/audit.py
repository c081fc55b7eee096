"""`swarmtrain audit`: check a run's signed round ledger from the run's genesis, and who contributed.

The anchor is the run's organizer-signed manifest (--run-id; a node keeps a copy beside its ledger,
else --initial-peers reads it from the swarm). Roster 1 must name prev = GENESIS and start from the
round-0 state the manifest builds; each later one the hash of the roster before and the state it
ended at; leaders must have been eligible as far as the chain shows, by the credit the rosters
give (node/round/trust/credit.py: the rule every peer applies). Rosters that do not start at
round 1 are refused. Token claims above one round's worth are flagged, never credited. The report
says what an audit cannot check. Exit 1 when the chain does not verify. Rosters come from a ledger
file, or with --initial-peers and no --ledger from the DHT, walking forward from round 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from node.commands.walk import ChainCheck, chain_in_dht
from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.peer import manifest as manifests
from node.peer.manifest import Anchor, anchor_of
from node.round.accepted import read_file
from node.round.trust.credit import UNITS, units_of
from protocol.errors import ProtocolError

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
    credit: int = 0
    """What the roster credits this entry, in 1/64 of a round's (the weight establishment counts)."""


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
                mine = out.setdefault(c.peer, {"rounds": 0, "tokens": 0, "weight": 0})
                mine["rounds"] += 1
                mine["tokens"] += 0 if c.flagged else c.tokens
                mine["weight"] += c.credit
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
        accepted = examined.accepted
        claims = [
            Claim(a.peer, a.tokens, a.tokens > anchor.max_tokens, u)
            for a, u in zip(accepted.announcements, units_of(accepted))
        ]
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
        "each verify-all (v2) roster's credit: its leader's word, which every peer that applied the roster "
        "recomputed from the updates (a v3 roster's is checked here)",
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
    lines += [
        f"credit {p[:16]}: {c['rounds']} rounds, {c['tokens']:,} tokens, weight {c['weight'] / UNITS:.2f} rounds"
        for p, c in audit.credit().items()
    ]
    lines += [f"PROBLEM: {p}" for p in audit.problems] + [f"FLAGGED: {f}" for f in audit.flags]
    lines += [f"not checked: {u}" for u in audit.unchecked]
    last = audit.rows[-1].round if audit.rows else 0
    lines.append(
        f"{len(audit.rows)} rosters from the genesis to round {last}: chain, signatures and leaders verified"
        if audit.verified
        else f"{len(audit.rows)} rosters, {len(audit.problems)} problems: NOT verified"
    )
    return "\n".join(lines)
