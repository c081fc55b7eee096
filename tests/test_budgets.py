"""Costs and storage bounded for all peers together, not per identity (issue 16): identities are free,
so ten fresh ids must not get ten times what one may. In-process: asyncio streams instead of a
libp2p daemon (as tests/test_exchange.py), the DHT validator called directly."""

import asyncio
import threading
import time
import tracemalloc
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from node.p2p.exchange import Exchange
from protocol import keys, signed, signing
from protocol.errors import ProtocolError
from protocol.messages import HEADER_LEN, Request, decode_response, encode_response, frame, ok_response_length
from protocol.records import Heartbeat

RUN = "demo-0123456789ab"
ME = signing.peer_id_of(b"\1" * 40)
SYBILS = [signing.peer_id_of(bytes([i]) * 41) for i in range(10)]  # ten fresh identities
STATE = b"S" * 65536


# ------------------------------------------------------------------------ in-memory streams
class Writer:
    """A requester's end: collects what we send; a slow reader (`slow`) never drains a big answer."""

    def __init__(self, slow: asyncio.Event | None = None):
        self.data, self.closed, self.slow = bytearray(), False, slow

    def write(self, data) -> None:
        self.data += data

    async def drain(self) -> None:
        if self.slow is not None and len(self.data) > 4096:  # refusals are short and go through
            await self.slow.wait()

    def close(self) -> None:
        self.closed = True


def request_reader(op="state", peer=ME, fed=True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    if fed:
        r.feed_data(frame(Request(op=op, run=RUN, round=3, peer=peer).encode()))
        r.feed_eof()
    return r


def answer(writer: Writer) -> bytes:
    return decode_response(bytes(writer.data[HEADER_LEN:]))


class Net:
    """Enough of hivemind's P2P for an Exchange: serve nothing, fetch from `handlers` (run as tasks)."""

    def __init__(self, handlers=None):
        self.handlers = handlers or {}

    async def replicate_p2p(self):
        net = self

        class P2P:
            async def add_binary_stream_handler(self, name, handler):
                pass

            async def call_binary_stream_handler(self, peer_id, name):
                ours, theirs = asyncio.StreamReader(), asyncio.StreamReader()
                asyncio.create_task(net.handlers[str(peer_id)](theirs, Feed(ours)))
                return None, ours, Feed(theirs)

            async def shutdown(self):
                pass

        return P2P()


class Feed:
    """Writes into the other side's reader."""

    def __init__(self, other: asyncio.StreamReader):
        self.other = other

    def write(self, data) -> None:
        self.other.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        self.other.feed_eof()


@pytest.fixture
def exchange():
    made = []

    def make(**kw):
        made.append(Exchange(Net(kw.pop("handlers", None)), RUN, max_bytes=2**22, event_loop="asyncio", **kw))
        return made[-1]

    yield make
    for ex in made:
        ex.close()


# --------------------------------------------------------------------------------- serving
def test_ten_fresh_identities_share_two_state_uploads(exchange):
    """Each id may download our state 6 times a minute; ten ids asking 6 times each, all at once and
    reading slowly, once had 60 uploads in flight (60 copies of the state held). Now at most 2."""
    ex = exchange()
    ex.set_state(STATE)
    release = asyncio.Event()

    async def scenario():
        writers = [Writer(slow=release) for _ in range(60)]
        tasks = [
            asyncio.create_task(ex.serve_stream(SYBILS[i % 10], request_reader(), w)) for i, w in enumerate(writers)
        ]
        await asyncio.sleep(0.05)
        sending = [w for w in writers if len(w.data) > len(STATE)]  # holding a copy of the state for a slow reader
        refused = [w for w in writers if w.closed]
        traced = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
        release.set()
        await asyncio.gather(*tasks)
        return sending, refused, traced

    tracemalloc.start()
    try:
        sending, refused, peak = asyncio.run(scenario())
    finally:
        tracemalloc.stop()
    print(f"\nstate uploads in flight: {len(sending)} of 60 asked; traced peak {peak / 2**20:.1f} MiB")
    assert len(sending) == 2 and len(refused) == 58
    with pytest.raises(ProtocolError, match="sends its state to 2 peers"):
        answer(refused[0])
    assert ex.refused["state_uploads"] == 58 and ex.served["state"] == 2
    assert ex._gate.uploads.active == 0  # every place given back


def test_fresh_identities_cannot_take_every_inbound_stream(exchange):
    """Ten ids, 8 stalled streams each (each within the per-peer cap of 8): they share 48 places of
    the 64, and a peer the round knows is still served."""
    ex = exchange(io_timeout=5.0)
    ex.keep_update(3, ME, b"U" * 100)
    ex.set_known([ME])

    async def scenario():
        stalled = [request_reader(fed=False) for _ in range(80)]
        writers = [Writer() for _ in stalled]
        tasks = [
            asyncio.create_task(ex.serve_stream(SYBILS[i % 10], r, w))
            for i, (r, w) in enumerate(zip(stalled, writers, strict=True))
        ]
        await asyncio.sleep(0.05)
        held = sum(not w.closed for w in writers)
        known, stranger = Writer(), Writer()
        await ex.serve_stream(ME, request_reader("update"), known)
        await ex.serve_stream(signing.peer_id_of(b"\7" * 40), request_reader("update"), stranger)
        for r in stalled:
            r.feed_eof()
        await asyncio.gather(*tasks)
        return held, known, stranger

    held, known, stranger = asyncio.run(scenario())
    assert held == 48 and ex.refused["all_streams"] == 33  # 32 Sybil streams, then the stranger
    assert answer(known) == b"U" * 100
    with pytest.raises(ProtocolError, match="serves 48 requests already"):
        answer(stranger)
    assert ex._gate.streams.active == 0 and not ex._gate.per_peer.active


# -------------------------------------------------------------------------------- fetching
def test_bytes_read_from_many_identities_are_bounded(exchange):
    """Ten ids each announce a 1 MiB update and send its bytes slowly: whatever the number of ids,
    at most `held_bytes` of answers are being read at once; the rest wait their turn and arrive."""
    from node.p2p.limits import Budgets

    size, release = 2**20, threading.Event()
    body = encode_response(b"x" * size)

    async def slow_sybil(reader, writer):
        await reader.readexactly(HEADER_LEN)
        writer.write(frame(body)[: size // 2])  # header and half the body...
        while not release.is_set():
            await asyncio.sleep(0.01)
        writer.write(frame(body)[size // 2 :])  # ...the rest once released
        writer.close()

    budget = 2 * ok_response_length(size)
    ex = exchange(handlers=dict.fromkeys(SYBILS, slow_sybil), budgets=Budgets(held_bytes=budget))
    request = Request(op="update", run=RUN, round=3, peer=ME)
    out: list = []
    fetching = threading.Thread(
        target=lambda: out.extend(ex.fetch_many([(p, request, size) for p in SYBILS], timeout=10)), daemon=True
    )
    fetching.start()
    deadline = time.monotonic() + 5
    while ex._held.held < budget and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the others had every chance to start reading
    held_while_stalled = ex._held.held
    release.set()
    fetching.join(timeout=10)
    print(f"\nbytes held while 10 ids stalled: {held_while_stalled:,} (budget {budget:,})")
    assert held_while_stalled == budget and ex._held.peak == budget
    assert out == [b"x" * size] * 10 and ex._held.held == 0


def test_an_answer_larger_than_the_whole_budget_is_read_alone():
    from node.p2p.limits import ByteBudget

    async def scenario():
        budget, order = ByteBudget(100), []

        async def holder(name, n, pause):
            async with budget.hold(n):
                order.append((name, budget.held))
                await asyncio.sleep(pause)

        await asyncio.gather(holder("a", 60, 0.05), holder("b", 60, 0), holder("huge", 500, 0))
        return order, budget

    order, budget = asyncio.run(scenario())
    assert order == [("a", 60), ("b", 60), ("huge", 500)] and budget.peak == 500 and budget.held == 0


# ---------------------------------------------------------------------- heartbeats in the DHT
def heartbeat(peer, **kw) -> Heartbeat:
    fields = dict(
        run=RUN,
        peer=peer,
        name="volunteer",
        round=12,
        state_round=11,
        digest="ab" * 32,
        device="cuda:0",
        maddrs=(f"/ip4/203.0.113.5/tcp/31337/p2p/{peer}", f"/ip4/192.168.1.20/tcp/31337/p2p/{peer}"),
        time=1.0e9,
    )
    return Heartbeat(**{**fields, **kw})


def padded(key, record: Heartbeat, size: int) -> dict:
    """`record` signed with an unknown field that pads its body to `size` bytes (from_wire ignores it)."""
    import msgpack

    wire = {**record.to_wire(), "pad": ""}
    while (body := msgpack.packb(wire, use_bin_type=True)) and len(body) != size:
        wire["pad"] = "p" * (len(wire["pad"]) + size - len(body))  # (the string's header grows with it)
    return signing.sign(key, body, "heartbeat")


def stored(validator, envelope, peer, expiration, now=1.0e9):
    from hivemind.dht.routing import DHTID
    from hivemind.utils.serializer import MSGPackSerializer as S

    where = DHTID.generate(source=keys.peers_key(RUN)).to_bytes()
    return validator.check(where, S.dumps(peer), S.dumps(envelope), expiration, now)


@pytest.fixture(scope="module")
def sybil_keys():
    out = []
    for _ in range(20):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        out.append((key, signing.peer_id_of(signing.public_der(key))))
    return out


def test_padded_heartbeats_are_refused_before_any_signature_check(sybil_keys):
    from node.p2p.validators import RunValidator

    (key, peer), v = sybil_keys[0], RunValidator(RUN, heartbeat_ttl=8.0)
    ours = signed.seal(key, heartbeat(peer))
    print(f"\nour heartbeat's signed body: {len(ours['body'])} B")
    assert len(ours["body"]) < 500 and stored(v, ours, peer, 1.0e9 + 8)
    assert stored(v, padded(key, heartbeat(peer), 1024), peer, 1.0e9 + 8)  # at the cap: fine
    before = signing.cache_info().verifications
    for size in (1025, 2048, 8192):
        assert not stored(v, padded(key, heartbeat(peer, time=1.0e9 + size / 1e4), size), peer, 1.0e9 + 8)
    assert signing.cache_info().verifications == before  # refused on its length alone


def test_our_heartbeat_fits_the_cap_whatever_our_addresses():
    """A peer with many interfaces publishes its best addresses that fit, not a refused heartbeat."""
    from node.p2p.dht import MAX_HEARTBEAT_BODY, fit_heartbeat, heartbeat_body_size

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    peer = signing.peer_id_of(signing.public_der(key))
    many = tuple(f"/ip6/2001:db8::{i}/tcp/31337/p2p/{peer}" for i in range(16))
    record = heartbeat(peer, name="n" * 64, maddrs=many)
    assert heartbeat_body_size(record) > MAX_HEARTBEAT_BODY
    fitted = fit_heartbeat(record)
    assert len(signed.seal(key, fitted)["body"]) <= MAX_HEARTBEAT_BODY
    assert fitted.maddrs == many[: len(fitted.maddrs)] and len(fitted.maddrs) >= 4
    proven = fit_heartbeat(replace(record, work=(2**32 - 1, b"n" * 8, b"s" * 8)))  # protocol 11: our proof too
    assert len(signed.seal(key, proven)["body"]) <= MAX_HEARTBEAT_BODY and proven.work == (
        2**32 - 1,
        b"n" * 8,
        b"s" * 8,
    )
    assert proven.maddrs == many[: len(proven.maddrs)] and len(proven.maddrs) >= 4
    assert heartbeat_body_size(replace(heartbeat(peer), work=proven.work)) < 500  # two addresses: far from the cap


def test_measure_a_thousand_sybil_heartbeats(sybil_keys):
    """Not asserted (but for the padded ones' zero verifications): what 1,000 Sybil heartbeats cost a
    validator, and how many fill the 4 MiB reply to a peer-table read."""
    from hivemind.dht.storage import DictionaryDHTValue
    from hivemind.utils.serializer import MSGPackSerializer as S

    from node.p2p.dht import MAX_HEARTBEAT_BODY
    from node.p2p.validators import RunValidator

    v = RunValidator(RUN, heartbeat_ttl=8.0)
    records = [
        (signed.seal(key, heartbeat(peer, round=i, time=1.0e9 + i / 100)), peer, 1.0e9 + i / 100 + 8)
        for i in range(50)
        for key, peer in sybil_keys
    ]
    key, peer = sybil_keys[0]
    pads = [(padded(key, heartbeat(peer, time=1.0e9 + i), 8192), peer, 1.0e9 + i + 8) for i in range(1000)]
    signing.clear_cache()
    lines = []
    for label, batch in (("valid, first read", records), ("valid, read again", records), ("padded 8 KiB", pads)):
        before, t0, c0 = signing.cache_info().verifications, time.perf_counter(), time.process_time()
        ok = sum(stored(v, env, p, exp, now=1.0e9 + 10) for env, p, exp in batch)
        cpu = time.process_time() - c0
        verified = signing.cache_info().verifications - before
        lines.append(
            f"  {label}: {len(batch)} records, {ok} kept, {verified} RSA verifications, "
            f"{1e6 * (time.perf_counter() - t0) / len(batch):.0f} us wall, {1e6 * cpu / len(batch):.0f} us CPU each"
        )
        if label.startswith("padded"):
            assert ok == 0 and verified == 0
    for body in (400, MAX_HEARTBEAT_BODY, 8192):
        table = DictionaryDHTValue()
        envelope = signing.sign(key, b"x" * body, "heartbeat")
        for i in range(100):
            table.store(f"{peer[:-3]}{i:03d}", S.dumps(envelope), 2.0e9)
        per_entry = len(S.dumps(table)) / 100
        lines.append(
            f"  body {body} B: {per_entry:.0f} B per peer-table entry; {4 * 2**20 / per_entry:,.0f} fill 4 MiB"
        )
    print("\nvalidator cost of 1,000 Sybil heartbeats (20 keys x 50):\n" + "\n".join(lines))
