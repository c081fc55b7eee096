"""node/config/validate.py: a bad value is refused when its file is read, naming the field, the
value, what is allowed and the file; every example run and benchmark preset stays valid."""

from dataclasses import fields, replace
from pathlib import Path
from typing import get_args

import pytest

from node.config import (
    NodeConfig,
    Range,
    RunConfig,
    StrategyConfig,
    StrategyName,
    WireDtype,
    load_node_config,
    load_run_config,
    type_hints,
    validate_node,
    validate_run,
)
from node.config.validate import NODE_RANGES, RUN_RANGES
from node.errors import SwarmtrainError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_run_loads(path):
    validate_run(load_run_config(path))


def test_defaults_are_valid():
    validate_run(RunConfig())
    validate_node(NodeConfig())


BAD_RUNS = [  # (run.toml text, what the message must name)
    ('[strategy]\nname = "magic"\n', ["name", "'magic'", "'diloco'"]),
    ('[strategy]\nwire_dtype = "int3"\n', ["wire_dtype", "'int3'", "'int8'"]),
    ('[strategy]\nvalues = "3bit"\n', ["values", "'3bit'", "'2bit'"]),
    ("[strategy]\nindex_bits = 13\n", ["index_bits", "13", "12 | 16"]),
    ('[robust]\naggregator = "median"\n', ["aggregator", "'median'", "'robust'"]),
    ('[train]\ninner_optimizer = "sgd"\n', ["inner_optimizer", "'sgd'", "'muon'"]),
    ('[data]\ncorpus = "wiki"\n', ["corpus", "'wiki'", "'stdlib'"]),
    ("[train]\ninner_lr = -0.001\n", ["[train] inner_lr", "-0.001", "> 0"]),
    ("[train]\ninner_lr = nan\n", ["[train] inner_lr", "nan", "> 0"]),
    ("[strategy]\nouter_lr = 0.0\n", ["[strategy] outer_lr", "0.0", "> 0"]),
    ("[strategy]\nouter_momentum = 1.0\n", ["[strategy] outer_momentum", "1.0", "[0, 1)"]),
    ("[strategy]\ninner_steps = 0\n", ["[strategy] inner_steps", "0", ">= 1"]),
    ("[robust]\ntrim_fraction = 1.5\n", ["[robust] trim_fraction", "1.5", "[0, 0.5)"]),
    ("[peft]\ndropout = 1.5\n", ["[peft] dropout", "1.5", "[0, 1)"]),
    ("[privacy]\ndelta = 1.0\n", ["[privacy] delta", "1.0", "(0, 1)"]),
    ("[swarm]\ncollect_timeout = 0.0\n", ["[swarm] collect_timeout", "0.0", "> 0"]),
    ("[swarm]\nmin_peers = 0\n", ["[swarm] min_peers", "0", ">= 1"]),
    ("[swarm]\nrelay_fanout = -1\n", ["[swarm] relay_fanout", "-1", ">= 0"]),
    ("[data]\nval_percent = 100\n", ["[data] val_percent", "100", "[0, 100)"]),
    ("[swarm]\nheartbeat_interval = 5.0\nheartbeat_ttl = 5.0\n", ["heartbeat_ttl", "heartbeat_interval"]),
    ('[strategy]\nname = "sparseloco"\nchunk = 128\n', ["chunk = 128", "index_bits = 12"]),
]


@pytest.mark.parametrize("text,named", BAD_RUNS, ids=[t.split("\n")[1] for t, _ in BAD_RUNS])
def test_a_bad_run_file_is_refused_when_loaded(tmp_path, text, named):
    f = tmp_path / "BAD.toml"
    f.write_text(text)
    with pytest.raises(SwarmtrainError) as e:
        load_run_config(f)
    assert str(f) in str(e.value)
    for part in named:
        assert part in str(e.value), (part, str(e.value))
    assert e.value.help  # the fix


def test_the_fix_names_the_range_the_file_and_what_the_field_means(tmp_path):
    f = tmp_path / "BAD.toml"
    f.write_text("[train]\ninner_lr = -0.001\n")
    with pytest.raises(SwarmtrainError) as e:
        load_run_config(f)
    assert "> 0" in e.value.help and str(f) in e.value.help and "learning rate" in e.value.help


@pytest.mark.parametrize(
    "table,change",
    [
        ("train", {"inner_lr": 0.0}),
        ("strategy", {"name": "magic"}),
        ("robust", {"trim_fraction": 0.5}),
        ("peft", {"method": "qlora"}),
    ],
)
def test_validate_run_checks_configs_built_in_code(table, change):
    run = RunConfig()
    bad = replace(run, **{table: replace(getattr(run, table), **change)})
    with pytest.raises(SwarmtrainError, match=f"\\[{table}\\] {next(iter(change))}"):
        validate_run(bad)


def test_every_number_of_a_run_has_a_range():
    """A new numeric setting needs its range here too."""
    numbers = {
        f"{t.name}.{f.name}"
        for t in fields(RunConfig)
        if t.name != "name"
        for f in fields(type_hints(RunConfig)[t.name])
        if type_hints(type_hints(RunConfig)[t.name])[f.name] in (int, float, float | None)  # None: unset
    }
    assert numbers - set(RUN_RANGES) == set()
    assert set(RUN_RANGES) - numbers == set()
    node_numbers = {f.name for f in fields(NodeConfig) if type_hints(NodeConfig)[f.name] in (int, float)}
    assert set(NODE_RANGES) == node_numbers


def test_benchmark_presets_are_valid_runs():
    """Every preset but DDP-Muon, a reference of the simulator only (bench/quality/ddp_muon.py: its
    Newton-Schulz matmuls would not repeat bit for bit across peers), which a run file refuses."""
    from bench.quality import ddp_muon
    from bench.quality.presets import PRESETS

    for name, (strategy, train) in PRESETS.items():
        if strategy.name == ddp_muon.NAME:
            with pytest.raises(SwarmtrainError, match="ddp-muon"):
                validate_run(RunConfig(strategy=strategy, train=train), f"preset {name}")
        else:
            validate_run(RunConfig(strategy=strategy, train=train), f"preset {name}")


def test_the_literals_match_what_the_code_implements():
    from node.outer.strategies import STRATEGIES
    from node.outer.strategies.diloco import LOW_BIT, LOW_RANK

    assert set(get_args(StrategyName)) == set(STRATEGIES)
    assert set(get_args(WireDtype)) == {"float16", "float32", "int8", *LOW_BIT, *LOW_RANK}
    assert StrategyConfig().name in get_args(StrategyName)


def test_node_file_with_a_wrong_choice_names_field_choices_and_file(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('log_format = "xml"\n')
    with pytest.raises(SwarmtrainError) as e:
        load_node_config(str(f), {}, {})
    assert all(s in str(e.value) for s in (str(f), "log_format", "'xml'", "'json'"))


def test_node_env_with_a_wrong_choice_names_the_variable():
    with pytest.raises(SwarmtrainError, match="SWARMTRAIN_EVENT_LOOP='trio' is not one of") as e:
        load_node_config(None, {"SWARMTRAIN_EVENT_LOOP": "trio"}, {})
    assert "'asyncio'" in e.value.help


@pytest.mark.parametrize(
    "flags,named",
    [
        ({"slowdown": 0.5}, "slowdown = 0.5 (from flag --slowdown) is out of range"),
        ({"status_port": -2}, "status_port = -2 (from flag --status-port)"),
        ({"startup_timeout": 0.0}, "startup_timeout = 0.0"),
        ({"log_format": "xml"}, "log_format = 'xml' (from flag --log-format)"),
        ({"device": "gpu"}, "device = 'gpu' (from flag --device) is not known"),
    ],
)
def test_node_values_are_checked_with_their_source(flags, named):
    with pytest.raises(SwarmtrainError) as e:
        load_node_config(None, {}, flags)
    assert named in str(e.value)


def test_node_values_from_the_environment_say_so():
    with pytest.raises(SwarmtrainError, match=r"threads = -1 \(from env SWARMTRAIN_THREADS\)"):
        load_node_config(None, {"SWARMTRAIN_THREADS": "-1"}, {})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_pass(device):
    validate_node(NodeConfig(device=device))


def test_range_text_and_bounds():
    assert (str(Range(0, low_open=True)), str(Range(1)), str(Range(0, 1, high_open=True))) == (
        "> 0",
        ">= 1",
        "in [0, 1)",
    )
    assert str(Range(-1, 65535)) == "in [-1, 65535]" and str(Range(0, 1, True, True)) == "in (0, 1)"
    r = Range(0, 1, high_open=True)
    assert r.holds(0) and r.holds(0.99) and not r.holds(1) and not r.holds(-0.1) and not r.holds(float("nan"))
    assert not Range(0).holds(float("inf"))
