"""Protocol version and the compatibility rule.

Peers exchange DHT records and RPC messages whose layout is fixed by PROTOCOL_VERSION.
Rule: two peers can train together only if their PROTOCOL_VERSION is equal. The version is
part of the run manifest, so a run's id changes when the protocol does; an old node then
refuses the manifest with a message naming the version it needs.
"""

PROTOCOL_VERSION = 24  # 2: signed records, elected leaders, the roster ledger; 3: beacon ranks (reveals), exact sizes;
# 4: skip marks and unserved lists, organizer checkpoints, identity work (a version-3 peer would rank
# or check those rosters otherwise); 5: admission proofs carry a stamp ([epoch, nonce, stamp]: a version-4
# peer refuses such announcements), and the organizer-led young run ([swarm] bootstrap_peers: a
# version-4 peer would take a young round's roster from any live leader); 6: roster cutoffs with a
# floor, seen_late and omission claims (a version-5 peer takes rosters under the floor and counts
# no claim toward establishment or marks); 7: an omission claim counts when its seers are more than half of
# its jury (base(r) less the claimant and r's leader), not a third of base(r) (a version-6 peer would count
# claims that a version-7 peer does not, and so differ on who is established and who is marked); 8:
# rosters list newcomers' stamped admission proofs that
# failed (`failed`, at most 4), which every leader then skips and every reader checks (a version-7 peer
# would take a roster that lists an honest newcomer's valid proof as failed, and check such keys again)
# 9: admission epochs ([swarm] identity_epoch_rounds): a proof of epoch e >= 1 is seeded by the beacon of round
# e x epoch_rounds and counts in epochs e and e + 1 (a version-8 peer takes stale proofs and checks no renewal)
# 10: v3 boards pin each caught owner's proof (`proofs`), the leader serves it (op `proof`) and every member
# re-runs it; rosters' caught (peer, digest) pairs must be those checked (a version-9 peer sends no proofs)
# 11: heartbeats carry the peer's admission proof (`work`); a joiner whose organizer is offline asks paid holders first
# 12: a v3 chunk carries its sender's signed note of its SHA-256 (Message `note`, ChunkNote), owners report a
# note against the commitment (op `garble`) and the sender is caught (a version-11 peer sends no notes)
# 13: a v3 owner short of a quorum names the senders it lacks (op `missing`); the board asks them (`asked`), each
# hands the leader its chunk (op `here`), which it forwards, or is dropped from the round's quorums (`silent`)
# 14: rosters carry `credit` (0..64 per entry, recomputed by every applier from the updates: zeros, noise, copies
# and mixes of the 3 rounds before earn 0) and establishment counts credit, not appearances, from min(3, the
# window's leaders) leaders (a version-13 peer would establish, and let lead, a crowd that does no useful work)
# 15: diloco int1 (wire_share 1) and sparseloco runs use v3 from scatter_min_peers on, on their codec's wire at
# chunks.wire_for's defaults (signs: 1-bit chunks, 4-bit results; sparse: the picks, 8 x k int8 values out), not
# int8 chunks (a version-14 peer runs verify-all there)
# 16: a candidate's rank key is the least of its tickets' keys, one ticket per whole round of credit in the window
# (1..64), and omission juries count credit, not heads (a version-15 peer ranks every established key alike, and
# so would refuse the rosters of the leaders a version-15 peer elects)
# 17: a roster's credit is every applier's own or nobody's (a version-16 peer takes under-credit), and a roster
# that credits nobody neither counts among the leaders that list a peer nor earns its omitted peers' claims
# anything (a version-16 peer would establish and rank otherwise)
# 18: sealed rounds: a leader seals the announcements it takes before it fetches, owners serve a round's update
# before its roster only under such a seal and sign a receipt, rosters carry `seals` and `receipts`, and only
# sealed, receipted entries of a rank-0 attempt-0 roster earn credit (a version-17 peer fetches unsealed)
# 19: a `receipt` answer is a ReceiptAnswer map; an owner that released first under another seal answers with its
# receipt and that seal, and a leader shown a candidate's earlier seal keeps the owner (its roster credits nobody)
# instead of leaving it out (a version-18 leader reads no such answer and drops the owner)
# 20: credit's reference for an entry (the others' fresh parts) weighs each other entry by its author's credit in
# the rosters of the 3 rounds before (all alike when none of them has any): a version-19 peer computes other credit
# where a crowd without standing is listed, and refuses the roster
# 21: a seal names its leader's first seal of the round (`after`) and lists at most 224 announcements; an owner whose
# leader's roster hid a seal it released under carries it in its next announcements (`hidden`), and every reader
# takes that roster's credit as nobody's (a version-20 peer reads no `hidden` and counts the crowd's mixes)
# 22: an owner listed in a roster that credits someone while its receipt names another key's seal carries that seal
# (`hidden`), and every reader takes the roster's credit as nobody's once such carriers hold more than half of its
# entries' weight (a version-21 peer counts a crowd rank 0's mixes sealed first after rank 1 was served)
# 23: a seal's signature covers its head (the announcements' Merkle root and count, domain "sealhead") and its body
# has one encoding; evidence (`hidden`) is that head, the carrier's entry and its Merkle path, under 2 KB, and the
# announcement cap is 3 KiB + that (a version-22 peer verifies seals over their whole body and refuses ours)
# 24: a digest, peer id or task name with a final newline is refused (a regex `$` took one: a second spelling of a
# digest in evidence, a second peer id in unsigned lists; a version-23 peer takes what we refuse)


def is_compatible(remote_version: object) -> bool:
    """True if a peer speaking `remote_version` can join a run of ours."""
    return isinstance(remote_version, int) and remote_version == PROTOCOL_VERSION
