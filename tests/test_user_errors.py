"""Every error a user can cause is an error line and a fix line, exit status 2, never a traceback
(issue 19, item 5); every command's --help lists its own options once (item 6)."""

import re
import socket

import pytest

from node import cli
from node.config import NodeConfig
from node.config.flags import NODE_FLAGS

PEER = "QmcHYLomwHQaoAbJ4u1Ppz25nhH4bz2Sh7dBskRrB9UqLw"


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err


def _assert_user_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and any(line.strip().startswith("- help: ") for line in lines[1:]), err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and says nothing: another program, not a libp2p peer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_bad_inputs_are_one_error_with_a_fix_and_exit_2(tmp_path, capsys, monkeypatch, silent_port):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    bad_run = tmp_path / "neg.toml"
    bad_run.write_text("[train]\ninner_lr = -0.1\n")
    quiet = ["--host", "127.0.0.1", "--status-port", "-1", "--log-format", "text"]
    cases = [
        (["bootstrap", "--run", str(bad_run), "--data-dir", str(tmp_path / "b"), *quiet], ["inner_lr", "> 0"]),
        (["bootstrap", "--data-dir", str(a_file / "sub"), *quiet], ["--data-dir: cannot write in", "Not a directory"]),
        (
            ["join", "--data-dir", str(a_file), "--run-id", "r", "--initial-peers", f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}"]
            + ["--startup-timeout", "1", *quiet[:2]],
            ["--data-dir"],
        ),
        (
            ["join", "--initial-peers", f"/ip4/127.0.0.1/tcp/{silent_port}/p2p/{PEER}", "--run-id", "r"]
            + ["--data-dir", str(tmp_path / "j"), "--startup-timeout", "1", *quiet[:2]],
            ["not a swarm peer", "swarmtrain bootstrap"],
        ),
        (
            ["join", "--new-swarm", "--data-dir", str(tmp_path / "r"), "--result-json", str(a_file / "r.json")]
            + quiet[:2],
            ["--result-json: cannot write in"],
        ),
        (["join", "--port", "70000"], ["port = 70000", "out of range"]),
        (["join", "--prot", "5"], ["did you mean --port?"]),
        (["join", "--log-format", "xml"], ["invalid choice", "'json'"]),
        (["monitor", "--new-swarm"], ["unrecognized arguments: --new-swarm"]),
        (["config", "show", "--config", str(tmp_path / "missing.toml")], ["does not exist"]),
    ]
    for argv, words in cases:
        _assert_user_error(*_run(capsys, argv), *words)
    monkeypatch.setenv("SWARMTRAIN_PROT", "5")
    _assert_user_error(*_run(capsys, ["config", "show"]), "SWARMTRAIN_PROT", "did you mean SWARMTRAIN_PORT?")


def test_doctor_names_a_fix_for_every_failure(tmp_path, capsys, silent_port):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    code = cli.main(
        ["doctor", "--data-dir", str(a_file / "d"), "--status-port", "-1", "--host", "127.0.0.1"]
        + ["--initial-peers", f"/ip4/127.0.0.1/tcp/{silent_port}/p2p/{PEER}", "--startup-timeout", "2"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  initial peer" in out and "FAIL  disk" in out
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("FAIL"):
            assert lines[i + 1].strip().startswith("fix: "), line


COMMANDS = ["join", "bootstrap", "monitor", "doctor", "audit", "demo", "ray-launch", "pretrain", "export"]


@pytest.mark.parametrize("command", COMMANDS + ["config show"])
def test_help_is_one_usage_block_of_the_commands_own_options(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.count("usage:") == 1
    flags = re.findall(r"^  (--[a-z-]+)", out, re.MULTILINE)
    assert len(flags) == len(set(flags)), "an option listed twice"
    name = command.split()[0]
    if name in NODE_FLAGS:
        for f in NodeConfig.__dataclass_fields__:
            flag = "--" + f.replace("_", "-")
            assert (flag in flags) == (f in NODE_FLAGS[name]), (name, flag)
    if name in ("join", "bootstrap", "monitor"):
        assert "--log-format {auto,text,json}" in out  # a fixed-choice setting shows its choices
