"""The hivemind.Optimizer baseline of `bench swarm` (`--strategies hivemind`): one peer process.

The same model, data and inner AdamW as a swarmtrain volunteer (run.toml's [model], [data],
[train]), trained by hivemind's own collaborative optimizer: gradients are accumulated
locally and averaged by all-reduce across peers every `target_batch_size` samples (its
default mode), dense fp32 (its default: no compression). The target batch is every peer's
[strategy] inner_steps batches, so that an averaging round covers the same tokens as one of
our rounds. Writes a result JSON in the volunteer's shape (timeline, val_bpb_timeline) so that
bench/swarm.py measures both alike.

    python -m bench.hivemind_peer bootstrap --host 127.0.0.1
    python -m bench.hivemind_peer join --run run.toml --initial-peers MADDR --peers 4 --index 1 ...

Bytes: hivemind does not count them, so the result carries butterfly all-reduce's own figure
per averaging round, 2 (N-1)/N x 4 bytes x params up and as much down (hivemind's
AllReduceRunner: each peer sends N-1 parts of its gradient and sends back its averaged part).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from functools import partial
from pathlib import Path

import torch

RUN_ID = "swarmtrain-bench-hivemind"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    import hivemind  # here, not at import: it changes torch's sharing strategy (DESIGN.md)

    maddrs = [f"/ip4/{args.host}/tcp/0"]
    if args.command == "bootstrap":
        dht = hivemind.DHT(start=True, host_maddrs=maddrs, startup_timeout=60)
        print(f"event=bootstrap_ready maddrs={','.join(str(a) for a in dht.get_visible_maddrs())}", flush=True)
        stop.wait()
        dht.shutdown()
        return 0
    dht = hivemind.DHT(start=True, host_maddrs=maddrs, initial_peers=args.initial_peers, startup_timeout=60)
    try:
        train(args, dht, stop)
    finally:
        dht.shutdown()
    return 0


def train(args, dht, stop: threading.Event) -> None:
    import hivemind

    from node.config import load_run_config
    from node.train import data
    from node.train.model import build_model, loss_fn
    from node.train.trainer import evaluate_bpb

    run = load_run_config(args.run)
    model = build_model(run.model, run.train.seed)
    corpus = data.load_corpus(run.data)
    tokens = data.train_tokens(corpus, run.data, args.index % run.data.shards)
    val = data.val_set(corpus, run.data, run.model.ctx) if args.eval else None
    batch, per_round = run.train.batch_size, run.strategy.inner_steps
    opt = hivemind.Optimizer(
        dht=dht,
        run_id=RUN_ID,
        params=model.parameters(),
        batch_size_per_step=batch,
        target_batch_size=args.peers * batch * per_round,
        optimizer=partial(
            torch.optim.AdamW, lr=run.train.inner_lr, betas=(0.9, 0.95), weight_decay=run.train.weight_decay
        ),
        matchmaking_time=3.0,
        averaging_timeout=60.0,
        tracker_opts=dict(max_refresh_period=1.0),
        averager_opts=dict(request_timeout=1.0),
        verbose=False,
    )
    print(f"event=joined peer={dht.peer_id} strategy=hivemind", flush=True)
    params = sum(p.numel() for p in model.parameters())
    per_avg = int(2 * (args.peers - 1) / args.peers * 4 * params)
    gen = torch.Generator().manual_seed(1000 + args.index)
    out = Result(started=time.time())

    def save() -> None:
        if args.result_json:
            Path(args.result_json).write_text(json.dumps(out.summary(params, per_avg), indent=2))

    epoch = opt.local_epoch
    while not stop.is_set():
        x, y = data.windows(tokens, batch, run.model.ctx, gen)
        t = time.monotonic()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
        spent = time.monotonic() - t
        out.compute_s += spent  # forward and backward; the step below may average
        if args.slowdown > 1:  # stand in for a slower machine, as a volunteer's --slowdown
            stop.wait((args.slowdown - 1) * spent)
        opt.step()
        out.tokens += batch * run.model.ctx
        if opt.local_epoch != epoch:  # an averaging round finished: one row, as a volunteer's round
            epoch = opt.local_epoch
            out.rounds += 1
            out.sent += per_avg
            bpb = evaluate_bpb(model, *val, torch.device("cpu")) if val is not None else None
            out.row(epoch, bpb)
            save()  # after every round: a step stuck in averaging at SIGTERM loses nothing
            peers = opt.tracker.global_progress.num_peers
            print(
                f"event=round round={epoch} peers={peers} loss={float(loss):.3f} "
                + (f"val_bpb={bpb:.3f}" if bpb is not None else ""),
                flush=True,
            )
    save()  # first: hivemind's shutdown can hang on peers that are gone
    opt.shutdown()


class Result:
    """The volunteer's result JSON fields that bench swarm reads."""

    def __init__(self, started: float):
        self.started, self.compute_s, self.tokens, self.rounds, self.sent = started, 0.0, 0, 0, 0
        self.timeline: list[list] = []
        self.bpb: list[list] = []

    def row(self, epoch: int, bpb: float | None) -> None:
        now = round(time.time(), 3)
        self.timeline.append([now, epoch, self.tokens, self.tokens, round(self.compute_s, 3), self.sent, self.sent, 0])
        if bpb is not None:
            self.bpb.append([now, epoch, bpb])

    def summary(self, params: int, per_avg: int) -> dict:
        from node.watch.report import TIMELINE

        return {
            "strategy": "hivemind",
            "rounds_completed": self.rounds,
            "rounds_failed": 0,
            "timeline": self.timeline,
            "timeline_fields": TIMELINE,
            "val_bpb": [b for _, _, b in self.bpb],
            "val_bpb_timeline": self.bpb,
            "params_trainable": params,
            "bytes_per_round_estimated": per_avg,
            "tokens_trained": self.tokens,
            "compute_seconds": round(self.compute_s, 3),
        }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.hivemind_peer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("bootstrap", help="a plain hivemind DHT the trainers join")
    boot.add_argument("--host", default="127.0.0.1")
    join = sub.add_parser("join", help="one trainer")
    join.add_argument("--run", required=True, help="run.toml: [model], [data], [train], [strategy] inner_steps")
    join.add_argument("--initial-peers", nargs="+", required=True)
    join.add_argument("--host", default="127.0.0.1")
    join.add_argument("--peers", type=int, required=True, help="trainers in the swarm (sizes the target batch)")
    join.add_argument("--index", type=int, default=0, help="this trainer's number (its data shard and batches)")
    join.add_argument("--threads", type=int, default=0)
    join.add_argument("--slowdown", type=float, default=1.0, help="run this many times slower (a slow peer)")
    join.add_argument("--eval", action="store_true", help="held-out bits per byte after every averaging round")
    join.add_argument("--result-json", default="")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
