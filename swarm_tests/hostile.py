"""A hostile peer for the swarm tests: it joins the DHT and tries, against a running run,
every record attack of issue 8, then announces poisoned and oversized updates for a while.

    python -m swarm_tests.hostile MADDR RUN_ID VICTIM_PEER_ID SECONDS

Prints `event=attacked key=value ...` (what each forged store returned: honest DHT nodes must
refuse them all) and `event=hostile_done` when it leaves.
"""

from __future__ import annotations

import os
import sys
import time

import msgpack
import torch


def main(maddr: str, run_id: str, victim: str, seconds: str) -> None:
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "ERROR")
    import hivemind
    from hivemind.utils.timed_storage import get_dht_time

    from node.p2p.exchange import Exchange
    from protocol import keys, signed
    from protocol.messages import UpdateEnvelope
    from protocol.records import Announcement, Heartbeat, Roster
    from tests.fakes import new_key

    dht = hivemind.DHT(initial_peers=[maddr], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True, startup_timeout=60)
    me_key, me = new_key()
    try:
        now, far = get_dht_time(), get_dht_time() + 10 * 365 * 86400
        table = dht.get(keys.peers_key(run_id), latest=True)
        beats = {k: signed.open_record(v.value, Heartbeat) for k, v in (table.value.items() if table else [])}
        top = max((hb.state_round for hb in beats.values()), default=0)
        evil = "e" * 64
        stored = {}
        sybils = [new_key() for _ in range(4)]
        for i, (k, pid) in enumerate(sybils):  # Sybil heartbeats vouching for an all-zero state
            hb = Heartbeat(
                run=run_id,
                peer=pid,
                name="sybil",
                round=top + 1,
                state_round=top,
                digest=evil,
                device="cpu",
                maddrs=(),
                time=now,
            )
            stored[f"sybil{i}"] = dht.store(keys.peers_key(run_id), signed.seal(k, hb), now + 8, subkey=pid)
        fake = Heartbeat(
            run=run_id,
            peer=victim,
            name="forged",
            round=10**6,
            state_round=10**6,
            digest=evil,
            device="cpu",
            maddrs=(),
            time=now,
        )
        stored["victim_heartbeat"] = dht.store(keys.peers_key(run_id), signed.seal(me_key, fake), far, subkey=victim)
        stored["plain_value"] = dht.store(keys.peers_key(run_id), b"hide the table", far)
        stored["garbage_roster"] = dht.store(keys.roster_key(run_id, top + 1), b"x", far, subkey="1" * 46)
        k0, p0 = sybils[0]
        ann = Announcement(
            run=run_id, round=top + 1, peer=p0, nbytes=10, sha256="0" * 64, tokens=1, base=evil, time=now
        )
        roster = Roster(
            run=run_id,
            round=top + 1,
            leader=p0,
            prev="0" * 64,
            base=evil,
            result=evil,
            time=now,
            entries=(signed.seal(k0, ann),),
        )
        stored["unsigned_roster"] = dht.store(
            keys.roster_key(run_id, top + 1), signed.seal(me_key, roster), now + 60, subkey="1" * 46
        )
        stored["sybil_roster"] = dht.store(
            keys.roster_key(run_id, top + 1), signed.seal(k0, roster), now + 60, subkey=p0
        )
        runs = dht.get(keys.runs_key(), latest=True)
        real = runs.value[run_id].value if runs and run_id in runs.value else None
        manifest = msgpack.unpackb(real["body"], raw=False) if real else {"name": "x"}
        stored["overwritten_manifest"] = dht.store(
            keys.runs_key(), signed.seal_manifest(me_key, {**manifest, "model": {"d_model": 4096}}), far, subkey=run_id
        )
        print("event=attacked " + " ".join(f"{k}={v}" for k, v in stored.items()), flush=True)
        poison_updates(
            dht,
            run_id,
            me_key,
            me,
            float(seconds),
            Exchange,
            UpdateEnvelope,
            Announcement,
            Heartbeat,
            signed,
            keys,
            manifest,
        )
    finally:
        dht.shutdown()
        print("event=hostile_done", flush=True)


def poison_updates(
    dht, run_id, key, me, seconds, Exchange, UpdateEnvelope, Announcement, Heartbeat, signed, keys, manifest
) -> None:
    """As a live (signed) peer: each round, announce an update of fp16 65504 everywhere, served
    honestly, or a small one answered with 64 MiB."""
    import hashlib

    from hivemind.utils.timed_storage import get_dht_time

    from node.config import ModelConfig
    from node.train.model import build_model

    m = manifest.get("model", {})
    model = build_model(ModelConfig(**{k: v for k, v in m.items() if k in ("d_model", "n_layer", "n_head", "ctx")}), 0)
    n = sum(p.numel() for p in model.parameters())
    exchange = Exchange(dht, run_id, max_bytes=256 << 20)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            table = dht.get(keys.peers_key(run_id), latest=True)
            beats = [
                signed.open_record(v.value, Heartbeat)
                for k, v in (table.value.items() if table else [])
                if isinstance(v.value, dict) and v.value.get("kind") == "heartbeat"
            ]
            honest = [hb for hb in beats if hb.name != "sybil" and hb.peer != me]
            if not honest:
                time.sleep(0.5)
                continue
            r, base = max(hb.round for hb in honest), max(honest, key=lambda hb: hb.round).digest
            now = get_dht_time()
            hb = Heartbeat(
                run=run_id,
                peer=me,
                name="hostile",
                round=r,
                state_round=r - 1,
                digest=base,
                device="cpu",
                maddrs=(),
                time=now,
            )
            dht.store(keys.peers_key(run_id), signed.seal(key, hb), now + 8, subkey=me)
            payload = torch.full((n,), 65504.0, dtype=torch.float16).numpy().tobytes()
            blob = UpdateEnvelope(run=run_id, round=r, peer=me, codec="dense-float16", payload=payload).encode()
            announced = blob if r % 2 else blob[:-1] + b"\0"  # odd rounds poison, even rounds oversize
            exchange.keep_update(r, me, blob if r % 2 else os.urandom(64 << 20))
            ann = Announcement(
                run=run_id,
                round=r,
                peer=me,
                nbytes=len(announced),
                sha256=hashlib.sha256(announced).hexdigest(),
                tokens=10**9,
                base=base,
                time=now,
            )
            dht.store(keys.updates_key(run_id, r), signed.seal(key, ann), now + 600, subkey=me)
            time.sleep(0.5)
    finally:
        exchange.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
