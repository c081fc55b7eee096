"""The run manifest: everything peers must agree on, hashed into the run id, kept in the DHT."""
from __future__ import annotations

import time

from node.config import RunConfig, as_dict, from_dict
from node.data import Corpus, load_corpus
from node.errors import SwarmtrainError
from node.model import check_model_config
from node.swarm import Swarm
from protocol import keys
from protocol.records import run_id_of
from protocol.version import PROTOCOL_VERSION, is_compatible

MANIFEST_TTL = 3600.0  # seconds; every node re-publishes well before expiry
CORPUS_FIELDS = ("corpus_sha256", "corpus_bytes", "corpus_origin")


def build_manifest(run: RunConfig, corpus: Corpus) -> dict:
    manifest = as_dict(run)
    manifest["protocol"] = PROTOCOL_VERSION
    manifest["data"].update(corpus_sha256=corpus.sha256, corpus_bytes=corpus.nbytes, corpus_origin=corpus.origin)
    return manifest


def publish(swarm: Swarm, manifest: dict) -> bool:
    return swarm.store(keys.runs_key(), run_id_of(manifest), manifest, ttl=MANIFEST_TTL)


class ManifestKeeper:
    """Keeps a run's manifest in the DHT from a volunteer: published now, then again whenever a
    quarter of its TTL has passed (checked once per round), so the run outlives its bootstrap peer."""

    def __init__(self, swarm: Swarm, manifest: dict, clock=time.monotonic):
        self.swarm, self.manifest, self.clock = swarm, manifest, clock
        self.due = clock()

    def tick(self) -> None:
        if self.clock() >= self.due:
            publish(self.swarm, self.manifest)
            self.due = self.clock() + MANIFEST_TTL / 4


def fetch(swarm: Swarm, wanted: str, timeout: float) -> tuple[str, dict]:
    """Find the run to join in the DHT: `wanted`, or the only run there is."""
    deadline = time.monotonic() + timeout
    while True:
        runs = {k: v for k, v in swarm.get_subkeys(keys.runs_key()).items() if isinstance(v, dict)}
        if wanted and wanted in runs:
            return wanted, runs[wanted]
        if not wanted and len(runs) == 1:
            return next(iter(runs.items()))
        if not wanted and len(runs) > 1:
            raise SwarmtrainError(f"this swarm hosts {len(runs)} runs: {', '.join(sorted(runs))}",
                                  "choose one with --run-id RUN_ID")
        if time.monotonic() >= deadline:
            what = f"run {wanted!r}" if wanted else "any run manifest"
            raise SwarmtrainError(f"found no {what} in the swarm within {timeout:.0f} s",
                                  "check that the bootstrap peer was started with --run run.toml "
                                  "(it publishes the manifest), or raise --startup-timeout")
        time.sleep(0.5)  # note: DHT polling; a record has no arrival event to await


def accept(run_id: str, manifest: dict) -> tuple[RunConfig, Corpus]:
    """Check that this node can train `manifest`; return its RunConfig and our corpus copy."""
    try:
        hashes_to_id = isinstance(manifest.get("name"), str) and run_id_of(manifest) == run_id
    except (TypeError, ValueError):  # not JSON-able: bytes or odd keys from a peer
        hashes_to_id = False
    if not hashes_to_id:
        raise SwarmtrainError(f"the manifest stored under {run_id} does not hash to that id (corrupt or forged)",
                              "ask the organizer for the right run id, or join through another peer")
    if not is_compatible(manifest.get("protocol")):
        raise SwarmtrainError(
            f"run {run_id} speaks protocol {manifest.get('protocol')!r}; this swarmtrain speaks {PROTOCOL_VERSION}",
            "install the swarmtrain version the organizer names for this run")
    settings = {k: v for k, v in manifest.items() if k != "protocol"}
    data = dict(settings.get("data", {}))
    wanted = {k: data.pop(k, None) for k in CORPUS_FIELDS}
    settings["data"] = data
    try:
        run = from_dict(RunConfig, settings, f"manifest of {run_id}")
    except SwarmtrainError as e:
        raise SwarmtrainError(f"{e} (the run needs settings this version cannot build)",
                              "upgrade swarmtrain to the organizer's version") from None
    check_model_config(run.model)
    corpus = load_corpus(run.data.corpus)
    if corpus.sha256 != wanted["corpus_sha256"]:
        raise SwarmtrainError(
            f"corpus {run.data.corpus!r} differs: the run has SHA-256 {str(wanted['corpus_sha256'])[:16]}... "
            f"from {wanted['corpus_origin']}, this machine has {corpus.sha256[:16]}... from {corpus.origin}",
            f"run the node with the same source of data ({wanted['corpus_origin']})")
    return run, corpus
