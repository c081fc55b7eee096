"""Consumer-link emulation (bench/linkemu.py): the spec parser always; the links themselves
where namespaces and TUN devices work (root), else skipped with the reason."""

import json
import statistics
import subprocess
import sys

import pytest

from bench.linkemu import (
    EmulatedNetwork,
    Forwarder,
    LinkSpec,
    group_of,
    missing_requirements,
    parse_command,
    parse_partition,
)
from node.errors import SwarmtrainError

CONSUMER = "up=20mbit,down=100mbit,rtt=50ms,loss=0%"


@pytest.mark.parametrize(
    "text, spec",
    [
        (
            "up=20mbit,down=100mbit,rtt=50ms,jitter=5ms,loss=1%",
            LinkSpec(up_bps=20e6, down_bps=100e6, rtt_s=0.05, jitter_s=0.005, loss=0.01),
        ),
        (" up = 20 Mbps , rtt=0.05s ", LinkSpec(up_bps=20e6, rtt_s=0.05)),  # mbps means bits too
        ("down=1.5gbit,queue=1s,loss=0.25", LinkSpec(down_bps=1.5e9, queue_s=1.0, loss=0.25)),
        ("up=512kbit,jitter=250us", LinkSpec(up_bps=512e3, jitter_s=250e-6)),
        ("", LinkSpec()),
        ("unlimited", LinkSpec()),
    ],
)
def test_good_specs(text, spec):
    assert LinkSpec.parse(text) == spec


def test_omitted_fields_are_unlimited_or_zero():
    spec = LinkSpec.parse("rtt=10ms")
    assert (spec.up_bps, spec.down_bps, spec.jitter_s, spec.loss) == (0, 0, 0, 0) and spec.queue_s == 0.2


@pytest.mark.parametrize(
    "text",
    [
        "up=20mbit,down=100mbit,rtt=50ms,jitter=5ms,loss=1%",
        "up=1.234567mbit,rtt=35ms",
        "loss=0.013,queue=0s",
        "up=0.5bit,rtt=1.5ms,jitter=1us",
        "loss=100%",
    ],
)
def test_str_round_trips(text):
    spec = LinkSpec.parse(text)
    assert LinkSpec.parse(str(spec)) == spec
    assert str(LinkSpec.parse("up=20mbit,down=100mbit,rtt=50ms,loss=1%")) == "up=20mbit,down=100mbit,rtt=50ms,loss=1%"
    assert str(LinkSpec()) == "unlimited"


@pytest.mark.parametrize(
    "text, part, why",
    [
        ("upload=20mbit", "upload=20mbit", "expected one of up=, down="),
        ("rtt", "rtt", "expected one of"),
        ("up=20", "up=20", "with a unit: gbit, mbit"),
        ("up=20mb", "up=20mb", "with a unit"),
        ("rtt=50", "rtt=50", "with a unit: s, ms, us"),
        ("rtt=-5ms", "rtt=-5ms", "a number >= 0"),
        ("jitter=fast", "jitter=fast", "a number >= 0"),
        ("loss=5x", "loss=5x", "%, a plain fraction"),
        ("loss=150%", "loss=150%", "at most 100%"),
        ("up=0mbit", "up=0mbit", "above 0"),
        ("up=1mbit,up=2mbit", "up=2mbit", "given twice"),
        ("rtt=1e999s", "rtt=1e999s", "too large"),
    ],
)
def test_bad_specs_name_the_part_and_the_form(text, part, why):
    with pytest.raises(SwarmtrainError) as e:
        LinkSpec.parse(text)
    assert repr(part) in str(e.value) and why in str(e.value)
    assert "up=20mbit,down=100mbit,rtt=50ms" in e.value.help and "kbit" in e.value.help


@pytest.mark.parametrize(
    "line, parsed",
    [
        ("stats", ("stats", None)),
        ("heal\n", ("heal", None)),
        ("partition 0,1,2|3,4", ("partition", ((0, 1, 2), (3, 4)))),
        ("  partition  3, 4 | 0 ,1 ,2 ", ("partition", ((3, 4), (0, 1, 2)))),
        ("partition 0|1|2|3|4", ("partition", ((0,), (1,), (2,), (3,), (4,)))),
        ("partition 0,1", ("partition", ((0, 1),))),  # 2, 3, 4 are each cut off from everyone
    ],
)
def test_forwarder_commands_parse(line, parsed):
    assert parse_command(line, 5) == parsed


@pytest.mark.parametrize(
    "line, why",
    [
        ("partition 0,1|1,2", "peer 1 is in more than one group"),
        ("partition 0,1,2|3,5", "there is no peer 5 (peers are 0-4)"),
        ("partition 0,1|", "group '' is not a list of peer numbers"),
        ("partition", "group '' is not a list of peer numbers"),
        ("partition 0,,1", "is not a list of peer numbers"),
        ("partition -1,0", "is not a list of peer numbers"),
        ("partition a|b", "is not a list of peer numbers"),
        ("heal now", "unknown link forwarder command 'heal now'"),
        ("stat", "unknown link forwarder command"),
    ],
)
def test_bad_forwarder_commands_say_what_is_wrong(line, why):
    with pytest.raises(SwarmtrainError) as e:
        parse_command(line, 5)
    assert why in str(e.value) and e.value.help


def test_a_peer_in_no_group_is_alone():
    groups = parse_partition("0,1|3", 5)
    assert group_of(groups, 5) == [0, 0, -3, 1, -5]  # 2 and 4 share a group with nobody, not even each other


def test_the_forwarder_drops_across_groups_only_and_counts_it():
    fw = Forwarder(tuns=[100, 101, 102, 103, 104], specs=[LinkSpec()] * 5)  # file numbers only: nothing is opened
    assert fw.command("partition 0,1,2|3,4") == {"partitioned": [[0, 1, 2], [3, 4]]}
    assert [fw.cut(0, d) for d in range(1, 5)] == [False, False, True, True]
    assert not fw.cut(4, 3) and fw.cut(3, 2)
    stats = fw.command("stats")
    assert [s["up"]["partitioned"] for s in stats] == [2, 0, 0, 1, 0]
    assert all(s["down"]["partitioned"] == 0 for s in stats)
    assert fw.command("heal") == {"healed": True}
    assert not any(fw.cut(s, d) for s in range(5) for d in range(5))
    assert "more than one group" in fw.command("partition 0|0")["error"]
    assert fw.group is None  # a refused command changes nothing


@pytest.fixture
def namespaces():
    """Skip, naming what is missing, where namespaces or TUN devices do not work (checked when used)."""
    if (why := missing_requirements()) is not None:
        pytest.skip(why)


# peer 1: echo the first connection back, then count the bytes of the second (first byte to EOF)
SERVER = """
import socket, sys, time
s = socket.create_server((sys.argv[1], 0)); print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while d := c.recv(65536): c.sendall(d)
c, _ = s.accept(); n, first = 0, None
while d := c.recv(1 << 20): first, n = first or time.monotonic(), n + len(d)
print(n, time.monotonic() - first, flush=True)
"""
# peer 0: ten 1-byte round trips, then one bulk upload
CLIENT = """
import json, socket, sys, time
addr = (sys.argv[1], int(sys.argv[2]))
c = socket.create_connection(addr); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); rtts = []
for _ in range(10):
    t = time.monotonic(); c.sendall(b"x"); c.recv(1); rtts.append(time.monotonic() - t)
c.close()
b = socket.create_connection(addr); b.sendall(bytes(int(sys.argv[3]))); b.close()
print(json.dumps(rtts))
"""
# peer 0: a burst of UDP datagrams at peer 1, who counts what arrives
UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9000)); s.settimeout(1.0)
print("up", flush=True)
n = 0
try:
    while True: s.recv(100); n += 1
except TimeoutError: print(n, flush=True)
"""
UDP_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])): s.sendto(b"x" * int(sys.argv[3]), (sys.argv[1], 9000)); time.sleep(0.001)
"""


def _python(net, k, script, *args, **kw):
    return subprocess.Popen(
        [*net.exec_prefix(k), sys.executable, "-c", script, *map(str, args)], text=True, stdout=subprocess.PIPE, **kw
    )


@pytest.mark.usefixtures("namespaces")
def test_rtt_and_upload_rate_between_two_consumer_links():
    spec = LinkSpec.parse(CONSUMER)
    size = 3_000_000
    with EmulatedNetwork([spec, spec]) as net:
        server = _python(net, 1, SERVER, net.address(1))
        port = server.stdout.readline().strip()
        client = _python(net, 0, CLIENT, net.address(1), port, size)
        rtts = json.loads(client.communicate(timeout=20)[0])
        received, seconds = server.communicate(timeout=20)[0].split()
        stats = net.stats()
    rtt_ms = statistics.median(rtts) * 1000
    mbit_s = int(received) * 8 / float(seconds) / 1e6
    print(
        f"\nlink {CONSUMER}: rtt median {rtt_ms:.1f} ms (min {min(rtts) * 1000:.1f}, max {max(rtts) * 1000:.1f}); "
        f"upload {int(received) / 1e6:.1f} MB in {float(seconds):.2f} s = {mbit_s:.1f} Mbit/s; stats {stats}"
    )
    assert int(received) == size
    assert 40 <= rtt_ms <= 80
    assert 14 <= mbit_s <= 24
    assert stats[0]["up"]["forwarded"] > size / 1500 and stats[1]["down"]["forwarded"] > size / 1500


@pytest.mark.usefixtures("namespaces")
def test_lossy_link_loses_packets_and_counts_them():
    spec = LinkSpec.parse("rtt=10ms,loss=10%")
    sent = 300
    with EmulatedNetwork([spec, spec]) as net:
        sink = _python(net, 1, UDP_SINK, net.address(1))
        assert sink.stdout.readline().strip() == "up"
        _python(net, 0, UDP_SEND, net.address(1), sent, 64).wait(20)
        arrived = int(sink.communicate(timeout=20)[0])
        stats = net.stats()
    lost = stats[0]["up"]["lost"] + stats[1]["down"]["lost"]
    print(f"\nloss=10%: {sent} sent, {arrived} arrived, {lost} counted lost; stats {stats}")
    assert lost > 0 and arrived == sent - lost
    assert 0.03 <= lost / sent <= 0.2  # mean 10%: this band is over 4 standard deviations wide


@pytest.mark.usefixtures("namespaces")
def test_a_partition_cuts_between_groups_until_healed():
    sent = 50
    with EmulatedNetwork([LinkSpec()] * 3) as net:

        def burst(src, dst):
            sink = _python(net, dst, UDP_SINK, net.address(dst))
            assert sink.stdout.readline().strip() == "up"
            _python(net, src, UDP_SEND, net.address(dst), sent, 64).wait(20)
            return int(sink.communicate(timeout=20)[0])

        net.partition([[0, 1], [2]])  # returns once the forwarder has taken it
        inside, across = burst(0, 1), burst(0, 2)
        partitioned = net.stats()[0]["up"]["partitioned"]
        net.heal()
        healed = burst(0, 2)
        stats = net.stats()
        with pytest.raises(SwarmtrainError, match="no peer 3"):
            net.partition([[0], [3]])
    print(
        f"\npartition 0,1|2: {inside}/{sent} arrived inside a group, {across}/{sent} across; "
        f"after heal {healed}/{sent}; stats {stats}"
    )
    assert (inside, across, healed) == (sent, 0, sent)
    assert partitioned == sent and stats[0]["up"]["partitioned"] == sent  # nothing more after the heal


@pytest.mark.usefixtures("namespaces")
def test_a_full_queue_drops_at_the_tail_and_counts_it():
    slow = LinkSpec.parse("up=1mbit,queue=20ms")
    sent = 200  # 8 Mbit/s of 1000-byte datagrams into a 1 Mbit/s line with a 20 ms buffer
    with EmulatedNetwork([slow, LinkSpec()]) as net:
        sink = _python(net, 1, UDP_SINK, net.address(1))
        assert sink.stdout.readline().strip() == "up"
        _python(net, 0, UDP_SEND, net.address(1), sent, 1000).wait(20)
        arrived = int(sink.communicate(timeout=20)[0])
        dropped = net.stats()[0]["up"]["queue_dropped"]
    print(f"\nup=1mbit,queue=20ms: {sent} sent at 8 Mbit/s, {arrived} arrived, {dropped} dropped at the queue")
    assert dropped > sent / 2 and arrived + dropped == sent


@pytest.mark.usefixtures("namespaces")
def test_everything_is_gone_after_the_block_also_on_error():
    names = []
    with pytest.raises(RuntimeError), EmulatedNetwork([LinkSpec()] * 2) as net:
        names, forwarder = net.namespaces, net.forwarder
        sleeper = _python(net, 0, "import time; time.sleep(60)")
        raise RuntimeError("a failing test")
    assert forwarder.poll() is not None and sleeper.wait(5) is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in listed.split()]
    with pytest.raises(SwarmtrainError, match="not running"):
        net.stats()


@pytest.mark.usefixtures("namespaces")
def test_namespaces_left_by_a_crashed_run_are_removed():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = f"sttest{dead.stdout.strip()}n0-0"  # named as a network of that (now gone) process
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with EmulatedNetwork([LinkSpec()], prefix="sttest") as net:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            assert stale not in listed and net.namespaces[0] in listed
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
