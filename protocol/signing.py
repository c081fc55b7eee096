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
"""
from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocol.errors import ProtocolError

DOMAIN = b"swarmtrain-signed-record-v1\x00"
MAX_KEY = 1024   # a 4096-bit RSA SPKI is ~550 bytes
MAX_SIG = 1024
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


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
    return private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(private_key: rsa.RSAPrivateKey, body: bytes, kind: str = "") -> dict:
    out = {"body": body, "key": public_der(private_key),
           "sig": private_key.sign(_signed_bytes(kind, body), _PSS, hashes.SHA256())}
    if kind:
        out["kind"] = kind
    return out


def verify(envelope: object, *, signer: str, max_body: int, kind: str = "") -> bytes:
    """The body, if `envelope` is well formed, of `kind`, and signed by the key behind peer id `signer`."""
    if not isinstance(envelope, dict):
        raise ProtocolError("signed record: expected a map")
    if envelope.get("kind", "") != kind:
        raise ProtocolError(f"signed record: a {str(envelope.get('kind', ''))[:20]!r} record where a "
                            f"{kind or 'metrics'} record was expected")
    body, key, sig = envelope.get("body"), envelope.get("key"), envelope.get("sig")
    if not (isinstance(body, bytes) and isinstance(key, bytes) and isinstance(sig, bytes)):
        raise ProtocolError("signed record: body, key and sig must be bytes")
    if len(body) > max_body or len(key) > MAX_KEY or len(sig) > MAX_SIG:
        raise ProtocolError("signed record: a field is too long")
    if peer_id_of(key) != signer:
        raise ProtocolError(f"signed record: the key is not the key of peer {signer[:16]}")
    try:
        public = serialization.load_der_public_key(key)
        if not isinstance(public, rsa.RSAPublicKey):
            raise ProtocolError("signed record: only RSA keys are accepted")
        public.verify(sig, _signed_bytes(kind, body), _PSS, hashes.SHA256())
    except InvalidSignature:
        raise ProtocolError(f"signed record: bad signature for peer {signer[:16]}") from None
    except ValueError as e:
        raise ProtocolError(f"signed record: unreadable key ({e})") from None
    return body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
