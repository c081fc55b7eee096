"""`swarmtrain audit` checks rosters from the run's genesis (issue 16): a chain invented by its own
signers, a ledger that starts mid-run, a leader nobody could elect, a gap, and a token claim no
round can produce are each caught, over ledger files and the in-memory DHT (tests/fakes.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import msgpack
import pytest

from node.commands.audit import audit_chain, chain_in_dht, run_audit
from node.config import NodeConfig, RunConfig, SwarmConfig
from node.errors import SwarmtrainError
from node.peer import manifest as manifests
from node.train.data import load_corpus
from protocol import keys, signed
from protocol.records import GENESIS, Announcement, Roster
from tests.fakes import FakeDHT, FakeNet, new_key, sealed_roster


def signed_run(key, run: RunConfig):
    """The run signed by `key`, its organizer: (what the DHT holds, its anchor)."""
    run_id, envelope = manifests.sign(key, manifests.build_manifest(run, load_corpus("demo")))
    found = manifests.RunFound(run_id, signed.open_manifest(envelope, run_id), envelope)
    return found, manifests.anchor_of(found)


@pytest.fixture(scope="module")
def run():
    """The default run without its young run (bootstrap_peers = 0: volunteers lead from round 1,
    as these chains have it; test_a_young_round_led_by_anyone_but_the_organizer_is_a_problem
    audits the default)."""
    return signed_run(new_key()[0], RunConfig(swarm=SwarmConfig(bootstrap_peers=0)))


@pytest.fixture(scope="module")
def honest():
    return sorted((new_key() for _ in range(3)), key=lambda k: k[1])


@pytest.fixture(scope="module")
def sybils():
    return sorted((new_key() for _ in range(3)), key=lambda k: k[1])


def chain(anchor, peers, rounds, *, start=1, prev=GENESIS, base=None, leaders=None, tokens=None, junk=()) -> list[dict]:
    """Signed rosters of `rounds` rounds from `start`, each listing every peer's update and led by
    leaders[r] (default: the peers in turn); tokens[(round, peer)] overrides a claim of 1,000.
    Each entry is credited a full round, but those of `junk` (updates that did no useful work); each
    roster is sealed and receipted (protocol 18: tests/fakes.py sealed_roster), or credits nobody."""
    base, out = base or anchor.base, []
    for r in range(start, start + rounds):
        entries = tuple(
            signed.seal(
                key,
                Announcement(
                    run=anchor.run_id,
                    round=r,
                    peer=pid,
                    nbytes=10,
                    sha256="1" * 64,
                    tokens=(tokens or {}).get((r, pid), 1000),
                    base=base,
                    time=0.0,
                ),
            )
            for key, pid in sorted(peers, key=lambda k: k[1])
        )
        key, leader = (leaders or {}).get(r, peers[r % len(peers)])
        result = hashlib.sha256(f"{base}|{r}".encode()).hexdigest()
        units = tuple(0 if pid in junk else 64 for _, pid in sorted(peers, key=lambda k: k[1]))
        roster = Roster(
            run=anchor.run_id,
            round=r,
            leader=leader,
            prev=prev,
            base=base,
            result=result,
            time=0.0,
            entries=entries,
            credit=units,
        )
        roster = sealed_roster(roster, {pid: k for k, pid in [*peers, (key, leader)]})
        out.append(signed.seal(key, roster))
        prev, base = signed.body_hash(out[-1]), result
    return out


def node_dir(tmp_path: Path, found, envelopes: list[dict]) -> NodeConfig:
    """A node's data dir holding this ledger and its copy of the run's manifest."""
    run_dir = tmp_path / found.run_id
    manifests.keep_copy(run_dir, found.envelope)
    lines = [
        json.dumps({"round": signed.open_roster(e)[0].round, "envelope": base64.b64encode(msgpack.packb(e)).decode()})
        for e in envelopes
    ]
    (run_dir / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    return NodeConfig(data_dir=str(tmp_path), run_id=found.run_id)


def audited(cfg: NodeConfig, capsys) -> tuple[int, dict]:
    code = run_audit(cfg, None, as_json=True)
    return code, json.loads(capsys.readouterr().out)


def test_an_honest_chain_from_genesis_verifies_and_credits_its_contributors(run, honest, tmp_path, capsys):
    found, anchor = run
    envelopes = chain(anchor, honest, 4)
    cfg = node_dir(tmp_path, found, envelopes)
    code, report = audited(cfg, capsys)
    assert code == 0 and report["verified"] and report["problems"] == [] and report["genesis"] == anchor.base
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3, 4] and all(r["verified"] for r in report["rounds"])
    assert report["credit"] == {pid: {"rounds": 4, "tokens": 4000, "weight": 4 * 64} for _, pid in honest}
    assert any("liveness" in u for u in report["not_checked"]) and any("finality" in u for u in report["not_checked"])
    assert run_audit(cfg, None) == 0
    assert "4 rosters from the genesis to round 4: chain, signatures and leaders verified" in capsys.readouterr().out
    # history rewritten by another signer from round 2 on: the next roster no longer links
    forged = chain(anchor, honest, 1, start=2, prev=signed.body_hash(envelopes[0]), base="9" * 64)
    code, report = audited(node_dir(tmp_path, found, [envelopes[0], *forged, *envelopes[2:]]), capsys)
    assert code == 1 and any(p.startswith("round 2: starts from state 999") for p in report["problems"])
    assert any(p.startswith("round 3: names prev") for p in report["problems"])
    assert not report["rounds"][2]["verified"] and report["rounds"][2]["tokens"] == 0  # nothing credited past it


def test_self_signed_rosters_with_an_invented_chain_do_not_verify(run, sybils, tmp_path, capsys):
    """The attack: three rosters signed by their own Sybil leaders, chained among themselves.
    The old audit printed 'chain and signatures verified'."""
    found, anchor = run
    invented_state = chain(anchor, sybils, 3, base="e" * 64)
    code, report = audited(node_dir(tmp_path, found, invented_state), capsys)
    assert code == 1 and not report["verified"]
    assert report["problems"][0] == (
        f"round 1: starts from state {'e' * 12}; the run's round-0 state, built from its manifest, {anchor.base[:12]}"
    )
    assert report["credit"] == {}  # no Sybil is credited a token
    invented_link = chain(anchor, sybils, 3, prev="f" * 64)
    code, report = audited(node_dir(tmp_path, found, invented_link), capsys)
    assert code == 1 and report["problems"][0] == f"round 1: names prev {'f' * 12}, not the genesis marker (000...)"
    assert run_audit(node_dir(tmp_path, found, invented_link), None) == 1
    assert "NOT verified" in capsys.readouterr().out


def test_a_ledger_starting_at_round_40_is_refused_naming_the_fix(run, sybils, tmp_path, capsys):
    found, anchor = run
    cfg = node_dir(tmp_path, found, chain(anchor, sybils, 3, start=40, prev="1" * 64, base="2" * 64))
    code, report = audited(cfg, capsys)
    assert code == 1 and not report["verified"] and report["rounds"] == []
    assert report["refused"].startswith("the rosters start at round 40, not at the run's genesis (round 1)")
    assert "from round 1" in report["fix"]
    assert run_audit(cfg, None) == 1
    out = capsys.readouterr().out
    assert "REFUSED: the rosters start at round 40" in out and "fix: audit the ledger of a node that trained" in out


def test_a_leader_that_was_not_established_is_a_problem(run, honest, sybils, tmp_path, capsys):
    """Round 4 is led by an identity no roster named, while the three honest peers were established."""
    found, anchor = run
    envelopes = chain(anchor, honest, 3)
    last = signed.open_roster(envelopes[-1])[0]
    envelopes += chain(
        anchor, honest, 1, start=4, prev=signed.body_hash(envelopes[-1]), base=last.result, leaders={4: sybils[0]}
    )
    code, report = audited(node_dir(tmp_path, found, envelopes), capsys)
    assert code == 1
    assert report["problems"] == [
        f"round 4: leader {sybils[0][1][:16]} was not established (2 rounds' credit from up to 3 of the leaders "
        "that listed it in the 3 "
        "rosters before) while 3 peers were: the rules allow that only when none of them was live"
    ]
    # rounds 1-2 of a young run: anyone may lead, which the report says it cannot check
    assert any("2 rounds from 1 to 2: nobody was established yet" in u for u in report["not_checked"])


def test_a_crowd_the_rosters_list_but_never_credit_is_not_established_and_may_not_lead(
    run, honest, sybils, tmp_path, capsys
):
    """The audit applies the credit rule (node/round/trust/credit.py), as every peer does: Sybils
    listed in every roster of rounds 1-3 with no credit (zeros, noise: honest leaders must list
    them, their appliers credit nothing) are not established, so one that leads round 4 is a
    problem. Counted by appearances, before, all three were established and round 4 verified."""
    found, anchor = run
    crowd = [*honest, *sybils]
    junk = {pid for _, pid in sybils}
    envelopes = chain(anchor, crowd, 3, leaders={r: honest[r % 3] for r in (1, 2, 3)}, junk=junk)
    last = signed.open_roster(envelopes[-1])[0]
    envelopes += chain(
        anchor, crowd, 1, start=4, prev=signed.body_hash(envelopes[-1]), base=last.result, leaders={4: sybils[0]}
    )
    code, report = audited(node_dir(tmp_path, found, envelopes), capsys)
    assert code == 1 and len(report["problems"]) == 1
    assert report["problems"][0].startswith(f"round 4: leader {sybils[0][1][:16]} was not established")
    assert all(report["credit"][pid]["weight"] == 0 for pid in junk)


def test_a_young_round_led_by_anyone_but_the_organizer_is_a_problem(honest, sybils, tmp_path, capsys):
    """The default run (bootstrap_peers = 3): rounds 1-2 led by the organizer, listing three
    volunteers, then the volunteers lead; audited as chain.check has it. A chain whose round 2
    a Sybil led (nobody but the organizer may while the run is young) is a problem."""
    organizer = new_key()
    found, anchor = signed_run(organizer[0], RunConfig())
    young = chain(anchor, honest, 2, leaders={1: organizer, 2: organizer})
    last = signed.open_roster(young[-1])[0]
    grown = chain(anchor, honest, 2, start=3, prev=signed.body_hash(young[-1]), base=last.result)
    code, report = audited(node_dir(tmp_path, found, young + grown), capsys)
    assert code == 0 and report["problems"] == [], report["problems"]
    assert not any("nobody was established yet" in u for u in report["not_checked"])  # nothing left to chance
    captured = chain(anchor, honest, 2, leaders={1: organizer, 2: sybils[0]})
    code, report = audited(node_dir(tmp_path, found, captured), capsys)
    assert code == 1 and report["problems"] == [
        f"round 2: its leader {sybils[0][1][:16]} is not the organizer, "
        "the only leader of a young run (bootstrap_peers)"
    ]


def test_a_gap_is_a_problem_and_nothing_after_it_is_credited(run, honest, tmp_path, capsys):
    found, anchor = run
    envelopes = chain(anchor, honest, 3)
    later = chain(anchor, honest, 3, start=7, prev="3" * 64, base="4" * 64)
    code, report = audited(node_dir(tmp_path, found, envelopes + later), capsys)
    assert code == 1 and report["problems"][0] == "round 7 follows round 3: rosters of rounds 4-6 are missing"
    assert [r["verified"] for r in report["rounds"]] == [True] * 3 + [False] * 3
    assert all(c["rounds"] == 3 for c in report["credit"].values())


def test_a_token_claim_no_round_can_produce_is_flagged_not_credited(run, honest, tmp_path, capsys):
    found, anchor = run
    liar = honest[1][1]
    envelopes = chain(anchor, honest, 3, tokens={(2, liar): 2**62 - 1})  # the most a record may carry
    code, report = audited(node_dir(tmp_path, found, envelopes), capsys)
    assert anchor.max_tokens == 2 * 25 * 8 * 128  # default run: inner_steps x batch_size x ctx, x2 for a carried round
    assert report["flagged"] == [
        f"round 2: {liar[:16]} claims {2**62 - 1:,} tokens; one round of this run produces at most "
        f"{anchor.max_tokens:,} (batch_size x ctx x most inner steps, x2 for a missed round carried)"
    ]
    assert report["credit"][liar] == {"rounds": 3, "tokens": 2000, "weight": 3 * 64}  # shown, never summed
    assert (
        report["rounds"][1]["tokens"] == 2000
        and {"peer": liar, "tokens": 2**62 - 1, "flagged": True, "credit": 64} in report["rounds"][1]["claims"]
    )
    assert code == 0  # a peer's lie inside an honest chain: the chain still verifies


def test_the_audit_needs_the_run_id_and_its_manifest(run, honest, tmp_path):
    found, anchor = run
    node_dir(tmp_path, found, chain(anchor, honest, 1))
    with pytest.raises(SwarmtrainError, match="needs the run id") as e:
        run_audit(NodeConfig(data_dir=str(tmp_path)), str(tmp_path / found.run_id / "ledger.jsonl"))
    assert "--run-id RUN" in e.value.help
    (tmp_path / found.run_id / manifests.COPY_FILE).unlink()
    with pytest.raises(SwarmtrainError, match="no copy of run") as e:
        run_audit(NodeConfig(data_dir=str(tmp_path)), None)  # the one run of this data dir, but no anchor
    assert "--initial-peers" in e.value.help
    other_id, other = manifests.sign(new_key()[0], {"name": "other", "protocol": 2})
    manifests.keep_copy(tmp_path / found.run_id, other)  # another run's manifest under this run's name
    with pytest.raises(SwarmtrainError, match="is not run"):
        run_audit(NodeConfig(data_dir=str(tmp_path), run_id=found.run_id), None)


def test_roster_1_starts_from_the_state_volunteers_build(run):
    from node.outer.state import SwarmState
    from node.train.model import build_run_model

    found, anchor = run
    assert anchor.base == SwarmState.initial(build_run_model(RunConfig()).model, []).digest
    assert anchor.organizer == found.manifest["organizer"] and anchor.run_id == found.run_id


def test_a_live_audit_walks_forward_from_genesis_past_invented_rounds(run, honest, sybils):
    """Rosters in the DHT: the honest chain, a Sybil's fork of round 3 (not established), and a
    self-signed chain at rounds 99-101 (the old audit started from the highest round it saw)."""
    found, anchor = run
    dht = FakeDHT()
    net = FakeNet("auditor", dht, {})
    envelopes = chain(anchor, honest, 4)
    fork = chain(
        anchor,
        honest,
        1,
        start=3,
        prev=signed.body_hash(envelopes[1]),
        base=signed.open_roster(envelopes[1])[0].result,
        leaders={3: sybils[0]},
    )
    for env in [*envelopes, *fork, *chain(anchor, sybils, 3, start=99, prev="5" * 64)]:
        roster = signed.open_roster(env)[0]
        dht.store(keys.roster_key(anchor.run_id, roster.round), roster.leader, env, dht.clock() + 600)
    walked, notes = chain_in_dht(net, anchor)
    assert walked == envelopes and notes == ()
    report = audit_chain(walked, anchor)
    assert report.verified and [r.round for r in report.rows] == [1, 2, 3, 4]
    assert audit_chain(chain(anchor, sybils, 3, start=99, prev="5" * 64), anchor).refused


def sibling(envelope: dict, key_and_id, authors) -> dict:
    """The same roster (updates, link, states) led and signed by another peer: two leaders at once.
    It is sealed by its own leader, with its authors' receipts (as if they had released to it first)."""
    from dataclasses import replace

    roster = replace(signed.open_roster(envelope)[0], leader=key_and_id[1])
    return signed.seal(key_and_id[0], sealed_roster(roster, {pid: k for k, pid in [*authors, key_and_id]}))


def test_siblings_are_one_round_in_a_file_and_in_the_dht(run, honest, tmp_path, capsys):
    """Two honest leaders led round 2 at once; round 3 chains on the other one (Ledger.swap)."""
    found, anchor = run
    first = chain(anchor, honest, 2)
    twin = sibling(first[1], honest[0], honest)
    later = chain(anchor, honest, 2, start=3, prev=signed.body_hash(twin), base=signed.open_roster(twin)[0].result)
    code, report = audited(node_dir(tmp_path, found, [*first, twin, *later]), capsys)  # the swap as a file line
    assert code == 0 and [r["round"] for r in report["rounds"]] == [1, 2, 3, 4]
    assert report["rounds"][1]["leader"] == honest[0][1]
    dht = FakeDHT()
    for env in [*first, twin, *later]:
        roster = signed.open_roster(env)[0]
        dht.store(keys.roster_key(anchor.run_id, roster.round), roster.leader, env, dht.clock() + 600)
    walked, _ = chain_in_dht(FakeNet("auditor", dht, {}), anchor)
    assert walked == [first[0], twin, *later] and audit_chain(walked, anchor).verified


def test_a_long_chain_is_audited_with_its_epoch_seeds_kept_once_along_the_walk(honest, monkeypatch):
    """Each roster's window got a map of the 2 x identity_epoch_rounds beacons before it (2,048 at
    the default: O(n x 2,048) over a long chain); now the chain's epoch-starting beacons are kept
    once as the walk takes them and each window gets the at most 2 of its epochs."""
    from node.commands import walk

    _, anchor = signed_run(new_key()[0], RunConfig(swarm=SwarmConfig(bootstrap_peers=0, identity_epoch_rounds=4)))
    envelopes = chain(anchor, honest, 200)
    windows: list[dict[int, str]] = []

    class Counted(walk.Ledger):
        def __setattr__(self, name, value):
            if name == "seeds":
                windows.append(dict(value))
            super().__setattr__(name, value)

    monkeypatch.setattr(walk, "Ledger", Counted)
    audit = audit_chain(envelopes, anchor)
    assert audit.verified and len(audit.rows) == 200 and audit.problems == []
    assert len(windows) == 200 and sum(len(w) for w in windows) <= 2 * 200  # was 8 a roster here, 2,048 by default
    assert set(windows[9]) == {4, 8} and set(windows[8]) == {4, 8} and set(windows[7]) == {4}  # rounds 10, 9, 8
