"""This node's libp2p identity: the key file that fixes its peer id and signs every record it writes.

hivemind creates the file on first start (a libp2p PrivateKey protobuf around an RSA key); the
same key signs heartbeats, announcements, rosters, manifests and metrics records
(protocol/signing.py), so a verified record is one from the peer id it is filed under.
"""

from __future__ import annotations

import os
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from node.config import NodeConfig
from node.errors import SwarmtrainError
from protocol import signing
from protocol.errors import ProtocolError


def identity_path(cfg: NodeConfig) -> str:
    """The key file of this node (--identity, else <data_dir>/identity.key), its directory created
    so that hivemind can write a new key there on first start."""
    identity = cfg.identity or os.path.join(cfg.data_dir, "identity.key")
    writable_dir(cfg.data_dir)  # checkpoints, ledgers and bootstrap.json go there too
    writable_dir(os.path.dirname(os.path.abspath(identity)), "--identity")
    return identity


def writable_dir(path: str, flag: str = "--data-dir") -> None:
    """Create directory `path` if missing and check that a file can be written in it (as root, file
    modes do not say): a node that cannot keep its key and checkpoint is refused at start, naming the
    directory, not in a traceback later."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise SwarmtrainError(
            f"{flag}: cannot write in {path}: {why}",
            f"point {flag} at a place you can write to (missing directories are created)",
        ) from None


def load_identity_key(path: str) -> rsa.RSAPrivateKey:
    """The RSA key inside hivemind's identity file (a libp2p PrivateKey protobuf)."""
    from google.protobuf.message import DecodeError
    from hivemind.proto import crypto_pb2

    try:
        with open(path, "rb") as f:
            proto = crypto_pb2.PrivateKey.FromString(f.read())
        key = serialization.load_der_private_key(proto.data, password=None)
    except (OSError, ValueError, DecodeError) as e:
        raise SwarmtrainError(
            f"cannot read the identity key {path}: {e}",
            "delete it to get a new peer id, or point --identity at a valid key",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SwarmtrainError(f"identity key {path} is not an RSA key", "delete it to get a new peer id")
    try:  # other peers refuse every record signed by a key of another shape: say so now, not never
        signing.check_public_key(key.public_key())
    except ProtocolError as e:
        raise SwarmtrainError(
            f"identity key {path}: {e}",
            "delete it to get a new peer id (hivemind makes one "
            f"of {signing.MODULUS_BITS} bits, exponent {signing.PUBLIC_EXPONENT})",
        ) from None
    return key
