"""One keep-alive HTTP/1.1 connection to xAI for chat requests, and nothing more.

A run sends thousands of identical-looking POSTs; through httpx each one costs about 3 ms of CPU
(request and response models, the connection pool, anyio, two socket writes), more than the
whole of a plain asyncio client. Here a request is one prepared byte string written at once,
and the reply is read by its Content-Length (or chunks), on asyncio streams. httpx still does
everything else (the model list, the Batch API, the balance), and chat too when a transport is
injected (tests) or a proxy is configured (httpx honours the proxy variables; this does not).

What a failure says about the request is what knrun's money depends on, so it is decided here
as `knrun.http.Failure` says it: no connection, or a kept-alive connection the server had
already closed, is NOT_SENT (safe to send again); a failure after the request went is a TIMEOUT
or DROPPED (xAI may have billed it)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from knrun.http import Failure

MAX_HEADER_BYTES = 64 * 1024


class WireError(Exception):
    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names; a repeated header keeps its last value
    body: bytes


class Origin:
    """Where requests go: scheme, host and port of a base URL, and its path prefix."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        self.authority = self.host if default else f"{self.host}:{self.port}"
        self.prefix = parts.path.rstrip("/")


class Wire:
    """One connection, used by one caller at a time (a worker's lane)."""

    def __init__(
        self, origin: Origin, headers: dict[str, str], tls: ssl.SSLContext | None = None
    ) -> None:
        self.origin, self._tls = origin, tls
        fixed = {"Host": origin.authority, "Accept": "application/json", **headers}
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        *,
        connect_timeout_s: float,
        reply_timeout_s: float,
    ) -> Reply:
        """POST `body` (JSON) and read the whole reply within `reply_timeout_s` of sending it
        (TimeoutError after that; the connection is closed). A cancelled exchange closes the
        connection too: the next request opens a new one."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (
            f"POST {self.origin.prefix}{path} HTTP/1.1\r\n{self._head}{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        try:
            reader, writer = await self._open(connect_timeout_s)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise WireError(Failure.NOT_SENT, f"cannot connect: {exc!r}") from None
        try:
            writer.write(request)
            await writer.drain()
        except OSError as exc:  # not all of it left: the server cannot act on half a request
            self.close()
            raise WireError(Failure.NOT_SENT, f"sending: {exc!r}") from None
        try:
            async with asyncio.timeout(reply_timeout_s):
                reply = await _read_reply(reader)
        except BaseException as exc:
            self.close()
            if isinstance(exc, TimeoutError):  # an OSError too: the caller's to name
                raise
            if isinstance(exc, asyncio.IncompleteReadError | OSError | ValueError):
                raise WireError(Failure.DROPPED, f"reading the reply: {exc!r}") from None
            raise
        if reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    async def _open(self, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The kept-alive connection, unless the server has closed it meanwhile (then a new
        one: the request has not gone anywhere yet)."""
        if self._reader is not None and self._writer is not None:
            if not (self._reader.at_eof() or self._writer.is_closing()):
                return self._reader, self._writer
            self.close()
        async with asyncio.timeout(timeout_s):
            self._reader, self._writer = await asyncio.open_connection(
                self.origin.host,
                self.origin.port,
                ssl=self._tls if self.origin.tls else None,
                server_hostname=self.origin.host if self.origin.tls else None,
                limit=MAX_HEADER_BYTES,
            )
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunks(reader)
    elif (length := headers.get("content-length")) is not None:
        body = await reader.readexactly(int(length))
    else:  # no length: the body runs to the end of the connection
        body = await reader.read()
        headers["connection"] = "close"
    return Reply(int(code), reason, headers, body)


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the end
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
