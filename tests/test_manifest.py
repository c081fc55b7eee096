import pytest

from node.config import ModelConfig, RunConfig
from node.errors import SwarmtrainError
from node.peer import manifest as manifests
from node.train.data import load_corpus
from protocol import signed
from protocol.records import run_id_of


@pytest.fixture(scope="module")
def good():
    m = manifests.build_manifest(RunConfig(), load_corpus("demo"))
    return run_id_of(m), m


def test_accept_good_manifest(good):
    run_id, m = good
    run, corpus = manifests.accept(run_id, m)
    assert run == RunConfig() and corpus.sha256 == m["data"]["corpus_sha256"]


def test_run_id_changes_with_any_setting(good):
    run_id, _ = good
    other = manifests.build_manifest(RunConfig(model=ModelConfig(d_model=64)), load_corpus("demo"))
    assert run_id_of(other) != run_id


def resealed(m, mutate):
    m = {**m, "data": dict(m["data"]), "model": dict(m["model"])}
    mutate(m)
    return run_id_of(m), m


def test_refuses_other_protocol(good):
    with pytest.raises(SwarmtrainError, match="protocol"):
        manifests.accept(*resealed(good[1], lambda m: m.update(protocol=99)))


def test_refuses_other_corpus_bytes(good):
    with pytest.raises(SwarmtrainError, match="corpus 'demo' differs") as e:
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


# ------------------------------------------------------------------ joining only the run asked for
def signed_manifest(name: str, key=None, d_model: int = 128, n_layer: int = 4) -> tuple[str, dict]:
    from protocol.version import PROTOCOL_VERSION
    from tests.fakes import new_key

    model = {"kind": "byte-gpt", "d_model": d_model, "n_layer": n_layer, "n_head": 4, "ctx": 128}
    return manifests.sign(key or new_key()[0], {"name": name, "protocol": PROTOCOL_VERSION, "model": model})


def swarm_holding(*runs: tuple[str, dict]):
    """A joiner's view of a DHT whose run list holds these signed manifests (tests/fakes.py)."""
    from protocol import keys
    from tests.fakes import FakeDHT, FakeNet

    dht = FakeDHT()
    for run_id, envelope in runs:
        assert dht.store(keys.runs_key(), run_id, envelope, dht.clock() + 3600)
    return FakeNet("joiner", dht, {})


def test_join_without_a_run_id_refuses_even_a_lone_manifest():
    """The attack: the only manifest in the DHT is an attacker's (a 155e9-parameter model); the
    old fetch joined it."""
    lone = signed_manifest("demo", d_model=16384, n_layer=48)
    with pytest.raises(SwarmtrainError, match="no run id given") as e:
        manifests.fetch(swarm_holding(lone), "", timeout=0)
    assert lone[0] in str(e.value) and "~154.6e9 parameters" in str(e.value)
    assert "--run-id RUN" in e.value.help
    assert manifests.fetch(swarm_holding(lone), lone[0], timeout=0).run_id == lone[0]  # asked for by id: joined


def test_join_without_a_run_id_lists_the_runs_and_names_the_flag():
    real, evil = signed_manifest("demo"), signed_manifest("evil", d_model=4096)
    with pytest.raises(SwarmtrainError) as e:
        manifests.fetch(swarm_holding(real, evil), "", timeout=0)
    for run_id, envelope in (real, evil):
        organizer = signed.open_manifest(envelope, run_id)["organizer"]
        assert f"{run_id}  name {run_id.rsplit('-', 1)[0]!r}  model byte-gpt" in str(e.value)
        assert f"organizer {organizer[:20]}" in str(e.value)
    assert "holds 2 run manifests" in str(e.value) and "--run-id RUN" in e.value.help
    found = manifests.fetch(swarm_holding(real, evil), real[0], timeout=0)
    assert (found.run_id, found.envelope) == real


def test_a_manifest_flood_costs_one_check_with_a_run_id(monkeypatch):
    from tests.fakes import new_key

    key = new_key()[0]
    flood = [signed_manifest(f"spam{i}", key) for i in range(200)]  # all valid: signed by the key they name
    real = signed_manifest("demo")
    swarm = swarm_holding(*flood, real)
    opened = []
    original = signed.open_manifest
    monkeypatch.setattr(signed, "open_manifest", lambda env, rid: opened.append(rid) or original(env, rid))
    assert manifests.fetch(swarm, real[0], timeout=0)[0] == real[0]
    assert opened == [real[0]]  # the old fetch opened all 201
    opened.clear()
    with pytest.raises(SwarmtrainError, match="more manifests not examined"):
        manifests.fetch(swarm, "", timeout=0)
    assert len(opened) == manifests.MAX_LISTED


def test_a_swarm_we_started_joins_its_only_run():
    one, other = signed_manifest("mine"), signed_manifest("theirs")
    assert manifests.fetch(swarm_holding(one), "", timeout=0, sole_run=True).run_id == one[0]
    with pytest.raises(SwarmtrainError, match="holds 2 run manifests"):
        manifests.fetch(swarm_holding(one, other), "", timeout=0, sole_run=True)
    with pytest.raises(SwarmtrainError, match=r"found no run 'mine-000000000000'"):
        manifests.fetch(swarm_holding(one), "mine-000000000000", timeout=0)


def test_the_run_to_join_comes_from_the_flag_or_the_organizers_bootstrap_json(tmp_path):
    import json

    from node.config import NodeConfig

    ready = tmp_path / "bootstrap.json"
    ready.write_text(json.dumps({"run_id": "demo-0123456789ab", "maddrs": ["/ip4/127.0.0.1/tcp/1/p2p/QmX"]}))
    assert manifests.wanted_run(NodeConfig(initial_peers_file=str(ready))) == "demo-0123456789ab"
    assert manifests.wanted_run(NodeConfig(initial_peers_file=str(ready), run_id="other-0123456789ab")).startswith(
        "other"
    )
    assert manifests.wanted_run(NodeConfig(initial_peers=["/ip4/1.2.3.4/tcp/5/p2p/QmX"])) == ""
