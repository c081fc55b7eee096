"""Bounded I/O of the stream exchange, in-process: asyncio streams instead of a libp2p daemon.

A FakeNet stands in for hivemind's P2P: `call_binary_stream_handler` joins two in-memory
stream pairs to the callee's handler, run as a task. Hostile peers are plain handlers.
"""

import asyncio
import threading
import time
import tracemalloc
from types import SimpleNamespace

import pytest

from node.p2p.exchange import Exchange
from node.p2p.limits import RateLimit, StreamCap
from node.p2p.streams import read_response
from protocol.errors import ProtocolError
from protocol.messages import HEADER_LEN, Request, decode_response, encode_response, frame
from protocol.signing import peer_id_of

RUN = "demo-0123456789ab"
A, B, EVIL, SLOW, BUSY, D = (peer_id_of(bytes([i]) * 40) for i in range(6))
BLOB = bytes(range(256)) * 4  # a 1,024-byte "update envelope"


# ------------------------------------------------------------------------ in-memory network
class FakeWriter:
    """Writes into the other side's StreamReader; close() is the other side's EOF."""

    def __init__(self, other: asyncio.StreamReader):
        self.other, self.closed, self.data = other, False, bytearray()

    def write(self, data: bytes) -> None:
        self.data += data
        if not self.closed:
            self.other.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.other.feed_eof()


class FakeNet:
    def __init__(self):
        self.handlers, self.remote_tasks = {}, set()

    def dht(self, me: str):
        net = self

        class P2P:
            async def add_binary_stream_handler(self, name, handler):
                net.handlers[me] = handler

            async def call_binary_stream_handler(self, peer_id, name):
                c_reader, s_reader = asyncio.StreamReader(), asyncio.StreamReader()
                task = asyncio.create_task(
                    net.handlers[str(peer_id)](SimpleNamespace(peer_id=me), s_reader, FakeWriter(c_reader))
                )
                net.remote_tasks.add(task)  # the other peer's side: not ours to clean up
                return None, c_reader, FakeWriter(s_reader)

            async def shutdown(self):
                pass

        class DHT:
            async def replicate_p2p(self):
                return P2P()

        return DHT()


async def never_answers(info, reader, writer):
    await asyncio.Event().wait()


async def answers_256_mib(info, reader, writer):
    """Announced 1,000 B; says 256 MiB and starts streaming junk."""
    await reader.readexactly(HEADER_LEN)
    writer.write((256 * 2**20).to_bytes(HEADER_LEN, "big") + b"\0" * 2**16)
    await asyncio.Event().wait()


@pytest.fixture
def net():
    net = FakeNet()
    net.handlers.update({EVIL: answers_256_mib, SLOW: never_answers})
    yield net


@pytest.fixture
def node(net):
    made = []

    def make(who, **kw):
        ex = Exchange(net.dht(who), RUN, max_bytes=2**20, **kw)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex._call(_cancel(net.remote_tasks), timeout=5)  # hostile handlers run in the caller's loop
        ex.close()


async def _cancel(tasks):
    mine = [t for t in tasks if t.get_loop() is asyncio.get_running_loop()]
    for t in mine:
        t.cancel()
    await asyncio.gather(*mine, return_exceptions=True)


def our_tasks(ex: Exchange, net: FakeNet) -> set:
    """Tasks alive in the exchange's loop, other than the fake remote peers' handlers."""

    async def probe():
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t not in net.remote_tasks}

    return ex._call(probe(), timeout=5)


def update_request(peer=B, rnd=3):
    return Request(op="update", run=RUN, round=rnd, peer=peer)


# ---------------------------------------------------------------------- reading responses
def reader_with(data: bytes, eof=True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


def test_oversized_answer_is_refused_after_the_header_only():
    """A peer announced 1,000 B and answers 256 MiB: refused before the body is read or allocated."""

    async def scenario():
        junk = b"\0" * 2**16  # what the peer managed to push before we looked at the header
        reader = reader_with((256 * 2**20).to_bytes(HEADER_LEN, "big") + junk, eof=False)
        seen = []
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match="expected 1016"):
                await read_response(reader, 1000, 2**30, 5.0, on_bytes=seen.append)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert seen == [HEADER_LEN] and peak < 2**20  # only the header was consumed; nothing near 256 MiB
        assert await reader.read(len(junk) + 1) == junk  # the body was left in the stream, unread

    asyncio.run(scenario())


def test_expected_answer_and_refusals_are_read():
    async def scenario():
        assert await read_response(reader_with(frame(encode_response(BLOB))), len(BLOB), 10, 1.0) == BLOB
        with pytest.raises(ProtocolError, match="peer refused: nope"):
            await read_response(reader_with(frame(encode_response(None, "nope"))), len(BLOB), 10, 1.0)
        with pytest.raises(ProtocolError, match="announced"):  # a short ok-response of the wrong size
            await read_response(reader_with(frame(encode_response(b"xy"))), 3, 10, 1.0)
        with pytest.raises(ProtocolError, match="exceeds"):  # no expectation: the max_bytes limit
            await read_response(reader_with(frame(encode_response(BLOB))), None, 100, 1.0)

    asyncio.run(scenario())


def test_each_read_is_bounded_in_time():
    async def scenario():
        for data in [b"", frame(encode_response(BLOB))[:20]]:  # stalls before the header; within the body
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await read_response(reader_with(data, eof=False), len(BLOB), 10, 0.05)
            assert time.monotonic() - t0 < 1.0

    asyncio.run(scenario())


# --------------------------------------------------------------------- fetching end to end
def test_fetch_with_expect_and_byte_counts(net, node):
    a, b = node(A), node(B)
    b.keep_update(3, B, BLOB)
    assert a.fetch(B, update_request(), timeout=5, expect=len(BLOB)) == BLOB
    assert a.fetch(B, update_request(), timeout=5) == BLOB  # without expect: max_bytes, as before
    wire = len(frame(encode_response(BLOB)))
    assert a.received["update"] == 2 * wire and b.sent["update"] == 2 * wire
    assert a.sent["update"] == b.received["update"] == 2 * len(frame(update_request().encode()))
    assert a.fetched["update"] == 2 and b.served["update"] == 2
    with pytest.raises(ProtocolError, match="1023 were announced"):
        a.fetch(B, update_request(), timeout=5, expect=len(BLOB) - 1)
    with pytest.raises(ProtocolError, match="no update"):  # a refusal still gets through with its reason
        a.fetch(B, update_request(rnd=9), timeout=5, expect=len(BLOB))


def test_oversized_answer_through_the_exchange(net, node):
    a = node(A)
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match="expected"):
        a.fetch(EVIL, update_request(), timeout=5, expect=1000)
    assert time.monotonic() - t0 < 2 and a.received["update"] == HEADER_LEN
    assert not our_tasks(a, net)


def test_timed_out_fetch_is_cancelled(net, node):
    a = node(A)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no update from .* within 0.2 s"):
        a.fetch(SLOW, update_request(), timeout=0.2, expect=1000)
    assert time.monotonic() - t0 < 2
    assert not our_tasks(a, net)  # no coroutine (nor the buffers it holds) outlives the timeout


def test_a_call_past_its_deadline_is_cancelled_in_the_loop(net, node):
    """The last line of defence behind the per-fetch timeouts: the waiting thread gives up and
    the coroutine is cancelled, not left running."""
    a = node(A)
    with pytest.raises(TimeoutError, match="cancelled"):
        a._call(asyncio.sleep(3600), timeout=0.1)
    time.sleep(0.05)  # the cancellation is delivered to the loop thread
    assert not our_tasks(a, net)


def test_fetch_many_keeps_the_good_and_cancels_the_rest(net, node):
    a, b = node(A), node(B)
    b.keep_update(3, B, BLOB)
    t0 = time.monotonic()
    out = a.fetch_many(
        [
            (B, update_request(), len(BLOB)),
            (SLOW, update_request()),
            (EVIL, update_request(), 1000),
            (B, update_request()),
        ],
        timeout=0.3,
    )
    assert time.monotonic() - t0 < 2
    assert out[0] == BLOB and out[3] == BLOB
    assert isinstance(out[1], TimeoutError) and isinstance(out[2], ProtocolError)
    assert not our_tasks(a, net)


def test_outgoing_fetches_per_peer_are_capped(net, node):
    live = {"now": 0, "max": 0}

    async def busy(info, reader, writer):
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        await reader.readexactly(HEADER_LEN)
        await asyncio.sleep(0.05)
        live["now"] -= 1
        writer.write(frame(encode_response(BLOB)))
        writer.close()

    net.handlers[BUSY] = busy
    a = node(A, max_fetches_per_peer=2)
    out = a.fetch_many([(BUSY, update_request())] * 6, timeout=5)
    assert out == [BLOB] * 6 and live["max"] == 2
    assert not a._outbound._slots  # per-peer entries are dropped when idle


# -------------------------------------------------------------------------------- serving
async def ask(ex: Exchange, peer: str, data: bytes, eof=True) -> bytes | None:
    """Run serve_stream on `data`; the decoded response body, or None if the stream was just closed."""
    out = asyncio.StreamReader()
    writer = FakeWriter(out)
    await ex.serve_stream(peer, reader_with(data, eof), writer)
    assert writer.closed
    raw = bytes(writer.data)
    if not raw:
        return None
    assert int.from_bytes(raw[:HEADER_LEN], "big") == len(raw) - HEADER_LEN
    return raw[HEADER_LEN:]


def state_request(run=RUN):
    return frame(Request(op="state", run=run).encode())


def test_serving_answers_and_refuses_with_reasons(node):
    b = node(B)
    b.keep_update(3, B, BLOB)

    async def scenario():
        assert decode_response(await ask(b, A, frame(update_request().encode()))) == BLOB
        with pytest.raises(ProtocolError, match="no state yet"):
            decode_response(await ask(b, A, state_request()))
        with pytest.raises(ProtocolError, match="trains run"):
            decode_response(await ask(b, A, state_request(run="other-run")))
        with pytest.raises(ProtocolError, match="malformed request"):
            decode_response(await ask(b, A, frame(b"\xc1garbage")))
        with pytest.raises(ProtocolError, match="malformed request.*exceeds"):
            decode_response(await ask(b, A, (10**9).to_bytes(HEADER_LEN, "big")))
        assert await ask(b, A, frame(update_request().encode())[:12]) is None  # cut short: closed, no answer

    asyncio.run(scenario())
    assert b.served["update"] == 1 and not b._gate.per_peer.active


def test_slow_requester_is_dropped(node):
    b = node(B, io_timeout=0.05)

    async def scenario():
        t0 = time.monotonic()
        assert await ask(b, A, b"\0\0", eof=False) is None
        assert time.monotonic() - t0 < 1

    asyncio.run(scenario())
    assert not b._gate.per_peer.active


def test_inbound_streams_per_peer_are_capped(node):
    b = node(B, max_streams_per_peer=3, io_timeout=5)
    b.keep_update(3, B, BLOB)

    async def scenario():
        stalled = [asyncio.StreamReader() for _ in range(3)]
        held = [asyncio.create_task(b.serve_stream(A, r, FakeWriter(asyncio.StreamReader()))) for r in stalled]
        await asyncio.sleep(0.01)
        with pytest.raises(ProtocolError, match="too many concurrent"):
            decode_response(await ask(b, A, frame(update_request().encode())))
        assert decode_response(await ask(b, EVIL, frame(update_request().encode()))) == BLOB  # others unaffected
        for r in stalled:  # the held streams finish; A may ask again
            r.feed_data(frame(update_request().encode()))
            r.feed_eof()
        await asyncio.gather(*held)
        assert decode_response(await ask(b, A, frame(update_request().encode()))) == BLOB

    asyncio.run(scenario())
    assert b.refused["streams"] == 1 and not b._gate.per_peer.active


def test_state_serving_is_rate_limited_per_peer(node):
    now = [1000.0]
    b = node(B, state_requests_per_minute=6, clock=lambda: now[0])
    b.set_state(b"S" * 5000)
    b.keep_update(3, B, BLOB)

    async def scenario():
        for _ in range(6):
            assert decode_response(await ask(b, A, state_request())) == b"S" * 5000
        with pytest.raises(ProtocolError, match="6 a minute; retry in 10 s"):
            decode_response(await ask(b, A, state_request()))
        assert decode_response(await ask(b, EVIL, state_request())) == b"S" * 5000  # per peer
        now[0] += 10.0  # one token back
        assert decode_response(await ask(b, A, state_request())) == b"S" * 5000
        with pytest.raises(ProtocolError, match="limited"):
            decode_response(await ask(b, A, state_request()))
        assert decode_response(await ask(b, A, frame(update_request().encode()))) == BLOB  # updates unaffected

    asyncio.run(scenario())
    assert b.refused["state_rate"] == 2 and b.served["state"] == 8


def test_state_served_from_its_checkpoint_file_is_read_when_asked(node, tmp_path):
    """A volunteer serves its state from the checkpoint it wrote (no second copy held between
    rounds): each request reads the file as it is then; without it, a refusal, not a crash."""
    b, ckpt = node(B), tmp_path / "state.ckpt"
    b.set_state(ckpt)

    async def scenario():
        with pytest.raises(ProtocolError, match="no state yet"):
            decode_response(await ask(b, A, state_request()))
        ckpt.write_bytes(b"S" * 5000)
        assert decode_response(await ask(b, A, state_request())) == b"S" * 5000
        ckpt.write_bytes(b"T" * 5000)  # the next round's checkpoint
        assert decode_response(await ask(b, A, state_request())) == b"T" * 5000

    asyncio.run(scenario())
    assert b.served["state"] == 2


def test_rate_limit_forgets_idle_peers(monkeypatch):
    monkeypatch.setattr("node.p2p.limits.MAX_TRACKED_PEERS", 10)
    now = [0.0]
    rl = RateLimit(6, clock=lambda: now[0])
    for i in range(10):
        assert rl.allow(f"p{i}")
    now[0] += 60.0  # everybody's bucket is full again
    assert rl.allow("new") and len(rl._buckets) == 1
    assert not RateLimit(0).allow("p")  # 0 a minute: state serving off


def test_stream_cap_bookkeeping():
    cap = StreamCap(2)
    assert cap.try_enter("p") and cap.try_enter("p") and not cap.try_enter("p") and cap.try_enter("q")
    cap.leave("p"), cap.leave("p"), cap.leave("q")
    assert not cap.active


def test_the_exchange_loop_is_uvloops_unless_asked_otherwise(net):
    import uvloop

    from node.p2p.exchange import new_loop

    for kind, is_uv in (("uvloop", True), ("asyncio", False)):
        loop = new_loop(kind)
        try:
            assert isinstance(loop, uvloop.Loop) == is_uv
        finally:
            loop.close()
    ex = Exchange(net.dht(A), RUN, max_bytes=2**20)
    try:
        assert isinstance(ex._loop, uvloop.Loop)  # the default: what the node runs
    finally:
        ex.close()


def test_the_upload_limit_paces_every_stream_together():
    from node.p2p.limits import UploadLimit

    now = [0.0]
    slept = []

    async def run():
        limit = UploadLimit(1000.0, clock=lambda: now[0])  # 1,000 bytes a second
        orig = asyncio.sleep

        async def fake_sleep(t):
            slept.append(round(t, 3))
            await orig(0)

        asyncio.sleep = fake_sleep
        try:
            await limit.take(500)  # the line is free: at once
            await limit.take(500)  # queued behind the first: 0.5 s
            now[0] = 0.2
            await limit.take(1000)  # another stream: behind both, 0.8 s from now
        finally:
            asyncio.sleep = orig

    asyncio.run(run())
    assert slept == [0.5, 0.8]


def test_a_relay_answers_once_its_own_copy_arrives(net, node):
    """Upload once: B is asked for C's update of the round it is gathering before B holds it;
    it waits for its copy (event-driven, no polling) and passes it on, counted as relayed."""
    a, b = node(A), node(B, me=B, relay_wait=10.0)
    b.keep_update(3, B, BLOB)  # B's own update: round 3 is the round B is on
    C = SLOW
    asked = threading.Timer(0.3, lambda: b.keep_update(3, C, BLOB[::-1]))
    asked.start()
    t0 = time.monotonic()
    assert a.fetch(B, update_request(peer=C), timeout=5, expect=len(BLOB)) == BLOB[::-1]
    assert 0.25 <= time.monotonic() - t0 < 5
    assert b.relayed_bytes == len(frame(encode_response(BLOB))) and b.sent["update"] == b.relayed_bytes
    assert a.fetch(B, update_request(peer=B), timeout=5) == BLOB and b.relayed_bytes < b.sent["update"]  # own
    d = node(D, me=D, relay_wait=0.2)
    d.keep_update(3, D, BLOB)
    with pytest.raises(ProtocolError, match="no update.*waited"):  # never arrives: refused after the wait
        a.fetch(D, update_request(peer=BUSY), timeout=5)
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match="no update"):  # a round far from ours is answered at once
        a.fetch(B, update_request(peer=C, rnd=9), timeout=5)
    assert time.monotonic() - t0 < 1 and not b._arrivals


# ------------------------------------------------------------------------ v3 messages (scatter)
def scatter_message(data: bytes = b""):
    from protocol.kinds.scatter import Message

    return Message(op="chunk", run=RUN, round=3, attempt=0, data=data)


def test_scatter_messages_reach_the_rounds_handler_with_their_caller(net, node):
    """RealNet.call (v3's ScatterNet) carries a v3 Message as the body of a `scatter` request;
    the exchange hands it, decoded, to the round's handler (Member.answer) in a thread."""
    from node.p2p.roundnet import RealNet

    a, b = node(A), node(B)
    caller = RealNet(SimpleNamespace(peer_id=A), a)
    seen = []

    def answer(peer, msg):
        seen.append((peer, msg))
        if msg.data == b"bad":
            raise ProtocolError("not this round's attempt")
        if msg.data == b"bug":
            raise KeyError("our own bug")
        return b"ok:" + msg.data

    with pytest.raises(ProtocolError, match="no v3 round in flight"):  # refused unread
        caller.call(B, scatter_message(b"x"), timeout=5)
    b.set_scatter(answer, limit=4096)
    assert caller.call(B, scatter_message(b"piece"), timeout=5) == b"ok:piece"
    assert seen[-1][0] == A and seen[-1][1] == scatter_message(b"piece")
    with pytest.raises(ProtocolError, match="not this round's attempt"):  # the handler's refusal, with its reason
        caller.call(B, scatter_message(b"bad"), timeout=5)
    with pytest.raises(ProtocolError, match="could not answer chunk"):  # our bug: refused, never a crash
        caller.call(B, scatter_message(b"bug"), timeout=5)
    assert b.received["scatter"] > 0 and b.served["scatter"] == 1
    b.set_scatter(None)
    with pytest.raises(ProtocolError, match="no v3 round in flight"):
        caller.call(B, scatter_message(b"x"), timeout=5)


def test_scatter_bodies_are_bounded_before_reading_and_dropped_if_they_do_not_decode(net, node):
    a, b = node(A), node(B)
    calls = []
    b.set_scatter(lambda peer, msg: calls.append(msg) or b"", limit=1000)
    request = Request(op="scatter", run=RUN, round=3)
    with pytest.raises(ProtocolError, match="exceeds the limit of 1000"):
        a.fetch(B, request, timeout=5, body=scatter_message(b"\0" * 2000).encode())
    with pytest.raises(ProtocolError, match="malformed scatter message"):
        a.fetch(B, request, timeout=5, body=b"\xc1 not msgpack")
    with pytest.raises(ProtocolError, match="trains run"):
        a.fetch(B, Request(op="scatter", run="other-0123456789ab", round=3), timeout=5, body=b"")
    assert not calls
    assert a.fetch(B, request, timeout=5, body=scatter_message(b"fits").encode()) == b""
    assert [m.data for m in calls] == [b"fits"]
