"""A seal's signature covers its head (protocol 23, protocol/kinds/sealed.py SealHead).

Evidence about a seal (an announcement's `hidden`, node/round/trust/sealed.py) was the whole seal,
up to 15.8 KB at MAX_SEALED digests, and any key could carry it every round. Now it is the seal's
signed head (the announcements' Merkle root and count) and one entry's Merkle path: under 2 KB
whatever the seal lists (tests/test_sybil_attacks_8.py measures what that means for a roster).
"""

from __future__ import annotations

import msgpack
import pytest

from protocol import signed, signing
from protocol.errors import ProtocolError
from protocol.kinds.sealed import MAX_PATH, MAX_SEALED, Seal, SealHead, merkle_listed, merkle_path, merkle_root
from tests.fakes import new_key

RUN = "test-0123456789ab"


def digests(n: int) -> tuple[str, ...]:
    return tuple(sorted(f"{i * 7919:064x}" for i in range(n)))


def a_seal(key, me: str, n: int) -> dict:
    return signed.seal(key, Seal(run=RUN, round=3, base="b" * 64, leader=me, time=1.0, announcements=digests(n)))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 100, MAX_SEALED])
def test_every_listed_entry_has_a_path_to_the_root_and_nothing_else_does(n):
    listed = digests(n)
    root = merkle_root(listed)
    for d in listed:
        path = merkle_path(listed, d)
        assert len(path) <= MAX_PATH and merkle_listed(d, path, root)
    other = "f" * 64
    assert not any(merkle_listed(other, merkle_path(listed, d), root) for d in listed)
    if n > 1:  # an inner node passes for no leaf (leaves and nodes hash under different prefixes)
        assert not merkle_listed(listed[0], merkle_path(listed, listed[1]), root)
    assert merkle_root(listed[:-1] + ("e" * 64,)) != root


def test_evidence_opens_to_the_seals_head_and_its_entry():
    key, me = new_key()
    env = a_seal(key, me, MAX_SEALED)
    seal = signed.open_record(env, Seal)
    entry = seal.announcements[37]
    ev = signed.open_evidence(signed.evidence(env, entry))
    assert ev.head == SealHead.of(seal) and ev.entry == entry and ev.head.count == MAX_SEALED
    with pytest.raises(ProtocolError, match="does not list"):
        signed.evidence(env, "f" * 64)


def test_a_seal_in_another_encoding_or_its_head_alone_is_no_seal():
    """The head's signature fits one body: a third party that re-encodes an honest leader's seal
    (another key order, here) gets a refusal, not a second seal with another body hash; nor does
    the head of evidence open as a seal, nor a seal's signature over its whole body."""
    key, me = new_key()
    env = a_seal(key, me, 3)
    body = msgpack.unpackb(env["body"])
    reordered = {**env, "body": msgpack.packb(dict(reversed(list(body.items()))), use_bin_type=True)}
    with pytest.raises(ProtocolError, match="one encoding"):
        signed.open_record(reordered, Seal)
    head = signed.evidence(env, signed.open_record(env, Seal).announcements[0])["head"]
    with pytest.raises(ProtocolError):
        signed.open_record({**head, "kind": "seal"}, Seal)
    whole = signing.sign(key, env["body"], "seal")  # how protocol 22 signed a seal
    with pytest.raises(ProtocolError, match="bad signature"):
        signed.open_record(whole, Seal)
    assert signed.open_record(env, Seal).announcements == digests(3)
