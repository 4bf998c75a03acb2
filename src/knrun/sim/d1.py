"""A Cloudflare D1 REST API simulator: an ASGI app over a real sqlite3 database.

It keeps the rules that shape a client: each request is one transaction; explicit BEGIN, COMMIT
and SAVEPOINT are rejected; 100 bound parameters and 100 KB per statement; only D1's allowed
PRAGMAs; the real success and error envelopes; Cloudflare's 1,200 requests per 5 minutes, past
which every call is refused for 5 minutes. Faults (429, overload, 503 pages, "Network connection
lost", even a fault after the transaction committed) can be scheduled. Use it in-process with
`httpx.ASGITransport(app=sim)` or serve it on a port.
"""

from __future__ import annotations

import asyncio
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

MAX_PARAMS = 100
MAX_STATEMENT_BYTES = 100_000
ALLOWED_PRAGMAS = {
    "table_list",
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "quick_check",
    "foreign_key_check",
    "foreign_key_list",
    "case_sensitive_like",
    "ignore_check_constraints",
    "legacy_alter_table",
    "recursive_triggers",
    "reverse_unordered_selects",
    "foreign_keys",
    "defer_foreign_keys",
}
_ROUTE = re.compile(r"/accounts/(?P<account>[^/]+)/d1/database/(?P<db>[^/]+)/(?P<kind>query|raw)$")
_TRANSACTION = re.compile(r"^\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*PRAGMA\s+(?:\w+\.)?(\w+)", re.IGNORECASE)
_PRAGMA_FUNCTION = re.compile(r"\bpragma_\w+\s*\(", re.IGNORECASE)
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|ALTER|CREATE|DROP)\b", re.IGNORECASE)
TRANSACTION_REFUSAL = (
    "To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT "
    "statements."
)

FaultKind = Literal["rate_limited", "overloaded", "network_lost", "unavailable"]


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


class _SqlRefused(Exception):
    def __init__(self, message: str, status: int = 400, code: int = 7500) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


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
            body = request.json()
            statements = _statements(body)
        except (ValueError, TypeError) as exc:
            return self._refuse(_error(400, 7400, f"Invalid request body: {exc}"))
        is_write = any(_WRITE.match(s["sql"]) for s in statements)
        self.stats.write_requests += int(is_write)
        fault = self._take_fault(statements, is_write)
        if fault is not None and not fault.applied:
            return self._refuse(_fault_response(fault, self.block_s))
        try:
            results = self._run(statements, raw=route["kind"] == "raw")
        except _SqlRefused as exc:
            return self._refuse(_error(exc.status, exc.code, str(exc)))
        if fault is not None:
            return self._refuse(_fault_response(fault, self.block_s))
        return Response.json(
            200, {"success": True, "errors": [], "messages": [], "result": results}
        )

    # -- internals --------------------------------------------------------------------------------

    def _refuse(self, response: Response) -> Response:
        self.stats.refused += 1
        return response

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
            results = [self._run_one(s["sql"], s.get("params") or [], raw) for s in statements]
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.stats.statements += len(statements)
        return results

    def _run_one(self, sql: str, params: list[Any], raw: bool) -> dict[str, Any]:
        _check_statement(sql, params)
        started = time.perf_counter()
        before = self.connection.total_changes
        try:
            cursor = self.connection.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", "SQLITE_ERROR")
            raise _SqlRefused(f"{exc}: {name}") from None
        columns = [d[0] for d in cursor.description or ()]
        changes = self.connection.total_changes - before
        elapsed_ms = (time.perf_counter() - started) * 1000
        page_count = self.connection.execute("PRAGMA page_count").fetchone()[0]
        meta = {
            "changed_db": changes > 0,
            "changes": changes,
            "duration": elapsed_ms,
            "last_row_id": cursor.lastrowid or 0,
            "rows_read": len(rows),  # the real figure counts scanned rows; this counts returned
            "rows_written": changes,
            "size_after": page_count * 4096,
            "served_by_region": "OC",
            "served_by_primary": True,
            "timings": {"sql_duration_ms": elapsed_ms},
        }
        if raw:
            results: Any = {"columns": columns, "rows": [list(row) for row in rows]}
        else:
            results = [dict(zip(columns, row, strict=True)) for row in rows]
        return {"results": results, "success": True, "meta": meta}


def _statements(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        items = body["batch"]
    elif isinstance(body, dict) and "sql" in body:
        items = _split_unbound(body)
    else:
        raise TypeError("expected {'sql', 'params'} or {'batch': [...]}")
    if not items:
        raise ValueError("empty batch")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("sql"), str):
            raise TypeError("every statement needs an 'sql' string")
        if not isinstance(item.get("params", []), list):
            raise TypeError("'params' must be an array")
    return list(items)


def _split_unbound(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`sql` may hold several statements joined by ';' when it has no parameters."""
    sql, params = body["sql"], body.get("params") or []
    if params or not isinstance(sql, str):
        return [body]
    parts, current = [], ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n\t;"):
                parts.append({"sql": current.strip()})
            current = ""
    if current.strip(" \n\t;"):
        parts.append({"sql": current.strip()})
    return parts or [body]


def _check_statement(sql: str, params: list[Any]) -> None:
    if _TRANSACTION.match(sql):
        raise _SqlRefused(TRANSACTION_REFUSAL)
    pragma = _PRAGMA.match(sql)
    if (pragma and pragma.group(1).lower() not in ALLOWED_PRAGMAS) or _PRAGMA_FUNCTION.search(sql):
        raise _SqlRefused("not authorized: SQLITE_AUTH")
    if len(sql.encode()) > MAX_STATEMENT_BYTES:
        raise _SqlRefused("statement too long: SQLITE_TOOBIG")
    if len(params) > MAX_PARAMS:
        raise _SqlRefused("too many SQL variables: SQLITE_ERROR")
    for value in params:
        if isinstance(value, (dict, list)):
            raise _SqlRefused(
                f"D1_TYPE_ERROR: Type '{type(value).__name__}' not supported for value"
            )


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


def _fault_response(fault: D1Fault, block_s: float) -> Response:
    if fault.kind == "rate_limited":
        return _rate_limited(block_s)
    if fault.kind == "overloaded":
        return _error(429, 7500, "D1_ERROR: D1 DB is overloaded. Too many requests queued.")
    if fault.kind == "network_lost":
        return _error(500, 7500, "D1_ERROR: Network connection lost.")
    return Response.text(
        503,
        "<html><body><h1>503 Service Temporarily Unavailable</h1><p>cloudflare</p></body></html>",
    )
