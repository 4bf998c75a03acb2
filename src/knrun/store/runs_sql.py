"""The SQL of knrun's own tables: runs, charges (every request that cost or may have cost money)
and the status cache. The units table's SQL is `sql.py`'s."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from knrun.job import JobSpec
from knrun.store.schema import (
    CHARGE_COLUMNS,
    CHARGES_TABLE,
    RUN_COLUMNS,
    RUNS_TABLE,
    STATUS_TABLE,
    Statement,
)
from knrun.store.types import Charged, PossibleCharge, RunRecord, UnitResult

_RUN_COLUMNS = tuple(RUN_COLUMNS)


class RunsSql:
    """Statement builders for knrun's own tables; those that read or write one job version's
    rows are scoped to this job's."""

    def __init__(self, job: JobSpec) -> None:
        self.job = job
        self.version = job.version

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

    @staticmethod
    def charge_row(o: Charged) -> dict[str, Any]:
        """One outcome's entry in the charges statement's JSON array."""
        row: dict[str, Any] = {
            "attempt_id": o.attempt_id,
            "run_id": o.run_id,
            "unit_id": str(o.unit_id),
            "outcome": "done" if isinstance(o, UnitResult) else o.reason,
            "billed_ticks": o.billed_ticks,
            "tracked_ticks": o.tracked_ticks,
            "possible_ticks": 0 if isinstance(o, UnitResult) else o.possible_ticks,
            "expected_ticks": 0 if isinstance(o, UnitResult) else o.expected_ticks,
            "at": o.processed_at,
        }
        if not isinstance(o, PossibleCharge) and (o.input_tokens or o.latency_ms is not None):
            row |= {
                "input_tokens": o.input_tokens,
                "cached_tokens": o.cached_tokens,
                "output_tokens": o.output_tokens,
                "reasoning_tokens": o.reasoning_tokens,
                "latency_ms": o.latency_ms,
            }
        return row

    @staticmethod
    def charges_table_info() -> Statement:
        return Statement(f"PRAGMA table_info({CHARGES_TABLE})")

    @staticmethod
    def add_charge_column(name: str) -> Statement:
        return Statement(f"ALTER TABLE {CHARGES_TABLE} ADD COLUMN {name} {CHARGE_COLUMNS[name]}")

    def insert_charges(self, outcomes: Sequence[Charged]) -> Statement:
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

    def money(self, *, kinds: Sequence[str] | None = None, since: str | None = None) -> Statement:
        """This version's charges summed (`Money`); only those of runs of these `kinds` started
        at or after `since` when given."""
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
            "input_tokens": "c.input_tokens",
            "cached_tokens": "c.cached_tokens",
            "output_tokens": "c.output_tokens",
            "reasoning_tokens": "c.reasoning_tokens",
        }
        where, params = "c.job = ? AND c.version = ?", [self.job.name, self.version]
        joined = ""
        if kinds is not None:
            joined = f" JOIN {RUNS_TABLE} r ON r.run_id = c.run_id"
            where += " AND r.kind IN (SELECT value FROM json_each(?)) AND r.started_at >= ?"
            params += [json.dumps(list(kinds)), since or ""]
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
            # Newest first; runs started in the same second, in the order they were recorded.
            "ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )

    @staticmethod
    def run_from_row(row: dict[str, Any]) -> RunRecord:
        fields = {column: row[column] for column in _RUN_COLUMNS}
        fields["detail"] = json.loads(fields["detail"] or "{}")
        return RunRecord(**fields)
