from dataclasses import fields

import pytest

from node.config import (
    DataConfig,
    ModelConfig,
    NodeConfig,
    PeftConfig,
    PrivacyConfig,
    RobustConfig,
    RunConfig,
    StrategyConfig,
    SwarmConfig,
    TrainConfig,
    field_docs,
    load_node_config,
    load_run_config,
)
from node.errors import SwarmtrainError


@pytest.mark.parametrize(
    "cls",
    [
        NodeConfig,
        RunConfig,
        ModelConfig,
        DataConfig,
        TrainConfig,
        StrategyConfig,
        SwarmConfig,
        RobustConfig,
        PeftConfig,
        PrivacyConfig,
    ],
)
def test_every_field_has_a_docstring(cls):
    docs = field_docs(cls)
    assert [f.name for f in fields(cls) if not docs.get(f.name)] == []


def test_keyword_only():
    with pytest.raises(TypeError):
        NodeConfig([], False)  # positional use is refused


def test_precedence_defaults_file_env_flags(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('port = 1000\nthreads = 3\nname = "from-file"\ndevice = "cpu"\n')
    env = {
        "SWARMTRAIN_PORT": "2000",
        "SWARMTRAIN_THREADS": "4",
        "SWARMTRAIN_INITIAL_PEERS": "/ip4/1.2.3.4/tcp/1/p2p/A, /ip4/1.2.3.4/tcp/2/p2p/B",
    }
    cfg, src = load_node_config(str(f), env, {"port": 3000, "name": None})
    assert (cfg.port, cfg.threads, cfg.name, cfg.device, cfg.host) == (3000, 4, "from-file", "cpu", "0.0.0.0")
    assert cfg.initial_peers == ["/ip4/1.2.3.4/tcp/1/p2p/A", "/ip4/1.2.3.4/tcp/2/p2p/B"]
    assert src["port"] == "flag --port"
    assert src["threads"] == "env SWARMTRAIN_THREADS"
    assert src["name"].startswith("file ")
    assert src["host"] == "default"


def test_unknown_file_key_names_the_known_ones(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text("prot = 5\n")
    with pytest.raises(SwarmtrainError) as e:
        load_node_config(str(f), {}, {})
    assert "prot" in str(e.value) and "port" in e.value.help


def test_bad_env_value_names_the_variable():
    with pytest.raises(SwarmtrainError, match="SWARMTRAIN_PORT"):
        load_node_config(None, {"SWARMTRAIN_PORT": "eighty"}, {})


def test_wrong_type_in_file(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('port = "80"\n')
    with pytest.raises(SwarmtrainError, match="port must be of type int"):
        load_node_config(str(f), {}, {})


def test_port_range_checked():
    with pytest.raises(SwarmtrainError, match="out of range"):
        load_node_config(None, {}, {"port": 70000})


def test_run_toml_sections(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[run]\nname = "x"\n[model]\nd_model = 64\n[strategy]\ninner_steps = 7\n')
    run = load_run_config(f)
    assert (run.name, run.model.d_model, run.model.n_layer, run.strategy.inner_steps) == ("x", 64, 4, 7)


def test_run_toml_unknown_section_key(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("[model]\nwidth = 64\n")
    with pytest.raises(SwarmtrainError, match="width"):
        load_run_config(f)


def test_invalid_toml_is_a_clear_error(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("[model\n")
    with pytest.raises(SwarmtrainError, match="not valid TOML"):
        load_run_config(f)


def test_swarmtrain_log_turns_loggers_up_and_is_no_unknown_setting():
    import logging

    from node.cli import verbose_loggers
    from node.config.load import check_env_names

    check_env_names({"SWARMTRAIN_LOG": "debug"})  # not refused as a misspelt setting
    with pytest.raises(SwarmtrainError, match="SWARMTRAIN_LOGS"):
        check_env_names({"SWARMTRAIN_LOGS": "debug"})
    rounds, scatter = logging.getLogger("swarmtrain.rounds"), logging.getLogger("swarmtrain.scatter")
    before = rounds.level, scatter.level
    try:
        verbose_loggers("rounds=debug, scatter=loud,")  # an unknown level is ignored
        assert rounds.level == logging.DEBUG and scatter.level == before[1]
    finally:
        rounds.setLevel(before[0])
