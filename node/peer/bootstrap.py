"""The organizer's peer: a stable identity that holds the DHT together, the run manifest, and the
witness that leads the run's young rounds, applies every round and pins what joiners may take
(witness.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.config import NodeConfig, load_run_config
from node.errors import SwarmtrainError
from node.outer.strategies import make_strategy
from node.p2p.addresses import initial_peers, shareable
from node.p2p.dht import Swarm
from node.p2p.identity import load_identity_key, writable_dir
from node.p2p.validators import guard_run
from node.peer import manifest as manifests
from node.peer.witness import Witness
from node.round.protocol import round_record_ttl
from node.train.data import load_corpus, val_tokens
from node.train.model import build_run_model, trainable
from node.watch.progress import Reporter

PageFactory = Callable[[Swarm, str, dict], Any]
"""Starts a status page for the run; what it returns has .url and .close()."""

READY_FILE = "bootstrap.json"  # written to --data-dir once the peer is reachable


def run_bootstrap(
    cfg: NodeConfig, run_path: str | None, stop: threading.Event, reporter: Reporter, page: PageFactory | None = None
) -> None:
    """Serve the run until `stop`. `page(swarm, run_id, manifest)` starts the status page (the swarm's,
    seen from here: node/commands/monitor.SwarmPage), once the manifest is published."""
    run = load_run_config(run_path)
    writable_dir(cfg.data_dir)  # before the model is built: a bad --data-dir is said at once
    built = build_run_model(run)  # refuse a run we could not train ourselves
    model = built.model
    strategy = make_strategy(run.strategy, [tuple(p.shape) for p in trainable(model)], run.train, robust=run.robust)
    corpus = load_corpus(run.data)  # a built-in corpus, or the organizer's own files
    # the witness scores updates as every leader does: on the batch all peers share
    score = val_tokens(corpus, run.data, built.tokenizer, Path(cfg.data_dir) / "tokens") if run.robust.scoring else None
    ready = Path(cfg.data_dir) / READY_FILE
    ready.unlink(missing_ok=True)  # a stale file would send volunteers to an address that may be gone
    swarm = Swarm.start(cfg, initial_peers(cfg.initial_peers, cfg.initial_peers_file, cfg.startup_timeout))
    witness = served = None
    try:
        # the manifest names our peer id and is signed with its key: the run id commits to us
        manifest = manifests.build_manifest(run, corpus)
        run_id, envelope = manifests.sign(load_identity_key(swarm.identity_path), manifest)
        guard_run(swarm, run_id, heartbeat_ttl=run.swarm.heartbeat_ttl, round_ttl=round_record_ttl(run.swarm))
        manifests.publish(swarm, envelope)
        witness = Witness(  # leads the young run, applies every round (trains nothing)
            swarm,
            run_id=run_id,
            key=load_identity_key(swarm.identity_path),
            run=run,
            model=model,
            strategy=strategy,
            score_tokens=score,
            data_dir=Path(cfg.data_dir),
            out=reporter,
        )
        if witness.state.digest != manifests.round0_digest(run, manifest):  # roster 1 starts from it
            raise SwarmtrainError(
                "the organizer's round-0 model is not the one its manifest names",
                "report this: the witness could not lead the run's first rounds",
            )
        threading.Thread(target=witness.follow, args=(stop,), name="witness", daemon=True).start()
        served = page(swarm, run_id, manifest) if page is not None else None
        maddrs = shareable(swarm.visible_maddrs())
        ready.parent.mkdir(parents=True, exist_ok=True)
        tmp = ready.with_suffix(".tmp")  # readers (volunteers, healthchecks) never see half a file
        tmp.write_text(json.dumps({"run_id": run_id, "maddrs": maddrs, "peer": swarm.peer_id}))
        tmp.replace(ready)
        reporter.event(
            "bootstrap_ready",
            run=run_id,
            peer=swarm.peer_id,
            maddrs=maddrs,
            params=sum(p.numel() for p in model.parameters()),
            corpus_sha256=corpus.sha256[:16],
            status_url=served.url if served is not None else "",
        )
        reporter.say(
            f"volunteers join with:\n  swarmtrain join --run-id {run_id} --initial-peers " + " ".join(maddrs[:2])
        )
        while not stop.wait(manifests.MANIFEST_TTL / 4):
            manifests.publish(swarm, envelope)  # DHT values expire; keep the manifest alive
    finally:
        ready.unlink(missing_ok=True)
        if served is not None:
            served.close()
        if witness is not None:
            witness.close()
        swarm.shutdown()
        reporter.event("left", peer=swarm.peer_id)
