import pytest

from node.errors import SwarmtrainError
from node.p2p.addresses import parse_peer_address

GOOD = "/ip4/127.0.0.1/tcp/4001/p2p/QmNgri3sqZDwwFzgKdnak1ZWaSAe9yYu2XZL5zD1ca43ne"


def test_parse_good():
    a = parse_peer_address(GOOD)
    assert (a.host, a.port, a.peer_id) == ("127.0.0.1", 4001, "QmNgri3sqZDwwFzgKdnak1ZWaSAe9yYu2XZL5zD1ca43ne")


@pytest.mark.parametrize(
    "bad,why",
    [
        ("/ip4/1.2.3/tcp/1", "not a valid multiaddr"),
        ("hello", "not a valid multiaddr"),
        ("/ip4/127.0.0.1/tcp/99999", "not a valid multiaddr"),
        ("/ip4/127.0.0.1/tcp/4001", "lacks /p2p/<peer id>"),
        ("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/QmNgri3sqZDwwFzgKdnak1ZWaSAe9yYu2XZL5zD1ca43ne", "lacks /tcp/<port>"),
    ],
)
def test_parse_bad_names_the_fix(bad, why):
    with pytest.raises(SwarmtrainError, match=why) as e:
        parse_peer_address(bad)
    assert "/p2p/" in e.value.help


def test_initial_peers_file_from_a_bootstrap_peer(tmp_path):
    import json

    from node.p2p.addresses import initial_peers

    maddr = "/ip4/127.0.0.1/tcp/4001/p2p/QmcHYLomwHQaoAbJ4u1Ppz25nhH4bz2Sh7dBskRrB9UqLw"
    ready = tmp_path / "bootstrap.json"
    ready.write_text(json.dumps({"run_id": "r", "maddrs": [maddr, "/ip4/10.0.0.1/tcp/1/p2p/Qm"], "peer": "Qm"}))
    assert [a.port for a in initial_peers([], str(ready))] == [4001]  # the first: the dialable one
    ready.write_text("{not json")
    with pytest.raises(SwarmtrainError, match="is not a bootstrap.json"):
        initial_peers([], str(ready))
    with pytest.raises(SwarmtrainError, match="does not exist") as e:
        initial_peers([], str(tmp_path / "missing.json"), timeout=0.1)
    assert "swarmtrain bootstrap" in e.value.help
