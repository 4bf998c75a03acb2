"""The SQL both stores run, built once per job.

Identifiers come from the validated job spec and are always double-quoted; the job's `where` is
operator-owned text. Everything else (unit data, model output, versions, times) is a bound
parameter, never SQL text. Statements stay within D1's limits (100 parameters, 100 KB each).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from knrun.job import JobSpec
from knrun.pricing import ticks_to_usd
from knrun.store.types import AttemptRefund, RunRecord, UnitFailure, UnitResult

RUNS_TABLE = "knrun_runs"
POSITION = "knrun_position"  # the claimed row's rowid, as a claim returns it
ID_TEXT, ID_TYPE = "knrun_id_text", "knrun_id_type"  # the claimed row's id, exactly
# D1 answers in JSON from JavaScript: an integer past 2^53 comes back rounded, and one bound as
# a JSON number is rounded on the way in. Such ids travel as text (an INTEGER column's affinity
# turns the text back into the exact integer).
JS_SAFE_INTEGER = 2**53
MIN_ROWID, MAX_ROWID = -(2**63), 2**63 - 1

# Bookkeeping columns (without the job's prefix) and their SQL types.
BOOKKEEPING_COLUMNS: dict[str, str] = {
    "prompt_version": "TEXT",  # version of the result in the output columns (success only)
    "model": "TEXT",
    "cost_usd": "REAL",  # for the operator's own dashboards; knrun sums cost_ticks
    "cost_ticks": "INTEGER",  # exact billed cost, 1 tick = 1e-10 USD
    "input_tokens": "INTEGER",
    "output_tokens": "INTEGER",
    "processed_at": "TEXT",  # ISO 8601 UTC of the last attempt
    "run_id": "TEXT",
    "status": "TEXT",  # outcome of the last attempt: done | failed
    "status_version": "TEXT",  # the version `status` and `attempts` refer to
    "error": "TEXT",  # "<reason>: <detail>" for a failure
    "attempts": "INTEGER",  # attempts at status_version
    "lease_owner": "TEXT",
    "lease_expires": "INTEGER",  # unix seconds (fractions kept: SQLite stores them as REAL)
    "attempt_id": "TEXT",  # the last request's id (charges table key; a refund clears it)
    "request_hash": "TEXT",  # what was sent when the unit last failed (JobSpec.request_hash)
}
# Failure reasons `knrun retry` takes by default: a second try can turn out differently. The
# others depend on the request itself and are retried only once the request changes.
TRANSIENT_REASONS = (
    "invalid_json",
    "bad_response",
    "retries_exhausted",
    "timeout",
    "dropped",
)

# The runs table's columns and their definitions; `detail` (JSON) stays last.
RUN_COLUMNS: dict[str, str] = {
    "run_id": "TEXT PRIMARY KEY",
    "kind": "TEXT NOT NULL",
    "job": "TEXT NOT NULL",
    "version": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "prompt_hash": "TEXT",
    "host": "TEXT",
    "started_at": "TEXT NOT NULL",
    "ended_at": "TEXT",
    "updated_at": "TEXT",  # refreshed while the run lives: a stale one was killed
    "state": "TEXT NOT NULL",
    "exit_code": "INTEGER",
    "exit_reason": "TEXT",
    "units_ok": "INTEGER NOT NULL DEFAULT 0",
    "units_failed": "INTEGER NOT NULL DEFAULT 0",
    "tracked_ticks": "INTEGER NOT NULL DEFAULT 0",
    "billed_ticks": "INTEGER NOT NULL DEFAULT 0",
    "estimate_ticks": "INTEGER",
    "owner": "TEXT",  # lease owner of the run's units: a dead run's are given back
    "detail": "TEXT",
}
STATUS_TABLE = "knrun_status"  # the last full count of a job version, for cheap status calls
CHARGES_TABLE = "knrun_charges"
# One row per request that cost or may have cost money, inserted with the unit's write in the
# same transaction and keyed by the request's attempt id, so a repeated write counts it once.
CHARGE_COLUMNS: dict[str, str] = {
    "attempt_id": "TEXT PRIMARY KEY",
    "run_id": "TEXT NOT NULL",
    "job": "TEXT NOT NULL",
    "version": "TEXT NOT NULL",
    "unit_id": "TEXT",
    "outcome": "TEXT NOT NULL",  # done, or the failure reason
    "billed_ticks": "INTEGER",  # NULL: the reply carried no cost_in_usd_ticks
    "tracked_ticks": "INTEGER NOT NULL DEFAULT 0",
    "possible_ticks": "INTEGER NOT NULL DEFAULT 0",
    "expected_ticks": "INTEGER NOT NULL DEFAULT 0",
    "at": "TEXT NOT NULL",
}
_RUN_COLUMNS = tuple(RUN_COLUMNS)


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[Any, ...] = ()


def id_param(unit_id: Any) -> Any:
    """A unit id as a bound parameter: as text when D1 would round it as a number."""
    if (
        isinstance(unit_id, int)
        and not isinstance(unit_id, bool)
        and abs(unit_id) > JS_SAFE_INTEGER
    ):
        return str(unit_id)
    return unit_id


def id_from_row(text: Any, kind: Any) -> Any:
    """A claimed id from its exact text and SQLite type."""
    if kind == "integer":
        return int(str(text))
    if kind == "real":
        return float(str(text))
    return text


def quote(identifier: str) -> str:
    return f'"{identifier}"'


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

    @staticmethod
    def create_runs_table() -> Statement:
        columns = ", ".join(f"{name} {definition}" for name, definition in RUN_COLUMNS.items())
        return Statement(f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} ({columns})")

    @staticmethod
    def create_charges_table() -> list[Statement]:
        columns = ", ".join(f"{name} {definition}" for name, definition in CHARGE_COLUMNS.items())
        return [
            Statement(f"CREATE TABLE IF NOT EXISTS {CHARGES_TABLE} ({columns})"),
            Statement(
                f"CREATE INDEX IF NOT EXISTS {CHARGES_TABLE}_version "
                f"ON {CHARGES_TABLE} (job, version)"
            ),
            Statement(f"CREATE INDEX IF NOT EXISTS {CHARGES_TABLE}_at ON {CHARGES_TABLE} (at)"),
        ]

    @staticmethod
    def create_status_table() -> Statement:
        return Statement(
            f"CREATE TABLE IF NOT EXISTS {STATUS_TABLE} (job TEXT NOT NULL, version TEXT NOT NULL, "
            "max_attempts INTEGER NOT NULL, computed_at REAL NOT NULL, figures TEXT NOT NULL, "
            "PRIMARY KEY (job, version))"
        )

    def read_status(self) -> Statement:
        return Statement(
            f"SELECT max_attempts, computed_at, figures FROM {STATUS_TABLE} "
            "WHERE job = ? AND version = ?",
            (self.job.name, self.version),
        )

    def write_status(self, max_attempts: int, computed_at: float, figures: str) -> Statement:
        return Statement(
            f"INSERT INTO {STATUS_TABLE} (job, version, max_attempts, computed_at, figures) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(job, version) DO UPDATE SET "
            "max_attempts = excluded.max_attempts, computed_at = excluded.computed_at, "
            "figures = excluded.figures",
            (self.job.name, self.version, max_attempts, computed_at, figures),
        )

    @staticmethod
    def runs_table_info() -> Statement:
        return Statement(f"PRAGMA table_info({RUNS_TABLE})")

    @staticmethod
    def add_run_column(name: str) -> Statement:
        # Columns added later cannot be NOT NULL without a default: add them plain.
        definition = RUN_COLUMNS[name].replace(" NOT NULL", "").replace(" PRIMARY KEY", "")
        return Statement(f"ALTER TABLE {RUNS_TABLE} ADD COLUMN {name} {definition}")

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
        sql = (
            f"UPDATE {self.table} SET {owner_col} = ?, {expires_col} = ? "
            # A plain range on rowid, so SQLite seeks to it: an OR here would scan the table.
            f"WHERE rowid IN (SELECT rowid FROM {self.table} WHERE rowid >= ? AND {clause} "
            f"AND ({owner_col} IS NULL OR {expires_col} <= ?{mine}) ORDER BY rowid LIMIT ?) "
            f"RETURNING rowid AS {POSITION}, CAST({self.id} AS TEXT) AS {ID_TEXT}, "
            f"typeof({self.id}) AS {ID_TYPE}, {returning}"
        )
        first = MIN_ROWID if start is None else start
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

    @staticmethod
    def charge_row(o: UnitResult | UnitFailure) -> dict[str, Any]:
        """One outcome's entry in the charges statement's JSON array."""
        return {
            "attempt_id": o.attempt_id,
            "run_id": o.run_id,
            "unit_id": str(o.unit_id),
            "outcome": o.reason if isinstance(o, UnitFailure) else "done",
            "billed_ticks": o.billed_ticks,
            "tracked_ticks": o.tracked_ticks,
            "possible_ticks": o.possible_ticks if isinstance(o, UnitFailure) else 0,
            "expected_ticks": o.expected_ticks if isinstance(o, UnitFailure) else 0,
            "at": o.processed_at,
        }

    def insert_charges(self, outcomes: Sequence[UnitResult | UnitFailure]) -> Statement:
        """Every charged outcome's money as one statement (one JSON parameter: D1 allows 100
        bound parameters). INSERT OR IGNORE on the attempt id: a repeated write counts once."""
        rows = [self.charge_row(o) for o in outcomes]
        names = [name for name in CHARGE_COLUMNS if name not in ("job", "version")]
        picks = ", ".join(f"json_extract(value, '$.{name}')" for name in names)
        return Statement(
            f"INSERT OR IGNORE INTO {CHARGES_TABLE} (job, version, {', '.join(names)}) "
            f"SELECT ?, ?, {picks} FROM json_each(?)",
            (self.job.name, self.version, json.dumps(rows, ensure_ascii=False)),
        )

    def renew(self, owner: str, expires: float) -> Statement:
        """Extend every lease this owner holds."""
        c = self.col
        return Statement(
            f"UPDATE {self.table} SET {c['lease_expires']} = ? WHERE {c['lease_owner']} = ?",
            (expires, owner),
        )

    def lease_index(self) -> Statement:
        """Leases are found by owner (renewal, release): without this, each is a table scan."""
        name = quote(f"knrun_{self.job.source.table}_{self.job.source.prefix}lease")
        return Statement(
            f"CREATE INDEX IF NOT EXISTS {name} ON {self.table} ({self.col['lease_owner']})"
        )

    def release(self, owner: str, unit_ids: Sequence[Any] | None) -> Statement:
        c = self.col
        sql = (
            f"UPDATE {self.table} SET {c['lease_owner']} = NULL, {c['lease_expires']} = NULL "
            f"WHERE {c['lease_owner']} = ?"
        )
        if unit_ids is None:
            return Statement(sql, (owner,))
        # One JSON parameter for any number of ids: D1 allows only 100 bound parameters.
        sql += f" AND {self.id} IN (SELECT value FROM json_each(?))"
        return Statement(sql, (owner, json.dumps(list(unit_ids))))

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
            f"COALESCE(SUM(CASE WHEN {exhausted} THEN 1 ELSE 0 END), 0) AS retry_exhausted, "
            f"COALESCE(SUM(CASE WHEN {done} THEN {c['cost_ticks']} ELSE 0 END), 0) AS done_cost, "
            f"AVG(CASE WHEN {done} THEN {c['input_tokens']} END) AS avg_input, "
            f"AVG(CASE WHEN {done} THEN {c['output_tokens']} END) AS avg_output, "
            f"MAX(CASE WHEN {done} THEN {c['processed_at']} END) AS last_processed "
            f"FROM {self.table} WHERE ({self.job.source.where})"
        )
        params: list[Any] = [v, v, v, v, v, v, v, now]
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

    def money(self, *, kind: str | None = None, since: str | None = None) -> Statement:
        """This version's charges summed (`Money`); only those of runs of `kind` started at or
        after `since` when given."""
        unbilled = "c.billed_ticks IS NULL AND c.possible_ticks = 0"
        sums = {
            "requests": "1",
            "replies": "CASE WHEN c.possible_ticks = 0 THEN 1 ELSE 0 END",
            "billed_ticks": "c.billed_ticks",
            "billed_tracked_ticks": "CASE WHEN c.billed_ticks IS NOT NULL THEN c.tracked_ticks END",
            "tracked_ticks": "c.tracked_ticks",
            "unbilled_replies": f"CASE WHEN {unbilled} THEN 1 ELSE 0 END",
            "unbilled_tracked_ticks": f"CASE WHEN {unbilled} THEN c.tracked_ticks END",
            "possible_requests": "CASE WHEN c.possible_ticks > 0 THEN 1 ELSE 0 END",
            "possible_ticks": "c.possible_ticks",
            "expected_ticks": "c.expected_ticks",
        }
        where, params = "c.job = ? AND c.version = ?", [self.job.name, self.version]
        joined = ""
        if kind is not None:
            joined = f" JOIN {RUNS_TABLE} r ON r.run_id = c.run_id"
            where += " AND r.kind = ? AND r.started_at >= ?"
            params += [kind, since or ""]
        columns = ", ".join(f"COALESCE(SUM({expr}), 0) AS {name}" for name, expr in sums.items())
        return Statement(
            f"SELECT {columns} FROM {CHARGES_TABLE} c{joined} WHERE {where}", tuple(params)
        )

    @staticmethod
    def charged_since(since: str, exclude_run: str) -> Statement:
        """Every job's charges since `since` but one run's, each at its dearest."""
        return Statement(
            "SELECT COALESCE(SUM(COALESCE(billed_ticks, tracked_ticks) + possible_ticks), 0) "
            f"AS spent FROM {CHARGES_TABLE} WHERE at >= ? AND run_id != ?",
            (since, exclude_run),
        )

    @staticmethod
    def live_runs(since: str, exclude: str) -> Statement:
        """Other runs, of any job in this database, that refreshed their record since `since`."""
        return Statement(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM {RUNS_TABLE} "
            "WHERE state = 'running' AND updated_at >= ? AND run_id != ?",
            (since, exclude),
        )

    @staticmethod
    def running_runs(owner_prefix: str) -> Statement:
        """Runs still marked running whose units were leased from one working folder."""
        return Statement(
            f"SELECT run_id, owner, updated_at FROM {RUNS_TABLE} "
            "WHERE state = 'running' AND substr(owner, 1, ?) = ?",
            (len(owner_prefix), owner_prefix),
        )

    @staticmethod
    def mark_dead(run_ids: Sequence[str], now: str) -> Statement:
        return Statement(
            f"UPDATE {RUNS_TABLE} SET state = 'dead', ended_at = COALESCE(updated_at, ?), "
            "exit_reason = 'the process died before it finished (found at a later start)' "
            "WHERE state = 'running' AND run_id IN (SELECT value FROM json_each(?))",
            (now, json.dumps(list(run_ids))),
        )

    # -- runs -------------------------------------------------------------------------------------

    @staticmethod
    def upsert_run(run: RunRecord) -> Statement:
        values = [getattr(run, column) for column in _RUN_COLUMNS[:-1]]
        values.append(json.dumps(run.detail, sort_keys=True, default=str))
        updates = ", ".join(f"{column} = excluded.{column}" for column in _RUN_COLUMNS[1:])
        placeholders = ", ".join("?" for _ in _RUN_COLUMNS)
        return Statement(
            f"INSERT INTO {RUNS_TABLE} ({', '.join(_RUN_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT(run_id) DO UPDATE SET {updates}",
            tuple(values),
        )

    @staticmethod
    def select_runs(job: str, limit: int, kind: str | None) -> Statement:
        where, params = "job = ?", [job]
        if kind is not None:
            where += " AND kind = ?"
            params.append(kind)
        return Statement(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM {RUNS_TABLE} WHERE {where} "
            "ORDER BY started_at DESC LIMIT ?",
            (*params, limit),
        )

    @staticmethod
    def run_from_row(row: dict[str, Any]) -> RunRecord:
        fields = {column: row[column] for column in _RUN_COLUMNS}
        fields["detail"] = json.loads(fields["detail"] or "{}")
        return RunRecord(**fields)
