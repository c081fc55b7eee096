"""Bytes of an honest v3 round counted without computing it: the messages ScatterRound sends
(node/scatter/round.py), in the same pattern, with the sizes of real envelopes. It counts 10,000
peers in seconds; tests/test_scatter_round.py holds it equal to the simulated round."""

from __future__ import annotations

from bench.scale.keys import FastKeys
from node.scatter import chunks
from node.scatter.audit import inputs_root
from node.scatter.grid import AUDITORS, SPOT_BLOCKS, Grid, assign_auditors, audit_shares
from node.scatter.traffic import Traffic, size_of
from protocol.kinds.scatter import ChunkNote, Commitment, Receipt, bitmap, task_name


def envelope_sizes(grid: Grid, peer: str) -> tuple[int, int, int]:
    """(commitment, level-1 receipt, level-2 receipt) envelope bytes for this grid."""
    keys = FastKeys(peer)
    h = "0" * 64
    commit = Commitment(run="run", round=1, attempt=0, peer=peer, base=h, tokens=1, chunks=(h,) * grid.chunks)
    biggest = max(map(len, grid.groups))

    def receipt(level: int, inputs: int, outputs: int) -> int:
        r = Receipt(
            run="run",
            round=1,
            attempt=0,
            owner=peer,
            level=level,
            a=max(grid.n_groups, grid.chunks),
            b=max(grid.n_groups, grid.chunks),
            included=bitmap([True] * inputs),
            inputs_root=inputs_root([]),
            outputs=(h,) * outputs,
        )
        return size_of(keys.seal(r))

    return size_of(keys.seal(commit)), receipt(1, biggest, grid.n_groups), receipt(2, grid.n_groups, 1)


def note_size(peer: str) -> int:
    """A sender's signed note of one chunk (it travels with the chunk, beside the commitment)."""
    note = ChunkNote(run="run", round=1, attempt=0, peer=peer, chunk=0, digest="0" * 64)
    return size_of(FastKeys(peer).seal(note))


def spot(seed: str, name: str, auditors: int, span: chunks.Span, cover: int) -> list[tuple[float, int]]:
    """Per auditor of a task: the share of each input it fetches, and the path bytes with it (a
    spot audit, grid.SPOT_COVER; 0: the whole input, no paths), as Bus.fetch counts them."""
    if not cover:
        return [(1.0, 0)] * auditors
    blocks = [s for s in chunks.spans(span.size, SPOT_BLOCKS, span.start) if s.size]
    depth = 32 * max(1, (len(blocks) - 1).bit_length())
    shares = audit_shares(seed, name, auditors, len(blocks), cover)
    return [(sum(blocks[i].size for i in share) / span.size, len(share) * depth) for share in shares]


def count_round(
    grid: Grid, total: int, leader: str, auditors: int = AUDITORS, seed: str = "ab" * 32, cover: int = 0
) -> Traffic:
    """What an honest round moves (ScatterRound.run with every member sending and answering;
    `cover`: its first auditors spot-check, grid.SPOT_COVER)."""
    t = Traffic()
    commit, receipt1, receipt2 = envelope_sizes(grid, leader)
    note = note_size(leader)
    spans = chunks.spans(total, grid.chunks)
    parts = [chunks.spans(s.size, grid.n_groups, s.start) for s in spans]
    size = {s: chunks.encoded_size(s.size) for s in {*spans, *(p for ps in parts for p in ps)}}
    for g, group in enumerate(grid.groups):  # chunks to owners, receipts back, level-1 audits
        for j, span in enumerate(spans):
            owner = grid.owner_of(g, j)
            for p in group:
                t.send(p, owner, size[span], commit + note)
            for p in group:
                t.send(owner, p, 0, receipt1)
    names1 = {task_name((1, g, j)): grid.owner_of(g, j) for g in range(grid.n_groups) for j in range(grid.chunks)}
    fixed_list = 40 * len(names1) + 256  # the leader's fixed receipts and its unique signature, per level
    for p in grid.members():
        t.send(leader, p, 0, fixed_list)
    for task, chosen in assign_auditors(seed, names1, grid.members(), auditors).items():
        _, g, j = map(int, task.split("/"))
        for auditor, (part, paths) in zip(chosen, spot(seed, task, len(chosen), spans[j], cover)):
            for _input in grid.groups[g]:
                t.send(names1[task], auditor, round(size[spans[j]] * part), commit + paths)
    names2 = {}
    for j in range(grid.chunks):  # parts to level 2, receipts, level-2 audits
        column = grid.column(j)
        for k, part in enumerate(parts[j]):
            owner = names2[task_name((2, j, k))] = grid.column(j)[k]
            for src in column:
                t.send(src, owner, size[part], receipt1)
            for p in {*column, leader}:
                t.send(owner, p, 0, receipt2)
    for p in grid.members():
        t.send(leader, p, 0, fixed_list)
    for task, chosen in assign_auditors(seed, names2, grid.members(), auditors).items():
        _, j, k = map(int, task.split("/"))
        for auditor, (part, paths) in zip(chosen, spot(seed, task, len(chosen), parts[j][k], cover)):
            for _input in grid.column(j):
                t.send(names2[task], auditor, round(size[parts[j][k]] * part), receipt1 + paths)
    for p in grid.members():  # the gather: the roster's digests, then parts down column and group
        t.send(leader, p, 0, 32 * grid.chunks * grid.n_groups)
    for j in range(grid.chunks):
        for g, group in enumerate(grid.groups):
            forwarder = grid.owner_of(g, j)
            for k, part in enumerate(parts[j]):
                t.send(grid.column(j)[k], forwarder, size[part])
            whole = sum(size[p] for p in parts[j])
            for p in group:
                t.send(forwarder, p, whole)
    return t


def one_update(total: int, grid: Grid) -> int:
    """Bytes of one update as v3 sends it (its chunks)."""
    return sum(chunks.encoded_size(s.size) for s in chunks.spans(total, grid.chunks))
