"""Read-only queries for looking back at a job: its charges summed by time bucket, one unit
with its charges, and its results page by page. Each sums in SQL or reads a bounded page, so a
job of 100,000 units never comes into Python whole."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from knrun.job import JobSpec
from knrun.store.base import SqlUnitStore
from knrun.store.schema import (
    CHARGES_TABLE,
    ID_TEXT,
    ID_TYPE,
    POSITION,
    RUNS_TABLE,
    Statement,
    id_from_row,
    id_param,
    quote,
)
from knrun.store.sql import UnitSql

Row = dict[str, Any]
EPOCH = "CAST(strftime('%s', at) AS INTEGER)"  # `at` is ISO 8601 UTC to the second
# What a request cost at best knowledge, as `Money.spent_ticks` counts it: the bill, else the
# reply at pricing.toml's prices, plus a possibly-billed request's expected cost.
SPENT = (
    "COALESCE(billed_ticks, CASE WHEN possible_ticks = 0 THEN tracked_ticks ELSE 0 END, 0) "
    "+ COALESCE(expected_ticks, 0)"
)
STATEMENTS_PER_REQUEST = 40  # bucket statements sent together (D1 runs a batch as one request)


@dataclass(frozen=True)
class Span:
    """When a run's charges began and ended (unix seconds), and how many there are."""

    run_id: str
    first: int
    last: int
    requests: int


@dataclass(frozen=True)
class Scope:
    """Charges to bucket: one run's (or every run's of the job, when `run_id` is None), in
    buckets of `bucket_s` seconds counted from `origin`."""

    run_id: str | None
    origin: int
    bucket_s: int


def _scoped(job: JobSpec, run_id: str | None) -> tuple[str, tuple[Any, ...]]:
    if run_id is None:
        return "job = ?", (job.name,)
    return "job = ? AND run_id = ?", (job.name, run_id)


def spans_statement(job: JobSpec) -> Statement:
    return Statement(
        f"SELECT run_id, MIN({EPOCH}) AS first, MAX({EPOCH}) AS last, COUNT(*) AS requests "
        f"FROM {CHARGES_TABLE} WHERE job = ? GROUP BY run_id ORDER BY first",
        (job.name,),
    )


def buckets_statement(job: JobSpec, scope: Scope) -> Statement:
    """One row per time bucket that had a charge: requests, units done and failed, money,
    tokens and latency, all summed by SQLite."""
    where, params = _scoped(job, scope.run_id)
    return Statement(
        # Integer division, whatever type the parameters arrive as (D1 may bind a JSON
        # number as REAL, and REAL division would make every second a bucket of its own).
        f"SELECT (({EPOCH} - CAST(? AS INTEGER)) / CAST(? AS INTEGER)) AS bucket, "
        "COUNT(*) AS requests, "
        "SUM(CASE WHEN outcome = 'done' THEN 1 ELSE 0 END) AS done, "
        "SUM(CASE WHEN outcome != 'done' THEN 1 ELSE 0 END) AS failed, "
        f"SUM({SPENT}) AS spent_ticks, "
        "COALESCE(SUM(input_tokens), 0) AS input_tokens, "
        "COALESCE(SUM(cached_tokens), 0) AS cached_tokens, "
        "COALESCE(SUM(output_tokens), 0) AS output_tokens, "
        "COALESCE(SUM(latency_ms), 0) AS latency_ms_sum, COUNT(latency_ms) AS latency_n, "
        f"MAX(latency_ms) AS latency_max FROM {CHARGES_TABLE} WHERE {where} "
        "GROUP BY bucket ORDER BY bucket",
        (scope.origin, scope.bucket_s, *params),
    )


def failures_statement(job: JobSpec) -> Statement:
    """Requests that ended in a failure, by run and reason (the charges' outcome)."""
    return Statement(
        f"SELECT run_id, outcome AS reason, COUNT(*) AS n FROM {CHARGES_TABLE} "
        "WHERE job = ? AND outcome != 'done' GROUP BY run_id, outcome ORDER BY n DESC",
        (job.name,),
    )


async def charge_spans(store: SqlUnitStore) -> list[Span]:
    [rows] = await store.execute([spans_statement(store.job)], idempotent=True)
    return [
        Span(str(r["run_id"]), int(r["first"]), int(r["last"]), int(r["requests"])) for r in rows
    ]


async def charge_buckets(store: SqlUnitStore, scopes: Sequence[Scope]) -> list[list[Row]]:
    """Each scope's buckets, a few dozen statements per request."""
    found: list[list[Row]] = []
    for start in range(0, len(scopes), STATEMENTS_PER_REQUEST):
        chunk = scopes[start : start + STATEMENTS_PER_REQUEST]
        found += await store.execute(
            [buckets_statement(store.job, scope) for scope in chunk], idempotent=True
        )
    return found


async def failures_by_run(store: SqlUnitStore) -> dict[str, dict[str, int]]:
    [rows] = await store.execute([failures_statement(store.job)], idempotent=True)
    found: dict[str, dict[str, int]] = {}
    for row in rows:
        found.setdefault(str(row["run_id"]), {})[str(row["reason"])] = int(row["n"])
    return found


# -- one unit -------------------------------------------------------------------------------------


def _id_candidates(text: str) -> list[Any]:
    """A unit id typed on the command line, as every value it may be stored as: the text,
    and the integer it spells (an INTEGER id compares equal to either; an untyped one only to
    its own type)."""
    candidates: list[Any] = [text]
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        candidates.append(id_param(int(stripped)))
    return candidates


def unit_statement(table: UnitSql, unit_id: str) -> Statement:
    job = table.job
    columns = [*table.input_columns[1:], *(job.output_column(f) for f in job.outputs)]
    bookkeeping = [table.col[name] for name in ("prompt_version", "status", "status_version")]
    bookkeeping += [table.col[name] for name in ("error", "attempts", "model", "processed_at")]
    candidates = _id_candidates(unit_id)
    marks = ", ".join("?" for _ in candidates)
    return Statement(
        f"SELECT rowid AS {POSITION}, CAST({table.id} AS TEXT) AS {ID_TEXT}, "
        f"typeof({table.id}) AS {ID_TYPE}, {', '.join(quote(c) for c in columns)}, "
        f"{', '.join(bookkeeping)} FROM {table.table} WHERE {table.id} IN ({marks}) LIMIT 2",
        tuple(candidates),
    )


def unit_charges_statement(job: JobSpec, id_text: str) -> Statement:
    """Every request knrun made for one unit, oldest first, with its run's model and kind."""
    names = (
        "attempt_id, run_id, version, outcome, at, billed_ticks, tracked_ticks, possible_ticks, "
        "expected_ticks, input_tokens, cached_tokens, output_tokens, reasoning_tokens, latency_ms"
    )
    picked = ", ".join(f"c.{name.strip()}" for name in names.split(","))
    return Statement(
        f"SELECT {picked}, r.model AS model, r.kind AS kind FROM {CHARGES_TABLE} c "
        f"LEFT JOIN {RUNS_TABLE} r ON r.run_id = c.run_id "
        "WHERE c.job = ? AND c.unit_id = ? ORDER BY c.at, c.rowid",
        (job.name, id_text),
    )


async def read_unit(store: SqlUnitStore, unit_id: str) -> tuple[Row, list[Row]] | None:
    """One unit's row (its id exactly as stored under the job's id column) and its charges;
    None when no row has this id."""
    table = store.sql
    [rows] = await store.execute([unit_statement(table, unit_id)], idempotent=True)
    if not rows:
        return None
    row = dict(rows[0])
    row.pop(POSITION)
    id_text = str(row[ID_TEXT])
    row[store.job.source.id] = id_from_row(row.pop(ID_TEXT), row.pop(ID_TYPE))
    [charges] = await store.execute([unit_charges_statement(store.job, id_text)], idempotent=True)
    return row, charges


# -- results, page by page ------------------------------------------------------------------------


def results_page_statement(
    table: UnitSql, after: int | None, limit: int, *, every: bool
) -> Statement:
    """Up to `limit` of the job's rows past rowid `after`: only those done at this version, or
    `every` row of the job with its state at this version."""
    job = table.job
    outputs = ", ".join(quote(job.output_column(f)) for f in job.outputs)
    done = f"{table.col['prompt_version']} = ?"
    state = (
        f"CASE WHEN {done} THEN 'done' WHEN {table._failed_here()} THEN 'failed' "
        "ELSE 'remaining' END"
    )
    where = f"({job.source.where}) AND rowid > ?"
    params: list[Any] = [table.version, table.version, table.version]
    if not every:
        where += f" AND {done}"
    params.append(-(2**63) if after is None else after)
    if not every:
        params.append(table.version)
    return Statement(
        f"SELECT rowid AS {POSITION}, CAST({table.id} AS TEXT) AS {ID_TEXT}, "
        f"typeof({table.id}) AS {ID_TYPE}, {state} AS knrun_state, "
        f"{table.col['error']} AS knrun_error, {outputs} "
        f"FROM {table.table} WHERE {where} ORDER BY rowid LIMIT ?",
        (*params, limit),
    )


async def results_pages(store: SqlUnitStore, *, page: int, every: bool) -> AsyncIterator[list[Row]]:
    """The job's results, one page (a list of rows) at a time, in row order."""
    table = store.sql
    after: int | None = None
    while True:
        statement = results_page_statement(table, after, page, every=every)
        [rows] = await store.execute([statement], idempotent=True)
        if not rows:
            return
        after = int(rows[-1][POSITION])
        yield [_with_id(store.job, row) for row in rows]
        if len(rows) < page:
            return


def _with_id(job: JobSpec, row: Row) -> Row:
    """The row with its id, exactly as stored, under the job's id column."""
    found = dict(row)
    found.pop(POSITION)
    found[job.source.id] = id_from_row(found.pop(ID_TEXT), found.pop(ID_TYPE))
    return found
