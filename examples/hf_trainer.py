"""A Hugging Face Trainer run as a swarm volunteer: a tiny GPT-2 built from a config (random
weights, no downloads) fine-tuned on generated token sequences, optionally with LoRA (peft).

Start a run (this peer organizes it and prints the line others join with):
    python examples/hf_trainer.py --data-dir peer-a
Join it:
    python examples/hf_trainer.py --data-dir peer-b --run-id RUN --initial-peers MADDR

What differs from the script without a swarm: join, the callback, the `with` block, the export.
"""

import argparse
import zlib

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

import swarmtrain
from swarmtrain.hf import SwarmCallback

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data-dir", required=True)
p.add_argument("--run-id", default="", help="the run to join (empty: start one)")
p.add_argument("--initial-peers", nargs="*", default=[])
p.add_argument("--rounds", type=int, default=2, help="leave after the swarm's state reaches this round")
p.add_argument("--lora", action="store_true", help="train LoRA adapters only (peft); the base stays frozen")
p.add_argument("--export", default="", help="write the final state here (safetensors + save_pretrained)")
args = p.parse_args()

torch.manual_seed(0)  # every peer builds the same round-0 weights (the run pins their digest)
config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
model = GPT2LMHeadModel(config)
if args.lora:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))


class Sequences(torch.utils.data.Dataset):
    """This peer's own data: counting sequences mod 64 from random starts (learnable, never shared)."""

    def __init__(self, seed: int, n: int = 256):
        self.starts = torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        ids = (self.starts[i] + torch.arange(16)) % 64
        return {"input_ids": ids, "labels": ids}


targs = TrainingArguments(
    output_dir=f"{args.data_dir}/trainer",
    per_device_train_batch_size=8,
    learning_rate=3e-3,
    max_steps=10_000,  # the swarm's max_rounds ends training first
    logging_steps=5,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
    dataloader_num_workers=0,
)
# a try on one machine: a cheap admission proof (3 bits); a public run keeps the defaults, which
# cost each new identity minutes of a core once, so that fresh keys are not free
swarm_settings = {
    "min_peers": 2,
    "collect_timeout": 20.0,
    "identity_work_bits": 3,
    "identity_work_n_log2": 6,
    "identity_stamp_bits": 3,
}
run = None if args.run_id else {"strategy": {"inner_steps": 5}, "swarm": swarm_settings}
settings = dict(data_dir=args.data_dir, host="127.0.0.1", max_rounds=args.rounds, threads=1, status_port=-1)
swarm = swarmtrain.join(args.initial_peers, args.run_id, run=run, **settings)


class SayWhere(TrainerCallback):
    """Prints what others join with, once SwarmCallback (before it) has joined."""

    def on_train_begin(self, *_, **__):
        if run is not None:
            print(f"organizer run_id={swarm.run_id} maddr={swarm.initial_peers[0]}", flush=True)


data = Sequences(zlib.crc32(args.data_dir.encode()))
callbacks = [SwarmCallback(swarm, tokens_per_step=8 * 16), SayWhere()]
trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=callbacks)
with swarm:
    trainer.train()
    if args.export:
        swarm.export(args.export)
print(f"finished round={swarm.round} digest={swarm.digest}", flush=True)
