"""`swarmtrain export`: the swarm's state from a node's checkpoint, as safetensors (the trained
parameters, named as in the model), and for Hugging Face runs also as save_pretrained, which
transformers loads with AutoModelForCausalLM.from_pretrained."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from node.errors import SwarmtrainError
from node.peer import checkpoint
from node.peer import manifest as manifests
from node.train.model import build_run_model, trainable


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", metavar="DIR", required=True, help="the node's --data-dir (runs/<run id>/checkpoint.swt)"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write into (created if missing)")
    p.add_argument("--run-id", default="", help="the run to export, when the data dir holds several")


def run_export(args: argparse.Namespace) -> int:
    data, out = Path(args.data_dir), Path(args.out)
    run_id = args.run_id or _only_run(data)
    state = checkpoint.read_state(checkpoint.checkpoint_path(str(data), run_id), run_id)
    print(f"run {run_id}: round {state.round}, digest {state.digest[:16]}, {len(state.params)} tensors")
    print(f"wrote {checkpoint.write_safetensors(state, run_id, out)}")
    found = manifests.read_copy(data / run_id, run_id)  # the node's copy of the signed manifest
    run = manifests.run_config_of(run_id, found.manifest) if found else None
    if run is None or run.model.kind != "hf":
        why = "no manifest copy beside the checkpoint" if run is None else f"a {run.model.kind} run"
        print(f"no save_pretrained: {why} (only Hugging Face runs have one; swarm.export() writes it for those)")
        return 0
    if run.peft.method != "none":
        print("no save_pretrained: the CLI's LoRA adapters are in the safetensors file (named as in the model)")
        return 0
    from node.train.hf import export_pretrained

    built = build_run_model(run, expect=found.manifest["model"])  # the run's files, checked as a volunteer does
    with torch.no_grad():
        for p, src in zip(trainable(built.model), state.params, strict=True):
            p.copy_(src)
    for d in export_pretrained(built.model, out):
        print(f"wrote save_pretrained into {d}")
    return 0


def _only_run(data: Path) -> str:
    runs = sorted(p.parent.name for p in (data / "runs").glob(f"*/{checkpoint.FILENAME}"))
    if len(runs) != 1:
        raise SwarmtrainError(
            f"{data} holds {'no checkpoint' if not runs else f'checkpoints of {len(runs)} runs: ' + ', '.join(runs)}",
            "pass --run-id RUN" if runs else "point --data-dir at a node's data directory (the one it joined with)",
        )
    return runs[0]
