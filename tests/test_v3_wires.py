"""v3 rounds of diloco int1 and sparseloco runs through the node's code path (node/scatter/runner.py
NodeScatter run by node/round/v3.py over the in-memory DHT and v3 transport, as
tests/test_v3_rounds.py): the run's codec sets the wire (run_wire: signs, 1-bit chunks that are the
payloads' own blocks and 4-bit results; sparse, the codec's picks in chunk order and 8 x k int8
values out), every member gathers the same aggregate, bit for bit the owners' rule on that wire,
and each member receives a fraction of what the same rounds cost as int8 chunks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from node.config import RobustConfig, StrategyConfig
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.peer.applier import Applier
from node.round.v3 import Aggregate
from node.scatter import chunks
from node.scatter.grid import place, scatter_threshold
from node.scatter.reduce import TwoLevel, two_level
from node.scatter.runner import model_order, own_flat, run_wire
from protocol import keys, signed
from tests.test_v3_rounds import RUN, TOTAL, Peer, play_round, swarm

SHAPES = [(32, 48), (512,)]  # TOTAL values, two tensors
MEAN = RobustConfig(aggregator="mean")
INT1 = make_strategy(StrategyConfig(wire_dtype="int1", wire_block=64), SHAPES, robust=MEAN)
SPARSE = make_strategy(StrategyConfig(name="sparseloco", topk=4, chunk=16), SHAPES, robust=MEAN)


def payload_of(strategy, values: torch.Tensor) -> bytes:
    """An update of TOTAL values as the strategy's codec sends it (top-k: its picks, packed)."""
    codec, tensors = strategy.codec, chunks.unflat(values, SHAPES)
    return codec.pack(codec.select(tensors)) if strategy is SPARSE else codec.encode(tensors)


class SignPeer(Peer):
    """A member of a diloco int1 run: it announces its update as the codec's 1-bit payload."""

    strategy = INT1

    def encode(self, values: torch.Tensor) -> tuple[str, bytes]:
        return self.strategy.codec.name, payload_of(self.strategy, values)


class SparsePeer(SignPeer):
    """A member of a sparseloco run: its update's top-k picks, packed."""

    strategy = SPARSE


def test_int1_and_sparseloco_runs_use_v3_but_not_int8_chunks_of_low_bit_updates():
    assert scatter_threshold(16, "diloco", "int1") == scatter_threshold(16, "sparseloco", "int8") == 16
    assert scatter_threshold(16, "diloco", "int1", wire_share=2) == 0  # int8 chunks of shared signs: 16x
    assert scatter_threshold(16, "diloco", "int2") == scatter_threshold(16, "decoupled-momentum", "int8") == 0


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
    sparse, codec = run_wire(SPARSE.codec), SPARSE.codec
    assert isinstance(sparse, chunks.SparseWire) and sparse.keep == 8
    payload = payload_of(SPARSE, torch.randn(TOTAL))
    laid = own_flat(codec, sparse, payload)
    for span in sparse.spans(chunks.Span(0, laid.numel()), 5):
        piece = laid[span.start : span.end]
        assert torch.equal(sparse.decode_in(sparse.encode_in(piece, span), span), piece)
    assert torch.equal(model_order(codec, sparse, laid), chunks.flat(codec.decode(payload)))


def test_sparseloco_applies_a_flat_aggregate_as_it_applies_the_same_combine():
    strategy = copy.copy(SPARSE)
    strategy.agg = TwoLevel(strategy.agg, 3, run_wire(strategy.codec))
    gen = torch.Generator().manual_seed(5)
    payloads = [payload_of(SPARSE, torch.randn(TOTAL, generator=gen)) for _ in range(5)]
    state = SwarmState.initial(torch.nn.Linear(1, 1), [])
    state.params = [torch.randn(s) for s in SHAPES]
    a, b = copy.deepcopy(state), copy.deepcopy(state)
    strategy.apply(a, payloads)
    strategy.apply_aggregate(b, chunks.flat(strategy.agg.last))
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params)) and a.round == b.round


def test_a_member_puts_back_what_the_sparse_aggregate_dropped_of_its_update():
    """node/peer/applier.py Applier.take_back, after a v3 round that applied our update: sparseloco's
    error buffer gets back what it sent where the aggregate is zero; diloco's (and after a v2
    round, anyone's) stays as it is (its take-back measured worse: docs/protocol.md "signs")."""
    payload = payload_of(SPARSE, torch.randn(TOTAL))
    sent = chunks.flat(SPARSE.codec.decode(payload))
    aggregate = torch.where(torch.arange(TOTAL) % 3 == 0, sent, 0.0) * 0.5
    me = SimpleNamespace(strategy=SPARSE, state=SimpleNamespace(params=[torch.zeros(s) for s in SHAPES]))
    worker = {"error": [torch.zeros(s) for s in SHAPES]}
    Applier.take_back(me, worker, payload, Aggregate(aggregate))
    assert torch.equal(chunks.flat(worker["error"]), torch.where(aggregate == 0, sent, 0.0))
    assert chunks.flat(worker["error"]).abs().sum() > 0
    kept = copy.deepcopy(worker)
    Applier.take_back(me, worker, payload, [payload])  # a v2 round: every update applied whole
    Applier.take_back(SimpleNamespace(state=me.state, strategy=INT1), worker, payload, Aggregate(aggregate))
    assert all(torch.equal(a, b) for a, b in zip(worker["error"], kept["error"]))


def rounds(kind: type, wire: chunks.Wire | None = None, n: int = 8) -> dict:
    """Two v3 rounds of n members (`wire`: force the members' wire); the bytes of pieces each received."""
    dht, bus, peers = swarm(n, kind=kind)
    for p in peers:
        p.scatter.wire = wire or p.scatter.wire
    codec, wire = kind.strategy.codec, peers[0].scatter.wire
    for r in range(2):
        played = play_round(peers, r)
        assert len({p.digest for p in peers}) == 1
        accepted, got = next(iter(played["out"].values()))
        assert isinstance(got, Aggregate) and not accepted.roster.caught
        call = dht.get(keys.call_key(RUN, r + 1))[accepted.roster.leader]
        opened, _ = signed.open_call(call, signer=accepted.roster.leader)
        grid = place(list(played["updates"]), set(opened.reach), opened.beacon, opened.attempt)
        laid = {p.id: own_flat(codec, wire, p.encode(played["updates"][p.id])[1]) for p in peers}
        expected = model_order(codec, wire, two_level(laid, grid, kind.strategy.agg, wire))
        for _, got in played["out"].values():  # every member: the owners' rule on the run's wire, exactly
            assert torch.equal(got.flat, expected)
    return bus.traffic.data_down


def per_round(down: dict) -> float:
    return sum(down.values()) / len(down) / 2


def test_int1_rounds_go_on_the_sign_wire_with_equal_digests_at_a_fraction_of_int8_chunks():
    signs, int8 = per_round(rounds(SignPeer)), per_round(rounds(SignPeer, chunks.INT8))
    update = INT1.codec.encoded_size()  # one 1-bit payload: 384 bytes
    # measured (8 members, 2 groups of 4): 2,112 bytes a member a round on the sign wire (5.5 payloads),
    # 6,240 as int8 chunks (16.3): the aggregate at 4 bits and the chunks at 1 bit, not 8
    assert signs < 7 * update and int8 > 2.5 * signs, (signs, int8)


def test_sparseloco_rounds_go_on_the_sparse_wire_with_equal_digests():
    sparse, update = per_round(rounds(SparsePeer)), SPARSE.codec.encoded_size()
    # measured: 2,850 bytes a member a round (9.6 payloads of 298; as int8 chunks 6,240, 20.9): k is
    # a quarter of each 16-value chunk here, so 8 x k keeps results dense
    assert sparse < 12 * update, (sparse, update)
