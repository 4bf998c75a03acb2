"""`knrun db migrate` on any store: the checks a table must pass, then knrun's columns and
tables added, idempotently."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from knrun.errors import ConfigError, StoreError
from knrun.job import JobSpec
from knrun.store.records import Rows
from knrun.store.runs_sql import RunsSql
from knrun.store.schema import (
    CHARGE_COLUMNS,
    CHARGES_TABLE,
    RUN_COLUMNS,
    RUNS_TABLE,
    Statement,
)
from knrun.store.sql import UnitSql


class SqlStore(Protocol):
    """What migrating needs of a store (`SqlUnitStore` is one): its job, its statement
    builders, and a way to run statements."""

    job: JobSpec
    sql: UnitSql
    runs_sql: RunsSql

    async def execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Rows]: ...


async def migrate(store: SqlStore) -> list[str]:
    info, runs_info, charges_info = await store.execute(
        [
            store.sql.table_info(),
            store.runs_sql.runs_table_info(),
            store.runs_sql.charges_table_info(),
        ],
        idempotent=True,
    )
    if not info:
        raise ConfigError(
            f"table {store.job.source.table!r} does not exist in the store "
            "(load units first, e.g. `knrun db import FILE`)"
        )
    existing = {row["name"] for row in info}
    await check_where(store)
    if store.job.source.id in existing:  # else reported with the other missing columns
        await check_ids(store)
    try:
        await store.execute([store.sql.has_rowid()], idempotent=True)
    except StoreError:
        raise ConfigError(
            f"table {store.job.source.table!r} has no rowid (WITHOUT ROWID): knrun claims "
            "units in rowid order and cannot use it"
        ) from None
    missing_inputs = [c for c in store.sql.input_columns if c not in existing]
    if missing_inputs:
        raise ConfigError(
            f"table {store.job.source.table!r} lacks the job's column(s) "
            f"{', '.join(missing_inputs)}"
        )
    wanted = store.sql.wanted_columns()
    added = [name for name in wanted if name not in existing]
    statements = [store.sql.add_column(name, wanted[name]) for name in added]
    statements.append(store.runs_sql.create_runs_table())
    statements += store.runs_sql.create_charges_table()
    statements.append(store.runs_sql.create_status_table())
    statements.append(store.sql.lease_index())
    if runs_info:  # a runs table from an older knrun: add what it lacks
        have = {row["name"] for row in runs_info}
        for name in RUN_COLUMNS:
            if name not in have:
                statements.append(store.runs_sql.add_run_column(name))
                added.append(f"{RUNS_TABLE}.{name}")
    if charges_info:  # a charges table from an older knrun
        have = {row["name"] for row in charges_info}
        for name in CHARGE_COLUMNS:
            if name not in have:
                statements.append(store.runs_sql.add_charge_column(name))
                added.append(f"{CHARGES_TABLE}.{name}")
    # Not idempotent as a request (ADD COLUMN twice fails), so a backend never repeats it; a
    # second `migrate` reads the schema again and adds nothing.
    await store.execute(statements, idempotent=False)
    return added


async def check_where(store: SqlStore) -> None:
    """The job's `where` compiles against this table (no row is read)."""
    try:
        await store.execute([store.sql.check_where()], idempotent=True)
    except StoreError as exc:
        if exc.retryable:
            raise
        raise ConfigError(
            f"source.where = {store.job.source.where!r} does not work on table "
            f"{store.job.source.table!r}: {exc}"
        ) from None


async def check_ids(store: SqlStore) -> None:
    """Results are written back by id: every row of the job needs one of its own."""
    [[row]] = await store.execute([store.sql.id_problems()], idempotent=True)
    missing, repeated = int(row["missing"] or 0), int(row["repeated"] or 0)
    if missing or repeated:
        problems = []
        if missing:
            problems.append(f"{missing} rows have no {store.job.source.id}")
        if repeated:
            problems.append(f"{repeated} rows repeat an id (e.g. {row['examples']})")
        raise ConfigError(
            f"table {store.job.source.table!r}: {' and '.join(problems)} among the job's rows; "
            "knrun writes each result back by id, so each row needs its own: fix the table, "
            "then run `knrun db migrate` again"
        )
