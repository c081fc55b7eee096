"""`bench scale --tier wires`: v3 rounds on the 1-bit and top-k wires (node/scatter/chunks.py), bytes
per peer in units of one update as the strategy sends it in v2 (its codec's payload).

Updates are the pilot model's shapes (0.84M values), each a shared direction plus its own noise
(bench/scale/sim.py's), through the codec of issue 20's presets: diloco int1 (blocks of 1,024)
and sparseloco top-k (k = 32 of 64 x 64, 2-bit values). Each round runs through ScatterRound
(node/scatter/round.py: every owner audited, the same code as the int8 rows), and its aggregate
is compared with the all-gather's (Robust, the node's rule) of the same updates. The int8 wire's
row carries the same decoded updates as int8 chunks (what v3 did before these wires).
"""

from __future__ import annotations

import dataclasses

import torch

from bench.scale.sim import leader_of, make_updates, peer_ids, rel, round_of, traffic_stats
from node.config import ModelConfig
from node.outer.aggregate import Robust
from node.scatter import chunks
from node.scatter.round import ScatterRound
from node.train.model import build_model
from protocol.codecs import QuantCodec, TopKCodec

PILOT = ModelConfig(d_model=128, n_layer=4, n_head=4, ctx=128)


def shapes() -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(p.shape) for p in build_model(PILOT, 0).parameters())


def codec_of(kind: str):
    if kind == "sparse":
        return TopKCodec(shapes(), chunk=64, k=32, values="2bit")
    return QuantCodec(shapes(), bits=1, block=1024)


def wire_row(
    n: int, kind: str, *, out_bits: int = 0, keep: int = 0, mid: int = 0, int8: bool = False, seed: int = 0
) -> dict:
    """One honest round of n peers on the wire of `kind` ("sign" or "sparse"), or on int8 chunks."""
    codec = codec_of(kind)
    sizes = [tuple(s) for s in codec.shapes]
    total = sum(torch.Size(s).numel() for s in sizes)
    peers = peer_ids(n)
    raw = make_updates(peers, total, seed)
    if kind == "sparse":
        sels = {p: codec.unpack(codec.encode(chunks.unflat(u, sizes))) for p, u in raw.items()}
        updates = {p: chunks.sparse_flat(codec, s) for p, s in sels.items()}
        allgather = torch.cat([t.reshape(-1) for t in Robust().sparse(codec, list(sels.values()))])
        union = int(torch.stack(list(updates.values())).ne(0).any(0).sum())
    else:
        decoded = {p: codec.decode(codec.encode(chunks.unflat(u, sizes))) for p, u in raw.items()}
        updates = {p: chunks.flat(u) for p, u in decoded.items()}
        allgather, union = chunks.flat(Robust().dense(list(decoded.values()))), total
    wire = chunks.INT8 if int8 else chunks.wire_for(codec, out_bits=out_bits, keep=keep, mid=mid)
    keys, rnd = round_of(peers, total)
    rnd = dataclasses.replace(rnd, wire=wire)
    out = ScatterRound(rnd, updates, keys, leader_of(peers, 1)).run()
    final = out.final
    if kind == "sparse":  # the aggregate in the all-gather's layout (chunk order, flat)
        final = torch.cat([t.reshape(-1) for t in chunks.sparse_unflat(codec, final)])
    unit = codec.encoded_size()
    return {
        "peers": n,
        "wire": wire.name,
        "out_bits": getattr(wire, "out_bits", 8),
        "keep": getattr(wire, "keep", None),
        "mid": mid,
        "values": total,
        "update_bytes": unit,
        "groups": rnd.grid.n_groups,
        "chunks": rnd.grid.chunks,
        "per_peer_x_update": traffic_stats(out.traffic, peers, unit),
        "verify_all_x_update": n - 1,
        "phases": out.phases,
        "caught": len(out.caught),
        "aggregate_nonzero": int(final.ne(0).sum()),
        "allgather_nonzero": int(allgather.ne(0).sum()),
        "union_of_picks": union,
        "v3_vs_allgather_robust": rel(final, allgather),
        "cosine_to_allgather": round(float(torch.nn.functional.cosine_similarity(final, allgather, 0)), 4),
    }


def wire_rows(peers: tuple[int, ...], say=print) -> list[dict]:
    rows = []
    for n in peers:
        for kind, options in (
            ("sign", {"int8": True}),
            ("sign", {"out_bits": 1}),
            ("sign", {"out_bits": 1, "mid": 2}),
            ("sign", {"out_bits": 2}),
            ("sign", {"out_bits": 4}),
            ("sparse", {"keep": 1, "out_bits": 2}),
            ("sparse", {"keep": 2, "out_bits": 2}),
            ("sparse", {"keep": 4, "out_bits": 2}),
            ("sparse", {"keep": 1, "out_bits": 8}),
            ("sparse", {"keep": 2, "out_bits": 8}),
            ("sparse", {"keep": 4, "out_bits": 8}),
            ("sparse", {"keep": 8, "out_bits": 8}),
        ):
            say(f"scale: {n} peers, {kind} update, {options} ...")
            rows.append(wire_row(n, kind, **options) | {"update": kind})
    return rows


def wires_table(rows: list[dict]) -> str:
    lines = [
        "| peers | update (bytes) | wire | groups x chunks | down mean / max (x update) | up mean / max"
        " | aggregate non-zero / all-gather's / union | v3 vs all-gather robust (rel L2, cosine) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["per_peer_x_update"]
        mid = f" (level 1: {r['mid']})" if r.get("mid") else ""
        wire = (
            "int8 chunks"
            if r["wire"] == "int8"
            else f"{r['wire']}, "
            + (
                f"keep {r['keep']}, " + ("int8 values" if r["out_bits"] == 8 else f"{2 ** r['out_bits']}-value tables")
                if r["wire"] == "sparse"
                else f"{r['out_bits']}-bit aggregate"
            )
            + mid
        )
        lines.append(
            f"| {r['peers']} | {r['update']} ({r['update_bytes']:,}) | {wire} | {r['groups']} x {r['chunks']} "
            f"| {t['data_down']['mean']} / {t['data_down']['max']} | {t['data_up']['mean']} / {t['data_up']['max']} "
            f"| {r['aggregate_nonzero']:,} / {r['allgather_nonzero']:,} / {r['union_of_picks']:,} "
            f"| {r['v3_vs_allgather_robust']}, {r['cosine_to_allgather']} |"
        )
    return "\n".join(lines)
