"""`SqlUnitStore`: every store operation, written once over "run these statements atomically"."""

from __future__ import annotations

import contextlib
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from knrun.errors import ConfigError, StoreError, StoreRefused
from knrun.job import JobSpec
from knrun.store.sql import (
    CHARGES_TABLE,
    ID_TEXT,
    ID_TYPE,
    POSITION,
    RUN_COLUMNS,
    RUNS_TABLE,
    Statement,
    UnitSql,
    id_from_row,
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


@dataclass(frozen=True)
class Result:
    """One statement's rows and how many rows it changed (D1's meta.changes, SQLite's count)."""

    rows: Rows
    changes: int = 0


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
    async def _execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Result]:
        """Run `statements` in one transaction (one request); return each one's result.

        `idempotent` says whether the whole request may be repeated safely after a failure whose
        outcome is unknown: a backend may retry only then."""

    async def execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Rows]:
        return [result.rows for result in await self.run(statements, idempotent=idempotent)]

    async def run(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Result]:
        """`statements` in one transaction, with each one's rows and changes."""
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

    async def __aenter__(self) -> SqlUnitStore:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

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
        await self.check_where()
        if self.job.source.id in existing:  # else reported with the other missing columns
            await self._check_ids()
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
        statements.append(self.sql.create_status_table())
        statements.append(self.sql.lease_index())
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

    async def check_where(self) -> None:
        """The job's `where` compiles against this table (no row is read)."""
        try:
            await self.execute([self.sql.check_where()], idempotent=True)
        except StoreError as exc:
            if exc.retryable:
                raise
            raise ConfigError(
                f"source.where = {self.job.source.where!r} does not work on table "
                f"{self.job.source.table!r}: {exc}"
            ) from None

    async def _check_ids(self) -> None:
        """Results are written back by id: every row of the job needs one of its own."""
        [[row]] = await self.execute([self.sql.id_problems()], idempotent=True)
        missing, repeated = int(row["missing"] or 0), int(row["repeated"] or 0)
        if missing or repeated:
            problems = []
            if missing:
                problems.append(f"{missing} rows have no {self.job.source.id}")
            if repeated:
                problems.append(f"{repeated} rows repeat an id (e.g. {row['examples']})")
            raise ConfigError(
                f"table {self.job.source.table!r}: {' and '.join(problems)} among the job's rows; "
                "knrun writes each result back by id, so each row needs its own: fix the table, "
                "then run `knrun db migrate` again"
            )

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
            self._clock(), failed_only=failed_only, max_attempts=max_attempts, reasons=reasons
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
        own: bool = False,
    ) -> list[Unit]:
        """`own`: also take back units this owner holds (after a claim whose reply was lost)."""
        if n <= 0:
            return []
        # Unix seconds with their fractions: a lease of a few seconds (in tests) stays exact.
        now = self._clock()
        statement = self.sql.claim(
            n,
            owner,
            now,
            now + lease_s,
            failed_only=failed_only,
            max_attempts=max_attempts,
            start=start,
            reasons=reasons,
            own=own,
        )
        # Not idempotent: a repeated claim would lease a second page. A lost page is not lost
        # work: the run takes it back before it ends (own=True), or its lease expires.
        [rows] = await self.execute([statement], idempotent=False)
        id_column = self.job.source.id
        units = []
        for row in rows:
            position = int(row.pop(POSITION))
            # The id exactly as stored: D1's JSON would round an integer past 2^53.
            unit_id = id_from_row(row.pop(ID_TEXT), row.pop(ID_TYPE))
            row[id_column] = unit_id
            units.append(Unit(id=unit_id, inputs=row, position=position))
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

    async def write_results(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Write outcomes, one request per `request_budget_bytes` (usually exactly one), and
        check that each changed its row. Returns those whose unit has no row at all (deleted, or
        its id changed): their money is counted, but the caller must keep them. A write that
        changed nothing because the unit was already done (a result paid twice), or is leased
        by another run (a failure), is not one of them."""
        missing: list[Outcome] = []
        for chunk in self.pack(outcomes):
            results = await self.run(self.request_statements(chunk), idempotent=True)
            unchanged = [
                outcome
                for outcome, result in zip(chunk, results, strict=False)
                if not result.changes and not isinstance(outcome, AttemptRefund)
            ]
            if unchanged:
                missing += await self._without_rows(unchanged)
        return missing

    async def _without_rows(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        [rows] = await self.execute(
            [self.sql.existing_ids([o.unit_id for o in outcomes])], idempotent=True
        )
        present = {str(row["id"]) for row in rows}
        return [o for o in outcomes if str(o.unit_id) not in present]

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
        if missing := await self.write_results(failures):
            raise StoreRefused(f"no row for unit(s) {', '.join(str(f.unit_id) for f in missing)}")

    async def renew(self, owner: str, lease_s: float) -> int:
        """Extend this owner's leases to `lease_s` from now; returns how many."""
        expires = self._clock() + lease_s
        [result] = await self.run([self.sql.renew(owner, expires)], idempotent=True)
        return result.changes

    async def release(self, owner: str, unit_ids: Sequence[Any] | None = None) -> int:
        if unit_ids is not None and not unit_ids:
            return 0
        statement = self.sql.release(owner, unit_ids)
        counted = Statement(statement.sql + " RETURNING 1 AS released", statement.params)
        [rows] = await self.execute([counted], idempotent=True)
        return len(rows)

    async def release_prefix(self, owner_prefix: str, keep: Sequence[str] = ()) -> int:
        statement = self.sql.release_prefix(owner_prefix, keep)
        counted = Statement(statement.sql + " RETURNING 1 AS released", statement.params)
        [rows] = await self.execute([counted], idempotent=True)
        return len(rows)

    # -- progress and runs ------------------------------------------------------------------------

    async def progress(self, max_attempts: int = 0) -> Progress:
        now = self._clock()
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

    async def status(
        self, *, max_attempts: int = 0, fresh_s: float = 30.0, runs: int = 20
    ) -> tuple[Progress, list[RunRecord], float]:
        """What `knrun status` shows: the progress figures (a full count of the job's rows, so
        reused for `fresh_s` from the store's cache: D1 bills every row read, and a dashboard
        polling every few seconds would otherwise read the table each time), the recent runs,
        and the figures' age in seconds. One request while the cache is fresh."""
        try:
            cached, recent = await self.execute(
                [self.sql.read_status(), self.sql.select_runs(self.job.name, runs, None)],
                idempotent=True,
            )
        except ConfigError:
            raise
        except StoreError as exc:
            if "no such table" not in str(exc) or exc.retryable:
                raise
            cached = []  # a store migrated by an older knrun: no cache table yet
            [recent] = await self.execute(
                [self.sql.select_runs(self.job.name, runs, None)], idempotent=True
            )
        now = self._clock()
        records = [self.sql.run_from_row(row) for row in recent]
        if cached and cached[0]["max_attempts"] == max_attempts:
            age = now - float(cached[0]["computed_at"])
            if 0 <= age <= fresh_s:
                return _progress_from_json(cached[0]["figures"]), records, age
        progress = await self.progress(max_attempts)
        with contextlib.suppress(StoreError):  # an unmigrated cache only costs the next scan
            figures = json.dumps(asdict(progress))
            await self.execute([self.sql.write_status(max_attempts, now, figures)], idempotent=True)
        return progress, records, 0.0

    async def money(self, *, kind: str | None = None, since: str | None = None) -> Money:
        """This version's charges summed; only runs of `kind` started since `since` if given."""
        [[row]] = await self.execute([self.sql.money(kind=kind, since=since)], idempotent=True)
        return _money(row)

    async def running_runs(self, owner_prefix: str) -> Rows:
        """Runs marked running whose owner starts with `owner_prefix` (run_id, owner,
        updated_at)."""
        [rows] = await self.execute([self.sql.running_runs(owner_prefix)], idempotent=True)
        return rows

    async def mark_dead(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            now = utc_stamp(self._clock())
            await self.execute([self.sql.mark_dead(run_ids, now)], idempotent=True)

    async def heartbeat(self, run: RunRecord, live_within_s: float = 60.0) -> list[RunRecord]:
        """Refresh a live run's record and read the other live runs sharing this store, in one
        request; the store's request budget is split among them all."""
        others = await self.other_live_runs(
            run.run_id, live_within_s, also=[self.sql.upsert_run(run)]
        )
        self.share_budget(len(others) + 1)
        return others

    async def charged_since(self, since: str, *, exclude_run: str) -> int:
        [[row]] = await self.execute([self.sql.charged_since(since, exclude_run)], idempotent=True)
        return int(row["spent"] or 0)

    async def other_live_runs(
        self, run_id: str, live_within_s: float = 60.0, also: Sequence[Statement] = ()
    ) -> list[RunRecord]:
        since = utc_stamp(self._clock() - live_within_s)
        *_, rows = await self.execute([*also, self.sql.live_runs(since, run_id)], idempotent=True)
        return [self.sql.run_from_row(row) for row in rows]

    def share_budget(self, runners: int) -> None:  # noqa: B027 - a no-op unless remote
        """`runners` live runners share this store's request budget (remote stores only)."""

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


def _progress_from_json(text: str) -> Progress:
    data = json.loads(text)
    data["money"] = Money(**data["money"])
    return Progress(**data)


def _money(row: dict[str, Any]) -> Money:
    return Money(**{name: int(row[name] or 0) for name in Money.__dataclass_fields__})


def utc_stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
