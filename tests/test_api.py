"""The swarmtrain API without a network: the manifest's model layout and its errors, the register
calls, and the model out (`swarmtrain export` of a Hugging Face run, peft adapters)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
import torch.nn as nn

import swarmtrain
from node.config import RunConfig, from_dict, validate_run
from node.errors import SwarmtrainError
from node.outer.state import SwarmState
from node.outer.strategies import STRATEGIES, make_strategy
from node.outer.strategies.diloco import WIRE_CODECS, DiLoCo
from node.peer import checkpoint
from node.peer import manifest as manifests
from node.train import layout
from node.train.model import build_run_model, trainable
from protocol import signed
from protocol.codecs import DenseCodec
from tests.fakes import new_key


def mlp(width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))


def user_run(model: nn.Module) -> tuple[str, dict]:
    run = RunConfig(name="mine", model=from_dict(RunConfig, {"model": {"kind": "user"}}, "t").model)
    manifest = manifests.build_manifest(run, None, pinned=layout.pin(model, 32))
    run_id, envelope = manifests.sign(new_key()[0], manifest)
    return run_id, signed.open_manifest(envelope, run_id)  # as a joiner reads it


def test_a_user_run_pins_the_layout_and_a_peer_with_another_model_is_told_the_difference():
    run_id, manifest = user_run(mlp())
    run, corpus = manifests.accept(run_id, manifest)  # no corpus of ours, the settings round-trip
    assert corpus is None and run.model.kind == "user" and run.name == "mine"
    assert manifest["model"]["layout"][0] == ["0.weight", [8, 4], "float32"]
    layout.check(mlp(), manifest["model"])  # the same model: accepted
    with pytest.raises(SwarmtrainError, match=r"parameter 0: yours is '0.weight' of shape \(16, 4\)"):
        layout.check(mlp(width=16), manifest["model"])
    with pytest.raises(SwarmtrainError, match="round-0 weights differ") as e:
        layout.check(mlp(seed=1), manifest["model"])
    assert "torch.manual_seed" in e.value.help
    frozen = mlp()
    frozen[0].weight.requires_grad_(False)
    with pytest.raises(SwarmtrainError, match="trained parameter 0"):
        layout.check(frozen, manifest["model"])
    with pytest.raises(SwarmtrainError, match="bring from Python"):
        build_run_model(run)  # the CLI cannot build it, and says how to join


def test_a_registered_strategy_and_codec_are_built_and_refused_before_registration():
    class Halved(DiLoCo):
        name = "halved-diloco"

    class Float32Named(DenseCodec):
        def __init__(self, shapes):
            super().__init__(shapes, "float32")

    run = from_dict(RunConfig, {"strategy": {"name": "halved-diloco"}}, "t")
    with pytest.raises(SwarmtrainError, match="'halved-diloco' is not one of") as e:
        validate_run(run)
    assert "swarmtrain.register_strategy" in e.value.help
    try:
        swarmtrain.register_strategy("halved-diloco", Halved)
        swarmtrain.register_codec("my-f32", Float32Named)
        validate_run(run)
        assert isinstance(make_strategy(run.strategy, [(2, 2)]), Halved)
        mine = from_dict(RunConfig, {"strategy": {"wire_dtype": "my-f32"}}, "t")
        validate_run(mine)
        assert isinstance(make_strategy(mine.strategy, [(2, 2)]).codec, Float32Named)
        with pytest.raises(SwarmtrainError, match="already built in"):
            swarmtrain.register_strategy("diloco", Halved)
        with pytest.raises(SwarmtrainError, match="already registered") as e:
            swarmtrain.register_strategy("halved-diloco", Halved)
        assert "replace=True" in e.value.help
    finally:
        STRATEGIES.pop("halved-diloco", None)
        WIRE_CODECS.pop("my-f32", None)
        from node.config.validate import REGISTERED

        REGISTERED["name"].discard("halved-diloco")
        REGISTERED["wire_dtype"].discard("my-f32")


HF_RUN = {"name": "tiny", "model": {"kind": "hf", "arch": "gpt2", "d_model": 32, "n_layer": 2, "n_head": 2, "ctx": 16}}


def test_swarmtrain_export_of_a_hugging_face_run_loads_with_transformers_to_equal_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    from node.commands.export import run_export

    run = from_dict(RunConfig, HF_RUN, "t")
    built = build_run_model(run)
    manifest = manifests.build_manifest(run, manifests.load_corpus(run.data), built)
    run_id, envelope = manifests.sign(new_key()[0], manifest)
    state = SwarmState.initial(built.model, ["momentum"])
    for i, p in enumerate(state.params):  # a state no init gives: every tensor moved
        p.add_(0.01 * (i + 1))
    state.round = 3
    manifests.keep_copy(tmp_path / "data" / run_id, envelope)
    checkpoint.save(checkpoint.checkpoint_path(str(tmp_path / "data"), run_id), state.to_bytes(run_id))

    assert run_export(argparse.Namespace(data_dir=str(tmp_path / "data"), out=str(tmp_path / "out"), run_id="")) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        for p, src in zip(trainable(built.model), state.params):
            p.copy_(src)
    ids = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, built.model.eval()(ids))  # tolerance 0


def test_a_peft_model_exports_adapters_that_reload_to_equal_logits_and_pins_only_them(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from node.train.hf import export_pretrained

    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    )
    model = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    with torch.no_grad():
        for p in trainable(model):
            p.add_(0.05)  # adapters that change the output
    pinned = layout.pin(model, 1)
    assert all("lora_" in name for name, _, _ in pinned["layout"]) and pinned["frozen_sha256"]
    export_pretrained(model, tmp_path / "out")
    again = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "out" / "adapter")).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        want = model.eval()(input_ids=ids).logits
        assert torch.equal(again(input_ids=ids).logits, want)  # the adapters: tolerance 0
        assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-4)  # merged: rounding differs


def test_a_run_of_the_cli_model_is_joined_with_swarmtrain_run_model_and_another_model_is_refused():
    run = from_dict(RunConfig, {"model": {"d_model": 32, "n_layer": 2, "n_head": 2, "ctx": 32}}, "test")
    reference = build_run_model(run).model
    torch.manual_seed(123)  # other round-0 weights: the swarm's state replaces them as it joins
    layout.check_like(swarmtrain.run_model(run), reference)
    wider = from_dict(RunConfig, {"model": {"d_model": 64, "n_layer": 2, "n_head": 2, "ctx": 32}}, "test")
    with pytest.raises(SwarmtrainError, match="differs from the run's at trained parameter 0"):
        layout.check_like(swarmtrain.run_model(wider), reference)
    deeper = from_dict(RunConfig, {"model": {"d_model": 32, "n_layer": 3, "n_head": 2, "ctx": 32}}, "test")
    with pytest.raises(SwarmtrainError, match="yours is .blocks.2.ln1.weight"):
        layout.check_like(swarmtrain.run_model(deeper), reference)
