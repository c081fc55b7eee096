"""The swarmtrain API's overhead per inner step against the plain loop (issue 18's target: under
2% of step time on the default model).

One process: the default byte GPT (node.config ModelConfig()), AdamW, batches of random bytes.
Blocks of the plain loop and of the same loop through `swarm.optimizer(...)` alternate, so that
a shared machine's noise falls on both alike. The swarm is a real one-peer run (its DHT and
p2pd started) with H larger than the steps timed, so no round falls inside a timed block: what
is measured is what the wrapper adds to every step, not the rounds (those are the exchange's
and bench swarm's to measure).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from node.config import ModelConfig, TrainConfig
from node.train.model import build_model, loss_fn


def run_api_overhead(*, steps: int, blocks: int, threads: int, json_path: str) -> dict:
    import swarmtrain

    torch.set_num_threads(threads)
    cfg, train = ModelConfig(), TrainConfig()
    model = build_model(cfg, seed=0)
    inner = torch.optim.AdamW(model.parameters(), lr=train.inner_lr)
    gen = torch.Generator().manual_seed(0)

    def batch():
        x = torch.randint(0, 256, (train.batch_size, cfg.ctx + 1), generator=gen)
        return x[:, :-1], x[:, 1:]

    def timed(opt) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            x, y = batch()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return (time.perf_counter() - t) / steps

    run = {"strategy": {"inner_steps": 10 * steps * blocks + 10}}
    with tempfile.TemporaryDirectory() as tmp:
        swarm = swarmtrain.join(run=run, data_dir=tmp, host="127.0.0.1", status_port=-1, log_format="json")
        with swarm:
            wrapped = swarm.optimizer(model, inner, tokens_per_step=train.batch_size * cfg.ctx)
            timed(inner), timed(wrapped)  # warm-up: allocator, caches
            plain_s, api_s = [], []
            for _ in range(blocks):
                plain_s.append(timed(inner))
                api_s.append(timed(wrapped))
            swarm.leave(interrupted=True)
    plain, api = statistics.median(plain_s), statistics.median(api_s)
    row = {
        "benchmark": "api-overhead",
        "model_params": sum(p.numel() for p in model.parameters()),
        "batch": [train.batch_size, cfg.ctx],
        "threads": threads,
        "steps_per_block": steps,
        "blocks": blocks,
        "plain_step_s": plain,
        "api_step_s": api,
        "overhead_pct": 100 * (api - plain) / plain,
        "plain_blocks_s": plain_s,
        "api_blocks_s": api_s,
    }
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(row, indent=2))
    return row
