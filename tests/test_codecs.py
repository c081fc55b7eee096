import hashlib
import math

import numpy as np
import pytest
import torch

from protocol.codecs import (
    FP16_MAX,
    MAX_ABS_VALUE,
    DenseCodec,
    Int8Codec,
    QuantCodec,
    TopKCodec,
    pack_indices,
    unpack_indices,
)
from protocol.errors import ProtocolError

SHAPES = ((128, 192), (64,), (3, 5), (7,))


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES]


CODECS = [
    DenseCodec(SHAPES, "float32"),
    DenseCodec(SHAPES, "float16"),
    Int8Codec(SHAPES, 256),
    TopKCodec(SHAPES, chunk=64, k=32, values="bf16"),
    TopKCodec(SHAPES, chunk=64, k=32, dct=True, values="bf16"),
    TopKCodec(SHAPES, chunk=64, k=16, values="2bit"),
    TopKCodec(SHAPES, chunk=64, k=8, dct=True, values="1bit"),
    TopKCodec(SHAPES, chunk=32, k=5, values="bf16", index_bits=16),
    TopKCodec(SHAPES, chunk=64, k=8, values="2bit", k_vector=64),
    QuantCodec(SHAPES, 1, 64, share=2),  # sub-1-bit: a sign per 2 and per 4 values
    QuantCodec(SHAPES, 1, 64, share=4),
]


def random_bytes_decode_safely(codec, trials: int) -> None:
    """Random payloads (mostly of the exact size): each raises ProtocolError or decodes to finite
    values within the bound, never anything else (the fuzz every codec's decode must pass)."""
    rng = np.random.default_rng(0)
    for trial in range(trials):
        size = codec.encoded_size() if trial % 4 else int(rng.integers(0, 2 * codec.encoded_size()))
        try:
            out = codec.decode(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        except ProtocolError:
            continue
        assert all(torch.isfinite(t).all() and float(t.abs().max()) <= MAX_ABS_VALUE for t in out)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_encoded_size_is_exact(codec):
    assert len(codec.encode(tensors())) == codec.encoded_size()


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_decode_shapes_and_finite(codec):
    out = codec.decode(codec.encode(tensors()))
    assert [tuple(t.shape) for t in out] == list(SHAPES) and all(torch.isfinite(t).all() for t in out)


# SHA-256 of each codec's bytes for one fixed seeded input: the wire format, pinned byte for byte
# (peers of different versions must agree on it; a refactor that changes one byte fails here)
PINNED = {
    "dense-float32": "b91738e9d33a2c8bf87666fbacbe7059acb761dd5bcc8e8bf043bcccea013342",
    "dense-float16": "3bc3133c822fdcf0399861180bab625472f7535b2a352350b40242e7d172fc3a",
    "int8-b256": "8631f2496e67a8916d21abf5aaa115a880e11eb2eccec3406fc1e75eeb4fb264",
    "int4-b64": "91ee88495d7c17bbdea488e4346411a121be66619d8cc499b1e9328d561f49ea",
    "int2-b64": "19e71f7c83bd06f1bd150e5baff024139477390d4f02b77ef48820827910e1de",
    "int1-b64": "611a01f52ef93d43014a7cb3b9f11a097f05f28021266fc5a6802545db8bb43f",
    "topk-c64-k32-bf16-i12": "088f28608ee37d5b1fc358521cac6bf201a0a2ffd18efd0f8315250a0187b3b6",
    "topk-c64-k32-dct-bf16-i12": "ddf1b38e90bbe4a792c66dd35c0b218e5ab31afd6c803237fadfa37af2a3a108",
    "topk-c64-k16-2bit-i12": "853dc02b865f597b752e21766b6127442909d63ecc102aceb693aa6b70a96000",
    "topk-c64-k8-dct-1bit-i12": "88e40b5a8a6fb296a74539c18301857ceaae86e2ff37984497797be902f78d3d",
    "topk-c32-k5-bf16-i16": "0d1304b5bffdadd8806eda5ba486f88148dade418cc0aa8e113678ec46f42d55",
    "topk-c64-k8-kv64-2bit-i12": "8c1b583367f5917eff23b649373149151da64f6ace21fbce5a7bd9c69b6f649f",
    "int1-s2-b64": "83b30609ca4b7b326d9332b6a0f0063af4dba88b9ef82dceb49469c1fd2e120c",
    "int1-s4-b64": "02c4a992c626051808185cb77b473cc48657627511556e21e4fc06f784f81ceb",
}
PINNED_CODECS = [*CODECS, QuantCodec(SHAPES, 4, 64), QuantCodec(SHAPES, 2, 64), QuantCodec(SHAPES, 1, 64)]


def test_every_codec_is_pinned():
    assert {c.name for c in PINNED_CODECS} == set(PINNED)


@pytest.mark.parametrize("codec", PINNED_CODECS, ids=lambda c: c.name)
def test_encoded_bytes_are_pinned(codec):
    g = torch.Generator().manual_seed(1234)
    ts = [torch.randn(s, generator=g) for s in SHAPES]
    assert hashlib.sha256(codec.encode(ts)).hexdigest() == PINNED[codec.name]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_wrong_length_is_refused(codec):
    blob = codec.encode(tensors())
    for bad in (blob[:-1], blob + b"\0", b""):
        with pytest.raises(ProtocolError, match="bytes, expected"):
            codec.decode(bad)


def test_dense_accuracy():
    ts = tensors()
    assert all(
        torch.equal(a, b)
        for a, b in zip(ts, DenseCodec(SHAPES, "float32").decode(DenseCodec(SHAPES, "float32").encode(ts)))
    )
    half = DenseCodec(SHAPES, "float16")
    assert all(torch.allclose(a, b, atol=2e-3, rtol=1e-3) for a, b in zip(ts, half.decode(half.encode(ts))))
    assert torch.isfinite(
        DenseCodec(((2,),), "float16").decode(DenseCodec(((2,),), "float16").encode([torch.tensor([1e6, -1e6])]))[0]
    ).all()


def test_int8_error_bounded_by_half_a_step():
    ts = tensors()
    codec = Int8Codec(SHAPES, 64)
    for a, b in zip(ts, codec.decode(codec.encode(ts))):
        assert (a - b).abs().max() <= a.abs().max() / 127 * 0.5 + 1e-6


def test_nonfinite_refused():
    codec = DenseCodec(((2,),), "float32")
    with pytest.raises(ProtocolError, match="NaN"):
        codec.decode(torch.tensor([1.0, math.nan]).numpy().tobytes())
    i8 = Int8Codec(((4,),), 4)
    blob = bytearray(i8.encode([torch.ones(4)]))
    blob[:4] = np.float32(np.inf).tobytes()
    with pytest.raises(ProtocolError, match="NaN or inf"):
        i8.decode(bytes(blob))


def test_topk_keeps_the_largest_and_is_exact_with_bf16_when_k_is_all():
    codec = TopKCodec(((64, 64),), chunk=64, k=4096, values="bf16")
    t = [torch.randn(64, 64)]
    assert torch.allclose(codec.decode(codec.encode(t))[0], t[0].bfloat16().float())
    sparse = TopKCodec(((8, 8),), chunk=8, k=3, values="bf16")
    x = torch.zeros(8, 8)
    x[1, 2], x[5, 5], x[7, 0], x[0, 0] = 5.0, -4.0, 3.0, 0.5
    out = sparse.decode(sparse.encode([x]))[0]
    assert out[1, 2] == 5.0 and out[5, 5] == -4.0 and out[7, 0] == 3.0 and out[0, 0] == 0.0


def test_topk_vector_sends_the_1d_tensors_denser_than_the_matrices():
    """Density per tensor kind: k_vector for norm gains and biases, k for the matrices."""
    plain, whole = (
        TopKCodec(SHAPES, chunk=64, k=4, values="bf16"),
        TopKCodec(SHAPES, chunk=64, k=4, values="bf16", k_vector=64),
    )
    t = tensors(3)
    out = whole.decode(whole.encode(t))
    assert torch.equal(out[1], t[1].bfloat16().float()) and torch.equal(out[3], t[3].bfloat16().float())
    assert torch.equal(out[0], plain.decode(plain.encode(t))[0])  # the matrix is cut as before
    assert (out[0] != 0).sum() == (128 // 64) * (192 // 64) * 4
    assert whole.encoded_size() > plain.encoded_size() and "kv64" in whole.name


def test_dct_is_orthonormal_and_invertible():
    codec = TopKCodec(((128, 64),), chunk=64, k=4096, dct=True, values="bf16")
    ch = codec.chunkings()[0]
    x = torch.randn(128, 64)
    c = ch.to_chunks(x)
    assert torch.allclose(c.norm(), x.norm(), rtol=1e-5)
    assert torch.allclose(ch.from_chunks(c), x, atol=1e-5)


def test_2bit_values_take_four_levels_and_1bit_two():
    two = TopKCodec(((64, 64),), chunk=64, k=256, values="2bit")
    out = two.decode(two.encode([torch.randn(64, 64)]))[0]
    assert len(torch.unique(out[out != 0])) <= 4
    one = TopKCodec(((64, 64),), chunk=64, k=256, values="1bit")
    out = one.decode(one.encode([torch.randn(64, 64)]))[0]
    assert len(torch.unique(out[out != 0])) == 2


@pytest.mark.parametrize("share", [2, 4])
def test_a_shared_sign_is_the_sign_of_the_run_sum_with_the_l2_best_step(share):
    codec = QuantCodec(SHAPES, 1, 64, share=share)
    ts = tensors(3)
    # an 8-byte flip seed, then per tensor of n values: a 4-byte step per block of 64, ceil(n / share) sign bits
    runs = [math.ceil(math.prod(s) / share) for s in SHAPES]
    steps = [math.ceil(math.prod(s) / 64) * 4 for s in SHAPES]
    assert codec.encoded_size() == 8 + sum(d + math.ceil(r / 8) for d, r in zip(steps, runs))
    blob = codec.encode(ts)
    flips = codec.flips(blob[:8])
    assert all(set(f.unique().tolist()) == {-1.0, 1.0} for f in flips[:2])
    for t, f, out in zip(ts, flips, codec.decode(blob)):
        flat, got = (t * f).reshape(-1), (out * f).reshape(-1)  # the runs are sums of the flipped values
        for b in range(0, flat.numel(), 64):  # each block: one magnitude, one sign per run
            x, y = flat[b : b + 64], got[b : b + 64]
            runs = [x[i : i + share] for i in range(0, x.numel(), share)]
            signs = torch.cat([torch.full((len(r),), 1.0 if float(r.sum()) >= 0 else -1.0) for r in runs])
            step = sum(float(r.sum().abs()) for r in runs) / x.numel()  # argmin_m |x - signs * m|
            assert torch.allclose(y, signs * step, rtol=1e-5, atol=1e-7)
    other = codec.encode(tensors(4))
    assert other[:8] != blob[:8] and codec.encode(ts) == blob  # a new input, a new pattern; the same, the same


def test_a_sign_per_value_is_the_int1_codec_unchanged():
    ts = tensors(5)
    assert QuantCodec(SHAPES, 1, 64, share=1).encode(ts) == QuantCodec(SHAPES, 1, 64).encode(ts)
    assert QuantCodec(SHAPES, 1, 64).name == "int1-b64"


def test_quantize_matches_what_receivers_decode():
    codec = TopKCodec(SHAPES, chunk=64, k=16, values="2bit")
    sel = codec.select(tensors())
    seen = codec.densify(codec.quantize(sel))
    got = codec.decode(codec.pack(sel))
    assert all(torch.equal(a, b) for a, b in zip(seen, got))


@pytest.mark.parametrize("bits,maximum", [(12, 4095), (16, 65535)])
def test_index_packing_roundtrip(bits, maximum):
    for m in (1, 2, 7, 1000):
        idx = torch.randint(0, maximum + 1, (m,))
        raw = pack_indices(idx, bits)
        assert len(raw) == (2 * m if bits == 16 else 3 * -(-m // 2))
        assert torch.equal(unpack_indices(raw, m, bits), idx)


def test_topk_rejects_out_of_range_and_repeated_indices():
    codec = TopKCodec(((8, 8),), chunk=8, k=2, values="bf16", index_bits=16)
    good = codec.encode([torch.randn(8, 8)])
    n_idx = 2 * 2 * 1  # one chunk, k=2, 2 bytes each
    out_of_range = bytearray(good)
    out_of_range[0:2] = (64).to_bytes(2, "little")
    with pytest.raises(ProtocolError, match="out of range"):
        codec.decode(bytes(out_of_range))
    repeated = bytearray(good)
    repeated[2:4] = repeated[0:2]
    with pytest.raises(ProtocolError, match="repeated"):
        codec.decode(bytes(repeated))
    assert len(good) == n_idx + 4


def test_bad_options():
    with pytest.raises(ValueError):
        TopKCodec(SHAPES, values="3bit")
    for bits, block, share in ((2, 64, 2), (1, 64, 3), (1, 64, 0)):  # a shared sign: 1 bit, runs that tile a block
        with pytest.raises(ValueError):
            QuantCodec(SHAPES, bits, block, share=share)
    with pytest.raises(ValueError):
        TopKCodec(SHAPES, chunk=128, index_bits=12)


# ------------------------------------------------------------- hardening: bounded after scaling
def test_huge_int8_scale_is_refused():
    i8 = Int8Codec(((4,),), 4)
    blob = bytearray(i8.encode([torch.tensor([1.0, -2.0, 3.0, 0.5])]))
    blob[:4] = np.float32(3e38).tobytes()
    with pytest.raises(ProtocolError, match="block scale .* beyond the bound"):
        i8.decode(bytes(blob))
    blob[:4] = np.float32(FP16_MAX / 127).tobytes()  # the largest an encoder writes: valid
    assert float(i8.decode(bytes(blob))[0].abs().max()) <= MAX_ABS_VALUE


@pytest.mark.parametrize("values,header", [("2bit", 16), ("1bit", 4)])
def test_huge_value_table_or_scale_is_refused(values, header):
    codec = TopKCodec(((8, 8),), chunk=8, k=4, values=values)
    blob = bytearray(codec.encode([torch.randn(8, 8)]))
    blob[:header] = np.full(header // 4, 3e38, np.float32).tobytes()
    with pytest.raises(ProtocolError, match="beyond the bound"):
        codec.decode(bytes(blob))
    blob[:header] = np.full(header // 4, np.nan, np.float32).tobytes()
    with pytest.raises(ProtocolError, match="NaN or inf"):
        codec.decode(bytes(blob))


def test_huge_bf16_and_fp32_values_are_refused_but_fp16_max_is_valid():
    bf = TopKCodec(((8, 8),), chunk=8, k=2, values="bf16", index_bits=16)
    blob = bytearray(bf.encode([torch.randn(8, 8)]))
    blob[4:6] = torch.tensor([3e38]).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    with pytest.raises(ProtocolError, match="beyond the bound"):
        bf.decode(bytes(blob))
    with pytest.raises(ProtocolError, match="beyond the bound"):
        DenseCodec(((2,),), "float32").decode(np.array([1.0, 1e30], np.float32).tobytes())
    half = DenseCodec(((3,),), "float16")
    assert half.decode(np.full(3, 65504, np.float16).tobytes())[0].tolist() == [65504.0] * 3


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_encoders_clamp_to_what_decoders_accept(codec):
    big = [t * 1e30 for t in tensors()]
    blob = codec.encode(big)  # an honest peer's own bytes are never refused
    # the bound is on wire values: top-k's (DCT) coefficients, before the inverse transform
    out = [s.val for s in codec.unpack(blob)] if isinstance(codec, TopKCodec) else codec.decode(blob)
    assert all(float(t.abs().max()) <= MAX_ABS_VALUE for t in out)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_random_bytes_raise_only_protocol_error(codec):
    rng = np.random.default_rng(0)
    for trial in range(40):
        size = codec.encoded_size() if trial % 4 else int(rng.integers(0, 2 * codec.encoded_size()))
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        try:
            out = codec.decode(data)
        except ProtocolError:
            continue
        assert all(torch.isfinite(t).all() for t in out)
