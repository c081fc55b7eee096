"""v3 rounds of a diloco int1 run through the node's code path (node/scatter/runner.py NodeScatter
run by node/round/v3.py over the in-memory DHT and v3 transport, as tests/test_v3_rounds.py): the
run's codec sets the wire (run_wire: 1-bit chunks that are the payloads' own blocks, 4-bit
results), every member gathers the same aggregate, bit for bit the owners' rule on that wire,
and each member receives a fraction of what the same rounds cost as int8 chunks."""

from __future__ import annotations

import torch

from node.config import RobustConfig, StrategyConfig
from node.outer.strategies import make_strategy
from node.round.v3 import Aggregate
from node.scatter import chunks
from node.scatter.grid import place, scatter_threshold
from node.scatter.reduce import two_level
from node.scatter.runner import model_order, own_flat, run_wire
from protocol import keys, signed
from protocol.codecs import TopKCodec
from tests.test_v3_rounds import RUN, TOTAL, Peer, play_round, swarm

SHAPES = [(32, 48), (512,)]  # TOTAL values, two tensors
INT1 = make_strategy(StrategyConfig(wire_dtype="int1", wire_block=64), SHAPES, robust=RobustConfig(aggregator="mean"))


class SignPeer(Peer):
    """A member of a diloco int1 run: it announces its update as the codec's 1-bit payload."""

    strategy = INT1

    def encode(self, values: torch.Tensor) -> tuple[str, bytes]:
        return INT1.codec.name, INT1.codec.encode(chunks.unflat(values, SHAPES))


def decoded(update: torch.Tensor) -> torch.Tensor:
    """An update as the run carries it: its 1-bit payload, decoded, in model order."""
    return chunks.flat(INT1.codec.decode(INT1.codec.encode(chunks.unflat(update, SHAPES))))


def test_only_one_sign_a_value_of_the_low_bit_wires_uses_v3():
    assert scatter_threshold(16, "diloco", "int1") == 16
    assert scatter_threshold(16, "diloco", "int1", wire_share=2) == 0  # int8 chunks of shared signs: 16x
    assert scatter_threshold(16, "diloco", "int2") == scatter_threshold(16, "sparseloco", "int8") == 0


def test_the_run_wire_follows_the_codec_and_our_own_chunks_are_our_payload():
    wire = run_wire(INT1.codec)
    assert isinstance(wire, chunks.SignWire) and wire.out_bits == 4 and wire.layout.total == TOTAL
    assert run_wire(make_strategy(StrategyConfig(wire_dtype="int8"), SHAPES).codec) is chunks.INT8
    payload = INT1.codec.encode(chunks.unflat(torch.randn(TOTAL), SHAPES))
    flat = own_flat(INT1.codec, wire, payload)
    for span in wire.spans(chunks.Span(0, TOTAL), 5):  # lossless: the payload's own blocks
        piece = flat[span.start : span.end]
        assert torch.equal(wire.decode_in(wire.encode_in(piece, span), span), piece)
    assert model_order(INT1.codec, wire, flat) is flat
    # a top-k update goes on the sparse wire in the codec's chunk order, and comes back in model order
    topk = TopKCodec(tuple(SHAPES), chunk=64, k=4, dct=False, values="2bit")
    sparse = run_wire(topk)
    assert isinstance(sparse, chunks.SparseWire)
    sel = topk.select(chunks.unflat(torch.randn(TOTAL), SHAPES))
    laid = own_flat(topk, sparse, topk.pack(sel))
    assert torch.equal(model_order(topk, sparse, laid), chunks.flat(topk.decode(topk.pack(sel))))


def rounds(kind: type, wire: chunks.Wire | None = None, n: int = 8) -> tuple[list, dict]:
    """Two v3 rounds of n members (`wire`: force the members' wire); (each round's played, bus traffic)."""
    dht, bus, peers = swarm(n, kind=kind)
    for p in peers:
        p.scatter.wire = wire or p.scatter.wire
    played = []
    for r in range(2):
        played.append(play_round(peers, r))
        assert len({p.digest for p in peers}) == 1
        accepted, got = next(iter(played[-1]["out"].values()))
        assert isinstance(got, Aggregate) and not accepted.roster.caught
        call = dht.get(keys.call_key(RUN, r + 1))[accepted.roster.leader]
        opened, _ = signed.open_call(call, signer=accepted.roster.leader)
        grid = place(list(played[-1]["updates"]), set(opened.reach), opened.beacon, opened.attempt)
        updates = {p: decoded(u) for p, u in played[-1]["updates"].items()}
        expected = two_level(updates, grid, INT1.agg, peers[0].scatter.wire)
        for _, got in played[-1]["out"].values():  # every member: the owners' rule on the run's wire, exactly
            assert torch.equal(got.flat, expected)
    return peers, bus.traffic.data_down


def test_int1_rounds_go_on_the_sign_wire_with_equal_digests_at_a_fraction_of_int8_chunks():
    peers, signs = rounds(SignPeer)
    assert all(isinstance(p.scatter.wire, chunks.SignWire) for p in peers)
    _, int8 = rounds(SignPeer, chunks.INT8)
    update = INT1.codec.encoded_size()  # one 1-bit payload: 384 bytes
    per_round = {name: sum(d.values()) / len(d) / 2 for name, d in (("sign", signs), ("int8", int8))}
    # measured (8 members, 2 groups of 4): 2,112 bytes a member a round on the sign wire (5.5 payloads),
    # 6,240 as int8 chunks (16.3): the aggregate at 4 bits and the chunks at 1 bit, not 8
    assert per_round["sign"] < 7 * update and per_round["int8"] > 2.5 * per_round["sign"], per_round
