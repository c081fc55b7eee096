import pytest

from node.config import ModelConfig, RunConfig
from node.errors import SwarmtrainError
from node.peer import manifest as manifests
from node.train.data import load_corpus
from protocol.records import run_id_of


@pytest.fixture(scope="module")
def good():
    m = manifests.build_manifest(RunConfig(), load_corpus("stdlib"))
    return run_id_of(m), m


def test_accept_good_manifest(good):
    run_id, m = good
    run, corpus = manifests.accept(run_id, m)
    assert run == RunConfig() and corpus.sha256 == m["data"]["corpus_sha256"]


def test_run_id_changes_with_any_setting(good):
    run_id, _ = good
    other = manifests.build_manifest(RunConfig(model=ModelConfig(d_model=64)), load_corpus("stdlib"))
    assert run_id_of(other) != run_id


def resealed(m, mutate):
    m = {**m, "data": dict(m["data"]), "model": dict(m["model"])}
    mutate(m)
    return run_id_of(m), m


def test_refuses_other_protocol(good):
    with pytest.raises(SwarmtrainError, match="protocol"):
        manifests.accept(*resealed(good[1], lambda m: m.update(protocol=99)))


def test_refuses_other_corpus_bytes(good):
    with pytest.raises(SwarmtrainError, match="corpus 'stdlib' differs") as e:
        manifests.accept(*resealed(good[1], lambda m: m["data"].update(corpus_sha256="0" * 64)))
    assert "same source of data" in e.value.help


def test_refuses_settings_it_cannot_build(good):
    with pytest.raises(SwarmtrainError, match="cannot build"):
        manifests.accept(*resealed(good[1], lambda m: m["model"].update(n_experts=8)))
    with pytest.raises(SwarmtrainError, match="divisible"):
        manifests.accept(*resealed(good[1], lambda m: m["model"].update(n_head=5)))


def test_refuses_manifest_that_does_not_hash_to_its_id(good):
    run_id, m = good
    with pytest.raises(SwarmtrainError, match="does not hash"):
        manifests.accept(run_id, {**m, "name": "evil"})
    with pytest.raises(SwarmtrainError, match="does not hash"):
        manifests.accept(run_id, {"name": b"bytes"})


def test_volunteers_keep_the_manifest_alive_past_its_ttl():
    from node.p2p.validators import MANIFEST_TTL
    from node.peer.manifest import ManifestKeeper

    class FakeSwarm:
        def __init__(self):
            self.stored_at = []

        def store(self, key, subkey, value, ttl):
            assert ttl == MANIFEST_TTL
            self.stored_at.append(now[0])
            return True

    now = [0.0]
    swarm = FakeSwarm()
    from tests.fakes import new_key

    _, envelope = manifests.sign(new_key()[0], {"name": "x", "protocol": 2})
    keeper = ManifestKeeper(swarm, envelope, clock=lambda: now[0])
    keeper.tick()
    keeper.tick()  # the same moment: no second store
    assert swarm.stored_at == [0.0]
    while now[0] < 3 * MANIFEST_TTL:  # a round a minute for three TTLs
        now[0] += 60
        keeper.tick()
    gaps = [b - a for a, b in zip(swarm.stored_at, swarm.stored_at[1:])]
    assert max(gaps) <= MANIFEST_TTL / 4 + 60  # never close to expiring
    assert len(swarm.stored_at) <= 3 * 4 + 2  # and not once per round
