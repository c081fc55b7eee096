"""Signed DHT records: a body, the signer's public key, and a signature binding them.

A peer's id is the multihash of its libp2p public key, so a record signed with the key
behind the peer id can only have been written by that peer. We sign with the node's own
libp2p identity (an RSA key in hivemind), not a second key, so a verified record is
tied to the peer id other peers see in heartbeats and rosters.

Envelope on the wire (msgpack map):
    {"body": bytes, "key": DER SubjectPublicKeyInfo of the RSA key, "sig": RSA-PSS-SHA256 signature,
     "kind": record kind (absent for metrics records, the first signed kind)}
The signed bytes are DOMAIN + kind + NUL + body (DOMAIN + body without a kind), so a signature
cannot be replayed as another kind of record.

Checking a record must cost a bounded, small amount whoever wrote it: every peer re-reads the
peer table and each roster several times a second, and anyone may mint keys. So only the key
shape hivemind gives every identity is accepted, the cheap checks run before the costly ones,
and an envelope already verified is remembered (by hash) instead of being verified again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocol.errors import ProtocolError

DOMAIN = b"swarmtrain-signed-record-v1\x00"
# hivemind makes every identity with rsa.generate_private_key(public_exponent=65537, key_size=2048)
# (hivemind/utils/crypto.py, RSAPrivateKey), so honest peers never use anything else. Verifying costs
# grow with the exponent's length and the modulus's: a Sybil's key with a ~3,070-bit exponent made
# each check ~50 times dearer (~5 ms), so any other shape is refused before the signature is looked at.
PUBLIC_EXPONENT = 65537
MODULUS_BITS = 2048
MAX_KEY = 294  # bytes: the DER SubjectPublicKeyInfo of a 2048-bit key with exponent 65537 is exactly this
MAX_SIG = 256  # bytes: an RSA signature is as long as the modulus
# Envelopes remembered as verified: the peer table plus the rosters and announcements of a few rounds
# of a run with hundreds of peers, re-read on every poll. An entry is a 32-byte digest (~150 bytes
# with the map's overhead), so a full cache is well under a megabyte.
CACHE_ENTRIES = 4096
# Envelopes remembered as refused, in their own map so that a flood of junk cannot push
# verified entries out; a hostile peer's bad record is then not re-verified on every poll either.
REJECTED_ENTRIES = 1024
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class CacheInfo(NamedTuple):
    hits: int
    """Checks answered from the cache, without RSA math (refusals included)."""
    verifications: int
    """RSA signature checks done."""
    verified: int
    """Envelopes now remembered as verified (at most CACHE_ENTRIES)."""
    rejected: int
    """Envelopes now remembered as refused (at most REJECTED_ENTRIES)."""


class _Cache:
    """Digest of an envelope -> None (verified) or the refusal's message; two bounded LRU maps under
    one lock. The lock is never held during RSA math, so validators and the main loop do not queue
    behind each other; two threads racing on one new envelope both verify it, which is harmless."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.verified: OrderedDict[bytes, None] = OrderedDict()
        self.rejected: OrderedDict[bytes, str] = OrderedDict()
        self.hits = self.verifications = 0

    def lookup(self, digest: bytes) -> tuple[bool, str | None]:
        """(found, refusal message or None when verified)."""
        with self.lock:
            for table in (self.verified, self.rejected):
                if digest in table:
                    table.move_to_end(digest)
                    self.hits += 1
                    return True, table[digest]
            return False, None

    def remember(self, digest: bytes, refusal: str | None) -> None:
        with self.lock:
            table, bound = (self.verified, CACHE_ENTRIES) if refusal is None else (self.rejected, REJECTED_ENTRIES)
            table[digest] = refusal
            table.move_to_end(digest)
            while len(table) > bound:
                table.popitem(last=False)

    def counted_verification(self) -> None:
        with self.lock:
            self.verifications += 1


_CACHE = _Cache()


def cache_info() -> CacheInfo:
    with _CACHE.lock:
        return CacheInfo(_CACHE.hits, _CACHE.verifications, len(_CACHE.verified), len(_CACHE.rejected))


def clear_cache() -> None:
    """Forget every remembered envelope and zero the counters."""
    with _CACHE.lock:
        _CACHE.verified.clear()
        _CACHE.rejected.clear()
        _CACHE.hits = _CACHE.verifications = 0


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def peer_id_of(public_der: bytes) -> str:
    """libp2p peer id of an RSA key: base58(multihash sha2-256(protobuf PublicKey{type RSA, data DER}))."""
    proto = b"\x08\x00\x12" + _varint(len(public_der)) + public_der  # KeyType RSA = 0, field 2 = data
    return b58encode(b"\x12\x20" + hashlib.sha256(proto).digest())


def _signed_bytes(kind: str, body: bytes) -> bytes:
    return DOMAIN + (kind.encode() + b"\0" if kind else b"") + body


def public_der(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_public_key(public: object) -> None:
    """Raises ProtocolError unless `public` has the one key shape accepted (hivemind's: RSA,
    PUBLIC_EXPONENT, MODULUS_BITS). A node can call it on its own identity to fail early."""
    if not isinstance(public, rsa.RSAPublicKey):
        raise ProtocolError("signed record: only RSA keys are accepted")
    if public.key_size != MODULUS_BITS:
        raise ProtocolError(
            f"signed record: a {public.key_size}-bit RSA key; only {MODULUS_BITS}-bit keys "
            "(hivemind's identities) are accepted"
        )
    exponent = public.public_numbers().e
    if exponent != PUBLIC_EXPONENT:
        raise ProtocolError(
            f"signed record: RSA public exponent {str(exponent)[:20]} "
            f"({exponent.bit_length()} bits); only {PUBLIC_EXPONENT} is accepted"
        )


def sign(private_key: rsa.RSAPrivateKey, body: bytes, kind: str = "") -> dict:
    out = {
        "body": body,
        "key": public_der(private_key),
        "sig": private_key.sign(_signed_bytes(kind, body), _PSS, hashes.SHA256()),
    }
    if kind:
        out["kind"] = kind
    return out


def verify(envelope: object, *, signer: str, max_body: int, kind: str = "") -> bytes:
    """The body, if `envelope` is well formed, of `kind`, and signed by the key behind peer id `signer`.

    Cheapest checks first: types and lengths; then the cache, whose digest covers `signer` too (the
    same envelope presented under another peer's name is not a hit); then the key's hash against
    `signer`, parsing the key, its parameters, and last the signature."""
    body, key, sig = _fields(envelope, kind, max_body)
    if not isinstance(signer, str):
        raise ProtocolError("signed record: the signer must be a peer id")
    digest = _digest(kind, body, key, sig, signer)
    found, refusal = _CACHE.lookup(digest)
    if not found:
        if peer_id_of(key) != signer:  # not remembered: a SHA-256 and base58, cheap
            raise ProtocolError(f"signed record: the key is not the key of peer {signer[:16]}")
        refusal = _check_signature(kind, body, key, sig, signer)
        _CACHE.remember(digest, refusal)
    if refusal is not None:
        raise ProtocolError(refusal)
    return body


def _fields(envelope: object, kind: str, max_body: int) -> tuple[bytes, bytes, bytes]:
    """(body, key, sig) of an envelope of `kind` whose fields are bytes of allowed lengths."""
    if not isinstance(envelope, dict):
        raise ProtocolError("signed record: expected a map")
    if envelope.get("kind", "") != kind:
        raise ProtocolError(
            f"signed record: a {str(envelope.get('kind', ''))[:20]!r} record where a "
            f"{kind or 'metrics'} record was expected"
        )
    body, key, sig = envelope.get("body"), envelope.get("key"), envelope.get("sig")
    if not (isinstance(body, bytes) and isinstance(key, bytes) and isinstance(sig, bytes)):
        raise ProtocolError("signed record: body, key and sig must be bytes")
    if len(body) > max_body:
        raise ProtocolError(f"signed record: body of {len(body)} bytes is longer than {max_body}")
    if len(key) > MAX_KEY or len(sig) > MAX_SIG:
        raise ProtocolError(
            f"signed record: a key of {len(key)} bytes or signature of {len(sig)} is longer "
            f"than a {MODULUS_BITS}-bit RSA key's ({MAX_KEY}, {MAX_SIG})"
        )
    return body, key, sig


def _digest(kind: str, body: bytes, key: bytes, sig: bytes, signer: str) -> bytes:
    """SHA-256 over the length-prefixed fields, so no two envelopes share a digest by shifting bytes."""
    h = hashlib.sha256()
    for part in (kind.encode(), body, key, sig, signer.encode()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _check_signature(kind: str, body: bytes, key: bytes, sig: bytes, signer: str) -> str | None:
    """None if `sig` is a good signature of `key` (the key of peer `signer`) over (kind, body), else
    why not. Parsing and the key's parameters come before any signature math."""
    try:
        public = serialization.load_der_public_key(key)
        check_public_key(public)
        _CACHE.counted_verification()
        public.verify(sig, _signed_bytes(kind, body), _PSS, hashes.SHA256())
    except ProtocolError as e:
        return str(e)
    except InvalidSignature:
        return f"signed record: bad signature for peer {signer[:16]}"
    except (ValueError, UnsupportedAlgorithm) as e:  # the latter: a key of an algorithm OpenSSL lacks
        return f"signed record: unreadable key ({str(e)[:80]})"
    return None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ------------------------------------------------------------------------- unique signatures
# A value every peer must derive from a signer's key, such as the leader's beacon reveal
# (node/round/election.py), must have exactly one valid signature, or its signer could draw
# signatures until one suits it. RSA-PSS (envelopes above) draws a fresh salt per signature:
# ~2,300 valid signatures of one message per second per core. PKCS#1 v1.5 padding is a fixed
# function of the message, and s = m^d mod n is the only root below n of an honest key, so
# one key has one signature per message (RFC 9381's RSA-FDH-VRF idea).
UNIQUE_KIND = "\0unique"  # the cache digest's kind: no envelope kind starts with NUL


def sign_unique(private_key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """The one signature of `message` under this key (PKCS#1 v1.5, SHA-256): the same bytes every time."""
    return private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def verify_unique(sig: object, message: bytes, public_der: object) -> None:
    """Raises ProtocolError unless `sig` is the PKCS#1 v1.5 SHA-256 signature of `message` by the
    key `public_der`, a key of the one accepted shape (check_public_key, checked before any RSA
    math). A signature is exactly MODULUS_BITS / 8 bytes, and OpenSSL refuses a value >= n, so
    `sig` + n is not a second valid signature. Results are cached like envelopes'."""
    if not isinstance(sig, bytes) or not isinstance(public_der, bytes) or not isinstance(message, bytes):
        raise ProtocolError("unique signature: signature, message and key must be bytes")
    if len(sig) != MAX_SIG or len(public_der) > MAX_KEY:
        raise ProtocolError(f"unique signature: a signature of {len(sig)} bytes or key of {len(public_der)}")
    digest = _digest(UNIQUE_KIND, message, public_der, sig, "")
    found, refusal = _CACHE.lookup(digest)
    if not found:
        refusal = _check_unique(message, public_der, sig)
        _CACHE.remember(digest, refusal)
    if refusal is not None:
        raise ProtocolError(refusal)


def _check_unique(message: bytes, public_der: bytes, sig: bytes) -> str | None:
    try:
        public = serialization.load_der_public_key(public_der)
        check_public_key(public)
        _CACHE.counted_verification()
        public.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    except ProtocolError as e:
        return str(e)
    except InvalidSignature:
        return "unique signature: not the key's signature of this message"
    except (ValueError, UnsupportedAlgorithm) as e:
        return f"unique signature: unreadable key ({str(e)[:80]})"
    return None
