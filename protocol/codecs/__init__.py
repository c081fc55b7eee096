"""Update codecs: a list of float tensors <-> bytes, with exact byte accounting.

Both sides know the tensor shapes (they come from the run manifest's model), so the wire
carries values (and indices) only, and every codec's `encoded_size()` is exact and fixed.
`decode` checks the byte count, index ranges, duplicate indices, and that every decoded value
(after its scale or table is applied) is finite and within +-MAX_ABS_VALUE; it raises
ProtocolError for anything else: a peer's payload never reaches a tensor unchecked.
Codecs only encode, decode and validate; combining several peers' updates is the aggregator's
job (node/outer/aggregate.py).

One module per family (their `name` is what envelopes carry):
  dense.py      dense-float32 / dense-float16
  blockwise.py  int8-b<B>, int4-b<B> / int2-b<B> / int1-b<B>
  topk.py       topk-c<C>-k<K>[-dct]-<V>-i<I> (chunking, DCT, selections)
  pieces.py     lowbit-<b> / sparse-<b>: round protocol v3's pieces of 1-bit and top-k updates
  lowrank.py    lowrank-r<R>-b<B> / lowrank1-r<R>-b<B> (PowerSGD: rank-r int8 or 1-bit factors
                of each matrix, the rest int1)
  bitpack.py    the bit layouts the low-bit codecs share
  bounds.py     what encoders clamp to and decoders accept
"""

from __future__ import annotations

from protocol.codecs.bitpack import pack_indices, unpack_indices
from protocol.codecs.blockwise import QUANT_OFFSET, Int8Codec, QuantCodec
from protocol.codecs.bounds import FP16_MAX, MAX_ABS_VALUE
from protocol.codecs.dense import DenseCodec
from protocol.codecs.lowrank import LowRankCodec
from protocol.codecs.topk import Chunking, Selection, TopKCodec, dct_matrix, largest_divisor

Codec = DenseCodec | Int8Codec | QuantCodec | TopKCodec | LowRankCodec

__all__ = [
    "FP16_MAX",
    "MAX_ABS_VALUE",
    "QUANT_OFFSET",
    "Chunking",
    "Codec",
    "DenseCodec",
    "Int8Codec",
    "LowRankCodec",
    "QuantCodec",
    "Selection",
    "TopKCodec",
    "dct_matrix",
    "largest_divisor",
    "pack_indices",
    "unpack_indices",
]
