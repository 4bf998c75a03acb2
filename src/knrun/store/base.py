"""`SqlUnitStore`: every store operation, written once over "run these statements atomically"."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from knrun.errors import ConfigError, StoreError, StoreRefused
from knrun.job import JobSpec
from knrun.store import hints, migrate, packing
from knrun.store.records import Rows, RunRecords
from knrun.store.runs_sql import RunsSql
from knrun.store.schema import (
    CHARGES_TABLE,
    ID_TEXT,
    ID_TYPE,
    POSITION,
    RUNS_TABLE,
    Statement,
    id_from_row,
)
from knrun.store.sql import UnitSql
from knrun.store.types import (
    AttemptRefund,
    Outcome,
    PossibleCharge,
    Unit,
    UnitFailure,
    UnitResult,
)


@dataclass(frozen=True)
class Result:
    """One statement's rows and how many rows it changed (D1's meta.changes, SQLite's count)."""

    rows: Rows
    changes: int = 0


class SqlUnitStore(RunRecords, ABC):
    """A `UnitStore` for any backend that can run a list of statements as one transaction."""

    # Largest request body a backend accepts comfortably; None: no limit (one transaction).
    request_budget_bytes: int | None = None

    def __init__(self, job: JobSpec, *, clock: Callable[[], float] = time.time) -> None:
        self.job = job
        self.sql = UnitSql(job)
        self.runs_sql = RunsSql(job)
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
            raise hints.explain(exc, self.job, self.describe()) or exc from None

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
        """Add knrun's columns and tables for this job; the names of those added."""
        return await migrate.migrate(self)

    async def check_where(self) -> None:
        """The job's `where` compiles against this table (no row is read)."""
        await migrate.check_where(self)

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

    async def count_in_batches(self) -> int:
        [rows] = await self.execute([self.sql.count_in_batches(self._clock())], idempotent=True)
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
        only_own: bool = False,
    ) -> list[Unit]:
        """`own`: also take back units this owner holds (after a claim whose reply was lost);
        `only_own`: only those (a batch run re-attaching to its batch)."""
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
            only_own=only_own,
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

    def outcome_statement(self, outcome: Outcome) -> Statement | None:
        """The unit's write for an outcome (None: a charge alone, with no unit write)."""
        if isinstance(outcome, UnitResult):
            return self.sql.write_result(outcome)
        if isinstance(outcome, UnitFailure):
            return self.sql.write_failure(outcome)
        if isinstance(outcome, AttemptRefund):
            return self.sql.refund_attempt(outcome)
        return None

    def request_statements(self, outcomes: Sequence[Outcome]) -> list[Statement]:
        """One request's statements: each outcome's unit write, then the money of those that
        cost any, in the same transaction, so a unit's result and its charge land together."""
        statements = [s for s in map(self.outcome_statement, outcomes) if s is not None]
        charged = [o for o in outcomes if not isinstance(o, AttemptRefund) and o.charged]
        if charged:
            statements.append(self.runs_sql.insert_charges(charged))
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
            # The unit writes come first, one result each, in order; the charges after them.
            units = [o for o in chunk if not isinstance(o, PossibleCharge)]
            unchanged = [
                outcome
                for outcome, result in zip(units, results, strict=False)
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
        """Split outcomes into as few requests as the size budget allows, in order."""
        return packing.pack(
            outcomes, self.request_budget_bytes, self.outcome_statement, self.runs_sql.charge_row
        )

    async def mark_failed(self, failures: Sequence[UnitFailure]) -> None:
        if missing := await self.write_results(failures):
            raise StoreRefused(f"no row for unit(s) {', '.join(str(f.unit_id) for f in missing)}")

    async def renew(self, owner: str, lease_s: float, unit_ids: Sequence[Any] | None = None) -> int:
        """Extend this owner's leases (or those of `unit_ids`) to `lease_s` from now; returns
        how many."""
        expires = self._clock() + lease_s
        [result] = await self.run([self.sql.renew(owner, expires, unit_ids)], idempotent=True)
        return result.changes

    async def release(
        self, owner: str, unit_ids: Sequence[Any] | None = None, *, keep: Sequence[Any] = ()
    ) -> int:
        if unit_ids is not None and not unit_ids:
            return 0
        statement = self.sql.release(owner, unit_ids, keep)
        counted = Statement(statement.sql + " RETURNING 1 AS released", statement.params)
        [rows] = await self.execute([counted], idempotent=True)
        return len(rows)

    async def transfer(
        self, unit_ids: Sequence[Any], owner: str, new_owner: str, lease_s: float
    ) -> list[Any]:
        """Move leases from `owner` to `new_owner` for `lease_s`; returns the ids moved (a unit
        whose lease `owner` lost meanwhile is not among them). Idempotent: a retry returns what
        `new_owner` holds of these ids."""
        if not unit_ids:
            return []
        expires = self._clock() + lease_s
        moved = self.sql.transfer(unit_ids, owner, new_owner, expires)
        [rows] = await self.execute([moved], idempotent=True)
        return [id_from_row(row[ID_TEXT], row[ID_TYPE]) for row in rows]

    async def release_prefix(self, owner_prefix: str, keep: Sequence[str] = ()) -> int:
        statement = self.sql.release_prefix(owner_prefix, keep)
        counted = Statement(statement.sql + " RETURNING 1 AS released", statement.params)
        [rows] = await self.execute([counted], idempotent=True)
        return len(rows)
