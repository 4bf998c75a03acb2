"""`knrun db import` into a local SQLite store: load units from JSONL or CSV, all or nothing
(D1: `commands/db_import.py`, which reuses the checks here).

The file is read twice: a first pass validates every row and infers column types, a second
inserts or updates rows inside one transaction. A bad row stops the import before anything is
written, with `file:line: problem`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knrun.errors import InputError, StoreError
from knrun.job import JobSpec
from knrun.sqltext import IDENTIFIER
from knrun.store.schema import quote
from knrun.store.sqlite import connect

_INTEGER = re.compile(r"^-?\d{1,18}$")
_REAL = re.compile(r"^-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


@dataclass
class ImportReport:
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    table_created: bool = False
    columns_added: list[str] = field(default_factory=list)


def import_units(source: Path, database: Path, job: JobSpec) -> ImportReport:
    rows_kind = _format_of(source)
    column_types = _validate(source, rows_kind, job)
    return _write(source, rows_kind, job, database, column_types)


def _format_of(source: Path) -> str:
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputError(f"{source}: unknown format {suffix or '(none)'}: use .jsonl or .csv")


def _rows(source: Path, kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs; blank JSONL lines are skipped."""
    try:
        # utf-8-sig: Excel starts its UTF-8 files with a byte-order mark, which would otherwise
        # become part of the first column's name.
        with source.open(encoding="utf-8-sig", newline="") as handle:
            if kind == "jsonl":
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        yield number, _json_row(source, number, line)
                return
            reader = csv.DictReader(handle, strict=True)
            if not reader.fieldnames:
                raise InputError(f"{source}: empty CSV (a header row is required)")
            for row in reader:
                number = reader.line_num
                if None in row or any(value is None for value in row.values()):
                    raise InputError(f"{source}:{number}: wrong number of fields for the header")
                yield number, dict(row)
    except FileNotFoundError:
        raise InputError(f"{source}: file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise InputError(f"{source}: bad CSV: {exc}") from None


def _json_row(source: Path, number: int, line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise InputError(f"{source}:{number}: each line must be a JSON object")
    return value


def _validate(source: Path, kind: str, job: JobSpec) -> dict[str, str]:
    """Check every row; return each column's SQL type, in first-seen order."""
    id_column, required = job.source.id, [job.source.id, *job.source.columns]
    seen_ids: set[Any] = set()
    kinds: dict[str, set[str]] = {}
    for number, row in _rows(source, kind):
        where = f"{source}:{number}"
        for name, value in row.items():
            if not IDENTIFIER.match(name):
                raise InputError(f"{where}: column {name!r} is not a plain SQL identifier")
            if job.source.prefix and name.startswith(job.source.prefix):
                raise InputError(f"{where}: column {name!r} uses knrun's prefix; rename it")
            if isinstance(value, (dict, list)):
                raise InputError(f"{where}: {name}: nested values are not supported")
            kinds.setdefault(name, set()).add(_kind(value, kind))
        missing = [name for name in required if name not in row]
        if missing:
            raise InputError(f"{where}: missing column(s) {', '.join(missing)}")
        unit_id = row[id_column]
        if unit_id is None or (isinstance(unit_id, str) and not unit_id.strip()):
            raise InputError(f"{where}: empty {id_column}")
        key = _convert(unit_id, kind)
        if key in seen_ids:
            raise InputError(f"{where}: duplicate {id_column} {unit_id!r}")
        seen_ids.add(key)
    if not seen_ids:
        raise InputError(f"{source}: no rows to import")
    return {name: _sql_type(found) for name, found in kinds.items()}


def _kind(value: Any, kind: str) -> str:
    if value is None or value == "":
        return "null"
    if kind == "csv":
        if _INTEGER.match(value):
            return "integer"
        return "real" if _REAL.match(value) else "text"
    if isinstance(value, (bool, int)):
        return "integer"
    return "real" if isinstance(value, float) else "text"


def _sql_type(found: set[str]) -> str:
    found = found - {"null"}
    if found == {"integer"}:
        return "INTEGER"
    if found and found <= {"integer", "real"}:
        return "REAL"
    return "TEXT"


def _convert(value: Any, kind: str) -> Any:
    """CSV text to the number it spells (so `restricted_access = 0` matches); JSON as is."""
    if kind != "csv" or value is None:
        return value
    if value == "":
        return None
    if _INTEGER.match(value):
        return int(value)
    if _REAL.match(value):
        return float(value)
    return value


def _write(
    source: Path, kind: str, job: JobSpec, database: Path, column_types: dict[str, str]
) -> ImportReport:
    report = ImportReport()
    table, id_column = quote(job.source.table), job.source.id
    try:
        conn = connect(database)
    except Exception as exc:
        raise StoreError(f"sqlite:{database}: cannot open: {exc}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        existing = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not existing:
            columns_sql = ", ".join(
                f"{quote(name)} {sql_type}{' PRIMARY KEY' if name == id_column else ''}"
                for name, sql_type in column_types.items()
            )
            conn.execute(f"CREATE TABLE {table} ({columns_sql})")
            report.table_created = True
        else:
            for name, sql_type in column_types.items():
                if name not in existing:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote(name)} {sql_type}")
                    report.columns_added.append(name)
        for _, row in _rows(source, kind):
            values = {name: _convert(value, kind) for name, value in row.items()}
            others = [name for name in values if name != id_column]
            updated = 0
            if not report.table_created and others:
                assignments = ", ".join(f"{quote(name)} = ?" for name in others)
                updated = conn.execute(
                    f"UPDATE {table} SET {assignments} WHERE {quote(id_column)} = ?",
                    [*(values[name] for name in others), values[id_column]],
                ).rowcount
            if updated:
                report.updated += 1
            else:
                names = ", ".join(quote(name) for name in values)
                marks = ", ".join("?" for _ in values)
                conn.execute(
                    f"INSERT INTO {table} ({names}) VALUES ({marks})", list(values.values())
                )
                report.inserted += 1
            report.rows += 1
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, (InputError, StoreError)):
            raise
        raise StoreError(f"sqlite:{database}: import failed, nothing written: {exc}") from None
    finally:
        conn.close()
    return report


def checked_file(source: Path, job: JobSpec) -> tuple[str, dict[str, str]]:
    """For an import into another store: the file's format and its columns' SQL types, after
    every row passed the checks above (ids present and unique, plain column names...)."""
    kind = _format_of(source)
    return kind, _validate(source, kind, job)


def converted_rows(source: Path, kind: str) -> Iterator[dict[str, Any]]:
    """The file's rows with their values as the SQLite import writes them."""
    for _, row in _rows(source, kind):
        yield {name: _convert(value, kind) for name, value in row.items()}
