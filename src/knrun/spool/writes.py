"""Writing to the spool: paid outcomes, and marks of requests in flight, committed together.

Appends from many workers are committed together (group commit): while one commit is being
synced, new ones gather for the next. A request is marked before it is sent and its mark goes
when its outcome is appended (in the same transaction), or when it proves unbilled (a 429): a
mark still there after the process died is a request that may have been billed unseen, and the
next start counts it (`Spool.settle_in_flight`)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from knrun.errors import StoreError
from knrun.spool.db import FORMAT, SpoolDb, encode
from knrun.store.types import Outcome


@dataclass(frozen=True)
class InFlight:
    """A request sent and not answered yet, at the most and the least it may cost."""

    attempt_id: str
    job: str
    version: str
    run_id: str
    unit_id: Any
    possible_ticks: int
    expected_ticks: int
    sent_at: float = 0.0


# One queued operation: ("append", job, version, kind, payload, attempt id), ("mark", InFlight)
# or ("unmark", attempt id).
Op = tuple[Any, ...]


class Writes(SpoolDb):
    _queue: list[tuple[Op, asyncio.Future[int]]]
    _flusher: asyncio.Task[None] | None
    commits: int
    _durable: bool | None  # the connection's synchronous setting: FULL (True) or NORMAL

    def _init_writes(self) -> None:
        self._queue, self._flusher, self.commits, self._durable = [], None, 0, None

    async def append(self, outcome: Outcome, *, job: str, version: str) -> int:
        """Durably record a paid outcome; returns its sequence number once it is on disk."""
        kind, payload = encode(outcome)
        return await self._queued(("append", job, version, kind, payload, outcome.attempt_id))

    async def mark(self, request: InFlight) -> None:
        """A request is about to be sent: once this returns, a kill leaves a trace of it."""
        await self._queued(("mark", request))

    async def unmark(self, attempt_id: str) -> None:
        """The request proved unbilled (refused before any work): no trace needed."""
        await self._queued(("unmark", attempt_id))

    async def _queued(self, op: Op) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                seqs = await loop.run_in_executor(
                    self._executor, self._commit, [op for op, _ in batch]
                )
            except Exception as exc:  # every waiter must hear about it, not just one
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreError(f"spool {self.path}: {exc}"))
                continue
            for (_, future), seq in zip(batch, seqs, strict=True):
                if not future.done():
                    future.set_result(seq)

    def _commit(self, ops: list[Op]) -> list[int]:
        conn = self._conn
        durable = any(op[0] == "append" for op in ops)
        if durable is not self._durable:  # set outside a transaction, and only when it changes
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        now = time.time()
        seqs = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                seqs.append(self._apply(op, now))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return seqs

    def _apply(self, op: Op, now: float) -> int:
        conn = self._conn
        match op:
            case ("append", job, version, kind, payload, attempt_id):
                cursor = conn.execute(
                    "INSERT INTO spool (job, version, kind, payload, created_at, format) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (job, version, kind, payload, now, FORMAT),
                )
                if attempt_id and kind != "refund":
                    conn.execute("DELETE FROM in_flight WHERE attempt_id = ?", (attempt_id,))
                return cursor.lastrowid or 0
            case ("mark", InFlight() as r):
                conn.execute(
                    "INSERT OR REPLACE INTO in_flight (attempt_id, job, version, run_id, "
                    "unit_id, possible_ticks, expected_ticks, sent_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.attempt_id,
                        r.job,
                        r.version,
                        r.run_id,
                        json.dumps(r.unit_id),
                        r.possible_ticks,
                        r.expected_ticks,
                        now,
                    ),
                )
            case ("unmark", attempt_id):
                conn.execute("DELETE FROM in_flight WHERE attempt_id = ?", (attempt_id,))
        return 0

    async def in_flight(self, *, run_id: str | None = None) -> list[InFlight]:
        """Marks left: every one, or one run's."""
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        rows = await self._run(
            "SELECT attempt_id, job, version, run_id, unit_id, possible_ticks, expected_ticks, "
            f"sent_at FROM in_flight {where} ORDER BY sent_at",
            params,
        )
        return [
            InFlight(str(a), str(j), str(v), str(r), json.loads(str(u)), int(str(p)), int(str(e)))
            for a, j, v, r, u, p, e, _ in rows
        ]
