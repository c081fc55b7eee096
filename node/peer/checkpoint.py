"""The node's checkpoint on disk: written atomically, checked when read."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from node.errors import SwarmtrainError
from node.outer.state import SwarmState
from protocol.errors import ProtocolError
from protocol.tensors import decode_tensors

FILENAME = "checkpoint.swt"


def checkpoint_path(data_dir: str, run_id: str) -> Path:
    """One checkpoint per run, so joining another run never overwrites this one's."""
    return Path(data_dir) / "runs" / run_id / FILENAME


def save(path: Path, blob: bytes) -> None:
    """Write via a temp file, fsync, then rename: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, *, run_id: str, template: SwarmState) -> SwarmState | None:
    """The checkpoint of this run, None if there is none yet."""
    if not path.is_file():
        return None
    try:
        return SwarmState.from_bytes(path.read_bytes(), run_id=run_id, template=template)
    except ProtocolError as e:
        raise SwarmtrainError(
            f"checkpoint {path} is unreadable: {e}",
            f"move it away (mv {path} {path}.bad) and start again: the node then "
            "takes the swarm's state from its peers",
        ) from None


# ---------------------------------------------------------------------------- the model out
EXPORT_FILE = "swarm-state.safetensors"  # beside save_pretrained's model.safetensors, never over it


def read_state(path: Path, run_id: str) -> SwarmState:
    """A checkpoint read without the model that wrote it: its own tensor names are the layout,
    and its self-digest is checked all the same."""
    try:
        tensors, _ = decode_tensors(path.read_bytes())
        names = [k.removeprefix("param/") for k in tensors if k.startswith("param/")]
        buffers = sorted({k.split("/")[1] for k in tensors if k.startswith("outer/")})
        template = SwarmState(0, names, [tensors[f"param/{n}"] for n in names], {b: [] for b in buffers})
        return SwarmState.from_bytes(path.read_bytes(), run_id=run_id, template=template)
    except (OSError, ProtocolError) as e:
        raise SwarmtrainError(f"checkpoint {path} is unreadable: {e}", "export another node's checkpoint") from None


def write_safetensors(state: SwarmState, run_id: str, out: Path) -> Path:
    """The state's parameters (trained ones: the whole model, or the LoRA adapters) as
    safetensors, named as in the model, with the run, round, digest and the names in model order
    (what the digest is taken in; safetensors itself keeps no order) in its metadata."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    path = out / EXPORT_FILE
    meta = {"run": run_id, "round": str(state.round), "digest": state.digest, "names": json.dumps(state.names)}
    save_file({n: p.contiguous() for n, p in zip(state.names, state.params)}, str(path), metadata=meta)
    return path
