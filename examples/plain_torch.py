"""A plain PyTorch training script as a swarm volunteer: a small classifier on generated data.

Start a run (this peer organizes it; it prints the line others join with):
    python examples/plain_torch.py --data-dir peer-a
Join it from another terminal or machine:
    python examples/plain_torch.py --data-dir peer-b --run-id RUN --initial-peers MADDR

Only four lines differ from the script without a swarm: join, wrap the optimizer, loop until
done, and the `with` block (Ctrl+C leaves cleanly; the last finished round is kept on disk).
"""

import argparse
import zlib

import torch
import torch.nn as nn

import swarmtrain

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data-dir", required=True)
p.add_argument("--run-id", default="", help="the run to join (empty: start one)")
p.add_argument("--initial-peers", nargs="*", default=[])
p.add_argument("--rounds", type=int, default=3, help="leave after the swarm's state reaches this round")
p.add_argument("--export", default="", help="write the final state here as safetensors")
args = p.parse_args()

torch.manual_seed(0)  # every peer builds the same round-0 weights (the run pins their digest)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
inner = torch.optim.AdamW(model.parameters(), lr=3e-3)

# each peer's own data: points in 16-d, labelled by which of 4 fixed directions they lie closest to
data = torch.Generator().manual_seed(zlib.crc32(args.data_dir.encode()))
centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))


def batch(n: int = 32):
    x = torch.randn(n, 16, generator=data)
    return x, (x @ centers.t()).argmax(dim=1)


def accuracy(m: nn.Module) -> float:
    x, y = batch(512)
    with torch.no_grad():
        return (m(x).argmax(dim=1) == y).float().mean().item()


# a try on one machine: a cheap admission proof (3 bits); a public run keeps the defaults, which
# cost each new identity minutes of a core once, so that fresh keys are not free
swarm_settings = {
    "min_peers": 2,
    "collect_timeout": 20.0,
    "identity_work_bits": 3,
    "identity_work_n_log2": 6,
    "identity_stamp_bits": 3,
}
run = None if args.run_id else {"strategy": {"inner_steps": 10}, "swarm": swarm_settings}
settings = dict(data_dir=args.data_dir, host="127.0.0.1", max_rounds=args.rounds, threads=1, status_port=-1)
with swarmtrain.join(args.initial_peers, args.run_id, run=run, **settings) as swarm:
    opt = swarm.optimizer(model, inner, tokens_per_step=32, eval_fn=accuracy, eval_name="accuracy")
    if run is not None:
        print(f"organizer run_id={swarm.run_id} maddr={swarm.initial_peers[0]}", flush=True)
    while not opt.done:
        x, y = batch()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss.detach())  # every 10 steps: a swarm round
        opt.zero_grad()
    if args.export:
        swarm.export(args.export)
print(f"finished round={swarm.round} digest={swarm.digest} accuracy={accuracy(model):.3f}", flush=True)
