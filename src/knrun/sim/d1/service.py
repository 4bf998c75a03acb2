"""A Cloudflare D1 REST API simulator: an ASGI app over a real sqlite3 database.

It keeps the rules that shape a client: each request is one transaction; the real success and
error envelopes; Cloudflare's 1,200 requests per 5 minutes per account, past which every call is
refused for 5 minutes, with the `Ratelimit` / `Ratelimit-Policy` headers that say how much is
left. Statements run the way Cloudflare's own engine was measured to run them (`d1_engine.py`:
its refusals and words, numbers bound as REAL, big integers rounded on the way back). Faults can
be scheduled: 429s, overload, 503 pages, "Network connection lost", a revoked token, a full
database, the free plan's daily row limit, the CPU-time reset, and any of them after the
transaction committed. Use it in-process with `httpx.ASGITransport(app=sim)` or on a port.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from knrun.sim.asgi import (
    Receive,
    Request,
    Response,
    Scope,
    Send,
    handle_lifespan,
    read_request,
    send_response,
)
from knrun.sim.d1 import engine

_ROUTE = re.compile(r"/accounts/(?P<account>[^/]+)/d1/database/(?P<db>[^/]+)/(?P<kind>query|raw)$")

FaultKind = Literal[
    "rate_limited",
    "overloaded",
    "network_lost",
    "unavailable",
    "unauthorized",  # a rotated or revoked token: every request refused
    "db_full",  # the database reached its size limit
    "daily_limit",  # the free plan's daily rows-read limit, until 00:00 UTC
    "cpu_limit",  # D1 DB exceeded its CPU time limit and was reset
]


@dataclass(frozen=True)
class D1Fault:
    kind: FaultKind
    # Run and commit the request, then answer with the fault: the client cannot tell whether it
    # was applied, which is exactly when only idempotent requests may be repeated.
    applied: bool = False
    writes_only: bool = False
    only_if: str | None = None  # refuse only requests whose SQL contains this text

    def hits(self, statements: list[dict[str, Any]], is_write: bool) -> bool:
        if self.writes_only and not is_write:
            return False
        return self.only_if is None or any(self.only_if in s["sql"] for s in statements)


@dataclass
class D1Stats:
    requests: int = 0
    write_requests: int = 0
    statements: int = 0
    refused: int = 0  # answered with an error (faults, limits, bad SQL)
    request_times: list[float] = field(default_factory=list)

    def peak_in_window(self, window_s: float) -> int:
        """Most requests seen in any `window_s` interval."""
        best, start = 0, 0
        for end, at in enumerate(self.request_times):
            while at - self.request_times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best


class D1Simulator:
    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        account_id: str = "sim-account",
        database_id: str = "sim-database",
        api_token: str = "sim-d1-token",  # noqa: S107 - the simulator's own fake token
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        latency_s: float = 0.0,
        limit_requests: int = 1200,
        limit_window_s: float = 300.0,
        block_s: float = 300.0,
        ratelimit_headers: bool = True,  # Cloudflare's Ratelimit / Ratelimit-Policy (since 2025)
    ) -> None:
        self.account_id = account_id
        self.database_id = database_id
        self.api_token = api_token
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode = WAL")
        self._clock = clock
        self._sleep = sleep
        self.latency_s = latency_s
        self.limit_requests = limit_requests
        self.limit_window_s = limit_window_s
        self.block_s = block_s
        self.ratelimit_headers = ratelimit_headers
        self._recent: deque[float] = deque()
        self._blocked_until = 0.0
        self.faults: deque[D1Fault] = deque()  # consumed one per matching request
        self.outage: D1Fault | None = None  # applies to every matching request until cleared
        self.stats = D1Stats()

    # -- helpers for tests and the demo ------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self)

    def base_url(self, origin: str = "http://d1.sim") -> str:
        return f"{origin}/client/v4"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Read the database directly (no limits, no stats): for assertions."""
        cursor = self.connection.execute(sql, params)
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await handle_lifespan(receive, send)
            return
        request = await read_request(scope, receive)
        if self.latency_s > 0:
            await self._sleep(self.latency_s)
        await send_response(send, self.handle(request))

    def handle(self, request: Request) -> Response:
        route = _ROUTE.search(request.path)
        if request.method != "POST" or route is None:
            return _error(404, 7000, "No route for that URI")
        if request.bearer() != self.api_token:
            return _error(401, 10000, "Authentication error")
        now = self._clock()
        self.stats.requests += 1
        self.stats.request_times.append(now)
        limited = self._rate_limit(now)
        if limited is not None:
            return limited
        if route["account"] != self.account_id or route["db"] != self.database_id:
            return _error(404, 7404, f"The database {route['db']} could not be found")
        try:
            statements = engine.statements(request.json())
        except (ValueError, TypeError) as exc:
            return self._refuse(_error(400, 7400, f"Invalid request body: {exc}"))
        except engine.SqlRefused as exc:
            return self._refuse(_error(exc.status, exc.code, str(exc)))
        is_write = any(engine.WRITE.match(s["sql"]) for s in statements)
        self.stats.write_requests += int(is_write)
        fault = self._take_fault(statements, is_write)
        if fault is not None and not fault.applied:
            return self._refuse(_fault_response(fault, self.block_s))
        try:
            results = self._run(statements, raw=route["kind"] == "raw")
        except engine.SqlRefused as exc:
            return self._refuse(_error(exc.status, exc.code, str(exc)))
        if fault is not None:
            return self._refuse(_fault_response(fault, self.block_s))
        payload = {"success": True, "errors": [], "messages": [], "result": results}
        return Response.json(200, payload, self._budget_headers(self._clock()))

    # -- internals --------------------------------------------------------------------------------

    def _refuse(self, response: Response) -> Response:
        self.stats.refused += 1
        return response

    def _budget_headers(self, now: float) -> dict[str, str]:
        """Cloudflare's IETF-draft rate-limit headers: what is left of the window, and when the
        oldest request in it rolls off."""
        if not self.ratelimit_headers:
            return {}
        left = max(self.limit_requests - len(self._recent), 0)
        reset = self.limit_window_s - (now - self._recent[0]) if self._recent else 0.0
        return {
            "ratelimit": f'"default";r={left};t={math.ceil(max(reset, 0))}',
            "ratelimit-policy": f'"default";q={self.limit_requests};w={self.limit_window_s:g}',
        }

    def _rate_limit(self, now: float) -> Response | None:
        if now < self._blocked_until:
            return self._refuse(_rate_limited(self._blocked_until - now))
        while self._recent and now - self._recent[0] >= self.limit_window_s:
            self._recent.popleft()
        if len(self._recent) >= self.limit_requests:
            self._blocked_until = now + self.block_s
            return self._refuse(_rate_limited(self.block_s))
        self._recent.append(now)
        return None

    def _take_fault(self, statements: list[dict[str, Any]], is_write: bool) -> D1Fault | None:
        if self.outage is not None and self.outage.hits(statements, is_write):
            return self.outage
        if self.faults and self.faults[0].hits(statements, is_write):
            return self.faults.popleft()
        return None

    def _run(self, statements: list[dict[str, Any]], *, raw: bool) -> list[dict[str, Any]]:
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [
                engine.run_statement(conn, s["sql"], s.get("params") or [], raw=raw)
                for s in statements
            ]
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.stats.statements += len(statements)
        return results


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    payload = {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }
    return Response.json(status, payload, headers)


def _rate_limited(retry_after_s: float) -> Response:
    seconds = max(1, int(retry_after_s + 0.999))
    return _error(
        429,
        971,
        "Please wait and consider throttling your request speed",
        {"retry-after": str(seconds)},
    )


_FAULTS: dict[str, tuple[int, int, str]] = {
    "overloaded": (429, 7500, "D1_ERROR: D1 DB is overloaded. Too many requests queued."),
    "network_lost": (500, 7500, "D1_ERROR: Network connection lost."),
    "unauthorized": (401, 10000, "Authentication error"),
    "db_full": (400, 7500, "D1_ERROR: Exceeded maximum DB size"),
    "daily_limit": (400, 7500, "D1_ERROR: Your account has exceeded daily row read limit"),
    "cpu_limit": (500, 7500, "D1_ERROR: D1 DB exceeded its CPU time limit and was reset."),
}


def _fault_response(fault: D1Fault, block_s: float) -> Response:
    if fault.kind == "rate_limited":
        return _rate_limited(block_s)
    if fault.kind in _FAULTS:
        return _error(*_FAULTS[fault.kind])
    return Response.text(
        503,
        "<html><body><h1>503 Service Temporarily Unavailable</h1><p>cloudflare</p></body></html>",
    )
