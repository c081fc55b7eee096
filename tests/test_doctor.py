"""`swarmtrain doctor`: each check fails when it should, and names the fix."""

import socket
import threading

from node.cli import main
from node.commands.doctor import (
    FAIL,
    OK,
    WARN,
    disk_check,
    memory_check,
    peer_check,
    port_check,
    reach_check,
    render,
    threads_check,
)
from node.config import ModelConfig, NodeConfig, RunConfig
from node.p2p.addresses import parse_peer_address
from node.p2p.dht import LIBP2P_GREETING

PEER = "QmcHYLomwHQaoAbJ4u1Ppz25nhH4bz2Sh7dBskRrB9UqLw"


def test_port_in_use_fails_with_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        c = port_check("127.0.0.1", s.getsockname()[1], "listen")
    assert c.status == FAIL and "another port" in c.fix
    assert port_check("127.0.0.1", 0, "listen").status == OK


def test_unreachable_peer_fails_and_says_why():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        c = peer_check(parse_peer_address(f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}"), timeout=2)
    assert c.status == FAIL and "refused" in c.detail.lower() and "firewall" in c.fix


def test_a_libp2p_peer_is_ok_and_another_program_on_the_port_fails_with_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = parse_peer_address(f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}/p2p/{PEER}")

        def greet():  # what p2pd's listener writes first on every connection
            conn, _ = s.accept()
            with conn:
                conn.sendall(LIBP2P_GREETING)

        greeter = threading.Thread(target=greet)
        greeter.start()
        c = peer_check(address)
        greeter.join()
        assert c.status == OK and "libp2p" in c.detail and "ms" in c.detail
        c = peer_check(address, timeout=0.5)  # accepted by the backlog, and silent: a web server, say
    assert c.status == FAIL and "not answer as a libp2p peer" in c.detail and "swarmtrain bootstrap" in c.fix


def test_too_many_threads_warns():
    assert threads_check(NodeConfig(threads=10_000)).status == WARN
    assert threads_check(NodeConfig(threads=1)).status == OK


def test_memory_and_disk_fail_for_a_model_too_big_for_this_machine(tmp_path):
    huge = RunConfig(model=ModelConfig(d_model=65536, n_layer=64, n_head=64))
    assert memory_check(huge, "test").status == FAIL
    assert disk_check(str(tmp_path / "new" / "dir"), huge).status == FAIL
    assert memory_check(RunConfig(), "test").status == OK
    assert disk_check(str(tmp_path), RunConfig()).status == OK


def test_render_counts_failures():
    from node.commands.doctor import Check

    text = render([Check("a", OK, "fine"), Check("b", FAIL, "broken", "do this")])
    assert "fix: do this" in text and "1 failed" in text


def test_cli_exit_status_is_one_on_failure(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code = main(
            [
                "doctor",
                "--data-dir",
                str(tmp_path),
                "--status-port",
                "-1",
                "--initial-peers",
                f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}",
            ]
        )
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  initial peer" in out
    assert main(["doctor", "--data-dir", str(tmp_path), "--status-port", "-1", "--new-swarm"]) == 0


def test_reachability_behind_nat_warns_with_the_flags_and_never_fails():
    home = NodeConfig(host="192.168.1.2", port=4001)
    c = reach_check(home, [parse_peer_address(f"/ip4/11.77.0.10/tcp/31337/p2p/{PEER}")])
    assert c.status == WARN and c.detail.startswith("not reachable from outside (behind NAT")
    assert "192.168.1.2:4001" in c.detail and "still trains" in c.detail
    assert "--port 4001 --announce /ip4/<router's public IP>/tcp/4001" in c.fix
    forwarded = reach_check(NodeConfig(host="192.168.1.2", port=4001, announce=["/ip4/11.77.0.100/tcp/4001"]), [])
    assert forwarded.status == OK and "11.77.0.100:4001" in forwarded.detail  # what --announce tells peers
    bad = reach_check(NodeConfig(announce=["/ip4/11.77.0.100/tcp/0"]), [])
    assert bad.status == FAIL and "--port" in bad.fix


def test_reachability_on_loopback_is_fine_for_a_local_swarm_only():
    local = NodeConfig(host="127.0.0.1")
    assert reach_check(local, [parse_peer_address(f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}")]).status == OK
    c = reach_check(local, [parse_peer_address(f"/ip4/11.77.0.10/tcp/4001/p2p/{PEER}")])
    assert c.status == WARN and "only from this machine" in c.detail and "--host 0.0.0.0" in c.fix
