"""A Sybil crowd for the swarm tests: many identities in one process against a running run.

    python -m swarm_tests.sybil_crowd MADDR RUN_ID IDENTITIES SECONDS

It grows its own chain from the run's genesis (two correctly linked rosters, led and filled by
the crowd, ending at an all-zero digest), serves it to anyone who asks (`ledger` RPC, under the
one identity libp2p can reach), and keeps every identity's signed heartbeat pointing at that
head, far more of them than there are honest peers. It also stores a self-signed roster at an
invented round. A joiner that counted holders would take the crowd's state; it must not.
Prints `event=crowd_ready identities=N head=ROUND` once everything is stored, and
`event=crowd_done asked=K` (ledger requests it answered) when it leaves.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

ZERO = "0" * 64


def main(maddr: str, run_id: str, identities: str, seconds: str) -> None:
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "ERROR")
    # the test kills the crowd's process group when it ends; should the test itself be killed
    # first (a timeout), the crowd must not outlive it for long: a clean leave past the run, or gone
    threading.Thread(target=_end_after, args=(float(seconds) + 60,), daemon=True).start()
    import hivemind
    from hivemind.utils.timed_storage import get_dht_time

    from bench.fakenet import new_key
    from node.p2p.exchange import Exchange
    from node.p2p.identity import load_identity_key
    from node.peer import manifest as manifests
    from node.round import election
    from node.round.ledger import AcceptedRoster
    from node.round.trust import chain
    from protocol import keys, signed, signing
    from protocol.records import Announcement, Heartbeat, Roster

    identity = os.path.join(tempfile.mkdtemp(), "identity.key")  # hivemind writes the DHT's key here
    dht = hivemind.DHT(
        initial_peers=[maddr],
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        start=True,
        startup_timeout=60,
        identity_path=identity,
    )
    found = manifests.fetch(_SwarmView(dht), run_id, 60)
    base = manifests.round0_digest(manifests.run_config_of(run_id, found.manifest), found.manifest)
    # the first identity is the one libp2p reaches (the DHT's own key): it serves the crowd's chain
    # (the others sort after it, so a joiner asking a head's first holders reaches it)
    reachable = (load_identity_key(identity), str(dht.peer_id))
    crowd = [reachable]
    while len(crowd) < int(identities):
        key, pid = new_key()
        if pid > reachable[1]:
            crowd.append((key, pid))
    now = get_dht_time()

    def roster(link: chain.Link, leader) -> dict:
        k, pid = leader
        entries = tuple(
            signed.seal(
                key,
                Announcement(
                    run=run_id,
                    round=link.round,
                    peer=p,
                    nbytes=64,
                    sha256="1" * 64,
                    tokens=100,
                    base=link.base,
                    time=now,
                ),
            )
            for key, p in sorted(crowd, key=lambda c: c[1])
        )
        body = Roster(
            run=run_id,
            round=link.round,
            leader=pid,
            prev=link.prev,
            base=link.base,
            result=ZERO,
            time=now,
            entries=entries,
            reveal=signing.sign_unique(k, election.reveal_message(run_id, link.round)),
            beacon=link.beacon,
        )
        return signed.seal(k, body)

    rosters: list[dict] = []
    link = chain.genesis(run_id, base)
    for _ in range(2):
        env = roster(link, crowd[0])
        opened, anns = signed.open_roster(env)
        link = chain.after(AcceptedRoster(env, opened, tuple(anns)))
        rosters.append(env)
    exchange = Exchange(dht, run_id, max_bytes=64 << 20)
    asked = []

    def serve(first: int, most: int) -> list[dict]:
        asked.append(first)
        print(f"event=crowd_asked first={first}", flush=True)  # someone is verifying the crowd's chain
        return rosters[first - 1 :] if 1 <= first <= len(rosters) else []

    exchange.set_ledger(serve)
    invented = roster(chain.Link(99, "f" * 64, ZERO, "2" * 64), crowd[1])
    dht.store(keys.roster_key(run_id, 99), invented, now + 600, subkey=crowd[1][1])
    print(f"event=crowd_ready identities={len(crowd)} head=2", flush=True)
    deadline = time.monotonic() + float(seconds)
    try:
        while time.monotonic() < deadline:
            t = get_dht_time()
            for key, pid in crowd:
                beat(dht, keys, signed, Heartbeat, run_id, key, pid, t)
            time.sleep(1.0)
    finally:
        exchange.close()
        dht.shutdown()
        print(f"event=crowd_done asked={len(asked)}", flush=True)


def beat(dht, keys, signed, Heartbeat, run_id, key, pid, t) -> None:
    hb = Heartbeat(
        run=run_id, peer=pid, name="crowd", round=3, state_round=2, digest=ZERO, device="cpu", maddrs=(), time=t
    )
    dht.store(keys.peers_key(run_id), signed.seal(key, hb), t + 8, subkey=pid)


def _end_after(seconds: float) -> None:
    time.sleep(seconds)
    os.killpg(os.getpgid(0), 9)  # the DHT child and p2pd too (the test starts us in our own group)


class _SwarmView:
    """What node.peer.manifest.fetch reads from a Swarm, over a bare hivemind DHT."""

    def __init__(self, dht):
        self.dht = dht

    def get_subkeys(self, key: str) -> dict:
        found = self.dht.get(key, latest=True)
        return {k: v.value for k, v in found.value.items()} if found and isinstance(found.value, dict) else {}


if __name__ == "__main__":
    main(*sys.argv[1:5])
