"""v3 on the 1-bit and top-k wires (node/scatter/chunks.py SignWire and SparseWire, protocol/codecs/
pieces.py): senders' pieces are their own payload's values, owners' results re-encode bit-exactly
(an auditor recomputes the same bytes), the aggregate stays about one update's size, and with one
group and nothing dropped the two-level round is the all-gather's rule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.scale.sim import leader_of, make_updates, peer_ids, round_of
from node.config import StrategyConfig
from node.outer.aggregate import Mean, Robust
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.scatter import chunks
from node.scatter.audit import outputs_of
from node.scatter.grid import place
from node.scatter.reduce import TwoLevel, reduce_task, two_level
from node.scatter.round import ScatterRound
from node.scatter.traffic import Behaviour
from protocol.codecs import QuantCodec, TopKCodec
from protocol.codecs.pieces import RAW, LowBitPiece, SparsePiece, fixed_sums
from protocol.errors import ProtocolError

SHAPES = ((256, 64), (64, 64), (64,), (64,), (192, 64), (64, 256))
SIGNS = QuantCodec(SHAPES, bits=1, block=1024)
TOPK = TopKCodec(SHAPES, chunk=64, k=32, values="2bit")


@pytest.fixture(autouse=True)
def one_thread():
    """Small index ops on many pieces: threads only contend (as `bench scale` runs them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pseudo_gradients(n: int, seed: int) -> list[list[torch.Tensor]]:
    """A shared direction plus each peer's own noise, per tensor (as bench/scale/sim.py's)."""
    flat = list(make_updates([str(i) for i in range(n)], sum(torch.Size(s).numel() for s in SHAPES), seed).values())
    return [chunks.unflat(f, [tuple(s) for s in SHAPES]) for f in flat]


def sign_updates(n: int, seed: int = 0) -> list[list[torch.Tensor]]:
    return [SIGNS.decode(SIGNS.encode(u)) for u in pseudo_gradients(n, seed)]


def topk_selections(n: int, seed: int = 0) -> list:
    return [TOPK.unpack(TOPK.encode(u)) for u in pseudo_gradients(n, seed)]


def test_fixed_sums_are_exact_where_they_can_be_and_pad_with_zeros():
    rows = torch.tensor([[1.0, 2.0, 3.0], [2.0**-30, 1.0, -1.0]])
    assert fixed_sums(rows).tolist() == [6.0, 2.0**-30]
    x = torch.randn(7, 1000)
    one = fixed_sums(x)
    torch.set_num_threads(2)
    assert torch.equal(one, fixed_sums(x.clone()))


def test_senders_pieces_carry_their_own_payloads_values_at_its_bytes():
    for wire, flat, payload in (
        (chunks.wire_for(SIGNS), chunks.flat(sign_updates(1)[0]), SIGNS.encoded_size()),
        (chunks.wire_for(TOPK), chunks.sparse_flat(TOPK, topk_selections(1)[0]), TOPK.encoded_size()),
    ):
        cut = wire.spans(chunks.Span(0, flat.numel()), 4)
        for span in cut:
            piece = flat[span.start : span.end]
            data = wire.encode_in(piece, span)
            assert len(data) == wire.in_size(span) and torch.equal(wire.decode_in(data, span), piece)
        # the chunks together cost the payload, but for byte rounding and a table per tensor a chunk touches
        assert payload <= sum(wire.in_size(s) for s in cut) <= 1.05 * payload


def test_pieces_from_peers_are_checked():
    low = LowBitPiece((1024, 64), 1)
    good = low.encode(torch.randn(1088))
    for bad in (good[:-1], b"\x00\x00\x80\x7f" + good[4:]):  # short; an infinite step
        with pytest.raises(ProtocolError):
            low.decode(bad)
    sparse = SparsePiece((4096, 64), (2, 2), (1, 1), 2)
    values = torch.zeros(4160)
    values[[5, 9, 4096 + 3, 4096 + 7]] = torch.tensor([1.0, -2.0, 3.0, 4.0])
    data = sparse.encode(values)
    assert torch.equal(sparse.decode(data), values)
    tables = 4 * 2 * 4
    repeated = bytearray(data)
    repeated[tables : tables + 3] = bytes([5, 0x50, 0])  # indices 5 and 5 in the first unit
    out_of_range = bytearray(data)
    out_of_range[tables + 3 : tables + 6] = bytes([0xFF, 0xFF, 0xFF])  # 4095 and 4095 in a unit of 64
    for bad in (bytes(repeated), bytes(out_of_range), data + b"\x00"):
        with pytest.raises(ProtocolError):
            sparse.decode(bad)
    int8 = SparsePiece((4096, 64), (2, 2), (1, 1), 8)  # one step a segment, max|value| / 127
    data = int8.encode(values)
    assert len(data) == 2 * 4 + 6 + 4 and torch.allclose(int8.decode(data), values, atol=4.0 / 254)
    with pytest.raises(ProtocolError):
        int8.decode(b"\x00\x00\x80\x7f" + data[4:])


@pytest.mark.parametrize("kind", ["sign", "sparse"])
def test_a_round_on_the_wire_ends_with_the_two_level_aggregate_and_catches_a_liar(kind):
    """Every task's owner re-encodes its result and its auditor recomputes it from the signed
    inputs: equal SHA-256s (nobody honest caught), and a liar's differ (caught in the round)."""
    peers = peer_ids(16)
    if kind == "sign":
        wire, flats = chunks.wire_for(SIGNS), [chunks.flat(u) for u in sign_updates(16, 3)]
    else:
        wire, flats = chunks.wire_for(TOPK), [chunks.sparse_flat(TOPK, s) for s in topk_selections(16, 3)]
    updates = dict(zip(peers, flats))
    for behaviour in ({}, {peers[5]: Behaviour(lie=True)}):
        keys, rnd = round_of(peers, flats[0].numel())
        rnd = dataclasses.replace(rnd, wire=wire)
        out = ScatterRound(rnd, updates, keys, leader_of(peers, 1), behaviour=behaviour).run()
        assert out.caught == list(behaviour) and not out.missed
        assert torch.equal(out.final, two_level(updates, rnd.grid, Robust(), wire))


@pytest.mark.parametrize("kind", ["sign", "sparse"])
def test_an_owners_output_bytes_do_not_depend_on_the_machines_threads(kind):
    peers = peer_ids(16)
    if kind == "sign":
        wire, flats = chunks.wire_for(SIGNS, out_bits=2), [chunks.flat(u) for u in sign_updates(16, 4)]
    else:
        wire, flats = chunks.wire_for(TOPK), [chunks.sparse_flat(TOPK, s) for s in topk_selections(16, 4)]
    _, rnd = round_of(peers, flats[0].numel())
    rnd = dataclasses.replace(rnd, wire=wire)
    span = rnd.chunk(1)
    pieces = [wire.decode_in(wire.encode_in(f[span.start : span.end], span), span) for f in flats[:4]]
    owner = outputs_of(rnd, 1, 0, 1, pieces)
    torch.set_num_threads(2)  # (the fixture restores the count)
    auditor = outputs_of(rnd, 1, 0, 1, [p.clone() for p in pieces])
    assert [chunks.sha(o) for o in owner] == [chunks.sha(a) for a in auditor]
    part = rnd.part(1, 0)
    level2 = [wire.decode_out(o, part, 1) for o in owner[:1]] * 3
    assert outputs_of(rnd, 2, 1, 0, level2) == outputs_of(rnd, 2, 1, 0, [p.clone() for p in level2])


def test_the_gathered_aggregate_stays_about_one_update():
    """The union of 16 peers' top-k picks is several times k a chunk; the re-sparsified aggregate
    keeps k (keep 1), so the gathered aggregate is about one update, as is a 1-bit aggregate."""
    for wire, payload, factor in (
        (chunks.wire_for(SIGNS, out_bits=1), SIGNS.encoded_size(), 1),
        (chunks.wire_for(SIGNS, out_bits=2), SIGNS.encoded_size(), 2),
        (chunks.wire_for(SIGNS), SIGNS.encoded_size(), 4),
        (chunks.wire_for(TOPK, keep=1, out_bits=2), TOPK.encoded_size(), 1),
        (chunks.wire_for(TOPK, keep=2, out_bits=2), TOPK.encoded_size(), 2),
        (chunks.wire_for(TOPK, keep=1, out_bits=8), TOPK.encoded_size(), 20 / 14),  # 12-bit index + int8
    ):
        whole = chunks.Span(0, wire.layout.total)
        parts = [p for c in wire.spans(whole, 4) for p in wire.spans(c, 4)]
        assert sum(wire.out_size(p) for p in parts) <= 1.05 * factor * payload + 16 * len(parts)
    sels = topk_selections(16, 5)
    union = torch.stack([chunks.sparse_flat(TOPK, s) for s in sels]).ne(0).any(0)
    agg = TwoLevel(Robust(), 0, chunks.wire_for(TOPK, keep=1)).sparse(TOPK, sels)
    kept = torch.cat([t.reshape(-1) for t in agg]).ne(0)
    picks = sum(ch.num_chunks * TOPK.picks(ch) for ch in TOPK.chunkings())
    assert int(union.sum()) > 4 * picks and int(kept.sum()) <= picks


def one_group(n: int = 4) -> list[int]:
    """The order TwoLevel's first round puts n peers in: one group (n <= 4)."""
    peers = [f"peer{i:05d}" for i in range(n)]
    grid = place(peers, set(peers), f"{0:032x}{1:032x}")
    assert grid.n_groups == 1
    return [peers.index(p) for p in grid.groups[0]]


def test_one_group_with_nothing_dropped_is_the_all_gathers_rule():
    """Signs: the trimmed mean sorts, so any order gives the same bits; top-k: the all-gather's
    mean and vote, in the group's order (clip and cap off: v3 applies them per piece)."""
    order = one_group()
    updates = sign_updates(4, 6)
    for rule in (Robust(clip_multiple=0.0), Mean()):
        v3 = TwoLevel(rule, 0, chunks.wire_for(SIGNS, out_bits=RAW)).dense(updates)
        ref = rule.dense([updates[i] for i in order])
        assert all(torch.equal(a, b) for a, b in zip(v3, ref))
    sels = topk_selections(4, 6)
    for rule in (Robust(clip_multiple=0.0, value_cap=False), Mean()):
        v3 = TwoLevel(rule, 0, chunks.wire_for(TOPK, keep=4, out_bits=RAW)).sparse(TOPK, sels)
        ref = rule.sparse(TOPK, [sels[i] for i in order])
        assert all(torch.equal(a, b) for a, b in zip(v3, ref))
    # re-encoded at 1 bit, the aggregate is the all-gather's signs (the trimmed mean's) with one step a unit
    v3 = chunks.flat(TwoLevel(Robust(clip_multiple=0.0), 0, chunks.wire_for(SIGNS, out_bits=1)).dense(updates))
    ref = chunks.flat(Robust(clip_multiple=0.0).dense(updates))
    assert torch.equal(torch.sign(v3)[ref != 0], torch.sign(ref)[ref != 0])


def test_the_sparse_rule_caps_values_per_tensor_and_votes():
    wire = chunks.wire_for(TOPK)
    span = wire.spans(chunks.Span(0, wire.layout.total), 4)[0]
    pieces = [torch.zeros(span.size) for _ in range(3)]
    pieces[0][0], pieces[1][0], pieces[2][0] = 1.0, 1.0, -1.0  # two for +, one against
    pieces[2][1] = 1000.0  # one peer alone, far beyond the others: capped, then counted over all 3
    out = reduce_task(pieces, Robust(clip_multiple=0.0), wire, span)
    assert float(out[0]) == pytest.approx(2 / 3) and float(out[1]) == pytest.approx(1 / 3)


def test_take_back_returns_what_the_aggregate_dropped_to_the_error_buffer():
    strategy = make_strategy(StrategyConfig(name="sparseloco", inner_steps=1, topk=32, values="2bit"), list(SHAPES))
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s)) for s in SHAPES])
    state = SwarmState(round=0, names=[str(i) for i in range(len(SHAPES))], params=[torch.zeros(s) for s in SHAPES])
    worker = strategy.new_worker()
    payload = strategy.make_update(state, worker, model)
    before = [e.clone() for e in worker["error"]]
    sent = strategy.codec.decode(payload)
    applied = [torch.where(torch.rand(s.shape) < 0.5, s, 0.0) for s in sent]  # half the picks dropped
    strategy.take_back(worker, payload, applied)
    for e, b, s, a in zip(worker["error"], before, sent, applied):
        assert torch.equal(e, b + torch.where(a == 0, s, 0.0))


def test_diloco_take_back_keeps_what_was_sent_less_what_was_applied():
    """Averaged over the peers (the mean), the additions are the aggregate's rounding exactly."""
    cfg = StrategyConfig(name="diloco", inner_steps=1, wire_dtype="int1", wire_block=1024)
    strategy = make_strategy(cfg, list(SHAPES))
    state = SwarmState(round=0, names=[str(i) for i in range(len(SHAPES))], params=[torch.zeros(s) for s in SHAPES])
    workers, payloads = [], []
    for i in range(4):
        model = torch.nn.ParameterList([torch.nn.Parameter(t) for t in pseudo_gradients(4, 9)[i]])
        workers.append(strategy.new_worker())
        payloads.append(strategy.make_update(state, workers[-1], model))
    before = [[e.clone() for e in w["error"]] for w in workers]
    wire = chunks.wire_for(strategy.codec)
    applied = TwoLevel(Mean(), 0, wire).dense([strategy.codec.decode(p) for p in payloads])
    for w, p in zip(workers, payloads):
        strategy.take_back(w, p, applied)
    mean = Mean().dense([strategy.codec.decode(p) for p in payloads])
    for t in range(len(SHAPES)):
        added = torch.stack([w["error"][t] - b[t] for w, b in zip(workers, before)]).mean(0)
        assert torch.allclose(added, mean[t] - applied[t], atol=1e-6)
    plain = make_strategy(StrategyConfig(name="diloco", inner_steps=1, wire_dtype="int8"), list(SHAPES))
    plain.take_back(plain.new_worker(), b"", applied)  # no error buffer: nothing kept, nothing read
