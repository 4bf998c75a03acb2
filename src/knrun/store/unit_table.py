"""What every statement on one job's units table shares: its quoted names, and the clauses
that say which rows are eligible, done or failed at this version."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from knrun.job import JobSpec
from knrun.store.schema import (
    BOOKKEEPING_COLUMNS,
    quote,
)


class UnitTable:
    """One job's table, version and columns, and the clauses built from them."""

    def __init__(self, job: JobSpec) -> None:
        self.job = job
        self.table = quote(job.source.table)
        self.id = quote(job.source.id)
        self.version = job.version
        prefix = job.source.prefix
        self.col = {name: quote(prefix + name) for name in BOOKKEEPING_COLUMNS}
        self.input_columns = [job.source.id, *job.source.columns]

    def _not_done(self) -> str:
        pv = self.col["prompt_version"]
        return f"({pv} IS NULL OR {pv} != ?)"

    def _resume_clause(self) -> tuple[str, tuple[Any, ...]]:
        """The job's rows not done and not failed at this version (failures belong to retry).
        A row without an id is never taken: its result could not be written back."""
        sv = self.col["status_version"]
        clause = (
            f"({self.job.source.where}) AND {self.id} IS NOT NULL AND {self._not_done()} "
            f"AND ({sv} IS NULL OR {sv} != ?)"
        )
        return clause, (self.version, self.version)

    def _failed_here(self) -> str:
        """No result at this version and the last attempt at it failed (params: v, v)."""
        c = self.col
        return f"({self._not_done()} AND {c['status_version']} = ? AND {c['status']} = 'failed')"

    def _reason(self) -> str:
        """The failure reason: the error text up to its first ':' ("invalid_json: ...")."""
        error = self.col["error"]
        return (
            f"CASE WHEN instr({error}, ':') > 0 THEN substr({error}, 1, instr({error}, ':') - 1) "
            f"ELSE COALESCE({error}, 'unknown') END"
        )

    def _retry_clause(
        self, max_attempts: int, reasons: Sequence[str] | None = None
    ) -> tuple[str, tuple[Any, ...]]:
        """Failed units to retry: under the attempt limit and, when `reasons` is given, failed
        for one of them or failed for a request that has changed since."""
        c = self.col
        clause = f"({self.job.source.where}) AND {self.id} IS NOT NULL AND {self._failed_here()}"
        params: tuple[Any, ...] = (self.version, self.version)
        if max_attempts > 0:
            clause += f" AND COALESCE({c['attempts']}, 0) < ?"
            params += (max_attempts,)
        if reasons is not None:
            clause += (
                f" AND ({self._reason()} IN (SELECT value FROM json_each(?)) "
                f"OR COALESCE({c['request_hash']}, '') != ?)"
            )
            params += (json.dumps(list(reasons)), self.job.request_hash)
        return clause, params

    def _attempts_expr(self) -> str:
        # SQLite evaluates SET expressions against the row as it was before the UPDATE.
        c = self.col
        return (
            f"{c['attempts']} = CASE WHEN {c['status_version']} = ? "
            f"THEN COALESCE({c['attempts']}, 0) + 1 ELSE 1 END"
        )
