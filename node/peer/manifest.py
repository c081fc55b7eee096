"""The run manifest: everything peers must agree on, hashed into the run id, kept in the DHT.

A node joins only the run it was asked for (--run-id, printed in the organizer's join line):
the DHT's run list is anyone's to write, so "the only run there is" may be an attacker's.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgpack

from node.config import NodeConfig, RunConfig, as_dict, from_dict, validate_run
from node.errors import SwarmtrainError
from node.p2p.dht import Swarm
from node.p2p.validators import MANIFEST_TTL
from node.train import layout
from node.train.data import Corpus, load_corpus
from node.train.model import (
    FINGERPRINT_FIELDS,
    build_run_model,
    check_fingerprint,
    check_model_config,
    digest,
    fingerprint,
    trainable,
)
from node.train.window import ComputeWindow
from protocol import keys, signed, signing
from protocol.errors import ProtocolError
from protocol.records import run_id_of
from protocol.version import PROTOCOL_VERSION, is_compatible

log = logging.getLogger("swarmtrain.manifest")
CORPUS_FIELDS = ("corpus_sha256", "corpus_bytes", "corpus_origin")
MAX_LISTED = 8  # manifests opened to list a swarm's runs: each costs a hash and an RSA check
COPY_FILE = "manifest.msgpack"  # a node's copy of its run's signed manifest: `swarmtrain audit`'s anchor
RUN_ID = re.compile(r"^.{1,115}-[0-9a-f]{12}$", re.DOTALL)  # protocol.records.run_id_of's shape


class RunFound(NamedTuple):
    """A run manifest from the DHT that hashes to its run id and is signed by the organizer it names."""

    run_id: str
    manifest: dict
    envelope: dict
    """The organizer-signed envelope, as stored."""


def build_manifest(run: RunConfig, corpus: Corpus | None, built=None, *, pinned: dict | None = None) -> dict:
    """The run's settings, the corpus digest and, for Hugging Face or LoRA runs, the model's
    fingerprint (config, weights, tokenizer and round-0 SHA-256: node.train.model.FINGERPRINT_FIELDS).
    `built` (node.train.model.BuiltModel) saves building the model again. A 'user' run (a model
    brought from Python) has no corpus of ours: `pinned` (node.train.layout.pin) fixes its model."""
    manifest = as_dict(run)
    manifest["protocol"] = PROTOCOL_VERSION
    if run.model.kind == "user":
        manifest["data"].update(corpus_sha256="", corpus_bytes=0, corpus_origin="each peer's own (swarmtrain API)")
        manifest["model"].update(pinned or {})
        return manifest
    manifest["data"].update(corpus_sha256=corpus.sha256, corpus_bytes=corpus.nbytes, corpus_origin=corpus.origin)
    if run.model.kind != "byte-gpt" or run.peft.method != "none":
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


# ------------------------------------------------------------------------ finding the run to join
def _opened(run_id: object, envelope: object) -> RunFound | None:
    """The run stored under `run_id` if its manifest verifies; the cheap checks (the id's shape,
    the body's size, the hash) come before the RSA check, inside open_manifest."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        return None
    try:
        return RunFound(run_id, signed.open_manifest(envelope, run_id), envelope)
    except ProtocolError as e:
        log.warning("ignoring the manifest stored under %s: %s", run_id[:40], e)
        return None


def list_runs(swarm: Swarm, most: int = MAX_LISTED) -> tuple[list[RunFound], int]:
    """Up to `most` verified runs of the swarm, and how many stored manifests were not examined.
    A random sample: a flood of manifests costs `most` checks, and cannot choose which are shown."""
    stored = swarm.get_subkeys(keys.runs_key())
    names = [k for k in stored if isinstance(k, str) and RUN_ID.match(k)]
    picked = random.sample(names, min(most, len(names)))
    found = [run for run in (_opened(k, stored[k]) for k in sorted(picked)) if run is not None]
    return found, len(stored) - len(picked)


def describe(run: RunFound) -> str:
    """One line naming a run for a person choosing: id, name, model size, organizer."""
    m = run.manifest
    return f"{run.run_id}  name {m['name']!r}  model {model_size(m)}  organizer {m['organizer'][:20]}..."


def model_size(manifest: dict) -> str:
    """The model a manifest describes, in words; parameter count estimated for the byte GPT
    (every value is the manifest's word: nothing is built)."""
    model = _table(manifest, "model")

    def size(name: str) -> int:
        v = model.get(name)
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 10**7 else 0

    d, layers, ctx = size("d_model"), size("n_layer"), size("ctx")
    if model.get("kind", "byte-gpt") != "byte-gpt":
        pretrained = " pretrained" if model.get("pretrained") else ""
        return f"hf {str(model.get('arch', '?'))[:20]}{pretrained} d_model={d or '?'} n_layer={layers or '?'}"
    params = 12 * d * d * layers + (256 + ctx) * d  # blocks, token and position embeddings
    return f"byte-gpt d_model={d or '?'} n_layer={layers or '?'} (~{_count(params)} parameters)"


def _count(n: int) -> str:
    for unit, scale in (("e9", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def fetch(swarm: Swarm, wanted: str, timeout: float, *, sole_run: bool = False) -> RunFound:
    """The manifest of run `wanted` from the DHT: one hash and one RSA check, whatever else is
    stored. Without `wanted`, refuse, listing the runs seen (a lone manifest may be an attacker's),
    unless `sole_run` (a swarm we started ourselves: --new-swarm) and there is exactly one.
    Returns (run id, manifest, the organizer-signed envelope)."""
    deadline = time.monotonic() + timeout
    while True:
        if wanted:
            run = _opened(wanted, swarm.get_subkeys(keys.runs_key()).get(wanted))
            if run is not None:
                return run
        else:
            runs, unexamined = list_runs(swarm)
            if sole_run and len(runs) == 1 and not unexamined:
                return runs[0]
            if runs:
                shown = "\n".join("  " + describe(r) for r in runs)
                more = f"\n  ... and {unexamined} more manifests not examined" if unexamined else ""
                raise SwarmtrainError(
                    f"no run id given; this swarm holds {len(runs) + unexamined} run manifests, "
                    f"anyone may store one:\n{shown}{more}",
                    "pass --run-id RUN with the run id the organizer's join line names "
                    "(swarmtrain join --run-id RUN --initial-peers ...); never one picked from this list",
                )
        if time.monotonic() >= deadline:
            what = f"run {wanted!r}" if wanted else "any run manifest"
            raise SwarmtrainError(
                f"found no {what} in the swarm within {timeout:.0f} s",
                "check the run id (--run-id, from the organizer's join line) and that the bootstrap peer "
                "was started with --run run.toml (it publishes the manifest), or raise --startup-timeout",
            )
        time.sleep(0.5)  # note: DHT polling; a record has no arrival event to await


def wanted_run(cfg: NodeConfig) -> str:
    """The run a node was asked for: --run-id, else the one named in the organizer's
    bootstrap.json given as --initial-peers-file (the organizer's own word, like its join line)."""
    if cfg.run_id or not cfg.initial_peers_file:
        return cfg.run_id
    try:
        named = json.loads(Path(cfg.initial_peers_file).read_text()).get("run_id", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return named if isinstance(named, str) else ""


# ------------------------------------------------------------------ a node's copy, for the audit
def keep_copy(run_dir: Path, envelope: dict) -> None:
    """Write the run's signed manifest beside the node's ledger (atomically): the audit's anchor."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=COPY_FILE, suffix=".tmp", dir=run_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(msgpack.packb(envelope, use_bin_type=True))
    os.replace(tmp, run_dir / COPY_FILE)


def read_copy(run_dir: Path, run_id: str) -> RunFound | None:
    """The node's copy of run `run_id`'s manifest, checked like one from the DHT; None if there is none."""
    path = run_dir / COPY_FILE
    if not path.is_file():
        return None
    try:
        envelope = msgpack.unpackb(path.read_bytes(), raw=False)
    except Exception:  # msgpack raises several types for garbage; open_manifest then names it
        envelope = None
    try:
        return RunFound(run_id, signed.open_manifest(envelope, run_id), envelope)
    except ProtocolError as e:
        raise SwarmtrainError(
            f"{path} is not run {run_id}'s signed manifest ({e})",
            "move it away and audit with --initial-peers MADDR: the manifest is then read from the swarm",
        ) from None


# -------------------------------------------------------------------------- checking a manifest
def _table(manifest: dict, name: str) -> dict:
    table = manifest.get(name)
    return table if isinstance(table, dict) else {}


def run_config_of(run_id: str, manifest: dict) -> RunConfig:
    """The run's settings, once the manifest hashes to `run_id`, speaks our protocol and holds
    settings this version can build (nothing is loaded or built)."""
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
    for section, extra in (("data", CORPUS_FIELDS), ("model", FINGERPRINT_FIELDS + layout.LAYOUT_FIELDS)):
        table = settings.get(section, {})
        if not isinstance(table, dict):
            raise SwarmtrainError(f"manifest of {run_id}: [{section}] must be a table", "ask the organizer")
        settings[section] = {k: v for k, v in table.items() if k not in extra}
    try:
        run = from_dict(RunConfig, settings, f"manifest of {run_id}")
        validate_run(run, f"manifest of {run_id}")  # a manifest made by hand or by a peer, not our loader
    except SwarmtrainError as e:
        raise SwarmtrainError(
            f"{e} (the run needs settings this version cannot build)", "upgrade swarmtrain to the organizer's version"
        ) from None
    check_model_config(run.model)
    return run


def round0_digest(run: RunConfig, manifest: dict) -> str:
    """The digest of the run's round-0 state, which roster 1 must start from: the manifest's
    init_sha256 where it has one (Hugging Face and LoRA runs, whose volunteers refuse other
    bits), else that of the byte GPT built from the manifest's seed, as every volunteer builds it."""
    pinned = _table(manifest, "model").get("init_sha256")
    return pinned if isinstance(pinned, str) and pinned else digest(trainable(build_run_model(run).model))


@dataclass(frozen=True, kw_only=True)
class Anchor:
    """What a run's manifest fixes about its chain of rosters (`swarmtrain audit` checks from it)."""

    run_id: str
    """The run id: the manifest's hash."""
    run: RunConfig
    """The run's settings."""
    organizer: str
    """The peer id whose key signed the manifest."""
    base: str
    """The digest of the round-0 state: what roster 1 (prev = GENESIS) must start from."""
    max_tokens: int
    """The most tokens one announcement can honestly sign for: a round's most inner steps, plus
    one missed round carried into it (node/outer/overlap.py), x batch_size x ctx."""
    max_bytes: int
    """The largest update an announcement may name ([swarm] max_update_mb)."""


def anchor_of(found: RunFound) -> Anchor:
    run = run_config_of(found.run_id, found.manifest)
    steps = ComputeWindow(run.swarm, max(1, run.strategy.inner_steps), windowed=True).most
    per_step = run.train.batch_size * run.model.ctx
    if run.model.kind == "user":  # declared by the organizer's script (swarmtrain.join)
        per_step = _table(found.manifest, "model").get("tokens_per_step") or per_step
    return Anchor(
        run_id=found.run_id,
        run=run,
        organizer=found.manifest["organizer"],
        base=round0_digest(run, found.manifest),
        max_tokens=2 * steps * per_step,
        max_bytes=int(run.swarm.max_update_mb * 2**20),
    )


def accept(run_id: str, manifest: dict, local=None) -> tuple[RunConfig, Corpus | None]:
    """Check that this node can train `manifest`; return its RunConfig and our corpus copy.
    `local` (NodeConfig) names where this node keeps the run's files (--data-files,
    --pretrained-dir, --tokenizer-dir); the round-0 weights are checked when the model is built
    (node.train.model.build_run_model(..., expect=manifest["model"])). A 'user' run has no corpus
    of ours (None): its model is checked against the manifest by node.train.layout.check."""
    run = run_config_of(run_id, manifest)
    if run.model.kind == "user":
        return run, None
    wanted = {k: _table(manifest, "data").get(k) for k in CORPUS_FIELDS}
    prints = {k: v for k, v in _table(manifest, "model").items() if k in FINGERPRINT_FIELDS}
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
