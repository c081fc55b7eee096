import msgpack
import pytest
import torch

from protocol import keys
from protocol.errors import ProtocolError
from protocol.messages import (
    MAX_ERROR_RESPONSE,
    Request,
    UpdateEnvelope,
    body_length,
    check_response_length,
    decode_response,
    encode_response,
    frame,
    ok_response_length,
)
from protocol.records import GENESIS, Announcement, Heartbeat, Roster, manifest_hash, run_id_of
from protocol.tensors import decode_tensors, encode_tensors

PEER_A = "QmNgri3sqZDwwFzgKdnak1ZWaSAe9yYu2XZL5zD1ca43ne"
PEER_B = "QmdbQkxUUPfpSoioHP9jLsH4UuoTdckrgiLMr4BTCVo6Kv"
SHA = "a" * 64


def heartbeat(**over):
    d = Heartbeat(
        run="demo-1",
        peer=PEER_A,
        name="n",
        round=3,
        state_round=2,
        digest=SHA,
        device="cpu",
        maddrs=("/ip4/127.0.0.1/tcp/1",),
        time=1.0,
    ).to_wire()
    d.update(over)
    return d


def test_keys_are_documented_shapes():
    assert keys.roster_key("demo-abc", 7) == "swarmtrain:demo-abc:round:7:roster"
    assert keys.updates_key("demo-abc", 7) == "swarmtrain:demo-abc:round:7:updates"
    assert keys.peers_key("demo-abc") == "swarmtrain:demo-abc:peers"


def test_heartbeat_roundtrip():
    hb = Heartbeat.from_wire(heartbeat())
    assert Heartbeat.from_wire(hb.to_wire()) == hb and hb.active


@pytest.mark.parametrize(
    "over",
    [
        {"peer": "not a peer id!"},
        {"round": -1},
        {"round": "3"},
        {"digest": "xyz"},
        {"maddrs": "one"},
        {"maddrs": ["x"] * 17},
        {"active": 1},
        {"name": "n" * 300},
        {"run": ""},
        {"time": float("nan")},
    ],
)
def test_heartbeat_rejects_malformed(over):
    with pytest.raises(ProtocolError):
        Heartbeat.from_wire(heartbeat(**over))


def test_heartbeat_rejects_non_map():
    with pytest.raises(ProtocolError):
        Heartbeat.from_wire([1, 2])


def test_announcement_size_limits():
    ok = Announcement(run="demo-1", round=1, peer=PEER_A, nbytes=10, sha256=SHA, tokens=5, base=SHA, time=1.0).to_wire()
    assert Announcement.from_wire(ok, max_bytes=10).nbytes == 10
    with pytest.raises(ProtocolError, match="size"):
        Announcement.from_wire(ok, max_bytes=9)


def test_roster_fields_are_checked():
    """Entries are signed announcements (their signatures and order: protocol/signed.py)."""
    r = Roster(
        run="demo-1",
        round=2,
        leader=PEER_A,
        prev=GENESIS,
        base=SHA,
        result=SHA,
        time=1.0,
        entries=({"body": b"x", "key": b"k", "sig": b"s"},),
        scores=((PEER_B, 0.5),),
    )
    assert Roster.from_wire(r.to_wire(), max_bytes=100) == r
    for over in [
        {"entries": []},
        {"entries": [[1, 2]]},
        {"scores": [[PEER_B]]},
        {"scores": [[PEER_B, True]]},
        {"prev": "x"},
        {"leader": "../etc"},
        {"time": float("inf")},
        {"reveal": "text"},
        {"reveal": b"r" * 257},
        {"beacon": "B" * 64},
        {"attempt": -1},
        {"attempt": True},
    ]:
        with pytest.raises(ProtocolError):
            Roster.from_wire({**r.to_wire(), **over}, max_bytes=100)


def test_roster_election_fields_are_additive():
    """reveal, beacon and attempt (node/round/election.py) round-trip; a roster without them (an
    older peer's) reads the defaults, and older readers ignore keys they do not know."""
    r = Roster(
        run="demo-1",
        round=2,
        leader=PEER_A,
        prev=GENESIS,
        base=SHA,
        result=SHA,
        time=1.0,
        entries=({"body": b"x", "key": b"k", "sig": b"s"},),
        reveal=b"\x01" * 256,
        beacon="b" * 64,
        attempt=3,
    )
    assert Roster.from_wire(r.to_wire(), max_bytes=100) == r
    older = {k: v for k, v in r.to_wire().items() if k not in ("reveal", "beacon", "attempt")}
    assert Roster.from_wire(older, max_bytes=100) == Roster(**{**r.__dict__, "reveal": b"", "beacon": "", "attempt": 0})


def test_manifest_hash_is_canonical():
    a = {"name": "x", "model": {"d": 1, "l": 2}}
    b = {"model": {"l": 2, "d": 1}, "name": "x"}
    assert manifest_hash(a) == manifest_hash(b)
    assert run_id_of(a).startswith("x-") and len(run_id_of(a)) == 14
    assert manifest_hash({**a, "name": "y"}) != manifest_hash(a)


def test_framing_refuses_oversized_before_reading():
    assert body_length(frame(b"abc")[:8], 3) == 3
    with pytest.raises(ProtocolError, match="exceeds"):
        body_length((10**12).to_bytes(8, "big"), 1000)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, 10**6])
def test_ok_response_length_is_exact(n):
    assert ok_response_length(n) == len(encode_response(b"x" * n))


def test_response_length_is_checked_against_the_expected_size():
    assert len(encode_response(None, "\U0001f600" * 10_000)) <= MAX_ERROR_RESPONSE  # refusals always fit
    check_response_length(ok_response_length(10**5), expect=10**5, max_bytes=10)
    check_response_length(40, expect=10**6, max_bytes=10)
    with pytest.raises(ProtocolError, match="expected"):
        check_response_length(ok_response_length(10**5 + 1), expect=10**5, max_bytes=10**9)
    with pytest.raises(ProtocolError, match="exceeds"):
        check_response_length(10**7, expect=None, max_bytes=10**6)


def test_request_roundtrip_and_rejects():
    r = Request(op="update", run="demo-1", round=3, peer=PEER_A)
    assert Request.decode(r.encode()) == r
    for bad in [
        b"\xc1",
        msgpack.packb([1]),
        msgpack.packb({"op": "rm -rf", "run": "x"}),
        msgpack.packb({"op": "update", "run": "x", "round": 1, "peer": "../etc"}),
        msgpack.packb({"op": "state", "run": ""}),
    ]:
        with pytest.raises(ProtocolError):
            Request.decode(bad)


def test_response_carries_the_reason():
    assert decode_response(encode_response(b"xyz")) == b"xyz"
    with pytest.raises(ProtocolError, match="no state yet"):
        decode_response(encode_response(None, "no state yet"))


def test_update_envelope_roundtrip():
    e = UpdateEnvelope(run="r", round=1, peer=PEER_A, codec="dense-float16", payload=b"\x00" * 8)
    assert UpdateEnvelope.decode(e.encode()) == e
    for bad in [
        {"run": "r"},
        {**msgpack.unpackb(e.encode()), "round": True},
        {**msgpack.unpackb(e.encode()), "round": -1},
    ]:
        with pytest.raises(ProtocolError):
            UpdateEnvelope.decode(msgpack.packb(bad, use_bin_type=True))


def test_tensor_container_roundtrip_and_strictness():
    ts = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    out, meta = decode_tensors(encode_tensors(ts, {"round": 3}))
    assert meta == {"round": 3} and all(torch.equal(ts[k], out[k]) for k in ts)
    good = msgpack.unpackb(encode_tensors(ts))
    for mutate in [
        lambda d: d.update(format="pickle"),
        lambda d: d["tensors"][0].__setitem__(1, "object"),
        lambda d: d["tensors"][0].__setitem__(2, [2, 4]),
        lambda d: d["tensors"][0].__setitem__(3, b"short"),
        lambda d: d["tensors"].append(list(d["tensors"][0])),
    ]:
        d = msgpack.unpackb(encode_tensors(ts))
        mutate(d)
        with pytest.raises(ProtocolError):
            decode_tensors(msgpack.packb(d, use_bin_type=True))
    with pytest.raises(ProtocolError):
        decode_tensors(b"garbage")
    assert good["format"] == "swarmtrain-tensors"


def test_a_heartbeat_s_step_and_exchange_times_are_seconds_in_range_or_refused():
    assert Heartbeat.from_wire(heartbeat(step_s=0.05, exchange_s=1.5)).exchange_s == 1.5
    old = heartbeat()
    del old["step_s"], old["exchange_s"]
    assert Heartbeat.from_wire(old).step_s == 0.0  # a peer that publishes none: nothing measured
    for bad in (-1.0, 3600.0, float("nan"), float("inf"), True, "0.1"):
        for name in ("step_s", "exchange_s"):
            with pytest.raises(ProtocolError, match=name):
                Heartbeat.from_wire(heartbeat(**{name: bad}))


def test_tensor_containers_are_the_bytes_of_each_tensors_copy_packed_as_before():
    """encode_tensors packs views of the tensors' memory into a presized buffer: the bytes of
    copying each tensor's bytes first and letting msgpack size its buffer (what every peer
    and checkpoint held before), for every dtype, empty and non-contiguous tensors included."""

    def copied(tensors, meta):
        items = [
            [n, str(t.dtype).split(".")[1], list(t.shape), t.contiguous().view(torch.uint8).numpy().tobytes()]
            for n, t in tensors.items()
        ]
        return msgpack.packb({"format": "swarmtrain-tensors", "version": 1, "meta": meta, "tensors": items})

    g = torch.Generator().manual_seed(0)
    ts = {
        "w": torch.randn(512, 128, generator=g),
        "h": torch.randn(3, generator=g).half(),
        "b": torch.randn(4, 5, generator=g).bfloat16(),
        "i": torch.arange(7),
        "empty": torch.zeros(0),
        "t": torch.randn(6, 4, generator=g).t(),
        "u": torch.randint(0, 255, (9,), dtype=torch.uint8),
        "big": torch.randn(300_000, generator=g),
    }
    meta = {"run": "r", "round": 2, "digest": "f" * 64}
    assert encode_tensors(ts, meta) == copied(ts, meta)
    for name, t in ts.items():
        assert encode_tensors({name: t}) == copied({name: t}, {})
