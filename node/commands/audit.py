"""`swarmtrain audit`: verify the run's signed round ledger and print who contributed.

From a ledger file (a node's `<data-dir>/<run>/ledger.jsonl`), or, with --initial-peers, from
the rosters still in a live swarm's DHT. Every roster's and announcement's signature is checked,
and the chain: each roster names the hash of the one before it, and starts from the state the
one before it ended at. Exit status 1 when anything does not verify.
"""

from __future__ import annotations

import json
from pathlib import Path

from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.round.ledger import read_file, verify
from protocol import keys
from protocol.errors import ProtocolError


def run_audit(cfg: NodeConfig, ledger_path: str | None, *, as_json: bool = False) -> int:
    envelopes = _from_file(cfg, ledger_path) if ledger_path or not cfg.initial_peers else _from_swarm(cfg)
    entries, problems = verify(envelopes)
    rows = [
        {
            "round": e.roster.round,
            "leader": e.roster.leader,
            "result": e.roster.result,
            "contributors": [{"peer": p, "tokens": t} for p, t in e.contributors],
            "tokens": sum(t for _, t in e.contributors),
            "scores": dict(e.roster.scores),
        }
        for e in entries
    ]
    if as_json:
        print(json.dumps({"rounds": rows, "problems": problems, "verified": not problems}, indent=2))
    else:
        for row in rows:
            who = ", ".join(f"{c['peer'][:12]}:{c['tokens']}" for c in row["contributors"])
            print(
                f"round {row['round']:>6}  leader {row['leader'][:12]}  state {row['result'][:12]}  "
                f"tokens {row['tokens']:>9,}  {who}"
            )
        for p in problems:
            print(f"PROBLEM: {p}")
        print(
            f"{len(rows)} rosters, {'chain and signatures verified' if not problems else f'{len(problems)} problems'}"
        )
    return 1 if problems or not rows else 0


def _from_file(cfg: NodeConfig, ledger_path: str | None) -> list[dict]:
    path = Path(ledger_path) if ledger_path else _default_ledger(cfg)
    if not path.is_file():
        raise SwarmtrainError(
            f"no ledger at {path}", "pass --ledger FILE, or --data-dir of a node that trained the run"
        )
    try:
        return [line.envelope for line in sorted(read_file(path), key=lambda line: line.round)]
    except ProtocolError as e:
        raise SwarmtrainError(str(e), "the file is damaged; audit another node's ledger or the live swarm") from None


def _default_ledger(cfg: NodeConfig) -> Path:
    found = sorted(Path(cfg.data_dir).glob(f"{cfg.run_id or '*'}/ledger.jsonl"))
    if len(found) > 1:
        raise SwarmtrainError(f"{cfg.data_dir} holds ledgers of several runs", "choose one with --run-id RUN_ID")
    return found[0] if found else Path(cfg.data_dir) / (cfg.run_id or "RUN") / "ledger.jsonl"


def _from_swarm(cfg: NodeConfig) -> list[dict]:
    """The rosters still in the DHT, newest round backwards until one is missing; where a round has
    several, the one the next round's roster chains to."""
    from dataclasses import replace

    from node.p2p.addresses import initial_peers
    from node.p2p.dht import Swarm, read_peers
    from node.peer import manifest as manifests
    from protocol import signed

    peers = initial_peers(cfg.initial_peers, cfg.initial_peers_file, cfg.startup_timeout)
    swarm = Swarm.start(
        replace(cfg, identity=cfg.identity or str(Path(cfg.data_dir) / "audit.key")), peers, client_mode=True
    )
    try:
        run_id, _, _ = manifests.fetch(swarm, cfg.run_id, cfg.startup_timeout)
        top = max((hb.state_round for hb in read_peers(swarm, run_id).values()), default=0)
        chain: list[dict] = []
        want = None  # the hash the next roster names as prev
        for r in range(top, 0, -1):
            found = {}  # body hash -> (envelope, roster)
            for leader, env in swarm.get_subkeys(keys.roster_key(run_id, r)).items():
                try:
                    found[signed.body_hash(env)] = (env, signed.open_roster(env, signer=str(leader))[0])
                except ProtocolError:
                    continue
            picked = found.get(want) if want else next(iter(found.values()), None)
            if picked is None:
                break
            chain.append(picked[0])
            want = picked[1].prev
        return list(reversed(chain))
    finally:
        swarm.shutdown()
