"""The local spool: every paid result is on disk here before knrun tries to write it to the store.

A SQLite file in WAL mode with `synchronous = FULL`, so a committed append survives a crash or a
`kill -9`. Appends from many workers are committed together (group commit): while one commit is
being synced, new appends gather for the next. The writer reads pending entries back from here
and deletes them once the store has them, so the spool holds only what is not yet in the store
and memory does not grow with a backlog. Entries left by a run that died are written first at
the next start: a store outage, or the process dying between paying and writing, loses nothing.

An entry the store refuses for what it holds (a constraint, a unit whose row is gone) moves to
the `quarantine` table; a store that refuses every write (a revoked token, a full or read-only
database) leaves every entry where it is. `knrun spool` shows both, for every job and version.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from knrun.errors import StoreError, StoreUnusable
from knrun.store.types import AttemptRefund, Outcome, UnitFailure, UnitResult, UnitStore

# The payload's shape: 1 had no money fields (they default), 2 has them. Readers accept both.
FORMAT = 2
_COLUMNS = "seq, job, version, kind, payload, created_at, format"
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
)
_KINDS: dict[str, type[Outcome]] = {
    "result": UnitResult,
    "failure": UnitFailure,
    "refund": AttemptRefund,
}
_KIND_OF = {cls: name for name, cls in _KINDS.items()}
Row = tuple[object, ...]
T = TypeVar("T")


@dataclass
class Delivery:
    written: int = 0
    quarantined: list[str] = field(default_factory=list)  # "<unit id>: <why>"
    lost: list[str] = field(default_factory=list)  # refused, and never in the spool to keep


@dataclass(frozen=True)
class Held:
    """What the spool holds for one job and version."""

    job: str
    version: str
    pending: int
    quarantined: int


def encode(outcome: Outcome) -> tuple[str, str]:
    # vars(), not asdict(): the fields are flat, and asdict deep-copies on the hot path.
    return _KIND_OF[type(outcome)], json.dumps(vars(outcome), ensure_ascii=False)


def decode(kind: str, payload: str) -> Outcome:
    return _KINDS[kind](**json.loads(payload))


class Spool:
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
        self._pending: list[tuple[str, str, str, str, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # for benchmarks: appends per commit shows the group commit working

    # -- appending --------------------------------------------------------------------------------

    async def append(self, outcome: Outcome, *, job: str, version: str) -> int:
        """Durably record a paid outcome; returns its sequence number once it is on disk."""
        kind, payload = encode(outcome)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((job, version, kind, payload, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                seqs = await loop.run_in_executor(self._executor, self._insert, batch)
            except Exception as exc:  # every waiter must hear about it, not just one
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(StoreError(f"spool {self.path}: {exc}"))
                continue
            for (*_, future), seq in zip(batch, seqs, strict=True):
                if not future.done():
                    future.set_result(seq)

    def _insert(self, batch: list[tuple[str, str, str, str, asyncio.Future[int]]]) -> list[int]:
        conn = self._conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            seqs = [
                conn.execute(
                    "INSERT INTO spool (job, version, kind, payload, created_at, format) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (job, version, kind, payload, now, FORMAT),
                ).lastrowid
                or 0
                for job, version, kind, payload, _ in batch
            ]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return seqs

    # -- reading and delivering -------------------------------------------------------------------

    async def pending(
        self, job: str, version: str, limit: int | None = None
    ) -> list[tuple[int, Outcome]]:
        """Entries not yet confirmed by the store, oldest first."""
        if limit is not None and limit <= 0:
            return []
        rows = await self._run(
            "SELECT seq, kind, payload FROM spool WHERE job = ? AND version = ? ORDER BY seq "
            "LIMIT ?",
            (job, version, -1 if limit is None else limit),
        )
        entries, unreadable = [], []
        for seq, kind, payload in rows:
            try:
                entries.append((int(str(seq)), decode(str(kind), str(payload))))
            except (TypeError, ValueError, KeyError) as exc:  # written by another knrun version
                unreadable.append((int(str(seq)), f"unreadable entry: {exc}"))
        for seq, reason in unreadable:
            await self.quarantine([seq], reason)
        return entries

    async def deliver(self, store: UnitStore, batch: list[tuple[int, Outcome]]) -> Delivery:
        """Write `batch` to the store, then forget it here. When the store refuses the batch
        for what it holds, each entry is tried alone and only the ones it refuses are
        quarantined, so one bad result cannot block the spool for ever and its neighbours go in.
        A store that refuses every write (StoreUnusable) and trouble that may pass are raised
        to the caller, with the batch kept. Entries with seq 0 never reached the spool (it
        failed): refused, they are reported as lost."""
        try:
            missing = await store.write_results([outcome for _, outcome in batch])
        except StoreError as exc:
            if exc.retryable or isinstance(exc, StoreUnusable):
                raise
            return await self._one_by_one(store, batch)
        return await self._settle(batch, missing)

    async def _settle(self, batch: list[tuple[int, Outcome]], missing: list[Outcome]) -> Delivery:
        """Forget what the store has; keep what had no row to land on, in quarantine."""
        delivery = Delivery(written=len(batch) - len(missing))
        kept = {id(outcome) for outcome in missing}
        for seq, outcome in batch:
            if id(outcome) in kept:
                why = "no row with this id in the table (deleted, or its id changed)"
                self._refused(delivery, seq, outcome, why)
                if seq:
                    await self.quarantine([seq], why)
        await self.forget([seq for seq, outcome in batch if seq and id(outcome) not in kept])
        return delivery

    async def _one_by_one(self, store: UnitStore, batch: list[tuple[int, Outcome]]) -> Delivery:
        delivery = Delivery()
        for seq, outcome in batch:
            try:
                missing = await store.write_results([outcome])
            except StoreError as exc:
                if exc.retryable or isinstance(exc, StoreUnusable):
                    raise
                self._refused(delivery, seq, outcome, str(exc))
                if seq:
                    await self.quarantine([seq], str(exc))
                continue
            settled = await self._settle([(seq, outcome)], missing)
            delivery.written += settled.written
            delivery.quarantined += settled.quarantined
            delivery.lost += settled.lost
        return delivery

    @staticmethod
    def _refused(delivery: Delivery, seq: int, outcome: Outcome, why: str) -> None:
        (delivery.quarantined if seq else delivery.lost).append(f"{outcome.unit_id}: {why}")

    # -- what is held, and the operator's moves ---------------------------------------------------

    async def held(self) -> list[Held]:
        """Pending and quarantined entries for every job and version."""
        rows = await self._run(
            "SELECT job, version, SUM(pending), SUM(quarantined) FROM ("
            "SELECT job, version, 1 AS pending, 0 AS quarantined FROM spool UNION ALL "
            "SELECT job, version, 0, 1 FROM quarantine) "
            "GROUP BY job, version ORDER BY job, version",
            (),
        )
        return [Held(str(j), str(v), int(str(p)), int(str(q))) for j, v, p, q in rows]

    async def quarantine_reasons(self, job: str, version: str, limit: int = 5) -> list[str]:
        rows = await self._run(
            "SELECT reason, COUNT(*) FROM quarantine WHERE job = ? AND version = ? "
            "GROUP BY reason ORDER BY COUNT(*) DESC LIMIT ?",
            (job, version, limit),
        )
        return [f"{reason} ({count})" for reason, count in rows]

    async def quarantine(self, seqs: Sequence[int], reason: str) -> None:
        ids = json.dumps(list(seqs))
        await self._move(
            "spool", "quarantine", "seq IN (SELECT value FROM json_each(?))", (ids,), reason
        )

    async def set_aside(self, job: str, version: str, reason: str) -> None:
        """The operator decided these pending entries are not to be written: keep them apart."""
        await self._move("spool", "quarantine", "job = ? AND version = ?", (job, version), reason)

    async def requeue(self, job: str, version: str) -> None:
        """Quarantined entries back to pending, for the next replay to try again."""
        await self._move("quarantine", "spool", "job = ? AND version = ?", (job, version), None)

    async def _move(
        self, source: str, target: str, where: str, params: tuple[object, ...], reason: str | None
    ) -> None:
        if target == "quarantine":
            copy = (
                f"INSERT OR REPLACE INTO quarantine ({_COLUMNS}, reason, quarantined_at) "
                f"SELECT {_COLUMNS}, ?, ? FROM spool WHERE {where}",
                ((reason or "")[:1000], time.time(), *params),
            )
        else:
            copy = (
                f"INSERT OR REPLACE INTO spool ({_COLUMNS}) SELECT {_COLUMNS} FROM quarantine "
                f"WHERE {where}",
                params,
            )
        await self._run_many([copy, (f"DELETE FROM {source} WHERE {where}", params)])

    async def quarantined(self) -> int:
        rows = await self._run("SELECT COUNT(*) FROM quarantine", ())
        return int(str(rows[0][0]))

    async def forget(self, seqs: Sequence[int]) -> None:
        """The store has these: drop them."""
        if seqs:
            await self._run(
                "DELETE FROM spool WHERE seq IN (SELECT value FROM json_each(?))",
                (json.dumps(list(seqs)),),
            )

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run_many(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        """Several statements in one transaction."""

        def run() -> None:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

        await self._in_thread(run)

    async def _run(self, sql: str, params: tuple[object, ...]) -> list[Row]:
        return await self._in_thread(lambda: list(self._conn.execute(sql, params).fetchall()))

    async def _in_thread(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except sqlite3.Error as exc:
            raise StoreError(f"spool {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
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
