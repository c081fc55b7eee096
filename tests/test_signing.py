"""Checking a signed record costs little whoever made it: one key shape, cheap checks first, a cache."""

import secrets
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from protocol import signing
from protocol.errors import ProtocolError

FAKE_SIG = b"\x01" * signing.MAX_SIG  # refused keys must be refused before this is ever checked


@pytest.fixture(autouse=True)
def fresh_cache():
    signing.clear_cache()
    yield
    signing.clear_cache()


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=signing.PUBLIC_EXPONENT, key_size=signing.MODULUS_BITS)


def peer_of(private_or_der) -> str:
    der = private_or_der if isinstance(private_or_der, bytes) else signing.public_der(private_or_der)
    return signing.peer_id_of(der)


def spki(public) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fake_key(exponent: int, bits: int) -> bytes:
    """A public key of any shape (no private key behind it), as a Sybil may publish one."""
    n = (1 << (bits - 1)) | secrets.randbits(bits - 1) | 1
    return spki(rsa.RSAPublicNumbers(exponent, n).public_key())


def refused(envelope, signer, match, kind=""):
    before = signing.cache_info().verifications
    with pytest.raises(ProtocolError, match=match):
        signing.verify(envelope, signer=signer, max_body=1024, kind=kind)
    assert signing.cache_info().verifications == before, "refused only after RSA math"


# ---------------------------------------------------------------------------- key shape
def test_accepted_shape_fits_the_length_caps(key):
    """hivemind's identity shape (tests/test_telemetry.py verifies a real hivemind identity file's record)."""
    assert len(signing.public_der(key)) == signing.MAX_KEY
    assert len(signing.sign(key, b"x")["sig"]) == signing.MAX_SIG
    assert (
        signing.verify(signing.sign(key, b"x", "heartbeat"), signer=peer_of(key), max_body=8, kind="heartbeat") == b"x"
    )


def test_small_exponent_is_refused_before_the_signature():
    weak = rsa.generate_private_key(public_exponent=3, key_size=signing.MODULUS_BITS)
    refused(signing.sign(weak, b"x"), peer_of(weak), "exponent 3 ")


@pytest.mark.parametrize("exponent", [17, 65539, 0x7FFFFF])  # 3 bytes at most, as 65537
def test_other_exponents_of_a_fitting_length_are_refused(exponent):
    der = fake_key(exponent, signing.MODULUS_BITS)
    assert len(der) <= signing.MAX_KEY
    refused({"body": b"x", "key": der, "sig": FAKE_SIG}, peer_of(der), "only 65537")


def test_huge_exponent_of_the_measured_attack_is_refused():
    """~3,070-bit exponent: verifying it was ~1,000 times dearer than a hivemind key."""
    der = fake_key((1 << 3069) | 1, 3072)
    refused({"body": b"x", "key": der, "sig": FAKE_SIG}, peer_of(der), "key of 805 bytes")


def test_smaller_modulus_is_refused_even_well_signed():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    refused(signing.sign(small, b"x"), peer_of(small), "1024-bit RSA key")


@pytest.mark.parametrize("bits", [2047, 2049, 4096])
def test_other_modulus_sizes_are_refused(bits):
    der = fake_key(65537, bits)
    match = f"{bits}-bit RSA key" if len(der) <= signing.MAX_KEY else "longer than a 2048-bit"
    refused({"body": b"x", "key": der, "sig": FAKE_SIG}, peer_of(der), match)


def test_non_rsa_and_unknown_algorithms_are_refused():
    der = spki(ec.generate_private_key(ec.SECP256R1()).public_key())
    refused({"body": b"x", "key": der, "sig": FAKE_SIG}, peer_of(der), "only RSA")
    unknown = der.replace(bytes.fromhex("2a8648ce3d030107"), bytes.fromhex("2a8648ce3d030109"))
    refused({"body": b"x", "key": unknown, "sig": FAKE_SIG}, peer_of(unknown), "unreadable key")


def test_key_of_another_peer_is_refused_before_parsing(key):
    refused({"body": b"x", "key": b"\x30" * 10, "sig": FAKE_SIG}, peer_of(key), "not the key of peer")


# -------------------------------------------------------------------------------- cache
def test_cache_hit_skips_rsa(key):
    env, peer = signing.sign(key, b"hello", "roster"), peer_of(key)
    for _ in range(5):
        assert signing.verify(env, signer=peer, max_body=8, kind="roster") == b"hello"
    info = signing.cache_info()
    assert (info.verifications, info.hits, info.verified) == (1, 4, 1)


def test_bad_signature_is_never_cached_as_good(key):
    env, peer = signing.sign(key, b"hello"), peer_of(key)
    forged = {**env, "body": b"hellO"}
    for _ in range(3):
        with pytest.raises(ProtocolError, match="bad signature"):
            signing.verify(forged, signer=peer, max_body=8)
    assert signing.verify(env, signer=peer, max_body=8) == b"hello"
    info = signing.cache_info()
    assert (info.verifications, info.verified, info.rejected) == (2, 1, 1)  # the refusal is remembered too


def test_cached_envelope_under_another_signer_is_refused(key):
    env = signing.sign(key, b"hello", "heartbeat")
    signing.verify(env, signer=peer_of(key), max_body=8, kind="heartbeat")
    other = peer_of(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ProtocolError, match="not the key of peer"):
        signing.verify(env, signer=other, max_body=8, kind="heartbeat")


def test_cached_envelope_is_rechecked_for_kind_and_length(key):
    env, peer = signing.sign(key, b"hello", "heartbeat"), peer_of(key)
    signing.verify(env, signer=peer, max_body=8, kind="heartbeat")
    with pytest.raises(ProtocolError, match="record was expected"):
        signing.verify(env, signer=peer, max_body=8, kind="announcement")
    with pytest.raises(ProtocolError, match="longer than 4"):
        signing.verify(env, signer=peer, max_body=4, kind="heartbeat")


def test_same_body_and_key_as_another_kind_is_not_a_hit(key):
    """The digest covers the kind, so an envelope relabelled as another kind is verified afresh (and fails)."""
    env, peer = signing.sign(key, b"hello", "heartbeat"), peer_of(key)
    signing.verify(env, signer=peer, max_body=8, kind="heartbeat")
    with pytest.raises(ProtocolError, match="bad signature"):
        signing.verify({**env, "kind": "roster"}, signer=peer, max_body=8, kind="roster")
    assert signing.cache_info().verifications == 2


def test_cache_stays_bounded(monkeypatch):
    """10,000 distinct envelopes, a quarter good and the rest forged; each map keeps only its bound."""
    monkeypatch.setattr(signing, "MODULUS_BITS", 1024)  # a small key keeps the signing quick
    monkeypatch.setattr(signing, "CACHE_ENTRIES", 50)
    monkeypatch.setattr(signing, "REJECTED_ENTRIES", 20)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    peer = peer_of(small)
    for i in range(2_500):
        body = i.to_bytes(4, "big")
        env = signing.sign(small, body)
        assert signing.verify(env, signer=peer, max_body=8) == body
        for forged in range(3):
            with pytest.raises(ProtocolError, match="bad signature"):
                signing.verify({**env, "body": bytes([forged]) + body}, signer=peer, max_body=8)
        info = signing.cache_info()
        assert info.verified <= 50 and info.rejected <= 20
    assert (info.verified, info.rejected, info.verifications) == (50, 20, 10_000)
    assert signing.verify(env, signer=peer, max_body=8) == body  # the latest is still held
    assert signing.cache_info().verifications == 10_000


def test_cache_is_safe_across_threads(key):
    envs = [signing.sign(key, bytes([i])) for i in range(40)]
    peer, errors = peer_of(key), []

    def reader():
        try:
            for _ in range(20):
                for e in envs:
                    assert signing.verify(e, signer=peer, max_body=8) == e["body"]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = signing.cache_info()
    assert info.verified == 40 and 40 <= info.verifications <= 160 and info.hits + info.verifications == 3200


def test_cold_vs_warm_measurement(key):
    """Printed, not asserted: what the cache saves on a poll that re-reads 1,000 signed records."""
    peer = peer_of(key)
    envs = [signing.sign(key, i.to_bytes(4, "big"), "announcement") for i in range(1000)]
    timings = []
    for _ in range(2):
        t = time.perf_counter()
        for e in envs:
            signing.verify(e, signer=peer, max_body=8, kind="announcement")
        timings.append(time.perf_counter() - t)
    print(
        f"\nverify 1,000 distinct envelopes ({signing.MODULUS_BITS}-bit keys): "
        f"cold {timings[0] * 1e3:.1f} ms, warm {timings[1] * 1e3:.1f} ms "
        f"({timings[0] / timings[1]:.0f}x); {signing.cache_info()}"
    )
    assert signing.cache_info().verifications == 1000
