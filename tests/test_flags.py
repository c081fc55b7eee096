"""Flags made from the config dataclasses (issue 10, item 7): same names, same precedence."""

import json

import pytest

from node import cli
from node.config import NodeConfig, RunConfig, load_run_config
from node.errors import SwarmtrainError


def test_only_given_flags_are_returned_and_types_follow_the_dataclass():
    args = cli._parse(
        [
            "join",
            "--port",
            "31337",
            "--initial-peers",
            "/ip4/1.2.3.4/tcp/1/p2p/A",
            "/ip4/1.2.3.4/tcp/2/p2p/B",
            "--new-swarm",
            "--status-port",
            "-1",
            "--startup-timeout=90",
            "--no-eval",
        ]
    )
    assert args.node_flags == {
        "port": 31337,
        "initial_peers": ["/ip4/1.2.3.4/tcp/1/p2p/A", "/ip4/1.2.3.4/tcp/2/p2p/B"],
        "new_swarm": True,
        "status_port": -1,
        "startup_timeout": 90.0,
        "eval": False,
    }


def test_subcommand_options_and_node_flags_mix():
    args = cli._parse(["bootstrap", "--run", "r.toml", "--data-dir", "d", "--config", "n.toml"])
    assert (args.run, args.config, args.node_flags) == ("r.toml", "n.toml", {"data_dir": "d"})
    args = cli._parse(["bench", "byzantine", "--attackers", "3", "5", "--scoring", "--json", "x.json"])
    assert (args.attackers, args.scoring, args.node_flags) == ([3, 5], True, {})
    args = cli._parse(["demo", "--run", "examples/hf-lora.toml", "--peers", "2", "--late-joiner"])
    assert (args.main.run, args.main.peers, args.main.late_joiner, args.main.rounds) == (
        "examples/hf-lora.toml",
        2,
        True,
        0,
    )
    args = cli._parse(["ray-launch", "--volunteers", "2", "--max-rounds", "3"])
    assert (args.main.volunteers, args.node_flags) == (2, {"max_rounds": 3})


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli._parse(["join", "--prot", "5"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli._parse(["bench", "quality", "--json", "q.json", "--port", "5"])
    assert e.value.code == 2


def test_config_show_says_where_each_value_came_from(tmp_path, monkeypatch, capsys):
    f = tmp_path / "node.toml"
    f.write_text('port = 1000\nthreads = 3\nname = "from-file"\n')
    monkeypatch.setenv("SWARMTRAIN_THREADS", "4")
    monkeypatch.setenv("SWARMTRAIN_PORT", "2000")
    assert cli.main(["config", "show", "--json", "--config", str(f), "--port", "3000"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["node"]}
    assert (rows["port"]["value"], rows["port"]["source"]) == (3000, "flag --port")
    assert (rows["threads"]["value"], rows["threads"]["source"]) == (4, "env SWARMTRAIN_THREADS")
    assert rows["name"]["source"].startswith("file ") and rows["host"]["source"] == "default"


def test_help_documents_every_node_flag_and_the_env_rule(capsys):
    with pytest.raises(SystemExit):
        cli._parse(["join", "--help"])
    out = capsys.readouterr().out
    for name in (
        "--initial-peers",
        "--pretrained-dir",
        "--data-files",
        "--startup-timeout",
        "SWARMTRAIN_STARTUP_TIMEOUT",
    ):
        assert name in out


def test_new_tables_take_literal_optional_and_dict_fields(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text(
        '[model]\nkind = "hf"\narch = "llama"\nhf_options = { rope_theta = 10000.0, tie_word_embeddings = true }\n'
        '[peft]\nmethod = "lora"\nr = 4\ntarget_modules = ["q_proj"]\n[privacy]\nclip = 1\nnoise_multiplier = 0.5\n'
    )
    run = load_run_config(f)
    assert run.model.hf_options == {"rope_theta": 10000.0, "tie_word_embeddings": True}
    assert (run.peft.method, run.peft.r, run.privacy.clip) == ("lora", 4, 1.0)
    f.write_text('[peft]\nmethod = "qlora"\n')
    with pytest.raises(SwarmtrainError, match="method must be one of 'none' \\| 'lora', got 'qlora'"):
        load_run_config(f)
    assert RunConfig().peft.method == "none" and NodeConfig().pretrained_dir == ""
