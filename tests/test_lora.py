"""LoRA: frozen base, only adapters trained, exchanged and aggregated, with every strategy (issue 10)."""

import copy

import pytest
import torch

pytest.importorskip("peft", reason="the [hf] extra is not installed (pip install 'swarmtrain[hf]')")

from node.config import ModelConfig, PeftConfig, RunConfig, StrategyConfig, TrainConfig  # noqa: E402
from node.errors import SwarmtrainError  # noqa: E402
from node.outer.state import SwarmState  # noqa: E402
from node.outer.strategies import STRATEGIES, make_strategy  # noqa: E402
from node.train import data  # noqa: E402
from node.train.model import build_run_model, trainable  # noqa: E402
from node.train.trainer import InnerTrainer  # noqa: E402

TINY = ModelConfig(kind="hf", arch="gpt2", d_model=64, n_layer=2, n_head=2, ctx=32)
LORA = PeftConfig(method="lora", r=2, alpha=4.0)
TEXT = torch.frombuffer(
    bytearray(("the quick brown fox jumps over the lazy dog. " * 200).encode()), dtype=torch.uint8
).long()


def test_only_adapters_train_and_the_base_stays_frozen():
    built = build_run_model(RunConfig(model=TINY, peft=LORA))
    names = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert built.trainable_params < 0.05 * built.total_params
    base_before = {n: p.clone() for n, p in built.model.named_parameters() if not p.requires_grad}
    trainer = InnerTrainer(built.model, TrainConfig(warmup_steps=1), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer.step(*data.windows(TEXT, 4, 32, gen))
    assert all(torch.equal(p, base_before[n]) for n, p in built.model.named_parameters() if not p.requires_grad)
    state = SwarmState.initial(built.model, [])
    assert state.names == names  # the swarm state (and the checkpoint) is the adapters only


def test_adapters_start_the_same_on_every_peer():
    a, b = build_run_model(RunConfig(model=TINY, peft=LORA)), build_run_model(RunConfig(model=TINY, peft=LORA))
    assert a.fingerprint["init_sha256"] == b.fingerprint["init_sha256"]


def test_bad_target_modules_name_the_fix():
    with pytest.raises(SwarmtrainError) as e:
        build_run_model(RunConfig(model=TINY, peft=PeftConfig(method="lora", target_modules=["nope"])))
    assert "target_modules" in e.value.help


def test_lora_on_the_byte_gpt():
    built = build_run_model(RunConfig(model=ModelConfig(d_model=32, n_layer=1, n_head=2, ctx=16), peft=LORA))
    assert {n.split(".")[2] for n, _ in built.model.named_parameters() if "lora_" in n} == {"qkv", "proj"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_exchanges_only_adapters_and_peers_stay_identical(name):
    """Three simulated peers, two rounds: the same payloads give the same bits everywhere, and a
    payload is the size of the adapters, not of the model."""
    run = RunConfig(model=TINY, peft=LORA, train=TrainConfig(warmup_steps=1))
    cfg = StrategyConfig(name=name, inner_steps=2, topk=8, chunk=16)
    peers = []
    for w in range(3):
        built = build_run_model(run)
        strat = make_strategy(cfg, [tuple(p.shape) for p in trainable(built.model)], run.train)
        peers.append(
            (
                InnerTrainer(built.model, run.train, torch.device("cpu")),
                strat,
                strat.new_worker(),
                SwarmState.initial(built.model, strat.outer_buffers),
                torch.Generator().manual_seed(w),
            )
        )
    full = make_strategy(cfg, [tuple(p.shape) for p in build_run_model(RunConfig(model=TINY)).model.parameters()])
    for _ in range(2):
        payloads = []
        for trainer, strat, worker, state, gen in peers:
            trainer.load_params(state.params)
            for _ in range(strat.inner_steps):
                trainer.step(*data.windows(TEXT, 4, 32, gen), apply=strat.local_optimizer)
            payloads.append(strat.make_update(state, worker, trainer.model))
        for _, strat, _, state, _ in peers:
            strat.apply(state, list(payloads))
    assert len({state.digest for *_, state, _ in peers}) == 1
    assert peers[0][3].round == 2
    assert len(payloads[0]) < 0.1 * full.codec.encoded_size()  # bytes on the wire shrink with the adapters
    before = SwarmState.initial(build_run_model(run).model, []).digest
    assert peers[0][3].digest != before


def test_state_round_trip_is_the_adapters_only():
    built = build_run_model(RunConfig(model=TINY, peft=LORA))
    state = SwarmState.initial(built.model, ["momentum"])
    blob = state.to_bytes("run-x")
    back = SwarmState.from_bytes(blob, run_id="run-x", template=copy.deepcopy(state))
    assert back.digest == state.digest
    assert len(blob) < 4 * built.total_params / 5
