"""`SqlUnitStore`: every store operation, written once over "run these statements atomically"."""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from knrun.errors import ConfigError, StoreError
from knrun.job import JobSpec
from knrun.store.sql import (
    CHARGES_TABLE,
    POSITION,
    RUN_COLUMNS,
    RUNS_TABLE,
    Statement,
    UnitSql,
)
from knrun.store.types import (
    AttemptRefund,
    Money,
    Outcome,
    Progress,
    RunRecord,
    Unit,
    UnitFailure,
    UnitResult,
)

Rows = list[dict[str, Any]]
CHARGES_STATEMENT_BYTES = 600  # the charges statement's SQL, before its rows


class SqlUnitStore(ABC):
    """A `UnitStore` for any backend that can run a list of statements as one transaction."""

    # Largest request body a backend accepts comfortably; None: no limit (one transaction).
    request_budget_bytes: int | None = None

    def __init__(self, job: JobSpec, *, clock: Callable[[], float] = time.time) -> None:
        self.job = job
        self.sql = UnitSql(job)
        self._clock = clock
        # What a backend says when `knrun db migrate` has not run for this job yet.
        prefix = re.escape(job.source.prefix)
        self._unmigrated = re.compile(
            rf"no such (column: {prefix}\w+|table: ({RUNS_TABLE}|{CHARGES_TABLE}))"
        )

    @abstractmethod
    async def _execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Rows]:
        """Run `statements` in one transaction (one request); return each one's rows.

        `idempotent` says whether the whole request may be repeated safely after a failure whose
        outcome is unknown: a backend may retry only then."""

    async def execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Rows]:
        try:
            return await self._execute(statements, idempotent=idempotent)
        except StoreError as exc:
            if self._unmigrated.search(str(exc)):
                raise ConfigError(
                    f"{self.describe()}: not set up for this job ({exc}); run `knrun db migrate`"
                ) from None
            raise

    @abstractmethod
    async def close(self) -> None: ...

    def describe(self) -> str:
        return type(self).__name__

    # -- schema -----------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        info, runs_info = await self.execute(
            [self.sql.table_info(), self.sql.runs_table_info()], idempotent=True
        )
        if not info:
            raise ConfigError(
                f"table {self.job.source.table!r} does not exist in the store "
                "(load units first, e.g. `knrun db import FILE`)"
            )
        existing = {row["name"] for row in info}
        try:
            await self.execute([self.sql.has_rowid()], idempotent=True)
        except StoreError:
            raise ConfigError(
                f"table {self.job.source.table!r} has no rowid (WITHOUT ROWID): knrun claims "
                "units in rowid order and cannot use it"
            ) from None
        missing_inputs = [c for c in self.sql.input_columns if c not in existing]
        if missing_inputs:
            raise ConfigError(
                f"table {self.job.source.table!r} lacks the job's column(s) "
                f"{', '.join(missing_inputs)}"
            )
        wanted = self.sql.wanted_columns()
        added = [name for name in wanted if name not in existing]
        statements = [self.sql.add_column(name, wanted[name]) for name in added]
        statements.append(self.sql.create_runs_table())
        statements += self.sql.create_charges_table()
        if runs_info:  # a runs table from an older knrun: add what it lacks
            have = {row["name"] for row in runs_info}
            for name in RUN_COLUMNS:
                if name not in have:
                    statements.append(self.sql.add_run_column(name))
                    added.append(f"{RUNS_TABLE}.{name}")
        # Not idempotent as a request (ADD COLUMN twice fails), so a backend never repeats it; a
        # second `migrate` reads the schema again and adds nothing.
        await self.execute(statements, idempotent=False)
        return added

    # -- units ------------------------------------------------------------------------------------

    async def sample_remaining(self, limit: int) -> list[dict[str, Any]]:
        [rows] = await self.execute([self.sql.sample_remaining(limit)], idempotent=True)
        return rows

    async def sample_failed(self, limit: int) -> list[dict[str, Any]]:
        [rows] = await self.execute([self.sql.sample_failed(limit)], idempotent=True)
        return rows

    async def exhausted(self, max_attempts: int, limit: int = 20) -> list[dict[str, Any]]:
        [rows] = await self.execute([self.sql.exhausted(max_attempts, limit)], idempotent=True)
        return rows

    async def count_claimable(
        self,
        *,
        failed_only: bool = False,
        max_attempts: int = 0,
        reasons: Sequence[str] | None = None,
    ) -> int:
        statement = self.sql.count_claimable(
            int(self._clock()), failed_only=failed_only, max_attempts=max_attempts, reasons=reasons
        )
        [rows] = await self.execute([statement], idempotent=True)
        return int(rows[0]["n"])

    async def count_remaining(self) -> int:
        [rows] = await self.execute([self.sql.count_remaining()], idempotent=True)
        return int(rows[0]["n"])

    async def claim(
        self,
        n: int,
        owner: str,
        lease_s: float,
        *,
        failed_only: bool = False,
        max_attempts: int = 0,
        start: int | None = None,
        reasons: Sequence[str] | None = None,
    ) -> list[Unit]:
        if n <= 0:
            return []
        now = int(self._clock())
        statement = self.sql.claim(
            n,
            owner,
            now,
            now + max(1, round(lease_s)),
            failed_only=failed_only,
            max_attempts=max_attempts,
            start=start,
            reasons=reasons,
        )
        # Not idempotent: a repeated claim would lease a second page. A lost page is not lost
        # work: its lease expires, or the next start on this machine releases it.
        [rows] = await self.execute([statement], idempotent=False)
        id_column = self.job.source.id
        units = []
        for row in rows:
            position = int(row.pop(POSITION))
            units.append(Unit(id=row[id_column], inputs=row, position=position))
        units.sort(key=lambda unit: unit.position)  # RETURNING promises no order
        return units

    def outcome_statement(self, outcome: Outcome) -> Statement:
        if isinstance(outcome, UnitResult):
            return self.sql.write_result(outcome)
        if isinstance(outcome, UnitFailure):
            return self.sql.write_failure(outcome)
        return self.sql.refund_attempt(outcome)

    def request_statements(self, outcomes: Sequence[Outcome]) -> list[Statement]:
        """One request's statements: each outcome's write, then the money of those that cost
        any, in the same transaction, so a unit's result and its charge land together."""
        statements = [self.outcome_statement(o) for o in outcomes]
        charged = [o for o in outcomes if not isinstance(o, AttemptRefund) and o.charged]
        if charged:
            statements.append(self.sql.insert_charges(charged))
        return statements

    async def write_results(self, outcomes: Sequence[Outcome]) -> None:
        """One request per `request_budget_bytes` of statements: usually exactly one."""
        for chunk in self.pack(outcomes):
            await self.execute(self.request_statements(chunk), idempotent=True)

    def pack(self, outcomes: Sequence[Outcome]) -> list[list[Outcome]]:
        """Split outcomes into as few requests as the size budget allows, in order (each
        outcome counts its write and its charge row)."""
        if self.request_budget_bytes is None:
            return [list(outcomes)] if outcomes else []
        chunks: list[list[Outcome]] = []
        current: list[Outcome] = []
        size = CHARGES_STATEMENT_BYTES
        for outcome in outcomes:
            cost = statement_size(self.outcome_statement(outcome)) + self._charge_size(outcome)
            if current and size + cost > self.request_budget_bytes:
                chunks.append(current)
                current, size = [], CHARGES_STATEMENT_BYTES
            current.append(outcome)
            size += cost
        if current:
            chunks.append(current)
        return chunks

    def _charge_size(self, outcome: Outcome) -> int:
        if isinstance(outcome, AttemptRefund) or not outcome.charged:
            return 0
        row = json.dumps(self.sql.charge_row(outcome), ensure_ascii=False, separators=(",", ":"))
        return len(row.encode()) + 8  # the row, escaped once more as a string parameter

    async def mark_failed(self, failures: Sequence[UnitFailure]) -> None:
        await self.write_results(failures)

    async def release(self, owner: str, unit_ids: Sequence[Any] | None = None) -> int:
        if unit_ids is not None and not unit_ids:
            return 0
        statement = self.sql.release(owner, unit_ids)
        counted = Statement(statement.sql + " RETURNING 1 AS released", statement.params)
        [rows] = await self.execute([counted], idempotent=True)
        return len(rows)

    async def release_prefix(self, owner_prefix: str) -> int:
        statement = self.sql.release_prefix(owner_prefix)
        counted = Statement(statement.sql + " RETURNING 1 AS released", statement.params)
        [rows] = await self.execute([counted], idempotent=True)
        return len(rows)

    # -- progress and runs ------------------------------------------------------------------------

    async def progress(self, max_attempts: int = 0) -> Progress:
        now = int(self._clock())
        [figures], reasons, [money] = await self.execute(
            [self.sql.progress(now, max_attempts), self.sql.failures_by_reason(), self.sql.money()],
            idempotent=True,
        )
        return Progress(
            version=self.job.version,
            total=int(figures["total"]),
            done=int(figures["done"]),
            failed=int(figures["failed"]),
            remaining=int(figures["remaining"]),
            leased=int(figures["leased"]),
            retry_exhausted=int(figures["retry_exhausted"]),
            done_cost_ticks=int(figures["done_cost"]),
            avg_input_tokens=_optional_float(figures["avg_input"]),
            avg_output_tokens=_optional_float(figures["avg_output"]),
            last_processed_at=figures["last_processed"],
            failed_by_reason={str(row["reason"]): int(row["n"]) for row in reasons},
            money=_money(money),
        )

    async def money(self, *, kind: str | None = None, since: str | None = None) -> Money:
        """This version's charges summed; only runs of `kind` started since `since` if given."""
        [[row]] = await self.execute([self.sql.money(kind=kind, since=since)], idempotent=True)
        return _money(row)

    async def mark_dead_runs(self, owner_prefix: str) -> list[str]:
        """Mark runs of this owner prefix still "running" as dead; returns their ids."""
        [rows] = await self.execute(
            [self.sql.mark_dead_runs(owner_prefix, utc_stamp(self._clock()))], idempotent=True
        )
        return [str(row["run_id"]) for row in rows]

    async def record_run(self, run: RunRecord) -> None:
        await self.execute([self.sql.upsert_run(run)], idempotent=True)

    async def runs(self, limit: int = 20, kind: str | None = None) -> list[RunRecord]:
        [rows] = await self.execute(
            [self.sql.select_runs(self.job.name, limit, kind)], idempotent=True
        )
        return [self.sql.run_from_row(row) for row in rows]


def statement_size(statement: Statement) -> int:
    """Bytes a statement adds to a JSON request body (close enough to budget with)."""
    params = json.dumps(list(statement.params), ensure_ascii=False, separators=(",", ":"))
    return len(statement.sql.encode()) + len(params.encode()) + 24


def _money(row: dict[str, Any]) -> Money:
    return Money(**{name: int(row[name] or 0) for name in Money.__dataclass_fields__})


def utc_stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
