"""`knrun db import` into D1: all rows or none, although D1 has no transaction wider than one
request. The rows go first into a staging table, in batches within D1's limits (one JSON
parameter per statement, read with `json_each`, so 100 bound parameters never bind); then one
request, which D1 runs as a single transaction, adds any new columns, updates the rows whose id
is already in the table, inserts the others and drops the staging table. A failure before that
request drops the staging table and leaves the unit table as it was; the request itself applies
entirely or not at all."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knrun.errors import StoreError
from knrun.job import JobSpec
from knrun.store.base import SqlUnitStore
from knrun.store.importer import ImportReport, checked_file, converted_rows
from knrun.store.schema import Statement, quote

STAGING = "knrun_import_staging"
# JSON per staging statement: far under D1's 2 MB per string and its request limits.
CHUNK_BYTES = 256_000


async def import_into(store: SqlUnitStore, source: Path, job: JobSpec) -> ImportReport:
    kind, types = checked_file(source, job)
    table, staging, id_column = quote(job.source.table), quote(STAGING), quote(job.source.id)
    [info] = await store.execute([Statement(f"PRAGMA table_info({table})")], idempotent=True)
    existing = {row["name"] for row in info}
    report = ImportReport(table_created=not existing)
    try:
        await store.execute(
            [Statement(f"DROP TABLE IF EXISTS {staging}"), _create(staging, types, job)],
            idempotent=True,
        )
        for chunk in _chunks(converted_rows(source, kind)):
            report.rows += len(chunk)
            # OR REPLACE on the id: a batch sent twice (a retry) stages each row once.
            await store.execute([_stage(staging, types, chunk)], idempotent=True)
        if existing:
            [[row]] = await store.execute(
                [
                    Statement(
                        f"SELECT COUNT(*) AS n FROM {staging} WHERE {id_column} IN "
                        f"(SELECT {id_column} FROM {table})"
                    )
                ],
                idempotent=True,
            )
            report.updated = int(row["n"])
    except StoreError as exc:
        with contextlib.suppress(StoreError):
            await store.execute([Statement(f"DROP TABLE IF EXISTS {staging}")], idempotent=True)
        raise StoreError(f"{store.describe()}: import failed, nothing imported: {exc}") from None
    report.inserted = report.rows - report.updated
    report.columns_added = [name for name in types if existing and name not in existing]
    # Not idempotent (ADD COLUMN twice fails): sent once. D1 runs it as one transaction.
    try:
        await store.execute(_apply(job, types, existing, report.columns_added), idempotent=False)
    except StoreError as exc:
        with contextlib.suppress(StoreError):
            await store.execute([Statement(f"DROP TABLE IF EXISTS {staging}")], idempotent=True)
        raise StoreError(
            f"{store.describe()}: import failed at its last request, which D1 applies entirely "
            f"or not at all ({exc}): run it again (re-importing updates, it never duplicates)"
        ) from None
    return report


def _create(staging: str, types: dict[str, str], job: JobSpec) -> Statement:
    columns = ", ".join(
        f"{quote(name)} {sql_type}{' PRIMARY KEY' if name == job.source.id else ''}"
        for name, sql_type in types.items()
    )
    return Statement(f"CREATE TABLE {staging} ({columns})")


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_bytes = len(_json(row))
        if chunk and size + row_bytes > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_bytes + 1
    if chunk:
        yield chunk


def _stage(staging: str, types: dict[str, str], rows: list[dict[str, Any]]) -> Statement:
    names = ", ".join(quote(name) for name in types)
    # Each column by its key (names are plain identifiers, checked with the file); a row
    # without a key stages NULL for it.
    values = ", ".join(f"json_extract(value, '$.{name}')" for name in types)
    return Statement(
        f"INSERT OR REPLACE INTO {staging} ({names}) SELECT {values} FROM json_each(?)",
        (_json(rows),),
    )


def _apply(
    job: JobSpec, types: dict[str, str], existing: set[str], added: list[str]
) -> list[Statement]:
    table, staging, id_column = quote(job.source.table), quote(STAGING), quote(job.source.id)
    names = ", ".join(quote(name) for name in types)
    statements: list[Statement] = []
    if not existing:
        statements.append(_create(table, types, job))
    statements += [
        Statement(f"ALTER TABLE {table} ADD COLUMN {quote(name)} {types[name]}") for name in added
    ]
    others = [quote(name) for name in types if name != job.source.id]
    if existing and others:
        # Inputs only: knrun's own columns (results, leases) are left as they are.
        statements.append(
            Statement(
                f"UPDATE {table} SET ({', '.join(others)}) = (SELECT {', '.join(others)} FROM "
                f"{staging} AS s WHERE s.{id_column} = {table}.{id_column}) "
                f"WHERE {id_column} IN (SELECT {id_column} FROM {staging})"
            )
        )
    statements += [
        Statement(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} WHERE {id_column} "
            f"NOT IN (SELECT {id_column} FROM {table} WHERE {id_column} IS NOT NULL)"
        ),
        Statement(f"DROP TABLE {staging}"),
    ]
    return statements


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
