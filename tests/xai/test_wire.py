"""Chat's lean HTTP/1.1 connection against a real socket server: what it sends, the reply shapes
it reads, keep-alive and its reuse after the server closed it, and what each failure says about
whether the request may have been billed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from knrun.http import Failure
from knrun.xai.wire import Origin, Wire, WireError

pytestmark = pytest.mark.anyio
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REPLY = b'{"ok": true}'


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length")
    )
    return head, await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler, self.connections = handler, 0
        self.requests: list[tuple[str, bytes]] = []

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def wire(self) -> Wire:
        origin = Origin(f"http://127.0.0.1:{self.port}/v1")
        return Wire(origin, {"Authorization": "Bearer k"})


async def post(wire: Wire, reply_s: float = 2.0) -> bytes:
    reply = await wire.post(
        "/chat/completions",
        b'{"a":1}',
        {"x-grok-conv-id": "c"},
        connect_timeout_s=1.0,
        reply_timeout_s=reply_s,
    )
    assert reply.status == 200
    return reply.body


def answering(*, chunked: bool = False, close: bool = False, served: list | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if served is not None:
                served.append(request)
            if chunked:
                body = (
                    b"5\r\n"
                    + REPLY[:5]
                    + b"\r\n"
                    + f"{len(REPLY) - 5:x}\r\n".encode()
                    + REPLY[5:]
                    + b"\r\n0\r\n\r\n"
                )
                head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            else:
                body, head = REPLY, f"HTTP/1.1 200 OK\r\nContent-Length: {len(REPLY)}\r\n".encode()
            head += b"Connection: close\r\n" if close else b""
            writer.write(head + b"\r\n" + body)
            await writer.drain()
            if close:
                return

    return handler


async def test_a_request_goes_whole_and_the_connection_is_kept_for_the_next() -> None:
    served: list[tuple[str, bytes]] = []
    async with Server(answering(served=served)) as server:
        wire = server.wire()
        assert await post(wire) == REPLY and await post(wire) == REPLY
        wire.close()
    assert server.connections == 1  # kept alive
    head, body = served[0]
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    for line in (
        "Host: 127.0.0.1:",
        "Authorization: Bearer k",
        "x-grok-conv-id: c",
        "Content-Length: 7",
    ):
        assert line in head
    assert body == b'{"a":1}'


async def test_chunked_replies_and_connection_close_are_read() -> None:
    async with Server(answering(chunked=True, close=True)) as server:
        wire = server.wire()
        assert await post(wire) == REPLY
        assert await post(wire) == REPLY  # the server closed it: a new one, transparently
        wire.close()
    assert server.connections == 2


async def test_a_kept_connection_the_server_closed_meanwhile_is_replaced_not_failed() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(REPLY)}\r\n\r\n".encode() + REPLY)
        await writer.drain()  # then closes, without saying so in a header

    async with Server(one_then_close) as server:
        wire = server.wire()
        assert await post(wire) == REPLY
        await asyncio.sleep(0.05)  # the close reaches the client
        assert await post(wire) == REPLY
        wire.close()
    assert server.connections == 2


async def test_a_connection_that_drops_after_the_request_went_may_have_been_billed() -> None:
    async def read_and_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Server(read_and_drop) as server:
        with pytest.raises(WireError) as caught:
            await post(server.wire())
    assert caught.value.failure is Failure.DROPPED


async def test_no_reply_in_time_is_a_timeout_and_the_connection_is_dropped() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with Server(silent) as server:
        wire = server.wire()
        with pytest.raises(TimeoutError):
            await post(wire, reply_s=0.1)
        assert wire._writer is None


async def test_no_connection_at_all_is_not_sent() -> None:
    async with Server(answering()) as server:
        port = server.port
    wire = Wire(Origin(f"http://127.0.0.1:{port}"), {})
    with pytest.raises(WireError) as caught:
        await post(wire)
    assert caught.value.failure is Failure.NOT_SENT
