"""The SQL of one job's units table: eligibility, claims, writes, leases and progress.
Identifiers are quoted and values bound, as `schema.py` describes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from knrun.job import JobSpec
from knrun.pricing import ticks_to_usd
from knrun.store.schema import (
    BATCH_OWNER_PREFIX,
    BOOKKEEPING_COLUMNS,
    ID_TEXT,
    ID_TYPE,
    MIN_ROWID,
    POSITION,
    Statement,
    id_param,
    quote,
)
from knrun.store.types import AttemptRefund, UnitFailure, UnitResult


class UnitSql:
    """Statement builders for one job's table, version and columns."""

    def __init__(self, job: JobSpec) -> None:
        self.job = job
        self.table = quote(job.source.table)
        self.id = quote(job.source.id)
        self.version = job.version
        prefix = job.source.prefix
        self.col = {name: quote(prefix + name) for name in BOOKKEEPING_COLUMNS}
        self.input_columns = [job.source.id, *job.source.columns]

    # -- schema -----------------------------------------------------------------------------------

    def table_info(self) -> Statement:
        # The statement form: D1 rejects the pragma_table_info() table function (SQLITE_AUTH).
        return Statement(f"PRAGMA table_info({self.table})")

    def wanted_columns(self) -> dict[str, str]:
        """Every column knrun needs on the units table, with its SQL type."""
        prefix = self.job.source.prefix
        wanted = {prefix + name: sql_type for name, sql_type in BOOKKEEPING_COLUMNS.items()}
        for field in self.job.outputs:
            wanted[self.job.output_column(field)] = field.sql_type
        return wanted

    def add_column(self, name: str, sql_type: str) -> Statement:
        return Statement(f"ALTER TABLE {self.table} ADD COLUMN {quote(name)} {sql_type}")

    # -- eligibility ------------------------------------------------------------------------------

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

    def sample_remaining(self, limit: int) -> Statement:
        """Inputs of up to `limit` remaining units, a random sample when there are more."""
        clause, params = self._resume_clause()
        columns = ", ".join(quote(column) for column in self.input_columns)
        return Statement(
            f"SELECT {columns} FROM {self.table} WHERE {clause} ORDER BY random() LIMIT ?",
            (*params, limit),
        )

    def sample_failed(self, limit: int) -> Statement:
        """Inputs of up to `limit` units that failed at this version, at random."""
        clause, params = self._retry_clause(0)
        columns = ", ".join(quote(column) for column in self.input_columns)
        return Statement(
            f"SELECT {columns} FROM {self.table} WHERE {clause} ORDER BY random() LIMIT ?",
            (*params, limit),
        )

    def count_in_batches(self, now: float) -> Statement:
        """Units leased to an xAI batch: submitted, their results not in yet. A range on the
        owner, so the lease index serves it."""
        c = self.col
        prefix = BATCH_OWNER_PREFIX
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # "batch;": just past every "batch:..."
        return Statement(
            f"SELECT COUNT(*) AS n FROM {self.table} WHERE {c['lease_owner']} >= ? "
            f"AND {c['lease_owner']} < ? AND {c['lease_expires']} > ?",
            (prefix, after, now),
        )

    def count_remaining(self) -> Statement:
        clause, params = self._resume_clause()
        return Statement(f"SELECT COUNT(*) AS n FROM {self.table} WHERE {clause}", params)

    def claim(
        self,
        n: int,
        owner: str,
        now: float,
        expires: float,
        *,
        failed_only: bool,
        max_attempts: int,
        start: int | None,
        reasons: Sequence[str] | None = None,
        own: bool = False,
        only_own: bool = False,
    ) -> Statement:
        """One statement: lease up to n eligible, unleased units from row `start` on (from the
        first row when None), in rowid order, and return their inputs and rowids.

        The rowid cursor makes each claim read about a page of rows: without it, every claim
        scans past all the units already done, O(n^2) rows over a run (and D1 bills rows read).
        """
        clause, params = (
            self._retry_clause(max_attempts, reasons) if failed_only else self._resume_clause()
        )
        owner_col, expires_col = self.col["lease_owner"], self.col["lease_expires"]
        returning = ", ".join(quote(column) for column in self.input_columns)
        # own: also this owner's leased units (after a claim whose reply was lost).
        mine = f" OR {owner_col} = ?" if own else ""
        # only_own: just this owner's units (a batch run taking back what its batch holds).
        leasable = (
            f"{owner_col} = ?" if only_own else f"({owner_col} IS NULL OR {expires_col} <= ?{mine})"
        )
        sql = (
            f"UPDATE {self.table} SET {owner_col} = ?, {expires_col} = ? "
            # A plain range on rowid, so SQLite seeks to it: an OR here would scan the table.
            f"WHERE rowid IN (SELECT rowid FROM {self.table} WHERE rowid >= ? AND {clause} "
            f"AND {leasable} ORDER BY rowid LIMIT ?) "
            f"RETURNING rowid AS {POSITION}, CAST({self.id} AS TEXT) AS {ID_TEXT}, "
            f"typeof({self.id}) AS {ID_TYPE}, {returning}"
        )
        first = MIN_ROWID if start is None else start
        if only_own:
            return Statement(sql, (owner, expires, first, *params, owner, n))
        mine_params: tuple[Any, ...] = (owner,) if own else ()
        return Statement(sql, (owner, expires, first, *params, now, *mine_params, n))

    def count_claimable(
        self,
        now: float,
        *,
        failed_only: bool,
        max_attempts: int,
        reasons: Sequence[str] | None = None,
    ) -> Statement:
        """Units a claim could take now: eligible and not leased. (A unit whose result is still
        on its way to the store is leased by its run, so it does not count.)"""
        clause, params = (
            self._retry_clause(max_attempts, reasons) if failed_only else self._resume_clause()
        )
        owner_col, expires_col = self.col["lease_owner"], self.col["lease_expires"]
        return Statement(
            f"SELECT COUNT(*) AS n FROM {self.table} WHERE {clause} "
            f"AND ({owner_col} IS NULL OR {expires_col} <= ?)",
            (*params, now),
        )

    def id_problems(self) -> Statement:
        """Rows of the job without an id, and ids on more than one of its rows (a few shown)."""
        where = f"({self.job.source.where})"
        return Statement(
            f"SELECT COUNT(*) - COUNT({self.id}) AS missing, "
            f"COUNT({self.id}) - COUNT(DISTINCT {self.id}) AS repeated, "
            f"(SELECT group_concat(i, ', ') FROM (SELECT CAST({self.id} AS TEXT) AS i "
            f"FROM {self.table} WHERE {where} AND {self.id} IS NOT NULL GROUP BY {self.id} "
            f"HAVING COUNT(*) > 1 LIMIT 5)) AS examples FROM {self.table} WHERE {where}"
        )

    def existing_ids(self, unit_ids: Sequence[Any]) -> Statement:
        """Which of these ids have a row (as text, exactly)."""
        return Statement(
            f"SELECT CAST({self.id} AS TEXT) AS id FROM {self.table} "
            f"WHERE {self.id} IN (SELECT value FROM json_each(?))",
            (json.dumps(list(unit_ids)),),
        )

    def check_where(self) -> Statement:
        """Compiles the job's where against the table, reading nothing."""
        return Statement(f"SELECT 1 FROM {self.table} WHERE ({self.job.source.where}) LIMIT 0")

    def has_rowid(self) -> Statement:
        return Statement(f"SELECT rowid FROM {self.table} LIMIT 0")

    # -- writes -----------------------------------------------------------------------------------

    def _attempts_expr(self) -> str:
        # SQLite evaluates SET expressions against the row as it was before the UPDATE.
        c = self.col
        return (
            f"{c['attempts']} = CASE WHEN {c['status_version']} = ? "
            f"THEN COALESCE({c['attempts']}, 0) + 1 ELSE 1 END"
        )

    def write_result(self, result: UnitResult) -> Statement:
        """Idempotent: only applies while no result for this version is stored (first wins)."""
        c = self.col
        assignments = [f"{quote(column)} = ?" for column in result.values]
        params: list[Any] = list(result.values.values())
        bookkeeping: list[tuple[str, Any]] = [
            ("prompt_version", self.version),
            ("model", result.model),
            ("cost_usd", float(ticks_to_usd(result.cost_ticks).quantize(Decimal("1e-10")))),
            ("cost_ticks", result.cost_ticks),
            ("input_tokens", result.input_tokens),
            ("output_tokens", result.output_tokens),
            ("processed_at", result.processed_at),
            ("run_id", result.run_id),
            ("status_version", self.version),
            ("attempt_id", result.attempt_id or None),
        ]
        assignments += [f"{c[name]} = ?" for name, _ in bookkeeping]
        params += [value for _, value in bookkeeping]
        assignments += [
            f"{c['status']} = 'done'",
            f"{c['error']} = NULL",
            self._attempts_expr(),
            f"{c['lease_owner']} = NULL",
            f"{c['lease_expires']} = NULL",
        ]
        params.append(self.version)
        sql = (
            f"UPDATE {self.table} SET {', '.join(assignments)} "
            f"WHERE {self.id} = ? AND {self._not_done()}"
        )
        return Statement(sql, (*params, id_param(result.unit_id), self.version))

    def write_failure(self, failure: UnitFailure) -> Statement:
        """Idempotent: requires the failing runner's lease, which the write itself clears."""
        c = self.col
        sql = (
            f"UPDATE {self.table} SET {c['status']} = 'failed', {c['status_version']} = ?, "
            f"{c['error']} = ?, {c['run_id']} = ?, {c['processed_at']} = ?, "
            f"{c['attempt_id']} = ?, {c['request_hash']} = ?, "
            f"{self._attempts_expr()}, {c['lease_owner']} = NULL, {c['lease_expires']} = NULL "
            f"WHERE {self.id} = ? AND {c['lease_owner']} = ? AND {self._not_done()}"
        )
        params = (
            self.version,
            failure.error_text[:2000],
            failure.run_id,
            failure.processed_at,
            failure.attempt_id or None,
            failure.request_hash or None,
            self.version,
            id_param(failure.unit_id),
            failure.owner,
            self.version,
        )
        return Statement(sql, params)

    def refund_attempt(self, refund: AttemptRefund) -> Statement:
        """Take back the attempt a failure counted; once only, as it clears the attempt id."""
        c = self.col
        return Statement(
            f"UPDATE {self.table} SET {c['attempts']} = MAX(COALESCE({c['attempts']}, 1) - 1, 0), "
            f"{c['attempt_id']} = NULL WHERE {self.id} = ? AND {c['attempt_id']} = ?",
            (id_param(refund.unit_id), refund.attempt_id),
        )

    def renew(self, owner: str, expires: float, unit_ids: Sequence[Any] | None = None) -> Statement:
        """Extend every lease this owner holds (or those of `unit_ids`)."""
        c = self.col
        sql = f"UPDATE {self.table} SET {c['lease_expires']} = ? WHERE {c['lease_owner']} = ?"
        if unit_ids is None:
            return Statement(sql, (expires, owner))
        sql += f" AND {self.id} IN (SELECT value FROM json_each(?))"
        return Statement(sql, (expires, owner, json.dumps([id_param(i) for i in unit_ids])))

    def lease_index(self) -> Statement:
        """Leases are found by owner (renewal, release): without this, each is a table scan."""
        name = quote(f"knrun_{self.job.source.table}_{self.job.source.prefix}lease")
        return Statement(
            f"CREATE INDEX IF NOT EXISTS {name} ON {self.table} ({self.col['lease_owner']})"
        )

    def release(
        self, owner: str, unit_ids: Sequence[Any] | None, keep: Sequence[Any] = ()
    ) -> Statement:
        """Drop this owner's leases: all, or those of `unit_ids`, but those of `keep`."""
        c = self.col
        sql = (
            f"UPDATE {self.table} SET {c['lease_owner']} = NULL, {c['lease_expires']} = NULL "
            f"WHERE {c['lease_owner']} = ?"
        )
        params: list[Any] = [owner]
        # One JSON parameter for any number of ids: D1 allows only 100 bound parameters.
        if unit_ids is not None:
            sql += f" AND {self.id} IN (SELECT value FROM json_each(?))"
            params.append(json.dumps([id_param(i) for i in unit_ids]))
        if keep:
            sql += f" AND {self.id} NOT IN (SELECT value FROM json_each(?))"
            params.append(json.dumps([id_param(i) for i in keep]))
        return Statement(sql, tuple(params))

    def transfer(
        self, unit_ids: Sequence[Any], owner: str, new_owner: str, expires: float
    ) -> Statement:
        """Hand these units' leases from `owner` to `new_owner` (a batch, before they are added
        to it); returns the ids `new_owner` now holds of them. Applying it twice changes
        nothing more, so a request whose reply was lost can be sent again."""
        c = self.col
        return Statement(
            f"UPDATE {self.table} SET {c['lease_owner']} = ?, {c['lease_expires']} = ? "
            f"WHERE {c['lease_owner']} IN (?, ?) "
            f"AND {self.id} IN (SELECT value FROM json_each(?)) "
            f"RETURNING CAST({self.id} AS TEXT) AS {ID_TEXT}, typeof({self.id}) AS {ID_TYPE}",
            (new_owner, expires, owner, new_owner, json.dumps([id_param(i) for i in unit_ids])),
        )

    def release_prefix(self, owner_prefix: str, keep: Sequence[str] = ()) -> Statement:
        """Drop leases whose owner starts with `owner_prefix`, but those of the owners in
        `keep` (runs that are alive)."""
        c = self.col
        # substr, not LIKE: no escaping of '_' or '%', and D1 caps LIKE patterns at 50 bytes.
        return Statement(
            f"UPDATE {self.table} SET {c['lease_owner']} = NULL, {c['lease_expires']} = NULL "
            f"WHERE substr({c['lease_owner']}, 1, ?) = ? "
            f"AND {c['lease_owner']} NOT IN (SELECT value FROM json_each(?))",
            (len(owner_prefix), owner_prefix, json.dumps(list(keep))),
        )

    # -- reading progress -------------------------------------------------------------------------

    def progress(self, now: float, max_attempts: int) -> Statement:
        c = self.col
        v = self.version
        done = f"{c['prompt_version']} = ?"
        failed = self._failed_here()
        sv = c["status_version"]
        remaining = f"({self._not_done()} AND ({sv} IS NULL OR {sv} != ?))"
        exhausted = f"{failed} AND COALESCE({c['attempts']}, 0) >= ?" if max_attempts > 0 else "0"
        sql = (
            "SELECT COUNT(*) AS total, "
            f"COALESCE(SUM(CASE WHEN {done} THEN 1 ELSE 0 END), 0) AS done, "
            f"COALESCE(SUM(CASE WHEN {failed} THEN 1 ELSE 0 END), 0) AS failed, "
            f"COALESCE(SUM(CASE WHEN {remaining} THEN 1 ELSE 0 END), 0) AS remaining, "
            f"COALESCE(SUM(CASE WHEN {remaining} AND {c['lease_owner']} IS NOT NULL "
            f"AND {c['lease_expires']} > ? THEN 1 ELSE 0 END), 0) AS leased, "
            f"COALESCE(SUM(CASE WHEN {remaining} AND substr({c['lease_owner']}, 1, ?) = ? "
            f"AND {c['lease_expires']} > ? THEN 1 ELSE 0 END), 0) AS in_batches, "
            f"COALESCE(SUM(CASE WHEN {exhausted} THEN 1 ELSE 0 END), 0) AS retry_exhausted, "
            f"COALESCE(SUM(CASE WHEN {done} THEN {c['cost_ticks']} ELSE 0 END), 0) AS done_cost, "
            f"AVG(CASE WHEN {done} THEN {c['input_tokens']} END) AS avg_input, "
            f"AVG(CASE WHEN {done} THEN {c['output_tokens']} END) AS avg_output, "
            f"MAX(CASE WHEN {done} THEN {c['processed_at']} END) AS last_processed "
            f"FROM {self.table} WHERE ({self.job.source.where})"
        )
        prefix = BATCH_OWNER_PREFIX
        params: list[Any] = [v, v, v, v, v, v, v, now, v, v, len(prefix), prefix, now]
        if max_attempts > 0:
            params += [v, v, max_attempts]
        params += [v, v, v, v]
        return Statement(sql, tuple(params))

    def failures_by_reason(self) -> Statement:
        return Statement(
            f"SELECT {self._reason()} AS reason, COUNT(*) AS n FROM {self.table} "
            f"WHERE ({self.job.source.where}) AND {self._failed_here()} "
            "GROUP BY reason ORDER BY n DESC",
            (self.version, self.version),
        )

    def exhausted(self, max_attempts: int, limit: int) -> Statement:
        """Units failed at this version `max_attempts` times or more: retry leaves them alone."""
        c = self.col
        return Statement(
            f"SELECT {self.id} AS unit_id, {c['attempts']} AS attempts, {c['error']} AS error "
            f"FROM {self.table} WHERE ({self.job.source.where}) AND {self._failed_here()} "
            f"AND COALESCE({c['attempts']}, 0) >= ? ORDER BY rowid LIMIT ?",
            (self.version, self.version, max_attempts, limit),
        )
