"""The spool's SQLite file: its tables, one connection used from one worker thread, and the
encoding of what it holds.

A SQLite file in WAL mode with `synchronous = FULL`, so a committed append survives a crash,
a `kill -9` or a power cut. Marks of requests in flight are committed without waiting for the
disk (`synchronous = NORMAL` for those transactions): they must survive the process being
killed, which WAL gives without an fsync, and an fsync before every request would cost the run
its pace."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from knrun.errors import StoreError
from knrun.store.types import AttemptRefund, Outcome, PossibleCharge, UnitFailure, UnitResult

# The payload's shape: 1 had no money fields (they default), 2 has them. Readers accept both.
FORMAT = 2
COLUMNS = "seq, job, version, kind, payload, created_at, format"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spool (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, version TEXT NOT NULL,
        kind TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL)""",
    # Entries the store refused for what they hold, or that this knrun cannot read, or that the
    # operator set aside: kept, out of the way, until `knrun spool requeue`.
    """CREATE TABLE IF NOT EXISTS quarantine (
        seq INTEGER PRIMARY KEY, job TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
        payload TEXT NOT NULL, created_at REAL NOT NULL, reason TEXT NOT NULL,
        quarantined_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS spool_pending ON spool (job, version, seq)",
    # Requests sent and not yet answered: what a kill -9 would leave possibly billed, unseen.
    """CREATE TABLE IF NOT EXISTS in_flight (
        attempt_id TEXT PRIMARY KEY, job TEXT NOT NULL, version TEXT NOT NULL,
        run_id TEXT NOT NULL, unit_id TEXT NOT NULL, possible_ticks INTEGER NOT NULL,
        expected_ticks INTEGER NOT NULL, sent_at REAL NOT NULL)""",
)
_KINDS: dict[str, type[Outcome]] = {
    "result": UnitResult,
    "failure": UnitFailure,
    "refund": AttemptRefund,
    "charge": PossibleCharge,
}
_KIND_OF = {cls: name for name, cls in _KINDS.items()}
Row = tuple[object, ...]
T = TypeVar("T")


def encode(outcome: Outcome) -> tuple[str, str]:
    # vars(), not asdict(): the fields are flat, and asdict deep-copies on the hot path.
    return _KIND_OF[type(outcome)], json.dumps(vars(outcome), ensure_ascii=False)


def decode(kind: str, payload: str) -> Outcome:
    return _KINDS[kind](**json.loads(payload))


class SpoolDb:
    """The connection, its worker thread, and statements run there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            for table in ("spool", "quarantine"):
                columns = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
                if "format" not in columns:  # a spool written by an older knrun
                    self._conn.execute(
                        f"ALTER TABLE {table} ADD COLUMN format INTEGER NOT NULL DEFAULT 1"
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"spool {path}: cannot open: {exc}") from None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knrun-spool")

    def transaction(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        """Several statements in one transaction (in the worker thread)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def _run_many(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        await self._in_thread(lambda: self.transaction(statements))

    async def _run(self, sql: str, params: tuple[object, ...]) -> list[Row]:
        return await self._in_thread(lambda: list(self._conn.execute(sql, params).fetchall()))

    async def _in_thread(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except sqlite3.Error as exc:
            raise StoreError(f"spool {self.path}: {exc}") from None

    async def _close_db(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        # Deleted entries leave free pages behind; give them back once nothing is pending, when
        # it is cheap, so a big backlog does not keep its disk space forever.
        try:
            if self._conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 0:
                self._conn.execute("VACUUM")
        finally:
            self._conn.close()
