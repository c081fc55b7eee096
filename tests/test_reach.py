"""Reachability (node/p2p/reach.py): the kind an address list gives, the words a person reads,
and that every flag a fix names exists. No network: judged from addresses alone."""

import re
from dataclasses import fields

import pytest

from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.p2p.addresses import parse_announce
from node.p2p.reach import judge, kind_of, local_maddrs
from node.round.election import candidates
from node.watch.status import StatusBoard
from protocol.kinds.metrics import REACHABILITY
from protocol.records import Heartbeat

HOME = ["/ip4/127.0.0.1/tcp/40655/p2p/QmMe", "/ip4/192.168.1.2/tcp/40655/p2p/QmMe"]  # what p2pd announces at home
PUBLIC = ["/ip4/127.0.0.1/tcp/40655/p2p/QmMe", "/ip4/11.77.0.11/tcp/40655/p2p/QmMe"]


@pytest.mark.parametrize(
    "maddrs, kind",
    [
        (["/ip4/127.0.0.1/tcp/1/p2p/Qm"], "loopback"),
        (["/ip4/192.168.1.5/tcp/1", "/ip4/203.0.114.7/tcp/1"], "public"),
        (HOME, "private"),
        # a relay beats a private address: outside peers dial the node through it
        (["/ip4/10.0.0.2/tcp/1", "/ip4/1.2.3.4/tcp/4001/p2p/QmR/p2p-circuit"], "relay"),
        (["/ip4/1.2.3.4/tcp/4001/p2p/QmR/p2p-circuit/p2p/QmMe"], "relay"),
        (["/ip4/203.0.113.7/tcp/1"], "private"),  # documentation addresses are not global
        (["/ip6/::1/tcp/1"], "loopback"),
        (["/ip6/2001:4860::1/tcp/1"], "public"),
        (["/dns4/home.example.org/tcp/1"], "public"),  # a name --announce gives is meant for outside peers
        ([], "unknown"),
    ],
)
def test_kind_of_addresses(maddrs, kind):
    assert kind_of(maddrs) == kind
    assert judge(maddrs).wire in REACHABILITY  # what the signed metrics record may carry


def test_behind_nat_says_not_reachable_what_it_means_and_the_flags():
    r = judge(HOME)
    assert r.reachable is False and r.kind == r.wire == "private"
    assert r.summary.startswith("not reachable from outside (behind NAT") and "192.168.1.2:40655" in r.summary
    assert "127.0.0.1" not in r.summary  # the loopback address says nothing about outside peers
    assert "still trains" in r.meaning and "joiners" in r.meaning and "does not lead" in r.meaning
    assert "--port 31337 --announce /ip4/<router's public IP>/tcp/31337" in r.fix
    assert "--port 0 picks a new one" in r.fix and "UPnP" in r.fix
    fixed = judge(HOME, port=4001).fix  # a node already on a fixed port is told to forward that one
    assert "--port 4001 --announce /ip4/<router's public IP>/tcp/4001" in fixed and "--port 0" not in fixed


def test_public_address_is_reachable_and_needs_no_fix():
    r = judge(PUBLIC)
    assert r.reachable is True and r.wire == "public" and r.fix == ""
    assert "11.77.0.11:40655" in r.summary and "firewall" in r.meaning


def test_loopback_only_is_private_on_the_wire_and_told_apart_in_words():
    r = judge(["/ip4/127.0.0.1/tcp/5000/p2p/QmMe"])
    assert r.kind == "loopback" and r.wire == "private" and r.reachable is False
    assert "only from this machine" in r.summary and "--host 0.0.0.0" in r.fix


def test_unknown_without_addresses():
    r = judge([])
    assert r.reachable is None and r.wire == "unknown" and r.fix == ""


def test_every_flag_a_fix_names_exists():
    """The fixes name flags a user can type: each --flag is a NodeConfig field (join --help)."""
    names = {f.name for f in fields(NodeConfig)}
    for r in (
        judge(HOME),
        judge(HOME, port=4001),
        judge(["/ip4/127.0.0.1/tcp/1"]),
        judge(["/ip4/1.2.3.4/tcp/4001/p2p/QmR/p2p-circuit/p2p/QmMe"]),
    ):
        flags = re.findall(r"--([a-z][a-z-]*)", r.fix + r.meaning)
        assert all(flag.replace("-", "_") in names for flag in flags), flags
    assert re.findall(r"--([a-z][a-z-]*)", judge(HOME).fix) == ["port", "announce", "port"]


def test_local_maddrs_without_sending_anything():
    assert local_maddrs("192.168.1.2", 4001, []) == ["/ip4/192.168.1.2/tcp/4001"]
    # for 0.0.0.0 the source address of the route out (a UDP connect sends nothing); a peer on
    # this machine says nothing about outside, so its route is not the one asked
    found = local_maddrs("0.0.0.0", 0, ["127.0.0.1"])
    assert len(found) <= 1 and all(m.endswith("/tcp/0") and "/127." not in m for m in found)


@pytest.mark.parametrize(
    "text", ["/ip4/203.0.113.7/tcp/31337", "/dns4/home.example.org/tcp/31337", "/ip6/2001:db8::7/tcp/4001"]
)
def test_good_announce_addresses(text):
    assert parse_announce([text]) == [text]


@pytest.mark.parametrize(
    "text, why",
    [
        ("203.0.113.7:31337", "not a valid multiaddr"),
        ("/ip4/203.0.113.7/tcp/0", "other than 0"),
        ("/ip4/203.0.113.7", "other than 0"),
        ("/ip4/203.0.113.7/tcp/31337/p2p/QmcHYLomwHQaoAbJ4u1Ppz25nhH4bz2Sh7dBskRrB9UqLw", "other than 0"),
    ],
)
def test_bad_announce_addresses_name_the_form(text, why):
    with pytest.raises(SwarmtrainError) as e:
        parse_announce([text])
    assert why in str(e.value) and "/ip4/203.0.113.7/tcp/31337" in e.value.help


def test_status_page_carries_the_words():
    b = StatusBoard(peer="QmA", name="a", run_id="r-1", strategy="diloco", device="cpu", version="0")
    assert "reachability" not in b.snapshot()["node"]  # not known before the node announces its addresses
    b.set_reachability(judge(HOME).as_dict())
    shown = b.snapshot()["node"]["reachability"]
    assert shown["reachable"] is False and shown["summary"] == judge(HOME).summary and "--announce" in shown["fix"]


def hb(peer: str, host: str) -> Heartbeat:
    """A live heartbeat on state d...d announcing one address on `host`."""
    return Heartbeat(
        peer=peer, name=peer, round=3, state_round=2, digest="d" * 64, device="cpu",
        maddrs=(f"/ip4/{host}/tcp/4001",), time=0.0,
    )  # fmt: skip


def test_peers_behind_nat_do_not_lead_where_others_can_be_dialled():
    """A leader behind NAT cannot fetch the updates of other peers behind NAT (no one dialled it):
    swarm_tests/test_nat.py saw one starved; where any live peer can be dialled, only those lead."""
    mixed = {"home1": hb("home1", "192.168.1.2"), "home2": hb("home2", "192.168.2.2"), "pub": hb("pub", "11.77.0.10")}
    assert candidates(mixed, "d" * 64, None, 3) == {"pub"}
    lan = {p: hb(p, f"192.168.1.{i}") for i, p in enumerate(("a", "b", "c"))}
    assert candidates(lan, "d" * 64, None, 3) == {"a", "b", "c"}  # one LAN: everyone reaches everyone
    local = {p: hb(p, "127.0.0.1") for p in ("a", "b")}
    assert candidates(local, "d" * 64, None, 3) == {"a", "b"}


def test_nat_peers_still_lead_when_no_established_peer_can_be_dialled():
    peers = {"home1": hb("home1", "192.168.1.2"), "home2": hb("home2", "192.168.2.2"), "new": hb("new", "11.77.0.10")}
    assert candidates(peers, "d" * 64, {"home1", "home2"}, 3) == {"home1", "home2"}  # the public one is not established
    assert candidates(peers, "d" * 64, {"home1", "new"}, 3) == {"new"}
