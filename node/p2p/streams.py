"""Bounded reads of one framed message (protocol/messages.py) from a peer's stream.

Every peer may be hostile: a frame's length is checked before a byte of its body is read, and
each read (header, body) has its own timeout. Both work on plain asyncio streams, so tests
drive them in-process without a libp2p daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from protocol.errors import ProtocolError
from protocol.messages import (
    HEADER_LEN,
    MAX_REQUEST_BYTES,
    Request,
    body_length,
    check_response_length,
    decode_response,
)


async def read_request(reader: asyncio.StreamReader, timeout: float) -> tuple[Request, int]:
    """One framed request -> (request, wire bytes). Each read is bounded by `timeout` seconds."""
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(HEADER_LEN)
    n = body_length(header, MAX_REQUEST_BYTES)
    async with asyncio.timeout(timeout):
        body = await reader.readexactly(n)
    return Request.decode(body), HEADER_LEN + n


async def read_response(
    reader: asyncio.StreamReader,
    expect: int | None,
    max_bytes: int,
    timeout: float,
    on_bytes: Callable[[int], None] = lambda n: None,
    hold: Callable[[int], contextlib.AbstractAsyncContextManager] | None = None,
) -> bytes:
    """One framed response -> its payload, or ProtocolError / TimeoutError / IncompleteReadError.

    The frame length is checked (messages.check_response_length) before the body is read: with
    `expect`, only the exact ok-response for `expect` payload bytes or a short refusal is read;
    without it, at most `max_bytes` of payload. Header and body reads each get `timeout` seconds.
    `on_bytes(n)` is told of every byte taken from the stream (the header even when refused).
    `hold(n)` (limits.ByteBudget.hold) is entered with the body's length before it is read and left
    once it is decoded (the payload is then the caller's): the bytes a peer made us hold before anyone could check them.
    """
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(HEADER_LEN)
    on_bytes(HEADER_LEN)
    n = int.from_bytes(header, "big")
    check_response_length(n, expect=expect, max_bytes=max_bytes)
    async with hold(n) if hold is not None else contextlib.nullcontext():
        async with asyncio.timeout(timeout):
            body = await reader.readexactly(n)
        on_bytes(n)
        payload = decode_response(body)
    if expect is not None and len(payload) != expect:
        raise ProtocolError(f"response carries {len(payload)} bytes, {expect} were announced")
    return payload
