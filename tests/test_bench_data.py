"""`swarmtrain bench data`: a generated corpus, and the same shard read from disk and from memory.

The benchmark runs each start in a fresh process (for its peak RSS); here they run in this one."""

from bench import data_rss


def test_bench_data_starts_agree_on_the_corpus_and_the_shard(tmp_path):
    files = data_rss.write_corpus(tmp_path / "corpus", 4)
    assert files == 64 and len(list((tmp_path / "corpus").rglob("*.txt"))) == 64
    rows = [data_rss.child(mode, str(tmp_path / "corpus"), str(tmp_path / "tokens"), 3) for mode in data_rss.MODES]
    assert len({(r["digest"], r["shard_tokens"]) for r in rows}) == 1  # the same shard from disk and from memory
    assert rows[0]["corpus_mb"] == 4.0 and rows[0]["shard_tokens"] > 4096
    assert len(list((tmp_path / "tokens").iterdir())) == 2  # the shard and the held-out split, written once
    table = data_rss.data_table([{"size_mb": 4, **r} for r in rows])
    assert len(table.splitlines()) == 4 and "in-memory" in table
