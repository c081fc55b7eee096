"""`bench byzantine --sybil`: attackers with many identities against the node's real round
protocol, ledger, chain and catch-up and the real RunValidator, on the in-memory network
(bench/byzantine/sybilnet.py). One JSON row per case, with its figures and the issue-16 target:

  capture   k Sybils point at an invented head and serve a self-signed roster there: does a
            joiner, a peer that just synced or a peer resumed from its ledger file adopt it?
  grinding  a leader tries 1,000 variants of its roster: how many next-round rankings are on offer?
  stall     10 silent Sybils in ranks 0-9 (sybil_leaders.py): attempts until a roster, the longest
            run of failed attempts over many rounds
  framing   Sybils copying a victim, Sybil leaders writing WORST for it (sybil_leaders.py,
            sybil_framing.py): honest peers banned
  flood     1,000 Sybil records in the DHT (sybil_flood.py): an honest peer's CPU per poll
  work      what one identity's admission proof costs at the defaults; work-flood: a leader's
            scrypt calls per roster under 1,000 junk proofs (sybil_work.py)
  leaders, stall, capture at credit shares (sybil_credit.py): established Sybils credited some
            rounds of the window beside honest peers credited all: the crowd's share of led
            rounds, stalls, and whether its own head is carried or chosen, under one ticket per
            key (the rule before protocol 16) and under the window's tickets (today's)

Power follows credit (protocol 16, docs/trust-model.md), so the issue's target is judged at the
attacker's share of the credit the chain holds (`credit_share`: its keys' credit over everyone's
in the window of the row's rosters); every row also states its share of identities and of
established peers. Rows whose attackers the chain never credits (invented heads, DHT floods)
state 0; rows without a credit window (grinding, copies, work) state none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.byzantine.sybilnet import BASE0, ZERO, Peer, Swarm, beat, claim_head, invented_roster, play_round
from bench.fakenet import new_key
from node.round import election
from node.round.ledger import Ledger
from node.round.trust import chain
from node.round.trust.catchup import Catchup, Head
from protocol.records import GENESIS


@dataclass(frozen=True, kw_only=True)
class SybilTier:
    """The sizes of one run of the Sybil rows."""

    crowds: tuple[int, ...] = (8, 16, 32)
    """Sybil identities in the capture rows (one row per size and way of pointing)."""
    variants: int = 1000
    """Rosters the grinding leader tries."""
    stall_rounds: int = 1000
    """Rounds over which the silent Sybils' stalls are counted (per share of identities)."""
    stall_honest: tuple[int, ...] = (4, 21, 30)
    """Honest established peers beside the 10 silent Sybils (their share: 71%, 32%, 25%)."""
    framing_rounds: int = 500
    """Rounds over which Sybil leaders try to get an honest peer banned (per share)."""
    framing_shares: tuple[tuple[int, int], ...] = ((2, 4), (3, 4), (3, 7), (3, 12))
    """(Sybil leaders, honest peers) of the framing-by-scores rows."""
    copy_rounds: int = 12
    """Rounds of the copy attack (real scores on a tiny model)."""
    flood_records: int = 1000
    """Sybil records in the flooded DHT (10 of them valid Sybils)."""
    flood_polls: int = 40
    """Polls measured per flood mode."""
    work_solves: int = 3
    """Whole searches for an admission proof timed at the defaults (minutes of a core each)."""
    credit_crowds: tuple[tuple[int, int], ...] = ((14, 2), (32, 2), (12, 9), (4, 27))
    """(Sybil keys, credited rounds each) of the leaders and capture rows, beside 4 honest peers
    credited all 64 rounds: credit shares 9.9%, 20%, 29.7%, 29.7%."""
    credit_rounds: int = 1000
    """Rounds of the leaders and credit-stall rows (per crowd and rule)."""
    credit_stall: tuple[int, ...] = (3, 6, 11)
    """Credited rounds of each of the 10 silent Sybils in the credit-stall rows: 10.5%, 19%, 30.1%."""
    stall_tries: int = 2000
    """Run ids searched for the credit-stall rows' worst first round (most silent first ranks)."""


TIERS = {
    "full": SybilTier(),
    "tiny": SybilTier(
        crowds=(8,),
        variants=40,
        stall_rounds=60,
        stall_honest=(4,),
        framing_rounds=40,
        framing_shares=((3, 4),),
        copy_rounds=6,
        flood_records=200,
        flood_polls=5,
        work_solves=0,
        credit_crowds=((14, 2), (12, 9)),
        credit_rounds=200,
        credit_stall=(11,),
        stall_tries=200,
    ),
}
"""`bench byzantine --sybil --sybil-tier NAME`: full (the committed results) and tiny (the test)."""


class KeyPool:
    """RSA keys reused across rows (40 ms each to make here; each row is its own run)."""

    def __init__(self):
        self.keys: list = []

    def take(self, n: int) -> list:
        while len(self.keys) < n:
            self.keys.append(new_key())
        return self.keys[:n]


def share(attackers: int, others: int) -> float:
    return round(attackers / (attackers + others), 3) if attackers + others else 0.0


# ------------------------------------------------------------------------------------ capture
def capture(pool: KeyPool, k: int, how: str, workdir: Path) -> dict:
    """4 honest peers play 3 rounds (a fifth plays round 1 and is off); k Sybils then point at
    invented heads (`how`: 'one-head', all at one; 'crowded-heads', one head per 5 Sybils, each
    head held by more peers than the honest one) with a self-signed roster at each, served to
    `ledger` requests. A joiner, the same joiner just after its sync, and the fifth peer resumed
    from its ledger file each look (Catchup.plan) until they reach the honest head, or 12 looks."""
    keys = pool.take(6 + k)
    swarm = Swarm(run=f"sybil-capture-{k}-{how}")
    honest, late, joiner = [Peer(swarm, key) for key in keys[:4]], Peer(swarm, keys[4]), Peer(swarm, keys[5])
    late.ledger.path = workdir / f"late-{k}-{how}.jsonl"
    play_round([*honest, late])
    for _ in range(2):
        play_round(honest)
    crowd = [Peer(swarm, key) for key in keys[6:]]
    per_head = len(crowd) if how == "one-head" else len(honest) + 1
    groups = [crowd[i : i + per_head] for i in range(0, len(crowd), per_head)]
    for i, group in enumerate(groups):
        digest = ZERO if i == 0 else hashlib.sha256(f"invented {i}".encode()).hexdigest()
        claim_head(group, 99 + i, digest)
        invented_roster(group, 99 + i, digest)
    beat(honest)
    truth = Head(honest[0].round, honest[0].digest)
    start = chain.genesis(swarm.run, BASE0)
    looks = {
        "joiner": _looks(Catchup(joiner.net, joiner.ledger, joiner.proto.rules, start), joiner, Head(0, BASE0), truth)
    }
    looks["synced"] = _looks(Catchup(joiner.net, joiner.ledger, joiner.proto.rules, start), joiner, truth, truth)
    resumed = Ledger.load(late.ledger.path)
    looks["resumed"] = _looks(Catchup(late.net, resumed, late.proto.rules, start), late, Head(1, late.digest), truth)
    established = honest[0].ledger.established(swarm.cfg.established_rounds)
    return {
        "row": "capture",
        "case": f"{k} Sybils, {how}",
        "sybils": k,
        "honest": len(honest),
        "invented_heads": len(groups),
        "identity_share": share(k, len(honest)),
        "established_share": share(len(established & {s.id for s in crowd}), len(established - {s.id for s in crowd})),
        "credit_share": 0.0,  # no roster of the chain lists them
        "adopted_non_honest": sum(v["adopted"] not in (None, "honest") for v in looks.values()),
        "looks": looks,
        "ledger_requests_to_sybils": sum(op == "ledger" for s in crowd for op, _ in s.net.requests),
        "state_requests_to_sybils": sum(op == "state" for s in crowd for op, _ in s.net.requests),
        "target": "nobody adopts a non-honest head",
        "met": all(v["adopted"] in (None, "honest") for v in looks.values()),
    }


def _looks(look: Catchup, peer: Peer, mine: Head, truth: Head, most: int = 12) -> dict:
    """Plan again and again, as StateSync does each round, until a head is chosen or `most` looks;
    a chosen head is adopted (the ledger extended) as StateSync.adopt does."""
    for n in range(1, most + 1):
        target = look.plan(peer.proto.peers(), mine)
        if target is not None:
            if target.head == truth:
                look.ledger.extend(target.ancestor, list(target.rosters))
                peer.round, peer.digest = target.head
                beat([peer])
            return {"adopted": "honest" if target.head == truth else f"round {target.head.round}", "looks": n}
        if mine == truth:  # already at the honest head: one look that stays is the whole case
            return {"adopted": None, "looks": n}
    return {"adopted": None, "looks": most}


# ----------------------------------------------------------------------------------- grinding
def grinding(pool: KeyPool, variants: int) -> dict:
    """8 peers announce round 1; the one ranked first (the attacker) builds `variants` valid
    rosters (every subset of the other 7 updates, its own update's bytes new each time), each
    checked by an honest reader. Counted: distinct rankings of round 2 (attempts 0-2) they give,
    against the distinct first ranks under the old rule (key = SHA-256(run|round|base|peer))."""
    swarm = Swarm(run="sybil-grinding")
    peers = [Peer(swarm, key) for key in pool.take(8)]
    everyone = {p.id for p in peers}
    swarm.dht.clock.t += 2
    for p in peers:
        p.heartbeat()
        p.announce(hashlib.sha256(p.id.encode()).digest())
    beacon = election.first_beacon(swarm.run)
    attacker = next(p for p in peers if p.id == election.ranking(beacon, 0, everyone)[0])
    reader = next(p for p in peers if p is not attacker)
    seen = reader.proto.peers()
    reader.proto.seen[1] = set(seen)
    cands = reader.proto.candidates(seen, BASE0, 0)
    others = sorted(everyone - {attacker.id})
    rankings, old_firsts, refused = set(), set(), 0
    t0 = time.process_time()
    for i in range(variants):
        swarm.dht.clock.t += 0.001  # its re-announcement replaces the last one
        attacker.announce(f"variant {i}".encode())
        eligible = {attacker.id} | {p for j, p in enumerate(others) if i >> j & 1}
        variant = attacker.proto.builder.build(1, BASE0, GENESIS, eligible, 1, beacon=beacon, attempt=0)
        try:
            reader.proto.check_roster(variant.envelope, attacker.id, 1, BASE0, cands)
        except Exception:
            refused += 1
            continue
        nxt = election.next_beacon(variant.roster.beacon, variant.roster.reveal)
        rankings.add(tuple(tuple(election.ranking(nxt, a, everyone)) for a in range(election.ATTEMPT_RANKS)))
        old_firsts.add(
            min(everyone, key=lambda p: hashlib.sha256(f"{swarm.run}|2|{variant.roster.result}|{p}".encode()).digest())
        )
    return {
        "row": "grinding",
        "case": f"1 leader, {variants} roster variants",
        "variants": variants,
        "refused_variants": refused,
        "identity_share": share(1, 7),
        "established_share": share(1, 7),
        "credit_share": None,  # round 1: nobody is credited yet
        "distinct_next_rankings": len(rankings),
        "distinct_first_ranks_old_rule": len(old_firsts),
        "ms_per_variant": round(1000 * (time.process_time() - t0) / max(1, variants), 2),
        "target": "1 distinct next-round ranking",
        "met": len(rankings) == 1 and refused == 0,
    }


# ------------------------------------------------------------------------------------ the tier
def run_sybil(json_path: str, tier: str = "full", say=print) -> list[dict]:
    """Every Sybil row of `tier`, written to `json_path` after each row."""
    size = TIERS[tier]
    quiet = logging.getLogger("swarmtrain")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # each refused Sybil record logs a warning
    try:
        return _rows(size, json_path, tier, say)
    finally:
        quiet.setLevel(level)  # the caller's logging as it was (a test's caplog, the CLI's)


def _rows(size, json_path: str, tier: str, say) -> list[dict]:
    from bench.byzantine import sybil_credit
    from bench.byzantine.sybil_flood import flood
    from bench.byzantine.sybil_framing import copies
    from bench.byzantine.sybil_leaders import framing_by_scores, stall
    from bench.byzantine.sybil_work import cost
    from bench.byzantine.sybil_work import flood as work_flood

    pool, rows, t0 = KeyPool(), [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [lambda k=k, how=how: capture(pool, k, how, Path(tmp)) for k in size.crowds for how in HOWS]
        jobs.append(lambda: grinding(pool, size.variants))
        stalls = [(n, marked) for n in size.stall_honest for marked in (False, True)]  # before and after step 8
        jobs += [lambda n=n, m=m: stall(pool, n, size.stall_rounds, m) for n, m in stalls]
        shares = [(k, n, rule) for k, n in size.framing_shares for rule in sybil_credit.RULES]
        jobs += [lambda k=k, n=n, r=r: framing_by_scores(pool, k, n, size.framing_rounds, r) for k, n, r in shares]
        jobs.append(lambda: copies(pool, 3, size.copy_rounds))
        jobs.append(lambda: flood(pool, size.flood_records, size.flood_polls))
        jobs.append(lambda: cost(size.work_solves))
        jobs.append(lambda: work_flood(size.flood_records))
        for rule in sybil_credit.RULES:  # before (one ticket per key) and after (tickets), each crowd
            jobs += [
                lambda k=k, c=c, r=rule: sybil_credit.leaders(pool, k, c, size.credit_rounds, r)
                for k, c in size.credit_crowds
            ]
            jobs += [
                lambda c=c, r=rule: sybil_credit.stall(pool, c, size.credit_rounds, r, size.stall_tries)
                for c in size.credit_stall
            ]
            jobs += [lambda k=k, c=c, r=rule: sybil_credit.capture(pool, k, c, r) for k, c in size.credit_crowds]
        for job in jobs:
            started = time.monotonic()
            row = job()
            row["seconds"] = round(time.monotonic() - started, 1)
            rows.append(row)
            say(line(row))
            _write(json_path, rows, tier, time.monotonic() - t0)
    return rows


HOWS = ("one-head", "crowded-heads")


def line(row: dict) -> str:
    figures = {k: v for k, v in row.items() if k not in ("row", "case", "target", "met", "looks", "modes", "seconds")}
    mark = "ok  " if row["met"] else "MISS"
    return f"  {mark} {row['row']:<9} {row['case']:<44} {json.dumps(figures)} ({row['seconds']:.0f} s)"


def _write(path: str, rows: list[dict], tier: str, seconds: float) -> None:
    from bench.byzantine.sybilnet import FAST

    settings = {"tier": tier, "sizes": asdict(TIERS[tier]), "swarm": asdict(FAST), "seconds": round(seconds, 1)}
    Path(path).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))


def sybil_table(rows: list[dict]) -> str:
    """One line per row: the case, its attacker's shares (credit, identities, established peers),
    whether it met its target."""
    from bench.tables import markdown_table

    return markdown_table(
        ["row", "case", "credit", "identities", "established", "target", "met"],
        (
            [
                r["row"],
                r["case"],
                "-" if r.get("credit_share") is None else f"{r['credit_share']:.1%}",
                f"{r['identity_share']:.0%}",
                f"{r['established_share']:.0%}",
                r["target"],
                "yes" if r["met"] else "NO",
            ]
            for r in rows
        ),
    )
