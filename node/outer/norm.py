"""The L2 norm every peer computes alike: exact squares, summed along one fixed pairwise tree."""

from __future__ import annotations

import math

import torch

NORM_BLOCK = 1 << 16
"""Values a block of l2_norm's tree sums at once (a power of two: 512 KB of float64)."""


def l2_norm(tensors: list[torch.Tensor]) -> float:
    """L2 norm with the same bits on every machine, whatever its threads or vector width.

    Squares of fp32 values are exact in float64; they are then summed along a fixed pairwise
    tree, each level one elementwise add (exactly rounded, in no order but the tree's), rather
    than by a library reduction whose association depends on threads and SIMD width. The tree
    pairs neighbours over the values padded with zeros to a power of two, so each aligned block
    of NORM_BLOCK values is a subtree of its own: the blocks are summed one at a time (a float64
    copy of the whole update was 2-3 times its fp32 size at each round's end, bench footprint),
    then their sums along the rest of the tree. Same bits as the whole at once (tested).
    """
    flat = [t.detach().reshape(-1) for t in tensors]
    n = sum(t.numel() for t in flat)
    if n == 0:
        return 0.0  # an empty update has norm 0
    size = 1 << max(0, (n - 1).bit_length())
    block = min(size, NORM_BLOCK)
    sums, buf, filled = [], torch.zeros(block, dtype=torch.float64), 0
    for t in flat:
        at = 0
        while at < t.numel():
            take = min(block - filled, t.numel() - at)
            buf[filled : filled + take] = t[at : at + take]  # fp32 -> float64: exact
            filled, at = filled + take, at + take
            if filled == block:
                sums.append(_tree_sum(buf.square()))
                filled = 0
    if filled:  # the last block's tail and any blocks after it are the padding's zeros
        buf[filled:] = 0
        sums.append(_tree_sum(buf.square()))
    x = torch.cat([torch.cat(sums), torch.zeros(size // block - len(sums), dtype=torch.float64)])
    return math.sqrt(float(_tree_sum(x)[0]))


def _tree_sum(x: torch.Tensor) -> torch.Tensor:
    """The pairwise tree's root over a power-of-two count of values, as a 1-element tensor."""
    while x.numel() > 1:
        x = x[0::2] + x[1::2]
    return x
