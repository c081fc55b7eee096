"""A hostile peer for the swarm tests: tries to hide or impersonate a victim's metrics record.

    python -m swarm_tests.forger MADDR RUN_ID VICTIM_PEER_ID

Stores, under the victim's subkey and with an expiration a day away: garbage, a replay of the
victim's own latest record, and a record claiming the victim's name signed by another key.
Prints one `event=forged` line with what each store returned, then leaves.
"""

from __future__ import annotations

import os
import sys

from cryptography.hazmat.primitives.asymmetric import rsa


def main(maddr: str, run_id: str, victim: str) -> None:
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "ERROR")
    import hivemind
    from hivemind.utils.timed_storage import get_dht_time

    from node.p2p.telemetry import encode
    from protocol import keys
    from protocol.kinds.metrics import MetricsRecord

    dht = hivemind.DHT(initial_peers=[maddr], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True, startup_timeout=60)
    try:
        key, far = keys.metrics_key(run_id), get_dht_time() + 86400
        found = dht.get(key, latest=True)
        legit = found.value[victim].value if found is not None and victim in found.value else None
        lie = MetricsRecord(
            peer=victim,
            name="forged",
            device="cpu",
            version="0",
            round=10**6,
            local_step=0,
            time=get_dht_time(),
            loss=0.0,
            val_bpb=0.0,
            tokens_per_s=1e12,
            tokens=10**15,
            sent=0,
            received=0,
            dense=0,
            rounds_ok=0,
            rounds_failed=0,
            reachability="public",
        )
        forged = encode(rsa.generate_private_key(public_exponent=65537, key_size=2048), lie)
        stored = {
            "garbage": dht.store(key, b"garbage", far, subkey=victim),
            "replay": legit is not None and dht.store(key, legit, far, subkey=victim),
            "forged": dht.store(key, forged, far, subkey=victim),
        }
        print("event=forged " + " ".join(f"{k}={v}" for k, v in stored.items()), flush=True)
    finally:
        dht.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
