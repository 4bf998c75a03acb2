"""Cloudflare's real D1 engine (workerd, via Miniflare) behind D1's REST API, for tests.

`tests/workerd/server.mjs` runs a D1 database in workerd and answers
`POST {base_url}/accounts/{account}/d1/database/{db}/query` (and `/raw`) with the REST API's
envelopes. Install it once with `npm ci` in `tests/workerd/`; `node_available()` says why it
cannot run when it cannot. Use:

    with serve_workerd_d1() as d1:
        store = D1Store(job, account_id=d1.account_id, database_id=d1.database_id,
                        api_token=SecretStr(d1.api_token), base_url=d1.base_url)
        ...
        assert d1.query("SELECT count(*) AS n FROM units") == [{"n": 3}]
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

WORKERD_DIR = Path(__file__).resolve().parent / "workerd"
SERVER_SCRIPT = WORKERD_DIR / "server.mjs"
MINIFLARE_DIR = WORKERD_DIR / "node_modules" / "miniflare"
READY_PREFIX = "READY "
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
DEFAULT_ACCOUNT_ID = "sim-account"
DEFAULT_DATABASE_ID = "sim-database"
DEFAULT_API_TOKEN = "sim-d1-token"  # the harness's own fake token


class WorkerdD1Error(RuntimeError):
    """The server did not start, or a helper query failed."""


def node_available() -> str | None:
    """Why the workerd D1 server cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not on PATH (the workerd D1 tests need Node.js 20 or newer)"
    if not (MINIFLARE_DIR / "package.json").is_file():
        return f"miniflare is not installed: run `npm ci` in {WORKERD_DIR}"
    return None


@dataclass
class WorkerdD1:
    """A running server: what a D1 REST client needs, and a synchronous `query` for assertions."""

    origin: str
    account_id: str
    database_id: str
    api_token: str
    _client: httpx.Client = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/client/v4"

    def url(self, kind: str = "query") -> str:
        return f"{self.base_url}/accounts/{self.account_id}/d1/database/{self.database_id}/{kind}"

    def post(self, body: dict[str, Any], kind: str = "query") -> httpx.Response:
        """Send one REST request as it is: for tests that look at the envelope itself."""
        return self._client.post(self.url(kind), json=body)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one statement through the REST API and return its rows (the last statement's
        rows when `sql` holds several); raise WorkerdD1Error with D1's message on failure."""
        response = self.post({"sql": sql, "params": list(params)})
        envelope = response.json()
        if response.status_code != 200 or not envelope.get("success"):
            raise WorkerdD1Error(f"D1 HTTP {response.status_code}: {envelope.get('errors')}")
        results: list[dict[str, Any]] = envelope["result"]
        rows: list[dict[str, Any]] = results[-1]["results"]
        return rows


@contextlib.contextmanager
def serve_workerd_d1(
    persist_dir: Path | None = None,
    *,
    account_id: str = DEFAULT_ACCOUNT_ID,
    database_id: str = DEFAULT_DATABASE_ID,
    api_token: str = DEFAULT_API_TOKEN,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[WorkerdD1]:
    """Start `node tests/workerd/server.mjs` on a free port; stop it on exit.

    With `persist_dir` the database's SQLite files live there (and survive a restart);
    without, the database is in memory and gone when the server stops.
    """
    reason = node_available()
    if reason is not None:
        raise WorkerdD1Error(reason)
    env = {name: value for name, value in os.environ.items() if not name.startswith("WORKERD_D1_")}
    env.update(
        WORKERD_D1_PORT="0",
        WORKERD_D1_PERSIST=str(persist_dir.resolve()) if persist_dir is not None else "",
        WORKERD_D1_TOKEN=api_token,
        WORKERD_D1_ACCOUNT=account_id,
        WORKERD_D1_DATABASE=database_id,
    )
    process = subprocess.Popen(
        ["node", str(SERVER_SCRIPT)],
        cwd=WORKERD_DIR,
        env=env,
        stdin=subprocess.PIPE,  # closing it also stops the server
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert process.stdout is not None and process.stderr is not None
    stderr_lines: list[str] = []
    stdout_lines: queue.Queue[str | None] = queue.Queue()
    readers = [
        threading.Thread(target=_drain, args=(process.stderr, stderr_lines.append), daemon=True),
        threading.Thread(target=_pump, args=(process.stdout, stdout_lines), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        try:
            origin = _wait_ready(stdout_lines, start_timeout_s)
        except _NotReadyError as exc:
            _stop(process)
            for reader in readers:
                reader.join(timeout=STOP_TIMEOUT_S)
            raise WorkerdD1Error(
                f"workerd D1 server ({SERVER_SCRIPT}) {exc}; exit code {process.returncode}\n"
                f"--- stdout ---\n{''.join(exc.stdout).strip()}\n"
                f"--- stderr ---\n{''.join(stderr_lines).strip()}"
            ) from None
        with httpx.Client(headers={"Authorization": f"Bearer {api_token}"}, timeout=30.0) as client:
            yield WorkerdD1(
                origin=origin,
                account_id=account_id,
                database_id=database_id,
                api_token=api_token,
                _client=client,
            )
    finally:
        _stop(process)
        for reader in readers:
            reader.join(timeout=STOP_TIMEOUT_S)
        process.stdout.close()
        process.stderr.close()


class _NotReadyError(Exception):
    def __init__(self, problem: str, stdout: list[str]) -> None:
        super().__init__(problem)
        self.stdout = stdout


def _wait_ready(stdout_lines: queue.Queue[str | None], timeout_s: float) -> str:
    """The server's origin from its READY line; _NotReadyError if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _NotReadyError(f"did not print READY within {timeout_s:.0f} s", seen)
        try:
            line = stdout_lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            raise _NotReadyError("exited before it was ready", seen)
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].strip().rstrip("/")
        seen.append(line)


def _drain(stream: IO[str], sink: Callable[[str], object]) -> None:
    for line in stream:
        sink(line)


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    elif process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()


class RestCursor:
    """Enough of a sqlite3 cursor for the tests' direct reads: rows as tuples, in order."""

    def __init__(self, columns: list[str], rows: list[list[Any]]) -> None:
        self.description = [(name, None, None, None, None, None, None) for name in columns]
        self._rows = [tuple(row) for row in rows]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None


class RestConnection:
    """Enough of a sqlite3 connection for the tests to seed and read a D1 database behind the
    REST API as they would a file: `execute`, `executemany` (batched), no transactions."""

    in_transaction = False

    def __init__(self, server: WorkerdD1) -> None:
        self.server = server

    def execute(self, sql: str, params: Sequence[Any] = ()) -> RestCursor:
        response = self.server.post({"sql": sql, "params": list(params)}, kind="raw")
        envelope = response.json()
        if response.status_code != 200 or not envelope.get("success"):
            raise WorkerdD1Error(f"D1 HTTP {response.status_code}: {envelope.get('errors')}")
        last = envelope["result"][-1]["results"]
        return RestCursor(last.get("columns", []), last.get("rows", []))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], per_request: int = 50) -> None:
        for start in range(0, len(rows), per_request):
            batch = [{"sql": sql, "params": list(row)} for row in rows[start : start + per_request]]
            response = self.server.post({"batch": batch})
            if response.status_code != 200 or not response.json().get("success"):
                raise WorkerdD1Error(f"D1 HTTP {response.status_code}: {response.text[:300]}")

    def commit(self) -> None:
        """Every request is its own transaction."""

    def reset(self) -> None:
        """Drop every table the tests made: one server serves many tests."""
        tables = self.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_cf%' "
            "ESCAPE '\\' AND name NOT LIKE 'sqlite%'"
        ).fetchall()
        for (name,) in tables:
            self.execute(f'DROP TABLE IF EXISTS "{name}"')
