"""The SQL of one job's units table: its schema, eligibility, claims and progress (writes
and leases in `unit_writes.py`). Identifiers are quoted and values bound, as `schema.py`
describes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from knrun.store.schema import (
    BATCH_OWNER_PREFIX,
    BOOKKEEPING_COLUMNS,
    ID_TEXT,
    ID_TYPE,
    MIN_ROWID,
    POSITION,
    Statement,
    quote,
)
from knrun.store.unit_writes import UnitWrites


class UnitSql(UnitWrites):
    """Statement builders for one job's table: its schema, eligibility, claims and progress
    here; the writes and leases in `unit_writes.py`, the shared clauses in `unit_table.py`."""

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

    # -- eligibility and claims -------------------------------------------------------------------

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
