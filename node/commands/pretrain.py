"""`swarmtrain pretrain`: train a run's Hugging Face model alone (no swarm) and save it locally.

The first half of a fine-tuning recipe: pretrain a small model on one corpus, save it with
save_pretrained (config.json + model.safetensors, and the tokenizer.json if the run has one),
then point a LoRA run's `[model] pretrained` at that directory.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import torch

from node.config import load_run_config
from node.errors import SwarmtrainError
from node.train import data
from node.train.hf import save_pretrained
from node.train.model import build_run_model
from node.train.tokenizer import TOKENIZER_FILE
from node.train.trainer import InnerTrainer, evaluate_bpb, warmup_cosine
from node.watch.progress import Reporter


def run_pretrain(
    run_path: str, steps: int, out_dir: str, stop: threading.Event, out: Reporter, eval_every: int = 100
) -> dict:
    run = load_run_config(run_path)
    if run.model.kind != "hf" or run.peft.method != "none":
        raise SwarmtrainError(
            "pretrain trains and saves Hugging Face models without adapters",
            'use a run with [model] kind = "hf" and no [peft] table',
        )
    built = build_run_model(run)
    corpus = data.load_corpus(run.data)
    tokens = data.train_tokens(corpus, run.data, None, built.tokenizer)
    vx, vy = data.val_set(corpus, run.data, run.model.ctx, built.tokenizer)
    trainer = InnerTrainer(built.model, run.train, torch.device("cpu"), warmup_cosine(run.train, steps))
    gen = torch.Generator().manual_seed(run.train.seed)
    out.event("pretrain_start", params=built.total_params, tokens=data.token_count(tokens), corpus=corpus.origin)
    curve, t0 = [], time.monotonic()
    for step in range(1, steps + 1):
        if stop.is_set():
            break
        loss = trainer.step(*data.windows(tokens, run.train.batch_size, run.model.ctx, gen))
        if step % eval_every == 0 or step == steps:
            bpb = evaluate_bpb(trainer.model, vx, vy, torch.device("cpu"))
            curve.append({"step": step, "val_bpb": bpb})
            out.event("pretrain", step=step, loss=loss, val_bpb=bpb, seconds=round(time.monotonic() - t0, 1))
    path = save_pretrained(built.model, out_dir)
    if built.tokenizer is not None:
        shutil.copyfile(built.tokenizer.file, Path(out_dir) / TOKENIZER_FILE)
    out.event("pretrain_saved", out=str(path), steps=trainer.steps)
    return {"out": str(path), "steps": trainer.steps, "curve": curve, "params": built.total_params}
