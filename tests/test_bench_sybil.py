"""`swarmtrain bench byzantine --sybil --sybil-tier tiny`: every Sybil row, at a tiny size, with
its safety figures. The rows at credit shares (bench/byzantine/sybil_credit.py) are asserted both
ways: under today's tickets a crowd with under a third of the credit neither leads more than its
share, stalls, nor gets its own head carried or chosen; under one ticket per key (the rule before
protocol 16) the same crowd leads most rounds and its head is carried, so the rows can tell."""

import json

import pytest

from node.cli import main


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """One run of the tiny tier (about 12 s here) for both tests."""
    out = tmp_path_factory.mktemp("sybil") / "sybil.json"
    assert main(["bench", "byzantine", "--sybil", "--sybil-tier", "tiny", "--json", str(out)]) == 0
    return json.loads(out.read_text())["rows"]


def test_the_sybil_tier_keeps_the_state_the_ranking_and_the_honest_peers(rows):
    by = {}
    for row in rows:
        by.setdefault(row["row"], []).append(row)
        assert 0 <= row["identity_share"] <= 1 and 0 <= row["established_share"] <= 1
        assert row["credit_share"] is None or 0 <= row["credit_share"] < 1 / 3
    assert set(by) == {"capture", "grinding", "stall", "framing", "flood", "work", "work-flood", "leaders"}
    invented = [r for r in by["capture"] if "rule" not in r]
    assert invented and all(r["credit_share"] == 0 for r in invented)
    for row in invented:
        assert row["adopted_non_honest"] == 0 and row["state_requests_to_sybils"] == 0
        assert row["looks"]["joiner"]["adopted"] == "honest" and row["looks"]["resumed"]["adopted"] == "honest"
    (grind,) = by["grinding"]
    assert grind["distinct_next_rankings"] == 1 and grind["refused_variants"] == 0
    assert grind["distinct_first_ranks_old_rule"] > 1  # the old rule was on offer
    played = [r for r in by["stall"] if "step8" in r]
    for row in played:
        assert row["worst_round_same_roster"] and row["worst_round_attempts"] >= 2
    after = [r for r in played if r["step8"]]
    assert after and all(r["most_failed_attempts_in_a_row"] <= 3 for r in after)  # design step 8
    for row in by["framing"]:
        assert row["honest_banned"] == 0
    copies = next(r for r in by["framing"] if "copy" in r["case"])
    assert copies["honest_flags"] == 0
    (flood,) = by["flood"]
    assert flood["modes"]["standing"]["peers_seen"] == 4 + flood["valid_sybils"]
    (junk,) = by["work-flood"]
    assert junk["max_scrypt_calls_per_roster"] == 0  # junk stamps take no check (one hash each)


def _credit_rows(rows: list[dict], name: str, rule: str) -> list[dict]:
    out = [r for r in rows if r["row"] == name and r.get("rule") == rule and r.get("credited_rounds_per_sybil")]
    assert out and all(r["sybils_established"] == r["sybils"] and r["identity_share"] > 0.5 for r in out)
    return out


def test_the_sybil_rows_at_credit_shares_hold_the_target_under_tickets_and_miss_it_under_one_each(rows):
    assert {r["credit_share"] for r in rows if r["row"] == "leaders"} >= {0.099, 0.297}
    for row in _credit_rows(rows, "leaders", "tickets"):
        assert row["met"] and row["sybil_led_share"] <= row["bound"] < 0.45, row
    for row in _credit_rows(rows, "leaders", "one ticket"):
        assert not row["met"] and row["sybil_led_share"] > 0.5, row  # leads by keys, not credit
    for row in _credit_rows(rows, "stall", "tickets"):
        assert row["met"] and row["most_failed_attempts_in_a_row"] <= 3, row
        assert row["most_rounds_past_round_timeout_in_a_row"] <= 3, row
    for row in _credit_rows(rows, "capture", "tickets"):
        assert row["met"] and row["adopted_non_honest"] == 0 and row["honest_head_carried"], row
        assert row["fork_choice_moves_to_honest_head"] and 2 * row["sybil_votes"] < row["honest_votes"], row
    for row in _credit_rows(rows, "capture", "one ticket"):
        assert row["sybil_head_carried"] and row["fork_choice_moves_to_sybil_head"], row
