"""The run manifest: everything peers must agree on, hashed into the run id, kept in the DHT."""

from __future__ import annotations

import logging
import time

from node.config import RunConfig, as_dict, from_dict, validate_run
from node.errors import SwarmtrainError
from node.p2p.dht import Swarm
from node.p2p.validators import MANIFEST_TTL
from node.train.data import Corpus, load_corpus
from node.train.model import FINGERPRINT_FIELDS, check_fingerprint, check_model_config, fingerprint
from protocol import keys, signed, signing
from protocol.errors import ProtocolError
from protocol.records import run_id_of
from protocol.version import PROTOCOL_VERSION, is_compatible

log = logging.getLogger("swarmtrain.manifest")
CORPUS_FIELDS = ("corpus_sha256", "corpus_bytes", "corpus_origin")


def build_manifest(run: RunConfig, corpus: Corpus, built=None) -> dict:
    """The run's settings, the corpus digest and, for Hugging Face or LoRA runs, the model's
    fingerprint (config, weights, tokenizer and round-0 SHA-256: node.train.model.FINGERPRINT_FIELDS).
    `built` (node.train.model.BuiltModel) saves building the model again."""
    manifest = as_dict(run)
    manifest["protocol"] = PROTOCOL_VERSION
    manifest["data"].update(corpus_sha256=corpus.sha256, corpus_bytes=corpus.nbytes, corpus_origin=corpus.origin)
    if run.model.kind != "byte-gpt" or run.peft.method != "none":
        from node.train.model import build_run_model

        manifest["model"].update((built or build_run_model(run)).fingerprint)
    return manifest


def sign(key, manifest: dict) -> tuple[str, dict]:
    """The organizer's signed manifest and its run id. The manifest names the organizer (the
    peer id of `key`), so the run id commits to the organizer's public key."""
    manifest = {**manifest, "organizer": signing.peer_id_of(signing.public_der(key))}
    return run_id_of(manifest), signed.seal_manifest(key, manifest)


def publish(swarm: Swarm, envelope: dict) -> bool:
    """Store the organizer-signed manifest under its run id (anyone may re-publish it: it is immutable)."""
    run_id = signed.claimed_key(envelope)[1]
    return swarm.store(keys.runs_key(), run_id, envelope, ttl=MANIFEST_TTL)


class ManifestKeeper:
    """Keeps a run's manifest in the DHT from a volunteer: published now, then again whenever a
    quarter of its TTL has passed (checked once per round), so the run outlives its bootstrap peer."""

    def __init__(self, swarm: Swarm, envelope: dict, clock=time.monotonic):
        self.swarm, self.envelope, self.clock = swarm, envelope, clock
        self.due = clock()

    def tick(self) -> None:
        if self.clock() >= self.due:
            publish(self.swarm, self.envelope)
            self.due = self.clock() + MANIFEST_TTL / 4


def _verified_runs(swarm: Swarm) -> dict[str, tuple[dict, dict]]:
    """run id -> (manifest, envelope) for every manifest in the DHT signed by its organizer."""
    out = {}
    for run_id, envelope in swarm.get_subkeys(keys.runs_key()).items():
        try:
            out[str(run_id)] = (signed.open_manifest(envelope, str(run_id)), envelope)
        except ProtocolError as e:
            log.warning("ignoring the manifest stored under %s: %s", str(run_id)[:40], e)
    return out


def fetch(swarm: Swarm, wanted: str, timeout: float) -> tuple[str, dict, dict]:
    """Find the run to join in the DHT: `wanted`, or the only run there is.
    Returns (run id, manifest, the organizer-signed envelope)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = _verified_runs(swarm)
        if wanted and wanted in runs:
            return (wanted, *runs[wanted])
        if not wanted and len(runs) == 1:
            run_id, (manifest, envelope) = next(iter(runs.items()))
            return run_id, manifest, envelope
        if not wanted and len(runs) > 1:
            raise SwarmtrainError(
                f"this swarm hosts {len(runs)} runs: {', '.join(sorted(runs))}",
                "choose one with --run-id RUN_ID (the organizer's join line names it)",
            )
        if time.monotonic() >= deadline:
            what = f"run {wanted!r}" if wanted else "any run manifest"
            raise SwarmtrainError(
                f"found no {what} in the swarm within {timeout:.0f} s",
                "check that the bootstrap peer was started with --run run.toml "
                "(it publishes the manifest), or raise --startup-timeout",
            )
        time.sleep(0.5)  # note: DHT polling; a record has no arrival event to await


def accept(run_id: str, manifest: dict, local=None) -> tuple[RunConfig, Corpus]:
    """Check that this node can train `manifest`; return its RunConfig and our corpus copy.
    `local` (NodeConfig) names where this node keeps the run's files (--data-files,
    --pretrained-dir, --tokenizer-dir); the round-0 weights are checked when the model is built
    (node.train.model.build_run_model(..., expect=manifest["model"]))."""
    try:
        hashes_to_id = isinstance(manifest.get("name"), str) and run_id_of(manifest) == run_id
    except (TypeError, ValueError):  # not JSON-able: bytes or odd keys from a peer
        hashes_to_id = False
    if not hashes_to_id:
        raise SwarmtrainError(
            f"the manifest stored under {run_id} does not hash to that id (corrupt or forged)",
            "ask the organizer for the right run id, or join through another peer",
        )
    if not is_compatible(manifest.get("protocol")):
        raise SwarmtrainError(
            f"run {run_id} speaks protocol {manifest.get('protocol')!r}; this swarmtrain speaks {PROTOCOL_VERSION}",
            "install the swarmtrain version the organizer names for this run",
        )
    settings = {k: v for k, v in manifest.items() if k not in ("protocol", "organizer")}
    data = dict(settings.get("data", {}))
    wanted = {k: data.pop(k, None) for k in CORPUS_FIELDS}
    settings["data"] = data
    model = dict(settings.get("model", {}))
    prints = {k: model.pop(k) for k in FINGERPRINT_FIELDS if k in model}
    settings["model"] = model
    try:
        run = from_dict(RunConfig, settings, f"manifest of {run_id}")
        validate_run(run, f"manifest of {run_id}")  # a manifest made by hand or by a peer, not our loader
    except SwarmtrainError as e:
        raise SwarmtrainError(
            f"{e} (the run needs settings this version cannot build)", "upgrade swarmtrain to the organizer's version"
        ) from None
    check_model_config(run.model)
    corpus = load_corpus(run.data, files=getattr(local, "data_files", ""))
    if corpus.sha256 != wanted["corpus_sha256"]:
        own = corpus.name == "files"
        raise SwarmtrainError(
            f"corpus {corpus.name!r} differs: the run has SHA-256 {str(wanted['corpus_sha256'])[:16]}... "
            f"from {wanted['corpus_origin']}, this machine has {corpus.sha256[:16]}... from {corpus.origin}",
            "bring the same files as the organizer (names relative to the glob's directory, same bytes) and "
            "point --data-files at them"
            if own
            else f"run the node with the same source of data ({wanted['corpus_origin']})",
        )
    if prints or run.model.kind != "byte-gpt":
        pretrained, tokenizer = getattr(local, "pretrained_dir", ""), getattr(local, "tokenizer_dir", "")
        check_fingerprint(
            fingerprint(run, pretrained_dir=pretrained, tokenizer_dir=tokenizer),
            prints,
            pretrained=pretrained or run.model.pretrained,
            tokenizer=tokenizer or run.model.tokenizer,
        )
    return run, corpus
