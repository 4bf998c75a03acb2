"""`SqliteStore`: the embedded store, a local SQLite file shared safely by tasks and processes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from knrun.errors import ConfigError, StoreError, StoreRefused, StoreUnusable
from knrun.job import JobSpec
from knrun.store.base import Result, SqlUnitStore
from knrun.store.schema import Statement

BUSY_TIMEOUT_MS = 30_000


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with autocommit, so transactions are explicit and short."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL, like the spool: the writer forgets a spooled result once the store has committed
    # it, so that commit must survive a power cut too, not only a crash.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class SqliteStore(SqlUnitStore):
    """All SQL runs on one worker thread with one connection: the event loop never blocks, and
    statements from concurrent tasks are serialised. Every write transaction starts with
    BEGIN IMMEDIATE, taking the file's write lock up front, so claims from two processes
    cannot interleave between their read and their write."""

    def __init__(self, job: JobSpec, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(job, clock=clock)
        self.path = path
        if not path.parent.exists():
            raise ConfigError(f"sqlite:{path}: folder {path.parent} does not exist")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knrun-sqlite")
        self._conn: sqlite3.Connection | None = None

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    async def _execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Result]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._execute_sync, list(statements))

    def _execute_sync(self, statements: list[Statement]) -> list[Result]:
        if self._conn is None:
            try:
                self._conn = connect(self.path)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite:{self.path}: cannot open: {exc}") from None
        conn = self._conn
        readonly = all(_is_read(statement.sql) for statement in statements)
        try:
            conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise classify(self.path, exc) from None
        try:
            results = [self._one(conn, statement) for statement in statements]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:  # some errors have already rolled the transaction back
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise classify(self.path, exc) from None
        return results

    @staticmethod
    def _one(conn: sqlite3.Connection, statement: Statement) -> Result:
        before = conn.total_changes
        rows = [dict(row) for row in conn.execute(statement.sql, statement.params).fetchall()]
        return Result(rows, conn.total_changes - before)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_PASSING = ("locked", "busy", "disk i/o", "unable to open", "out of memory")
_UNUSABLE = {
    "readonly": "the file is read-only (its permissions, or a read-only disk)",
    "database or disk is full": "the disk is full",
}


def classify(path: Path, exc: sqlite3.Error) -> StoreError:
    """A lock or I/O trouble may pass; a read-only file or a full disk refuses every write; a
    constraint, a type or bad SQL refuses only the request that tripped it."""
    text = f"sqlite:{path}: {exc}"
    lowered = str(exc).lower()
    for fragment, why in _UNUSABLE.items():
        if fragment in lowered:
            return StoreUnusable(f"{text} ({why}: fix it, then run again)")
    passing = isinstance(exc, sqlite3.OperationalError) and any(
        word in lowered for word in _PASSING
    )
    return StoreError(text) if passing else StoreRefused(text)


def _is_read(sql: str) -> bool:
    head = sql.lstrip()[:8].upper()
    return head.startswith(("SELECT", "PRAGMA", "WITH"))
