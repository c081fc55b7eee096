"""The lowrank wires (protocol/codecs/lowrank.py): exact size, round trip, refusal of malformed
payloads, bit-identical decoding whatever the thread count, and error feedback through them."""

import hashlib

import numpy as np
import pytest
import torch

from protocol.codecs import MAX_ABS_VALUE, LowRankCodec, QuantCodec
from protocol.errors import ProtocolError
from tests.test_codecs import random_bytes_decode_safely

# two factored matrices, a 1-D tensor, and a matrix too small to gain from rank 4 (4 (3 + 5) > 15)
SHAPES = ((128, 192), (64,), (3, 5), (48, 32), (7,))
CODEC = LowRankCodec(SHAPES, rank=4, block=64)
CODECS = [CODEC, LowRankCodec(SHAPES, rank=4, block=64, bits=1)]


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES]


def low_rank_target(seed=0, rank=4):
    """Matrices of rank `rank` (A B^T, scaled like a pseudo-gradient), random vectors."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in SHAPES:
        if CODEC.factored(s):
            out.append(torch.randn(s[0], rank, generator=g) @ torch.randn(rank, s[1], generator=g) * 1e-3)
        else:
            out.append(torch.randn(s, generator=g) * 1e-3)
    return out


def rel(a, b):
    """|a - b| / |b| over lists of tensors."""
    return float(sum((x - y).norm() ** 2 for x, y in zip(a, b)).sqrt() / sum(y.norm() ** 2 for y in b).sqrt())


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_size_is_exact_and_counts_factors_scales_and_the_int1_rest(codec):
    assert [codec.factored(s) for s in SHAPES] == [True, False, False, True, False]
    rest = QuantCodec(((64,), (3, 5), (7,)), bits=1, block=64).encoded_size()
    # per factor: r fp32 scales + r columns of codes (8 bits, or 1 bit padded to a byte per column)
    column = (lambda rows: rows) if codec.bits == 8 else (lambda rows: -(-rows // 8))
    assert codec.encoded_size() == sum(4 * (4 + column(rows)) for s in ((128, 192), (48, 32)) for rows in s) + rest
    assert len(codec.encode(tensors())) == codec.encoded_size()
    assert [c.name for c in CODECS] == ["lowrank-r4-b64", "lowrank1-r4-b64"]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_round_trip_matrices_as_factors_and_the_rest_as_int1(codec):
    x = low_rank_target()
    out = codec.decode(codec.encode(x))
    assert [tuple(t.shape) for t in out] == list(SHAPES)
    for t, o, s in zip(x, out, SHAPES):
        if codec.factored(s):
            # one power iteration finds a rank-r matrix exactly: int8 factors leave ~1%; signs keep
            # 2/pi of each factor's energy
            assert float((t - o).norm() / t.norm()) < (0.02 if codec.bits == 8 else 0.9)
    rest = [t for t, s in zip(x, SHAPES) if not codec.factored(s)]
    dense = codec.dense.decode(codec.dense.encode(rest))
    assert all(torch.equal(a, b) for a, b in zip(dense, [o for o, s in zip(out, SHAPES) if not codec.factored(s)]))


def test_bytes_are_pinned():
    """The layout, byte for byte, from fixed factors (pack is elementwise: the same on every machine)."""
    g = torch.Generator().manual_seed(1234)
    x = [torch.randn(s, generator=g) for s in SHAPES]
    factors = [(torch.randn(s[0], 4, generator=g), torch.randn(s[1], 4, generator=g)) for s in SHAPES if len(s) == 2]
    digests = [hashlib.sha256(c.pack([factors[0], factors[2]], x)).hexdigest() for c in CODECS]
    assert digests == [
        "20bc08fe5ca46db6fbd777bbee2df7ccdd1b634872c9c7b8bbb2cc21283cfc28",
        "6ab079950daa5c0cf5d15f9dd0f99ab72f7058f5a58db56c4a3c22196a4197c9",
    ]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_decode_is_the_same_bits_whatever_the_thread_count(codec):
    blob = codec.encode(tensors(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = codec.decode(blob)
        torch.set_num_threads(2)
        two = codec.decode(blob)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_the_decoded_product_is_p_q_transposed():
    p, q = CODEC.factorize(tensors(3))[0][0]
    assert rel([CODEC.decode(CODEC.encode(tensors(3)))[0]], [p @ q.t()]) < 0.02  # (int8 rounding)


def feedback(codec, g, rounds):
    """Send e = e + g, keep e - decode(sent), with the warm start: (the last round's sent, the
    buffer, the sum of what was sent)."""
    error, warm, total = [torch.zeros(s) for s in SHAPES], None, [torch.zeros(s) for s in SHAPES]
    for _ in range(rounds):
        error = [e + t for e, t in zip(error, g)]
        factors, warm = codec.factorize(error, warm)
        sent = codec.decode(codec.pack(factors, error))
        error = [e - s for e, s in zip(error, sent)]
        total = [t + s for t, s in zip(total, sent)]
    return sent, error, total


def test_error_feedback_converges_on_a_fixed_low_rank_target():
    g = low_rank_target(1)
    sent, error, total = feedback(CODEC, g, 20)
    mats = [i for i, s in enumerate(SHAPES) if CODEC.factored(s)]
    # the last round sends the target itself, up to the int8 rounding of two rounds' factors, and
    # the buffer holds one round's rounding: nothing piles up
    assert rel([sent[i] for i in mats], [g[i] for i in mats]) < 0.03
    assert all(float(error[i].norm() / g[i].norm()) < 0.02 for i in mats)
    assert rel([t / 20 for t in total], g) < 0.1  # all tensors: error feedback delivers what was left out


def test_one_bit_factors_leave_a_full_rank_residual_that_piles_up():
    """Where int8 factors are needed (a rank far below the matrix's sides): the rounding of a
    sign-quantised factor is not low-rank, so rank-4 factors of the buffer do not carry it, and at
    rank 4 of 128 x 192 it grows round after round (error feedback still delivers the target,
    slowly)."""
    g = low_rank_target(1)
    _, error, total = feedback(CODECS[1], g, 40)
    assert float(error[0].norm() / g[0].norm()) > 5  # int8 factors: 0.01
    assert 0.2 < rel([total[0] / 40], [g[0]]) < 0.5  # int8 factors: < 0.01


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_malformed_payloads_are_refused(codec):
    blob = codec.encode(tensors())
    for bad in (blob[:-1], blob + b"\0", b""):
        with pytest.raises(ProtocolError, match="bytes, expected"):
            codec.decode(bad)
    r, m = 4, 128
    p_codes = r * (m if codec.bits == 8 else m // 8)
    q_scales = 4 * r + p_codes  # Q's scales follow P's scales and codes

    def patched(at, value):
        b = bytearray(blob)
        b[at : at + len(value)] = value
        return bytes(b)

    for at in (0, q_scales):
        for value, match in ((np.nan, "NaN or inf"), (np.inf, "NaN or inf"), (3e38, "beyond the bound")):
            with pytest.raises(ProtocolError, match=match):
                codec.decode(patched(at, np.float32(value).tobytes()))
    # each factor within its bound, their product not: refused after reconstruction
    top = MAX_ABS_VALUE / (127 if codec.bits == 8 else 0.5)
    big = bytearray(patched(0, np.full(r, top, np.float32).tobytes()))
    big[q_scales : q_scales + 4 * r] = np.full(r, top, np.float32).tobytes()
    big[4 * r : 4 * r + p_codes] = bytes([127 if codec.bits == 8 else 255]) * p_codes
    with pytest.raises(ProtocolError, match="beyond the bound"):
        codec.decode(bytes(big))
    if codec.bits == 8:
        with pytest.raises(ProtocolError, match="-128"):
            codec.decode(patched(4 * r, b"\x80"))  # int8 -128: no encoder writes it
    # the int1 part is checked as the int1 codec checks it
    with pytest.raises(ProtocolError, match="NaN or inf"):
        codec.decode(patched(codec.encoded_size() - codec.dense.encoded_size(), np.float32(np.nan).tobytes()))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_encoder_stays_inside_what_decoders_accept(codec):
    out = codec.decode(codec.encode([t * 1e30 for t in tensors()]))  # an honest peer's own bytes are never refused
    assert all(float(t.abs().max()) <= MAX_ABS_VALUE for t in out)
    zero = codec.decode(codec.encode([torch.zeros(s) for s in SHAPES]))
    assert all(not t.any() for t in zero)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_random_bytes_raise_only_protocol_error(codec):
    random_bytes_decode_safely(codec, 40)


def test_bad_options():
    for rank, block, bits in ((0, 64, 8), (4, 0, 8), (4, 64, 4)):
        with pytest.raises(ValueError):
            LowRankCodec(SHAPES, rank=rank, block=block, bits=bits)
    # factored while r (m + n) < m n: 19 x 80 = 1,520 < 1,536 = 48 x 32 <= 20 x 80
    assert LowRankCodec(SHAPES, rank=19).factored((48, 32)) and not LowRankCodec(SHAPES, rank=20).factored((48, 32))
