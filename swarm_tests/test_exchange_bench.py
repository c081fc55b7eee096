"""`bench exchange` on two real local daemons: both loop kinds fetch every payload intact."""

from bench.exchange import run_exchange_bench


def test_bench_exchange_rows_for_both_loops(tmp_path):
    rows = run_exchange_bench(
        loops=["asyncio", "uvloop"],
        sizes=[4096],
        fetches=4,
        parallel=2,
        repeats=1,
        json_path=str(tmp_path / "x.json"),
        say=lambda s: None,
    )
    assert {(r["loop"], r["mode"]) for r in rows} == {
        (k, m) for k in ("asyncio", "uvloop") for m in ("sequential", "parallel")
    }
    assert all(r["ms_per_fetch"] > 0 and r["mb_per_s"] > 0 for r in rows)
    assert (tmp_path / "x.json").is_file()
